"""LM budgets: a cap on calls and tokens, checked at the LM choke point before every call."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

from cotune.lm.types import BudgetExceeded, LMResponse


class Budget:
    """A cap on LM calls, tokens and/or wall time (seconds from the budget's creation).

    Cache hits count as calls: a resumed run, answered from the cache, then stops at exactly the
    point the uninterrupted run would have stopped.  Tokens are only known after a call, so the
    token cap stops the *next* call once the total has reached it.
    """

    def __init__(
        self,
        max_calls: int | None = None,
        max_tokens: int | None = None,
        max_seconds: float | None = None,
    ) -> None:
        for name, value in (("max_calls", max_calls), ("max_tokens", max_tokens),
                            ("max_seconds", max_seconds)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        self.max_calls = max_calls
        self.max_tokens = max_tokens
        self.max_seconds = max_seconds
        self.started = time.monotonic()
        self.calls = 0
        self.tokens = 0
        self._lock = threading.Lock()

    def reserve_call(self) -> None:
        """Claim one call, or raise :class:`BudgetExceeded` if the budget is spent."""
        with self._lock:
            if self.max_calls is not None and self.calls >= self.max_calls:
                raise BudgetExceeded(f"LM call budget of {self.max_calls} calls is spent")
            if self.max_tokens is not None and self.tokens >= self.max_tokens:
                raise BudgetExceeded(
                    f"LM token budget of {self.max_tokens} tokens is spent ({self.tokens} used)"
                )
            if self.max_seconds is not None and self.elapsed >= self.max_seconds:
                raise BudgetExceeded(f"wall-time budget of {self.max_seconds:g} s is spent")
            self.calls += 1

    def release_call(self) -> None:
        """Give back a reserved call that failed before it produced an answer."""
        with self._lock:
            self.calls -= 1

    def charge(self, calls: int, tokens: int) -> None:
        """Count calls and tokens spent elsewhere (another process: a Ray actor)."""
        with self._lock:
            self.calls += calls
            self.tokens += tokens

    def record(self, response: LMResponse) -> None:
        self.record_tokens(response.usage.total_tokens)

    def record_tokens(self, tokens: int) -> None:
        """Count the tokens of a call reserved with :meth:`reserve_call`."""
        with self._lock:
            self.tokens += tokens

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self.started

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return (
                (self.max_calls is not None and self.calls >= self.max_calls)
                or (self.max_tokens is not None and self.tokens >= self.max_tokens)
                or (self.max_seconds is not None and self.elapsed >= self.max_seconds)
            )

    @property
    def remaining_calls(self) -> int | None:
        with self._lock:
            return None if self.max_calls is None else max(0, self.max_calls - self.calls)

    def __repr__(self) -> str:
        return (
            f"Budget(calls={self.calls}/{self.max_calls}, tokens={self.tokens}/{self.max_tokens})"
        )


_active_budgets: ContextVar[tuple[Budget, ...]] = ContextVar("cotune_budgets", default=())


@contextmanager
def budget(
    max_calls: int | None = None, max_tokens: int | None = None, max_seconds: float | None = None
) -> Iterator[Budget]:
    """Cap every LM call made inside the block (any LM). Nested budgets all apply."""
    b = Budget(max_calls=max_calls, max_tokens=max_tokens, max_seconds=max_seconds)
    with use_budget(b):
        yield b


@contextmanager
def use_budget(b: Budget) -> Iterator[Budget]:
    token = _active_budgets.set((*_active_budgets.get(), b))
    try:
        yield b
    finally:
        _active_budgets.reset(token)


def active_budgets() -> tuple[Budget, ...]:
    return _active_budgets.get()


def reserve_call_on_all(budgets: Sequence[Budget]) -> None:
    """Claim one call on every budget, or on none: when one refuses (:class:`BudgetExceeded`),
    the calls already claimed on the others are given back before the error goes on, so a call
    one budget refuses is counted by none."""
    reserved: list[Budget] = []
    try:
        for b in budgets:
            b.reserve_call()
            reserved.append(b)
    except BaseException:
        for b in reserved:
            b.release_call()
        raise
