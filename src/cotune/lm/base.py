"""The LM interface: the one choke point every LM call in cotune passes through.

``LM.chat()`` builds an :class:`LMRequest`, then in this order: checks the budgets, looks in the
persistent cache, calls the backend (retrying transient failures with exponential backoff, or
after the ``Retry-After`` the server asked for), checks that the answer is a usable completion,
stores it, and records usage.  Backends only implement ``_complete()``.

An answer is stored only once it is known to be usable (at least one choice, every choice's
text a string): an invalid one is an :class:`LMInvalidResponse`, retried like a timeout and
never cached; a cached entry that is not usable is a miss.  A request that still fails once
its retries are spent is counted as a failed call in the active usage meters (journals use
that to refuse to record a step computed while the LM was failing) and carries ``lm`` (which
LM) and ``attempts``.
"""

from __future__ import annotations

import json
import random
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

from cotune.lm.budget import Budget, active_budgets, reserve_call_on_all
from cotune.lm.cache import LMCache, cache_globally_enabled, shared_cache
from cotune.lm.description import LMDescription
from cotune.lm.types import (
    LMError,
    LMInvalidResponse,
    LMRequest,
    LMResponse,
    LMTransientError,
    Message,
    is_infrastructure_error,
)
from cotune.lm.usage import (
    UsageMeter,
    UsageSnapshot,
    record_failure_in_active_meters,
    record_in_active_meters,
)

_USE_SHARED_CACHE = object()


class LM(ABC):
    """Base class of every LM backend.

    Args:
        model: the model name sent to (or loaded by) the backend.
        temperature, max_tokens: defaults for calls that do not set them.
        cache: an :class:`LMCache`, ``None`` for no cache; by default the shared on-disk cache.
        max_retries: retries of transient failures (timeouts, 429, 5xx, invalid answers)
            before giving up.
        retry_initial_delay, retry_max_delay: the exponential backoff between retries (s).
        retry_after_cap: the longest wait a server's ``Retry-After`` is honoured for (s).
        budget: a :class:`Budget` that applies to this LM alone (``budget()`` blocks apply too).
        price_per_million: ``(prompt, completion)`` price per million tokens, for cost accounting.
    """

    n_ctx: int | None = None
    """The context length in tokens, where this LM knows it (the local engines); else None."""

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
        retry_after_cap: float = 60.0,
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
        self.retry_after_cap = retry_after_cap
        self.budget = budget
        self.price_per_million = price_per_million
        self.meter = UsageMeter()

    # -- what a backend provides -------------------------------------------------------------

    @abstractmethod
    def _complete(self, request: LMRequest) -> LMResponse:
        """Answer one request.  Raise LMTransientError for failures worth retrying (with
        ``retry_after`` when the server said how long to wait), LMInvalidResponse for an
        answer that is not a usable completion."""

    def identity(self) -> dict[str, Any]:
        """Everything about this LM that changes its answers; part of the cache key."""
        return {"backend": type(self).__name__, "model": self.model}

    def describe(self) -> LMDescription:
        """What a saved program records of this LM: JSON data (never an API key) from which
        :func:`cotune.lm.lm_from_description` builds it again, where its backend can be
        rebuilt.  Backends return their own typed description
        (:mod:`cotune.lm.description`)."""
        return {"backend": type(self).__name__, "model": self.model}

    @classmethod
    def from_description(cls, description: LMDescription, **options: Any) -> LM:
        """This backend's LM built again from its :meth:`describe`; ``options`` go to the
        constructor (cache, retries, threads, ...).  An LM that cannot be rebuilt (its
        answers come from code, or its backend keeps no settings) says so."""
        raise ValueError(
            f"{cls.__name__} cannot be rebuilt from its description {dict(description)!r}: "
            "pass a factory (a function that returns the LM) instead"
        )

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

    def complete(
        self, request: LMRequest, *, cache: bool = True, max_retries: int | None = None
    ) -> LMResponse:
        """Answer ``request`` through the choke point (see the module docstring);
        ``max_retries`` overrides the LM's own for this request."""
        budgets = self._budgets()
        reserve_call_on_all(budgets)

        try:
            store = self._active_cache() if cache else None
            key = request.fingerprint(self.identity()) if store is not None else ""
            response = self._cached(store, key) if store is not None else None
            if response is None:
                response = self._complete_with_retries(
                    request, self.max_retries if max_retries is None else max_retries)
                if store is not None:
                    store.put(key, response.to_json())
        except BaseException as exc:
            for b in budgets:
                b.release_call()
            if isinstance(exc, LMError) and is_infrastructure_error(exc):
                if exc.lm is None:
                    exc.lm = repr(self)
                self.meter.record_failure()
                record_failure_in_active_meters()
            raise

        for b in budgets:
            b.record(response)
        cost = self.cost_of(response)
        self.meter.record(response, cost, repair=request.repair)
        record_in_active_meters(response, cost, repair=request.repair)
        return response

    def check(self) -> None:
        """Make sure the LM answers at all before a long job starts (a wrong URL, an unknown
        model, a dead endpoint): raises the :class:`LMError` that says why.  Backends that
        talk to an endpoint send one tiny uncached request; an in-process model that loaded
        is ready, so the default does nothing."""
        return None

    # -- helpers -----------------------------------------------------------------------------

    @staticmethod
    def _cached(store: LMCache, key: str) -> LMResponse | None:
        """The cached answer, or None when there is none or it is not a usable completion
        (an entry that an older cotune stored from a broken answer): the fresh answer then
        replaces it."""
        hit = store.get(key)
        if hit is None:
            return None
        try:
            return validated(LMResponse.from_json(hit, cached=True))
        except (KeyError, TypeError, ValueError, AttributeError, LMInvalidResponse):
            return None

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

    def _complete_with_retries(self, request: LMRequest, max_retries: int) -> LMResponse:
        attempt = 0
        while True:
            try:
                return validated(self._complete(request))
            except LMTransientError as exc:
                if attempt >= max_retries:
                    exc.attempts = attempt + 1
                    raise
                time.sleep(self._retry_delay(attempt, exc.retry_after))
                attempt += 1

    def _retry_delay(self, attempt: int, retry_after: float | None) -> float:
        """The server's ``Retry-After`` (capped), else exponential backoff with jitter."""
        if retry_after is not None:
            return min(max(retry_after, 0.0), self.retry_after_cap)
        delay = min(self.retry_max_delay, self.retry_initial_delay * 2**attempt)
        return delay * (0.5 + random.random() / 2)  # jitter spreads out retries

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model={self.model!r})"


def validated(response: LMResponse) -> LMResponse:
    """``response`` if it is a usable completion (at least one choice, every text a string),
    else :class:`LMInvalidResponse`."""
    if not response.choices:
        raise LMInvalidResponse(f"the answer of {response.model or 'the LM'} has no choices")
    for i, choice in enumerate(response.choices):
        if not isinstance(choice.text, str):
            raise LMInvalidResponse(
                f"choice {i} of the answer has no text ({type(choice.text).__name__})"
            )
    return response
