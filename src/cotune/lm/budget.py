"""LM budgets: a cap on calls and tokens, checked at the LM choke point before every call."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from cotune.lm.types import BudgetExceeded, LMResponse


class Budget:
    """A cap on LM calls and/or tokens.

    Cache hits count as calls: a resumed run, answered from the cache, then stops at exactly the
    point the uninterrupted run would have stopped.  Tokens are only known after a call, so the
    token cap stops the *next* call once the total has reached it.
    """

    def __init__(self, max_calls: int | None = None, max_tokens: int | None = None) -> None:
        if max_calls is not None and max_calls < 0:
            raise ValueError("max_calls must be >= 0")
        if max_tokens is not None and max_tokens < 0:
            raise ValueError("max_tokens must be >= 0")
        self.max_calls = max_calls
        self.max_tokens = max_tokens
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
            self.calls += 1

    def release_call(self) -> None:
        """Give back a reserved call that failed before it produced an answer."""
        with self._lock:
            self.calls -= 1

    def record(self, response: LMResponse) -> None:
        with self._lock:
            self.tokens += response.usage.total_tokens

    @property
    def exhausted(self) -> bool:
        with self._lock:
            return (self.max_calls is not None and self.calls >= self.max_calls) or (
                self.max_tokens is not None and self.tokens >= self.max_tokens
            )

    def __repr__(self) -> str:
        return (
            f"Budget(calls={self.calls}/{self.max_calls}, tokens={self.tokens}/{self.max_tokens})"
        )


_active_budgets: ContextVar[tuple[Budget, ...]] = ContextVar("cotune_budgets", default=())


@contextmanager
def budget(max_calls: int | None = None, max_tokens: int | None = None) -> Iterator[Budget]:
    """Cap every LM call made inside the block (any LM). Nested budgets all apply."""
    b = Budget(max_calls=max_calls, max_tokens=max_tokens)
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
