"""A journal of finished optimization steps, so that a killed run resumes without redoing them.

Optimizers wrap each expensive, deterministic step (a bootstrap round, a candidate's evaluation,
a search trial) in ``journal.memo(key, fn)``.  A resumed run gets the recorded result back
instead of running the step; a step that was cut off halfway reruns, and its finished LM calls
come from the persistent LM cache.  Values must be JSON-serializable; ``memo`` returns the
value as the journal records it (JSON types), whether it was computed now or replayed.

A step during which an LM call failed for an infrastructure reason (``failed_calls`` of the
usage meters) is never recorded, even when it returned: its result is not the one the LM gives
when it works, so a rerun must compute it again.
"""

from __future__ import annotations

import json
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

from cotune.lm.usage import track_usage

_MISSING = object()


class Journal(ABC):
    @abstractmethod
    def get(self, key: str, default: Any = None) -> Any: ...

    @abstractmethod
    def put(self, key: str, value: Any) -> None: ...

    @abstractmethod
    def keys(self, prefix: str = "") -> list[str]: ...

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """The value recorded under ``key``, else ``compute()`` recorded now.  Either way the
        value is the one the journal reads back (:meth:`recorded`): a first run and a resumed
        run continue from values of the same types."""
        value = self.get(key, _MISSING)
        if value is _MISSING:
            with track_usage() as meter:
                value = self.recorded(compute())
            if meter.snapshot().failed_calls == 0:  # see the module docstring
                self.put(key, value)
        return value

    def recorded(self, value: Any) -> Any:
        """``value`` as this journal reads it back: its JSON round trip (tuples become lists,
        dataclasses are refused, dict keys become strings)."""
        return json.loads(json.dumps(value))


class MemoryJournal(Journal):
    """A journal that lives as long as the process (the default when there is no run folder)."""

    def __init__(self) -> None:
        self._entries: dict[str, str] = {}
        self._lock = threading.Lock()

    def get(self, key: str, default: Any = None) -> Any:
        with self._lock:
            text = self._entries.get(key)
        return default if text is None else json.loads(text)

    def put(self, key: str, value: Any) -> None:
        text = json.dumps(value)  # same round trip as a persistent journal
        with self._lock:
            self._entries[key] = text

    def keys(self, prefix: str = "") -> list[str]:
        with self._lock:
            return sorted(k for k in self._entries if k.startswith(prefix))
