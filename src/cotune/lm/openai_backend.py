"""Any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, Ollama, llama.cpp server) via the
official ``openai`` SDK.

The SDK is imported on first construction, so ``import cotune`` stays fast.  Retries belong to
:class:`~cotune.lm.base.LM` (the SDK's own are switched off), and SDK errors are mapped onto
:class:`LMTransientError` (worth retrying) and :class:`LMRequestError` (not).
"""

from __future__ import annotations

import json
import os
import threading
from typing import Any
from urllib.parse import urlsplit

from cotune.lm.base import LM
from cotune.lm.types import (
    Choice,
    LMRequest,
    LMRequestError,
    LMResponse,
    LMTransientError,
    TokenUsage,
)

_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_TRANSIENT_STATUS = {408, 409, 429}
"""Besides 5xx: request timeout, conflict (lock contention) and rate limit, as the SDK retries."""


def _is_local(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = urlsplit(base_url).hostname or ""
    return host in _LOCAL_HOSTS or host.endswith(".localhost")


class OpenAILM(LM):
    """An LM served behind an OpenAI-compatible chat-completions endpoint.

    Args:
        model: the model name on the server.
        base_url: default ``$OPENAI_BASE_URL``, else the SDK's default (api.openai.com).
        api_key: default the environment variable named by ``api_key_env``; a local server
            (localhost / 127.0.0.1) needs none.  The key is never part of ``identity()`` or
            ``describe()``, so it never reaches the cache or a saved program.
        timeout: seconds per HTTP request; a timeout is a transient error (retried).
        max_concurrency: most requests this object has in flight at once.
        lora: name of a LoRA adapter served next to the base model (vLLM serves adapters by
            name): sent as the request's ``model`` and part of the cache key.
        **kwargs: passed to :class:`LM` (cache, retries, budget, prices, defaults).
    """

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 120.0,
        max_concurrency: int = 8,
        lora: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        import httpx  # lazy: the SDK (with httpx and its pydantic models) is slow to import
        import openai

        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get(api_key_env)
        if not api_key:
            if not _is_local(base_url):
                raise ValueError(
                    f"no API key for {base_url or 'the OpenAI API'}: set ${api_key_env} or pass "
                    'api_key= (a server that needs none accepts any, e.g. api_key="EMPTY")'
                )
            api_key = "not-needed"
        self._openai = openai
        self._raw = httpx.Response
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )
        self.base_url = str(self._client.base_url).rstrip("/")
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.lora = lora
        self._slots = threading.BoundedSemaphore(max_concurrency)

    def identity(self) -> dict[str, Any]:
        return {
            "backend": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "lora": self.lora,
        }

    def describe(self) -> dict[str, Any]:
        """JSON-able settings to save with a program (never the API key)."""
        return {
            "backend": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "lora": self.lora,
        }

    def _body(self, request: LMRequest) -> dict[str, Any]:
        body: dict[str, Any] = {
            "model": self.lora or self.model,
            "messages": list(request.messages),
            "temperature": request.temperature,
            # not max_completion_tokens: llama.cpp's server ignores it and runs to its context end
            "max_tokens": request.max_tokens,
            "n": request.n,
        }
        if request.stop:
            body["stop"] = list(request.stop)
        if request.seed is not None:
            body["seed"] = request.seed
        return body

    def _complete(self, request: LMRequest) -> LMResponse:
        openai = self._openai
        try:
            with self._slots:
                # ``post`` with cast_to=httpx.Response is the SDK's documented way to skip its
                # pydantic parsing, which costs more than the rest of a call to a local server.
                raw = self._client.post(
                    "/chat/completions", body=self._body(request), cast_to=self._raw
                )
                payload = raw.content
        except (openai.APIConnectionError, openai.RateLimitError, openai.InternalServerError) as e:
            raise LMTransientError(f"{type(e).__name__}: {e}") from e
        except openai.APIStatusError as e:
            message = f"HTTP {e.status_code} from {self.base_url}: {e.message}"
            if e.status_code in _TRANSIENT_STATUS or e.status_code >= 500:
                raise LMTransientError(message) from e
            raise LMRequestError(message, status_code=e.status_code) from e
        return self._parse(payload)

    def _parse(self, payload: bytes) -> LMResponse:
        try:
            data = json.loads(payload)
        except ValueError as e:  # a truncated body: the connection broke mid-answer
            raise LMTransientError(f"invalid JSON from {self.base_url}: {payload[:200]!r}") from e
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            error = data.get("error") if isinstance(data, dict) else None
            raise LMRequestError(f"unexpected answer from {self.base_url}: {error or data!r}")
        raw_choices = data["choices"]
        if len(raw_choices) > 1:
            raw_choices = sorted(raw_choices, key=lambda c: c.get("index") or 0)
        choices = tuple(
            Choice(
                text=(c.get("message") or {}).get("content") or "",
                finish_reason=c.get("finish_reason"),
            )
            for c in raw_choices
        )
        usage = data.get("usage") or {}
        return LMResponse(
            choices=choices,
            usage=TokenUsage(
                prompt_tokens=usage.get("prompt_tokens") or 0,
                completion_tokens=usage.get("completion_tokens") or 0,
            ),
            model=data.get("model") or self.model,
        )

    def __repr__(self) -> str:
        lora = f", lora={self.lora!r}" if self.lora else ""
        return f"OpenAILM(model={self.model!r}, base_url={self.base_url!r}{lora})"
