"""Recording every predictor call while a program runs, for optimizers to bootstrap from."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cotune.core.example import Prediction
    from cotune.core.predict import Predict


@dataclass(frozen=True)
class TraceStep:
    predictor: Predict
    inputs: dict[str, Any]
    outputs: Prediction


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


_active_traces: ContextVar[tuple[Trace, ...]] = ContextVar("cotune_traces", default=())


@contextmanager
def trace() -> Iterator[Trace]:
    """Record the predictor calls made inside the block (nested blocks each get them all)."""
    t = Trace()
    token = _active_traces.set((*_active_traces.get(), t))
    try:
        yield t
    finally:
        _active_traces.reset(token)


def record_step(step: TraceStep) -> None:
    for t in _active_traces.get():
        t.append(step)
