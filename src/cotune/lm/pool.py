"""One LM over several OpenAI-compatible servers of the same model (vLLM or llama.cpp replicas).

:class:`EndpointPool` is an ordinary :class:`~cotune.lm.base.LM`: budgets, the cache and the
usage meter are the pool's (one of each, whatever replica answers), and retries with backoff
are the pool's too.  Below that choke point each request goes to the healthy replica with the
fewest requests in flight that still has a free slot (``max_concurrency`` per endpoint; the
caller waits while every slot is taken).  A connection error, a timeout, an HTTP 5xx or an
invalid answer takes that replica out of rotation and the same request is sent at once to
another one (*failover*); a background thread probes the replicas that are out
(``GET <base_url>/models``) every ``health_interval`` seconds and puts back those that answer.
Only when every replica has failed the request does it become one
:class:`~cotune.lm.LMTransientError` of the pool, which the pool's retries then wait out.
An HTTP 429 (the replica is busy, not broken) fails over without taking the replica out; any
other 4xx is an answer about the request and is raised as it is.

The replicas are interchangeable by contract (same model, same weights): the cache key is the
pool's model and LoRA adapter, not an endpoint, so answers cached through one replica serve
the others, and a saved program names the pool's endpoints (see :meth:`describe`).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from cotune.lm.base import LM
from cotune.lm.description import PoolDescription
from cotune.lm.types import (
    LMInvalidResponse,
    LMRequest,
    LMRequestError,
    LMResponse,
    LMTransientError,
)

HEALTH_TIMEOUT_S = 2.0


@dataclass
class EndpointStats:
    """What the pool knows about one replica (a snapshot, see :meth:`EndpointPool.stats`)."""

    base_url: str
    healthy: bool
    in_flight: int
    requests: int
    """Requests sent to it (failed ones included)."""
    failures: int
    """Requests it failed with a connection error, timeout, 5xx or invalid answer."""
    last_error: str | None = None


class _Endpoint:
    def __init__(self, lm: Any, limit: int) -> None:
        self.lm = lm
        self.limit = limit
        self.in_flight = 0
        self.requests = 0
        self.failures = 0
        self.healthy = True
        self.last_error: str | None = None

    def stats(self) -> EndpointStats:
        return EndpointStats(self.lm.base_url, self.healthy, self.in_flight, self.requests,
                             self.failures, self.last_error)


class EndpointPool(LM):
    """An LM served by several OpenAI-compatible replicas of one model (see the module
    docstring).

    Args:
        model: the model name on the servers.
        base_urls: one base URL per replica (``http://host:port/v1``); at least one, no
            duplicates.
        max_concurrency: requests in flight at once per replica.
        timeout: seconds per HTTP request; a timeout fails the request over.
        api_key, api_key_env, lora, transport: as for :class:`~cotune.lm.OpenAILM`, for every
            replica.
        health_interval: seconds between probes of the replicas that are out of rotation.
        **kwargs: passed to :class:`LM` (cache, retries, budget, prices, defaults).
    """

    def __init__(
        self,
        model: str,
        base_urls: Sequence[str],
        *,
        max_concurrency: int = 8,
        timeout: float = 120.0,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        lora: str | None = None,
        transport: str = "auto",
        health_interval: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        from cotune.lm.openai_backend import OpenAILM

        urls = [u.strip().rstrip("/") for u in base_urls if u and u.strip()]
        if not urls:
            raise ValueError("an endpoint pool needs at least one base URL")
        if len(set(urls)) != len(urls):
            raise ValueError(f"the endpoint pool lists a base URL twice: {urls}")
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if not health_interval > 0:
            raise ValueError("health_interval must be a number of seconds > 0")
        self.lora = lora
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.health_interval = health_interval
        self._endpoints = [
            _Endpoint(OpenAILM(model, base_url=url, api_key=api_key, api_key_env=api_key_env,
                               timeout=timeout, max_concurrency=max_concurrency, lora=lora,
                               transport=transport, cache=None, max_retries=0),  # type: ignore[arg-type]
                      max_concurrency)
            for url in urls
        ]
        self._cond = threading.Condition()
        self._prober: threading.Thread | None = None
        self._closed = False

    # -- identity ----------------------------------------------------------------------------

    @property
    def base_urls(self) -> list[str]:
        return [e.lm.base_url for e in self._endpoints]

    def identity(self) -> dict[str, Any]:
        return {"backend": "openai", "model": self.model, "lora": self.lora}

    def describe(self) -> PoolDescription:
        """The model, the replicas' endpoints, the adapter name and the slots per replica
        (never the API key)."""
        return {"backend": "openai-pool", "model": self.model, "base_urls": self.base_urls,
                "lora": self.lora, "max_concurrency": self.max_concurrency}

    @classmethod
    def from_description(cls, description: PoolDescription, **options: Any) -> EndpointPool:
        """The pool a :meth:`describe` recorded; ``options`` go to the constructor."""
        options.setdefault("max_concurrency", description.get("max_concurrency", 8))
        return cls(description["model"], description.get("base_urls") or [],
                   lora=description.get("lora"), **options)

    def stats(self) -> list[EndpointStats]:
        with self._cond:
            return [e.stats() for e in self._endpoints]

    # -- routing -----------------------------------------------------------------------------

    def _complete(self, request: LMRequest) -> LMResponse:
        tried: set[int] = set()
        errors: list[str] = []
        while True:
            index = self._acquire(tried)
            if index is None:
                raise LMTransientError(
                    f"every endpoint of the pool failed this request: {'; '.join(errors)}"
                    if errors else f"no endpoint of the pool is healthy ({self._down_list()})")
            endpoint = self._endpoints[index]
            try:
                response = endpoint.lm._complete(request)
            except LMRequestError:
                self._release(index, None)
                raise
            except LMTransientError as exc:
                busy = _is_rate_limit(exc)
                self._release(index, None if busy else exc)
                tried.add(index)
                errors.append(f"{endpoint.lm.base_url}: {exc}")
                continue
            except BaseException:
                self._release(index, None)
                raise
            self._release(index, None)
            return response

    def _acquire(self, tried: set[int]) -> int | None:
        """The index of the healthy, untried endpoint with the fewest requests in flight, its
        slot taken; waits while all such endpoints are full; None when there is none."""
        with self._cond:
            while True:
                candidates = [i for i, e in enumerate(self._endpoints)
                              if e.healthy and i not in tried]
                if not candidates:
                    return None
                free = [i for i in candidates
                        if self._endpoints[i].in_flight < self._endpoints[i].limit]
                if free:
                    best = min(free, key=lambda i: self._endpoints[i].in_flight)
                    endpoint = self._endpoints[best]
                    endpoint.in_flight += 1
                    endpoint.requests += 1
                    return best
                self._cond.wait()

    def _release(self, index: int, failure: BaseException | None) -> None:
        with self._cond:
            endpoint = self._endpoints[index]
            endpoint.in_flight -= 1
            if failure is not None:
                endpoint.failures += 1
                endpoint.last_error = str(failure)[:500]
                if endpoint.healthy:
                    endpoint.healthy = False
                    self._start_prober()
            self._cond.notify_all()

    def _down_list(self) -> str:
        return "; ".join(f"{e.lm.base_url}: {e.last_error or 'down'}" for e in self._endpoints
                         if not e.healthy)

    # -- health checks -----------------------------------------------------------------------

    def _start_prober(self) -> None:
        """Start the probing thread unless it runs (called with the lock held)."""
        if self._prober is None or not self._prober.is_alive():
            self._prober = threading.Thread(target=self._probe_loop, daemon=True,
                                            name="cotune-pool-health")
            self._prober.start()

    def _probe_loop(self) -> None:
        while not self._closed:
            time.sleep(self.health_interval)
            with self._cond:
                down = [e for e in self._endpoints if not e.healthy]
            if not down:
                return
            for endpoint in down:
                if self.probe(endpoint.lm.base_url):
                    with self._cond:
                        endpoint.healthy = True
                        self._cond.notify_all()

    def probe(self, base_url: str) -> bool:
        """True when ``GET <base_url>/models`` answers 200 (the replica is up)."""
        endpoint = next(e for e in self._endpoints if e.lm.base_url == base_url)
        return endpoint.lm.is_up(min(HEALTH_TIMEOUT_S, self.timeout))

    def check(self) -> None:
        """Probe every replica and take out those that do not answer; then one tiny request
        through the pool (as :meth:`OpenAILM.check`), so that a pool with no live replica, a
        wrong model name or a bad key is an error before a long job starts."""
        from cotune.lm.openai_backend import CHECK_RETRIES

        for endpoint in self._endpoints:
            if not self.probe(endpoint.lm.base_url):
                with self._cond:
                    if endpoint.healthy:
                        endpoint.healthy = False
                        endpoint.last_error = "health check failed (GET /models)"
                        self._start_prober()
        self.complete(
            LMRequest(messages=({"role": "user", "content": "Say OK."},), max_tokens=1),
            cache=False, max_retries=min(self.max_retries, CHECK_RETRIES),
        )

    def close(self) -> None:
        """Stop the health-check thread (it also stops by itself once every replica is up)."""
        self._closed = True

    def __repr__(self) -> str:
        lora = f", lora={self.lora!r}" if self.lora else ""
        return f"EndpointPool(model={self.model!r}, base_urls={self.base_urls!r}{lora})"


def _is_rate_limit(exc: LMTransientError) -> bool:
    return not isinstance(exc, LMInvalidResponse) and str(exc).startswith("HTTP 429 ")
