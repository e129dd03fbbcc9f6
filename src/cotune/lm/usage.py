"""Usage accounting: per LM, and for any block of code through ``track_usage()``."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

from cotune.lm.budget import active_budgets, reserve_call_on_all
from cotune.lm.types import LMResponse, TokenUsage


@dataclass
class UsageSnapshot:
    calls: int = 0
    """Requests answered, cache hits included."""
    cache_hits: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    """In the currency of the LM's price table; 0 when no price is known."""
    failed_calls: int = 0
    """Requests that failed for an infrastructure reason once their retries were spent (not
    in ``calls``).  A journal never records a step during which this grew."""
    repairs: int = 0
    """Of ``calls``, the repair requests (asking to fix an answer that did not parse)."""

    @property
    def backend_calls(self) -> int:
        """Requests that really reached the backend."""
        return self.calls - self.cache_hits

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_json(self) -> dict[str, float | int]:
        return {
            "calls": self.calls,
            "cache_hits": self.cache_hits,
            "backend_calls": self.backend_calls,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost": self.cost,
            "failed_calls": self.failed_calls,
            "repairs": self.repairs,
        }


class UsageMeter:
    """Thread-safe running totals."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._totals = UsageSnapshot()

    def record(self, response: LMResponse, cost: float, *, repair: bool = False) -> None:
        self._count(response.usage, cached=response.cached, cost=cost, repair=repair)

    def record_replayed(self, usage: TokenUsage) -> None:
        """Count one call of a step replayed from a journal: a cache hit that cost nothing."""
        self._count(usage, cached=True, cost=0.0, repair=False)

    def _count(self, usage: TokenUsage, *, cached: bool, cost: float, repair: bool) -> None:
        with self._lock:
            t = self._totals
            t.calls += 1
            t.repairs += repair
            if cached:
                t.cache_hits += 1
            t.prompt_tokens += usage.prompt_tokens
            t.completion_tokens += usage.completion_tokens
            t.cost += cost

    def record_failure(self) -> None:
        with self._lock:
            self._totals.failed_calls += 1

    def add(self, usage: UsageSnapshot) -> None:
        """Add usage counted elsewhere (another process: a Ray actor)."""
        with self._lock:
            t = self._totals
            for name in vars(t):
                setattr(t, name, getattr(t, name) + getattr(usage, name))

    def snapshot(self) -> UsageSnapshot:
        with self._lock:
            return UsageSnapshot(**vars(self._totals))


_active_meters: ContextVar[tuple[UsageMeter, ...]] = ContextVar("cotune_usage_meters", default=())


@contextmanager
def track_usage() -> Iterator[UsageMeter]:
    """Count every LM call made inside the block (worker threads included when they copy
    the context, as cotune's own thread pools do). Blocks nest; each counts its own calls."""
    meter = UsageMeter()
    token = _active_meters.set((*_active_meters.get(), meter))
    try:
        yield meter
    finally:
        _active_meters.reset(token)


def record_in_active_meters(response: LMResponse, cost: float, *, repair: bool = False) -> None:
    for meter in _active_meters.get():
        meter.record(response, cost, repair=repair)


def record_failure_in_active_meters() -> None:
    """Count one request that failed for an infrastructure reason (see ``failed_calls``)."""
    for meter in _active_meters.get():
        meter.record_failure()


def add_to_active_meters(usage: UsageSnapshot) -> None:
    """Count usage that another process (a Ray actor) counted, in every active meter."""
    for meter in _active_meters.get():
        meter.add(usage)


def charge_replayed(calls: int, usage: TokenUsage) -> None:
    """Charge the LM work of a step replayed from a journal (``calls`` calls that spent
    ``usage`` tokens when the step first ran) to the active budgets and usage meters, call by
    call, as cache hits: a call budget stops a resumed run where the uninterrupted one stopped
    (:class:`~cotune.lm.BudgetExceeded` at the call that does not fit), and the meters count
    what the first run counted.  Tokens are known after a call, so they go with the last one."""
    budgets = active_budgets()
    meters = _active_meters.get()
    for i in range(calls):
        reserve_call_on_all(budgets)  # as at the LM choke point
        spent = usage if i == calls - 1 else TokenUsage()
        for b in budgets:
            b.record_tokens(spent.total_tokens)
        for meter in meters:
            meter.record_replayed(spent)
