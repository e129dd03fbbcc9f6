"""Recording every predictor call while a program runs, for optimizers to bootstrap from."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

from cotune.core.predict import TraceStep, steps_to

__all__ = ["Trace", "TraceStep", "trace"]


class Trace:
    """An append-only, thread-safe list of predictor calls."""

    def __init__(self) -> None:
        self._steps: list[TraceStep] = []
        self._lock = threading.Lock()

    def append(self, step: TraceStep) -> None:
        with self._lock:
            self._steps.append(step)

    @property
    def steps(self) -> list[TraceStep]:
        with self._lock:
            return list(self._steps)

    def __len__(self) -> int:
        return len(self.steps)

    def __iter__(self) -> Iterator[TraceStep]:
        return iter(self.steps)


@contextmanager
def trace() -> Iterator[Trace]:
    """Record the predictor calls made inside the block (nested blocks each get them all)."""
    t = Trace()
    with steps_to(t.append):
        yield t
