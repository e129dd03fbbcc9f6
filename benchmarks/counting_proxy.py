"""A counting HTTP proxy in front of one OpenAI-compatible server (llama.cpp's, here).

Every chat completion of a benchmark passes through it, so LM calls and tokens are counted the
same way whichever framework sends them.  It forwards ``POST /v1/chat/completions`` and
``GET /v1/models`` and renames ``max_completion_tokens`` to ``max_tokens`` on the way: DSPy
sends the former, which llama-cpp-python's server ignores (it then generates until its context
is full).

Counts are kept per *phase*.  A request's phase is the label in its path,
``/phase/<label>/v1/chat/completions`` (so each run gets its own base URL), or else the current
default phase, set with ``POST /_phase {"phase": "<label>"}``.  ``GET /_stats`` returns them::

    {"phase": "default", "phases": {"<label>": {"requests": 12, "errors": 0,
                                                "prompt_tokens": 3400, "completion_tokens": 96}}}

    python benchmarks/counting_proxy.py --upstream http://127.0.0.1:8080 --port 8081

or, from Python::

    proxy = CountingProxy("http://127.0.0.1:8080")   # port 0: a free one
    url = proxy.base_url("dspy-mipro")              # http://127.0.0.1:PORT/phase/dspy-mipro/v1
    ...
    proxy.stats()["phases"]["dspy-mipro"]
    proxy.stop()
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import urlsplit

COUNTERS = ("requests", "errors", "prompt_tokens", "completion_tokens")


class _Counts:
    """Per-phase counters behind one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.phase = "default"
        self.phases: dict[str, dict[str, int]] = defaultdict(lambda: dict.fromkeys(COUNTERS, 0))

    def add(self, phase: str, status: int, payload: bytes) -> None:
        usage: dict[str, Any] = {}
        if status == 200:
            with contextlib.suppress(ValueError, AttributeError):
                usage = json.loads(payload).get("usage") or {}
        with self.lock:
            row = self.phases[phase]
            row["requests"] += 1
            row["errors"] += status != 200
            row["prompt_tokens"] += int(usage.get("prompt_tokens") or 0)
            row["completion_tokens"] += int(usage.get("completion_tokens") or 0)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {"phase": self.phase, "phases": {k: dict(v) for k, v in self.phases.items()}}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive with the clients
    server: _ProxyServer

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        pass  # one line per request would drown the benchmark's output

    def _split_phase(self) -> tuple[str | None, str]:
        """``/phase/<label>/v1/...`` -> (label, ``/v1/...``); other paths have no label."""
        path = self.path.split("?", 1)[0]
        if path.startswith("/phase/"):
            label, _, rest = path[len("/phase/"):].partition("/")
            return label, "/" + rest
        return None, path

    def _read_body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reply(self, status: int, body: bytes, content_type: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _reply_json(self, status: int, data: Any) -> None:
        self._reply(status, json.dumps(data).encode())

    def do_GET(self) -> None:  # noqa: N802 - BaseHTTPRequestHandler's naming
        _, path = self._split_phase()
        if path == "/_stats":
            self._reply_json(200, self.server.counts.snapshot())
        elif path.rstrip("/") == "/v1/models":
            self._reply(*self.server.forward("GET", "/v1/models", None))
        else:
            self._reply_json(404, {"error": {"message": f"no route for GET {path}"}})

    def do_POST(self) -> None:  # noqa: N802
        label, path = self._split_phase()
        body = self._read_body()
        counts = self.server.counts
        if path == "/_phase":
            with counts.lock:
                counts.phase = str(json.loads(body or b"{}").get("phase") or "default")
            self._reply_json(200, {"phase": counts.phase})
            return
        if path.rstrip("/") != "/v1/chat/completions":
            self._reply_json(404, {"error": {"message": f"no route for POST {path}"}})
            return
        with counts.lock:
            phase = label or counts.phase
        status, payload, content_type = self.server.forward("POST", path, rename_max_tokens(body))
        counts.add(phase, status, payload)
        self._reply(status, payload, content_type)


def rename_max_tokens(body: bytes) -> bytes:
    """``max_completion_tokens`` -> ``max_tokens`` (unless the request already has one)."""
    try:
        request = json.loads(body)
    except ValueError:
        return body  # not JSON: the server will say so
    if isinstance(request, dict) and "max_completion_tokens" in request:
        value = request.pop("max_completion_tokens")
        request.setdefault("max_tokens", value)
        return json.dumps(request).encode()
    return body


class _ProxyServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], upstream: str, timeout: float) -> None:
        super().__init__(address, _Handler)
        parts = urlsplit(upstream)
        self.upstream = (parts.hostname or "127.0.0.1", parts.port or 80)
        self.timeout_s = timeout
        self.counts = _Counts()

    def forward(self, method: str, path: str, body: bytes | None) -> tuple[int, bytes, str]:
        """One request to the upstream server: (status, body, content type)."""
        conn = http.client.HTTPConnection(*self.upstream, timeout=self.timeout_s)
        try:
            headers = {"Content-Type": "application/json"} if body is not None else {}
            conn.request(method, path, body, headers)
            answer = conn.getresponse()
            payload = answer.read()
            return answer.status, payload, answer.getheader("Content-Type", "application/json")
        except OSError as exc:
            error = {"error": {"message": f"upstream {self.upstream}: {exc}"}}
            return 502, json.dumps(error).encode(), "application/json"
        finally:
            conn.close()


class CountingProxy:
    """The proxy, serving from a background thread until :meth:`stop`."""

    def __init__(
        self, upstream: str, *, host: str = "127.0.0.1", port: int = 0, timeout: float = 900.0
    ) -> None:
        self._server = _ProxyServer((host, port), upstream, timeout)
        self.host, self.port = self._server.server_address[:2]
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="counting-proxy", daemon=True
        )
        self._thread.start()

    def base_url(self, phase: str | None = None) -> str:
        """The OpenAI base URL (ending in ``/v1``) whose calls count under ``phase``."""
        prefix = f"/phase/{phase}" if phase else ""
        return f"http://{self.host}:{self.port}{prefix}/v1"

    def stats(self, phase: str | None = None) -> dict[str, Any]:
        """All counts, or one phase's counters (zeros if it saw no request)."""
        snapshot = self._server.counts.snapshot()
        if phase is None:
            return snapshot
        return snapshot["phases"].get(phase, dict.fromkeys(COUNTERS, 0))

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--upstream", required=True, help="the server, e.g. http://127.0.0.1:8080")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8081)
    args = parser.parse_args()
    server = _ProxyServer((args.host, args.port), args.upstream, timeout=900.0)
    with contextlib.suppress(KeyboardInterrupt):
        server.serve_forever()


if __name__ == "__main__":
    main()
