"""Any OpenAI-compatible endpoint (OpenAI, vLLM, SGLang, Ollama, llama.cpp server) via the
official ``openai`` SDK.

The SDK is imported on first construction, so ``import cotune`` stays fast.  Retries belong to
:class:`~cotune.lm.base.LM` (the SDK's own are switched off); failures are mapped onto
:class:`LMTransientError` (worth retrying) and :class:`LMRequestError` (not).

Two transports send the requests, both through well-kept HTTP libraries:

* ``"sdk"``: ``client.post`` of the SDK (its documented way to skip response parsing), over the
  SDK's httpx.  Used for https endpoints and wherever a proxy applies: proxies, TLS and the
  SDK's auth flows just work.
* ``"http"``: the URL and headers the SDK resolved (auth included), sent through a urllib3
  connection pool of the LM's own (keep-alive, thread-safe, ``max_concurrency`` connections).
  Per call the SDK costs ~1.5 ms of CPU (request options, header merging, its httpx) and urllib3
  ~0.15 ms (httpx alone ~0.3 ms): nothing next to a hosted model's latency, but on a local
  server (vLLM, llama.cpp, a stub) the SDK caps a thread at a few hundred calls/s.  ``"auto"``
  (the default) picks it for plain-http endpoints that no proxy applies to.

Both send a base URL's ``user:password`` as HTTP Basic auth in place of the API key (what the
SDK's httpx does with a URL's credentials).
"""

from __future__ import annotations

import base64
import email.utils
import functools
import json
import logging
import os
import re
import threading
import time
import urllib.request
from collections.abc import Mapping
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from cotune.lm.base import LM
from cotune.lm.description import OpenAIDescription
from cotune.lm.redact import register_secret
from cotune.lm.types import (
    Choice,
    ContentRefused,
    ContextOverflow,
    LMInvalidResponse,
    LMRequest,
    LMRequestError,
    LMResponse,
    LMTransientError,
    TokenUsage,
)

Transport = Literal["auto", "sdk", "http"]
CHECK_RETRIES = 2
"""Retries of the preflight request (:meth:`OpenAILM.check`)."""

StructuredMode = Literal["json_schema", "json_object", "none"]

logger = logging.getLogger(__name__)

_STRUCTURED_MODES: tuple[StructuredMode, ...] = ("json_schema", "json_object", "none")
"""How a request's output schema is sent, best first: OpenAI's ``json_schema`` (OpenAI, vLLM,
SGLang, llama.cpp's llama-server), ``json_object`` with a ``schema`` (llama-cpp-python's
server), or not at all (free text)."""
_endpoint_modes: dict[str, StructuredMode] = {}
"""Per endpoint, the best mode it accepted; endpoints not in it get the first."""
_endpoint_lock = threading.Lock()
_FORMAT_REFUSAL_STATUS = {400, 422, 501}
"""Statuses with which a server refuses a ``response_format`` it does not support."""
_LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1", "0.0.0.0"}
_TRANSIENT_STATUS = {408, 409, 429}
"""Besides 5xx: request timeout, conflict (lock contention) and rate limit, as the SDK retries."""
_CONTEXT_STATUS = {400, 413, 422}
_CONTEXT_OVERFLOW = re.compile(
    r"context.{0,20}(length|window|size)|exceed.{0,40}context|context_length_exceeded|"
    r"too many tokens|prompt is too long|maximum context",
    re.IGNORECASE,
)
"""How OpenAI, vLLM, SGLang, llama.cpp's server and llama-cpp-python's say that a prompt does
not fit the model's context: a failure of that request, not of the endpoint."""
_REFUSAL_STATUS = {400, 403, 422}
_CONTENT_REFUSED = re.compile(
    r"content[_ ]?(filter|management|policy)|responsible ?ai|safety (system|policy)",
    re.IGNORECASE,
)
"""How hosted endpoints (Azure OpenAI's content filter, others' safety policies) refuse a
prompt's content: a failure of that request, not of the endpoint."""


def _is_local(base_url: str | None) -> bool:
    if not base_url:
        return False
    host = urlsplit(base_url).hostname or ""
    return host in _LOCAL_HOSTS or host.endswith(".localhost")


def _proxy_applies(url: str) -> bool:
    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(parts.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(parts.netloc)


class OpenAILM(LM):
    """An LM served behind an OpenAI-compatible chat-completions endpoint.

    Args:
        model: the model name on the server.
        base_url: default ``$OPENAI_BASE_URL``, else the SDK's default (api.openai.com).
        api_key: default the environment variable named by ``api_key_env``; a local server
            (localhost / 127.0.0.1) needs none.  The key is never part of ``identity()`` or
            ``describe()``, so it never reaches the cache or a saved program.
        timeout: seconds per HTTP request (connecting, and waiting for the answer); a timeout
            is a transient error (retried).
        max_concurrency: most requests this object has in flight at once.
        lora: name of a LoRA adapter served next to the base model (vLLM serves adapters by
            name): sent as the request's ``model`` and part of the cache key.
        transport: ``"auto"``, ``"sdk"`` or ``"http"`` (see the module docstring).
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
        transport: Transport = "auto",
        **kwargs: Any,
    ) -> None:
        super().__init__(model, **kwargs)
        import openai  # lazy: the SDK with httpx and its pydantic models is slow to import

        if max_concurrency < 1:
            raise ValueError("max_concurrency must be >= 1")
        if transport not in ("auto", "sdk", "http"):
            raise ValueError(f"transport must be 'auto', 'sdk' or 'http', not {transport!r}")
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        api_key = api_key or os.environ.get(api_key_env)
        register_secret(api_key)  # never written anywhere (cotune.lm.redact)
        if not api_key:
            if not _is_local(base_url):
                raise ValueError(
                    f"no API key for {base_url or 'the OpenAI API'}: set ${api_key_env} or pass "
                    'api_key= (a server that needs none accepts any, e.g. api_key="EMPTY")'
                )
            api_key = "not-needed"
        self._openai = openai
        self._client = openai.OpenAI(
            api_key=api_key, base_url=base_url, timeout=timeout, max_retries=0
        )
        self.base_url = str(self._client.base_url).rstrip("/")
        self.timeout = timeout
        self.max_concurrency = max_concurrency
        self.lora = lora
        self._slots = threading.BoundedSemaphore(max_concurrency)
        plain = urlsplit(self.base_url).scheme == "http"
        if transport == "auto":
            transport = "http" if plain and not _proxy_applies(self.base_url) else "sdk"
        elif transport == "http" and not plain:
            raise ValueError(f"transport='http' needs an http:// base URL, not {self.base_url}")
        self.transport: Transport = transport
        self._http: _PooledHTTP | None = None
        if transport == "http":
            self._http = _PooledHTTP(self._client, self.base_url, timeout, max_concurrency)

    def identity(self) -> dict[str, Any]:
        return self.describe()

    def describe(self) -> OpenAIDescription:
        """The model, endpoint and adapter name (never the API key)."""
        return {
            "backend": "openai",
            "model": self.model,
            "base_url": self.base_url,
            "lora": self.lora,
        }

    @classmethod
    def from_description(cls, description: OpenAIDescription, **options: Any) -> OpenAILM:
        """The LM a :meth:`describe` recorded; ``options`` go to the constructor (the API
        key comes from the environment, as when the LM was first built)."""
        return cls(description["model"], base_url=description.get("base_url"),
                   lora=description.get("lora"), **options)

    @property
    def default_adapter(self) -> str:  # type: ignore[override]
        """Structured JSON, unless this endpoint refused every structured-output format."""
        return "chat" if self.structured_mode == "none" else "json"

    @property
    def structured_mode(self) -> StructuredMode:
        """How this endpoint gets a request's output schema (see ``_STRUCTURED_MODES``)."""
        with _endpoint_lock:
            return _endpoint_modes.get(self.base_url, _STRUCTURED_MODES[0])

    def _body(self, request: LMRequest, mode: StructuredMode = "none") -> dict[str, Any]:
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
        if request.seed is not None or request.temperature > 0:  # sampled: reproducibly
            body["seed"] = request.sampling_seed()
        if request.response_schema is not None and mode == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "answer", "schema": request.schema, "strict": True}}
        elif request.response_schema is not None and mode == "json_object":
            body["response_format"] = {"type": "json_object", "schema": request.schema}
        return body

    def _complete(self, request: LMRequest) -> LMResponse:
        if request.response_schema is None:
            return self._send(self._body(request))
        start = self.structured_mode
        for mode in _STRUCTURED_MODES[_STRUCTURED_MODES.index(start):]:
            try:
                response = self._send(self._body(request, mode))
            except (LMRequestError, LMTransientError) as e:
                if mode == "none" or not _refuses_format(e):
                    raise  # also refused without response_format: not about the format
                logger.debug("%s refused response_format %s: %s", self.base_url, mode, e)
                continue
            if mode != start:
                self._remember(mode, start)
            return response
        raise AssertionError("unreachable: the last mode raises or returns")

    def _remember(self, mode: StructuredMode, refused: StructuredMode) -> None:
        with _endpoint_lock:
            if _STRUCTURED_MODES.index(_endpoint_modes.get(self.base_url, refused)) >= \
                    _STRUCTURED_MODES.index(mode):
                return  # another thread got there first
            _endpoint_modes[self.base_url] = mode
        if mode == "none":
            logger.warning("%s accepts no response_format (structured output): requests to it "
                           "go without one and predictors use the free-text format", self.base_url)
        else:
            logger.warning("%s refused response_format type %r; using %r from now on",
                           self.base_url, refused, mode)

    def _send(self, body: dict[str, Any]) -> LMResponse:
        with self._slots:
            if self._http is not None:
                status, payload, headers = self._http.post(body)
                if status >= 400:
                    raise _status_error(status, _error_message(payload), self.base_url,
                                        retry_after(headers))
            else:
                payload = self._post_with_sdk(body)
        return self._parse(payload)

    def check(self) -> None:
        """One tiny request past the cache (one token of answer), so that a wrong URL, an
        unknown model or a dead endpoint is an error now rather than after a first phase.
        At most :data:`CHECK_RETRIES` retries: a refused connection fails in about a second."""
        self.complete(
            LMRequest(messages=({"role": "user", "content": "Say OK."},), max_tokens=1),
            cache=False, max_retries=min(self.max_retries, CHECK_RETRIES),
        )

    def is_up(self, timeout: float = 2.0) -> bool:
        """Whether ``GET <base_url>/models`` answers 200 within ``timeout`` seconds, asked as
        the chat requests are (same transport, same auth): a health probe, not a check of
        the model (see :meth:`check`)."""
        if self._http is not None:
            return self._http.get_status("/models", timeout) == 200
        try:
            self._client.get("/models", cast_to=str, options={"timeout": timeout})
        except self._openai.OpenAIError:
            return False
        return True

    def _post_with_sdk(self, body: dict[str, Any]) -> str:
        openai = self._openai
        try:
            # cast_to=str: the SDK returns the body as it came, without its pydantic parsing
            return self._client.post("/chat/completions", body=body, cast_to=str)
        except openai.APIConnectionError as e:  # timeouts included
            raise LMTransientError(f"{type(e).__name__} from {self.base_url}: {e}") from e
        except openai.APIStatusError as e:
            raise _status_error(e.status_code, e.message, self.base_url,
                                retry_after(e.response.headers)) from e

    def _parse(self, payload: bytes | str) -> LMResponse:
        """The completion in a 200 answer; :class:`LMInvalidResponse` for anything that is not
        a usable one (a truncated or garbled body, no choices, a choice without text)."""
        try:
            data = json.loads(payload)
        except ValueError as e:  # a truncated body: the connection broke mid-answer
            raise LMInvalidResponse(
                f"invalid JSON from {self.base_url}: {payload[:200]!r}") from e
        if not isinstance(data, dict) or not isinstance(data.get("choices"), list):
            error = data.get("error") if isinstance(data, dict) else None
            raise LMInvalidResponse(
                f"not a chat completion from {self.base_url}: {error or data!r:.500}")
        raw_choices = data["choices"]
        if not raw_choices:
            raise LMInvalidResponse(f"a completion without choices from {self.base_url}")
        try:
            if len(raw_choices) > 1:
                raw_choices = sorted(raw_choices, key=lambda c: c.get("index") or 0)
            choices = tuple(self._choice(c) for c in raw_choices)
            usage = data.get("usage") or {}
            return LMResponse(
                choices=choices,
                usage=TokenUsage(
                    prompt_tokens=int(usage.get("prompt_tokens") or 0),
                    completion_tokens=int(usage.get("completion_tokens") or 0),
                ),
                model=str(data.get("model") or self.model),
            )
        except (AttributeError, TypeError, ValueError) as e:  # e.g. a choice that is no object
            raise LMInvalidResponse(
                f"not a chat completion from {self.base_url}: {data!r:.500}") from e

    def _choice(self, raw: Mapping[str, Any]) -> Choice:
        """One choice.  Its text must be there: a string, or null only where the model gave
        none of its own accord (it ran out of tokens, or refused)."""
        message = raw["message"] if isinstance(raw.get("message"), dict) else None
        if message is None:
            raise LMInvalidResponse(f"a choice without a message from {self.base_url}: "
                                    f"{raw!r:.300}")
        content, finish = message.get("content"), raw.get("finish_reason")
        if content is None and (finish == "length" or message.get("refusal")):
            content = ""
        if not isinstance(content, str):
            raise LMInvalidResponse(f"a choice without text from {self.base_url}: "
                                    f"{raw!r:.300}")
        return Choice(text=content, finish_reason=finish)

    def __repr__(self) -> str:
        lora = f", lora={self.lora!r}" if self.lora else ""
        return f"OpenAILM(model={self.model!r}, base_url={self.base_url!r}{lora})"


def _refuses_format(e: LMRequestError | LMTransientError) -> bool:
    """A 400/422 to a request with ``response_format`` (or any error naming it: llama-cpp-python's
    server answers 500 to a form it does not know) is a refusal of the format."""
    if isinstance(e, ContextOverflow):
        return False
    if "response_format" in str(e):
        return True
    return isinstance(e, LMRequestError) and e.status_code in _FORMAT_REFUSAL_STATUS


def _status_error(
    status: int, message: str, base_url: str, wait: float | None = None
) -> LMTransientError | LMRequestError:
    text = f"HTTP {status} from {base_url}: {message}"
    if status == 501:  # "not implemented": asking again cannot help
        return LMRequestError(text, status_code=status)
    if status in _TRANSIENT_STATUS or status >= 500:
        return LMTransientError(text, retry_after=wait)
    if status in _CONTEXT_STATUS and _CONTEXT_OVERFLOW.search(message):
        return ContextOverflow(text, status_code=status)
    if status in _REFUSAL_STATUS and _CONTENT_REFUSED.search(message):
        return ContentRefused(text, status_code=status)
    return LMRequestError(text, status_code=status)


def retry_after(headers: Mapping[str, Any] | None) -> float | None:
    """Seconds to wait that the answer's headers ask for: ``retry-after-ms``, or
    ``Retry-After`` as seconds or as an HTTP date; None when they do not say (or say nonsense).
    """
    if not headers:
        return None
    lowered = {_text(k).lower(): v for k, v in headers.items()}
    value = lowered.get("retry-after-ms")
    if value is not None:
        try:
            return max(0.0, float(_text(value)) / 1000)
        except ValueError:
            pass
    value = lowered.get("retry-after")
    if value is None:
        return None
    text = _text(value).strip()
    try:
        seconds = float(text)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(text)
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - time.time()
    return max(0.0, seconds) if seconds == seconds else None  # NaN says nothing


def _text(value: Any) -> str:
    return value.decode("latin-1") if isinstance(value, bytes) else str(value)


def _error_message(payload: bytes) -> str:
    """The server's own words from an error body (OpenAI, vLLM and FastAPI shapes)."""
    try:
        data = json.loads(payload)
    except ValueError:
        return payload[:500].decode("utf-8", "replace")
    if isinstance(data, dict):
        error = data.get("error", data.get("detail", data.get("message")))
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])
        if error is not None:
            return str(error)
    return str(data)[:500]


class _PooledHTTP:
    """POSTs to ``<base_url>/chat/completions`` with the headers the SDK would send (auth
    included), over urllib3's thread-safe pool of keep-alive connections: one pool per LM,
    as many connections as the LM lets requests be in flight (``max_concurrency``).

    urllib3 reads every framing (Content-Length, chunked, to the close), skips interim 1xx
    answers, and replaces a pooled connection that the server closed while it was idle.
    """

    def __init__(self, client: Any, base_url: str, timeout: float, connections: int) -> None:
        parts = urlsplit(base_url)
        self.base_url = base_url
        self.path = parts.path.rstrip("/") + "/chat/completions"
        self.headers = _request_headers(client, base_url)
        self._address = (parts.hostname or "127.0.0.1", parts.port or 80)
        self._timeout = timeout
        self._connections = connections
        self._lock = threading.Lock()
        self._pid = -1
        self._pool: Any = None

    def _current_pool(self) -> Any:
        """The pool of this process: a forked child must not share the parent's sockets."""
        if self._pid != os.getpid():
            import urllib3  # lazy, as the SDK: ``import cotune`` stays fast

            with self._lock:
                if self._pid != os.getpid():
                    timeout = urllib3.Timeout(connect=self._timeout, read=self._timeout)
                    self._pool = urllib3.HTTPConnectionPool(
                        *self._address, maxsize=self._connections, block=False,
                        retries=False, timeout=timeout,
                    )  # fmt: skip
                    self._pool.ConnectionCls = _one_write_connection()
                    self._pid = os.getpid()
        return self._pool

    def post(self, body: dict[str, Any]) -> tuple[int, bytes, Mapping[str, str]]:
        """The answer's status, body and headers; :class:`LMTransientError` when there is no
        complete answer (refused, timed out, reset, truncated, not HTTP)."""
        import urllib3

        data = json.dumps(body).encode()
        for resend in (False, True):
            _last_send.reused = False
            try:
                answer = self._current_pool().urlopen(
                    "POST", self.path, body=data, headers=self.headers, redirect=False,
                )  # fmt: skip
            except (urllib3.exceptions.HTTPError, OSError, ValueError) as e:
                if not resend and _last_send.reused and _closed_before_answering(e):
                    # a kept-alive connection the server closed just before this request
                    # (urllib3's check before reuse can lose that race): once more, on a
                    # fresh connection, as browsers and the old client do
                    continue
                # urllib3's NewConnectionError is a ConnectTimeoutError: a refusal is no timeout
                refused = isinstance(e, urllib3.exceptions.NewConnectionError)
                timeout = isinstance(e, (urllib3.exceptions.TimeoutError, TimeoutError))
                kind = "no connection" if refused else "timeout" if timeout else type(e).__name__
                raise LMTransientError(f"{kind} talking to {self.base_url}: {e}") from e
            return answer.status, answer.data, answer.headers
        raise AssertionError("unreachable")

    def get_status(self, path: str, timeout: float) -> int | None:
        """The status of ``GET <base_url><path>``; None when there is no answer."""
        import urllib3

        base = urlsplit(self.base_url).path.rstrip("/")
        try:
            answer = self._current_pool().urlopen(
                "GET", base + path, headers=self.headers, redirect=False,
                timeout=urllib3.Timeout(connect=timeout, read=timeout),
            )  # fmt: skip
        except (urllib3.exceptions.HTTPError, OSError, ValueError):
            return None
        return answer.status


_last_send = threading.local()
"""``reused``: whether this thread's last request went out on a kept-alive connection."""


def _closed_before_answering(error: BaseException | None) -> bool:
    """The server closed (or reset) the connection without a byte of answer: what a request
    sent on a kept-alive connection that the server had just closed meets."""
    import http.client

    seen: set[int] = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, (http.client.RemoteDisconnected, BrokenPipeError,
                              ConnectionResetError)):
            return True
        seen.add(id(error))
        inner = [a for a in error.args if isinstance(a, BaseException)]  # urllib3 wraps so
        error = inner[0] if inner else (error.__cause__ or error.__context__)
    return False


@functools.cache
def _one_write_connection() -> type:
    """urllib3's connection, sending a request's head and its body in one write.

    ``http.client`` (under urllib3) writes them apart: two TCP segments, and a server woken
    twice per request, which on a busy machine costs more than all of cotune's own work per
    call.  This class holds the head back until the body comes, and sends the two together.
    """
    import urllib3

    class OneWriteHTTPConnection(urllib3.connection.HTTPConnection):
        _hold = False
        _head: bytes | None = None
        _requests = 0  # sent since this connection (re)connected

        def connect(self) -> None:
            self._requests = 0
            super().connect()

        def request(self, method: str, url: str, body: Any = None, headers: Any = None,
                    **kwargs: Any) -> None:
            _last_send.reused = self._requests > 0 and self.sock is not None
            self._hold = isinstance(body, bytes) and len(body) > 0  # a body follows the head
            try:
                super().request(method, url, body=body, headers=headers, **kwargs)
            finally:
                self._hold, head, self._head = False, self._head, None
                self._requests += 1  # counted after: a connect inside request() resets it
            if head is not None:  # no body came after all
                super().send(head)

        def send(self, data: Any) -> None:
            if self._hold:  # the head: wait for the body
                self._hold, self._head = False, bytes(data)
                return
            if self._head is not None:
                data, self._head = self._head + bytes(data), None
            super().send(data)

    return OneWriteHTTPConnection


def _request_headers(client: Any, base_url: str) -> dict[str, str]:
    """The headers the SDK sends (its defaults and auth), less the ones it omits and its own
    telemetry (``X-Stainless-*``: the SDK's version, OS and retry count, which describe
    requests the SDK sends, and cost a few percent of a call here); and, as the SDK's httpx
    does, a URL's ``user:password`` as HTTP Basic auth in place of the key."""
    headers = {
        name: value
        for name, value in {**client.default_headers, **client.auth_headers}.items()
        if isinstance(value, str)  # the SDK's Omit marks a header it leaves out
        and not name.lower().startswith("x-stainless-")
    }
    parts = urlsplit(base_url)
    if parts.username is not None or parts.password is not None:
        userinfo = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        headers["Authorization"] = "Basic " + base64.b64encode(userinfo.encode()).decode()
    return headers
