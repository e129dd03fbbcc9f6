"""A fault-injecting HTTP proxy in front of one OpenAI-compatible server.

Each chat completion that reaches it is either forwarded to the upstream server or answered
with a fault, at ``rate`` (drawn from a seeded generator).  Faults cycle through ``kinds`` in
order, so every kind is injected about equally often:

=================  ===========================================================================
``hang``           waits ``hang_s`` seconds (past the client's timeout), then drops the
                   connection without a byte
``429``            HTTP 429 with ``Retry-After: <retry_after>``
``429-bare``       HTTP 429 without ``Retry-After``
``500``, ``503``   HTTP 500 / 503 with an error body
``reset``          drops the connection (TCP RST) without answering
``garbage``        HTTP 200 with a body that is not JSON
``truncated``      HTTP 200 that announces the whole body, sends half of it, and hangs up
``empty-choices``  HTTP 200 with a well-formed completion whose ``choices`` is ``[]``
=================  ===========================================================================

``max_faults`` stops injecting after that many (``rate=1, max_faults=2``: two faults, then
everything is forwarded).  An outage: ``outage_after=N`` answers every request after the first
N forwarded ones with the ``outage_kinds`` faults (cycling) until :meth:`FaultProxy.recover`;
``down()`` starts one now.
``stats()`` counts requests, forwarded ones and faults per kind.

    proxy = FaultProxy(upstream_url, rate=0.1)   # a free port on 127.0.0.1
    proxy.url                                    # http://127.0.0.1:PORT/v1
    proxy.close()

``proxies(upstream, **defaults)`` gives a test ``make(**kwargs)`` of proxies, all closed at its end.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import urlsplit

from local_server import serve_locally, stop_serving

KINDS = ("hang", "429", "429-bare", "500", "503", "reset", "garbage", "truncated",
         "empty-choices")
"""Every fault the proxy can inject."""


class FaultProxy:
    def __init__(
        self,
        upstream: str,
        *,
        rate: float = 0.0,
        kinds: Sequence[str] = KINDS,
        seed: int = 0,
        hang_s: float = 1.0,
        retry_after: str = "1",
        outage_after: int | None = None,
        outage_kinds: Sequence[str] = ("503", "reset"),
        max_faults: int | None = None,
    ) -> None:
        unknown = (set(kinds) | set(outage_kinds)) - set(KINDS)
        if unknown:
            raise ValueError(f"unknown fault kinds {sorted(unknown)}; known: {KINDS}")
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.rate = rate
        self.kinds = list(kinds)
        self.hang_s = hang_s
        self.retry_after = retry_after
        self.outage_after = outage_after
        self.outage_kinds = list(outage_kinds)
        self.max_faults = max_faults
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self._outage = False
        self.requests = 0
        self.forwarded = 0
        self.faults: Counter[str] = Counter()
        self._httpd = serve_locally(self._handler_class())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    # -- control -------------------------------------------------------------------------------

    def down(self) -> None:
        """Start an outage now: every request fails until :meth:`recover`."""
        with self._lock:
            self._outage = True

    def recover(self) -> None:
        with self._lock:
            self._outage = False
            self.outage_after = None

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {"requests": self.requests, "forwarded": self.forwarded,
                    "faults": dict(self.faults)}

    def close(self) -> None:
        stop_serving(self._httpd)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the decision per request --------------------------------------------------------------

    def _fault(self) -> str | None:
        with self._lock:
            self.requests += 1
            if self.outage_after is not None and self.forwarded >= self.outage_after:
                self._outage = True
            injected = sum(self.faults.values())
            if self._outage:
                kind = self.outage_kinds[injected % len(self.outage_kinds)]
            elif (self.rate > 0 and self._rng.random() < self.rate
                  and (self.max_faults is None or injected < self.max_faults)):
                kind = self.kinds[injected % len(self.kinds)]
            else:
                self.forwarded += 1
                return None
            self.faults[kind] += 1
            return kind

    def _forward(self, method: str, path: str, body: bytes | None,
                 headers: dict[str, str]) -> tuple[int, bytes, str]:
        conn = http.client.HTTPConnection(*self.upstream, timeout=30)
        try:
            keep = {k: v for k, v in headers.items()
                    if k.lower() in ("content-type", "authorization")}
            conn.request(method, path, body=body, headers=keep)
            answer = conn.getresponse()
            return answer.status, answer.read(), answer.getheader("Content-Type") or ""
        finally:
            conn.close()

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

            def _send(self, status: int, payload: bytes, *headers: tuple[str, str],
                      close: bool = False) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                for name, value in headers:
                    self.send_header(name, value)
                if close:
                    self.send_header("Connection", "close")
                    self.close_connection = True
                self.end_headers()
                self.wfile.write(payload)

            def _drop(self) -> None:
                """Hang up at once with a TCP reset (linger 0), answering nothing."""
                with contextlib.suppress(OSError):
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                               struct.pack("ii", 1, 0))
                self.close_connection = True

            def do_GET(self) -> None:
                status, payload, _ = proxy._forward("GET", self.path, None, dict(self.headers))
                self._send(status, payload)

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                kind = proxy._fault() if self.path.endswith("/chat/completions") else None
                try:
                    if kind is None:
                        status, payload, _ = proxy._forward("POST", self.path, body,
                                                            dict(self.headers))
                        self._send(status, payload)
                    else:
                        self._inject(kind)
                except OSError:  # the client gave up (its timeout) and left
                    self.close_connection = True

            def _inject(self, kind: str) -> None:
                error = json.dumps({"error": {"message": f"injected fault {kind}",
                                              "type": "fault"}}).encode()
                if kind == "hang":
                    time.sleep(proxy.hang_s)
                    self._drop()
                elif kind == "429":
                    self._send(429, error, ("Retry-After", proxy.retry_after))
                elif kind == "429-bare":
                    self._send(429, error)
                elif kind in ("500", "503"):
                    self._send(int(kind), error)
                elif kind == "reset":
                    self._drop()
                elif kind == "garbage":
                    self._send(200, b"<html>502 Bad Gateway</html>\x00\xff", close=True)
                elif kind == "truncated":
                    whole = json.dumps(_completion("a complete answer")).encode()
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(whole)))
                    self.end_headers()
                    self.wfile.write(whole[: len(whole) // 2])
                    self._drop()
                elif kind == "empty-choices":
                    self._send(200, json.dumps({**_completion(""), "choices": []}).encode())
                else:  # pragma: no cover - checked in __init__
                    raise ValueError(kind)

        return Handler


@contextlib.contextmanager
def proxies(upstream: str, **defaults: Any) -> Iterator[Callable[..., FaultProxy]]:
    """``make(**kwargs)``: a new :class:`FaultProxy` in front of ``upstream`` (``defaults``
    where ``kwargs`` says nothing); every one made is closed when the block ends."""
    made: list[FaultProxy] = []

    def make(**kwargs: Any) -> FaultProxy:
        made.append(FaultProxy(upstream, **{**defaults, **kwargs}))
        return made[-1]

    try:
        yield make
    finally:
        for proxy in made:
            proxy.close()


def _completion(text: str) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fault", "object": "chat.completion", "created": 0, "model": "fault",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
    }
