"""The LM interface: the one choke point every LM call in cotune passes through.

``LM.chat()`` builds an :class:`LMRequest`, then in this order: checks the budgets, looks in the
persistent cache, calls the backend (retrying transient failures with exponential backoff),
stores the answer, and records usage.  Backends only implement ``_complete()``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from cotune.lm.budget import Budget, active_budgets
from cotune.lm.cache import LMCache, cache_globally_enabled, shared_cache
from cotune.lm.types import LMRequest, LMResponse, LMTransientError, Message
from cotune.lm.usage import UsageMeter, UsageSnapshot, record_in_active_meters

_USE_SHARED_CACHE = object()


class LM(ABC):
    """Base class of every LM backend.

    Args:
        model: the model name sent to (or loaded by) the backend.
        temperature, max_tokens: defaults for calls that do not set them.
        cache: an :class:`LMCache`, ``None`` for no cache; by default the shared on-disk cache.
        max_retries: retries of transient failures (timeouts, 429, 5xx) before giving up.
        budget: a :class:`Budget` that applies to this LM alone (``budget()`` blocks apply too).
        price_per_million: ``(prompt, completion)`` price per million tokens, for cost accounting.
    """

    default_adapter = "chat"
    """The name of the adapter predictors use with this LM when nothing else says which: the
    field-marker format unless a backend can constrain its output (then ``"json"``)."""

    def __init__(
        self,
        model: str,
        *,
        temperature: float = 0.0,
        max_tokens: int = 512,
        cache: LMCache | None | object = _USE_SHARED_CACHE,
        max_retries: int = 4,
        retry_initial_delay: float = 0.5,
        retry_max_delay: float = 20.0,
        budget: Budget | None = None,
        price_per_million: tuple[float, float] | None = None,
    ) -> None:
        self.model = model
        self.temperature = temperature
        self.max_tokens = max_tokens
        self._cache_setting = cache
        self._cache: LMCache | None = None
        self._cache_lock = threading.Lock()
        self.max_retries = max_retries
        self.retry_initial_delay = retry_initial_delay
        self.retry_max_delay = retry_max_delay
        self.budget = budget
        self.price_per_million = price_per_million
        self.meter = UsageMeter()

    # -- what a backend provides -------------------------------------------------------------

    @abstractmethod
    def _complete(self, request: LMRequest) -> LMResponse:
        """Answer one request.  Raise LMTransientError for failures worth retrying."""

    def identity(self) -> dict[str, Any]:
        """Everything about this LM that changes its answers; part of the cache key."""
        return {"backend": type(self).__name__, "model": self.model}

    # -- the choke point ---------------------------------------------------------------------

    def chat(
        self,
        messages: Sequence[Message],
        *,
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
        seed: int | None = None,
        n: int = 1,
        rollout_id: int | None = None,
        cache: bool = True,
        response_schema: Mapping[str, Any] | str | None = None,
        repair: bool = False,
    ) -> LMResponse:
        """Send chat messages; return the completion(s), token usage and finish reason.

        ``response_schema``: a JSON schema the answer must follow (decoding is constrained to it
        where the backend can); ``repair``: this request asks to fix an unparsable answer."""
        if n < 1:
            raise ValueError("n must be >= 1")
        if response_schema is not None and not isinstance(response_schema, str):
            response_schema = json.dumps(response_schema, ensure_ascii=False)
        request = LMRequest(
            messages=tuple({"role": m["role"], "content": m["content"]} for m in messages),
            temperature=self.temperature if temperature is None else temperature,
            max_tokens=self.max_tokens if max_tokens is None else max_tokens,
            stop=tuple(stop),
            seed=seed,
            n=n,
            rollout_id=rollout_id,
            response_schema=response_schema,
            repair=repair,
        )
        return self.complete(request, cache=cache)

    def complete(self, request: LMRequest, *, cache: bool = True) -> LMResponse:
        budgets = self._budgets()
        reserved: list[Budget] = []
        try:
            for b in budgets:
                b.reserve_call()
                reserved.append(b)
        except Exception:
            for b in reserved:
                b.release_call()
            raise

        store = self._active_cache() if cache else None
        key = request.fingerprint(self.identity()) if store is not None else ""
        response: LMResponse | None = None
        if store is not None:
            hit = store.get(key)
            if hit is not None:
                try:
                    response = LMResponse.from_json(hit, cached=True)
                except (KeyError, TypeError, ValueError):
                    response = None  # a damaged entry is a miss; the fresh answer replaces it
        if response is None:
            try:
                response = self._complete_with_retries(request)
            except BaseException:
                for b in reserved:
                    b.release_call()
                raise
            if store is not None:
                store.put(key, response.to_json())

        for b in reserved:
            b.record(response)
        cost = self.cost_of(response)
        self.meter.record(response, cost, repair=request.repair)
        record_in_active_meters(response, cost, repair=request.repair)
        return response

    # -- helpers -----------------------------------------------------------------------------

    @property
    def usage(self) -> UsageSnapshot:
        return self.meter.snapshot()

    def cost_of(self, response: LMResponse) -> float:
        if response.cached or self.price_per_million is None:
            return 0.0
        prompt_price, completion_price = self.price_per_million
        u = response.usage
        return (u.prompt_tokens * prompt_price + u.completion_tokens * completion_price) / 1e6

    def _budgets(self) -> tuple[Budget, ...]:
        scoped = active_budgets()
        return (*scoped, self.budget) if self.budget is not None else scoped

    def _active_cache(self) -> LMCache | None:
        if not cache_globally_enabled() or self._cache_setting is None:
            return None
        if self._cache is None:
            with self._cache_lock:
                if self._cache is None:
                    setting = self._cache_setting
                    self._cache = shared_cache() if setting is _USE_SHARED_CACHE else setting  # type: ignore[assignment]
        return self._cache

    def _complete_with_retries(self, request: LMRequest) -> LMResponse:
        attempt = 0
        while True:
            try:
                return self._complete(request)
            except LMTransientError:
                if attempt >= self.max_retries:
                    raise
                delay = min(self.retry_max_delay, self.retry_initial_delay * 2**attempt)
                time.sleep(delay * (0.5 + random.random() / 2))  # jitter spreads out retries
                attempt += 1

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"
