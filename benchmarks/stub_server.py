"""A minimal, fast OpenAI-compatible chat-completions server that answers instantly.

It measures cotune's own per-call overhead (no model in the way).  HTTP/1.1 with keep-alive is
parsed by hand on asyncio sockets: the stdlib ``http.server`` costs several times more per
request, and the stub must stay far faster than the client it measures.

    python benchmarks/stub_server.py --port 8123 --answer "Answer: 42"

or, from Python::

    url, stop = start_stub_server("Answer: 42")   # url ends in /v1
    ...
    stop()
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import threading
from collections.abc import Callable

_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}


def _completion(answer: str, request: dict) -> dict:
    n = int(request.get("n") or 1)
    prompt_words = sum(len(str(m.get("content", "")).split()) for m in request.get("messages", []))
    completion_words = len(answer.split())
    return {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": request.get("model", "stub"),
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": answer},
                "finish_reason": "stop",
            }
            for i in range(n)
        ],
        "usage": {
            "prompt_tokens": prompt_words,
            "completion_tokens": completion_words * n,
            "total_tokens": prompt_words + completion_words * n,
        },
    }


def _response(status: int, body: bytes, keep_alive: bool) -> bytes:
    head = (
        f"HTTP/1.1 {status} {_REASONS.get(status, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n"
        f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n"
    )
    return head.encode("latin-1") + body


class _StubProtocol(asyncio.Protocol):
    def __init__(self, answer: str, open_transports: set[asyncio.BaseTransport]) -> None:
        self.answer = answer
        self.open_transports = open_transports
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = self.connection = transport  # type: ignore[assignment]
        self.open_transports.add(transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while self.transport is not None:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].decode("latin-1").split("\r\n")
            length = 0
            keep_alive = not head[0].endswith("HTTP/1.0")
            for line in head[1:]:
                name, _, value = line.partition(":")
                name = name.strip().lower()
                if name == "content-length":
                    length = int(value)
                elif name == "connection":
                    keep_alive = value.strip().lower() != "close"
            if len(self.buffer) < end + 4 + length:
                return
            body = self.buffer[end + 4 : end + 4 + length]
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(self._handle(head[0], body, keep_alive))
            if not keep_alive:
                self.transport.close()
                self.transport = None

    def _handle(self, request_line: str, body: bytes, keep_alive: bool) -> bytes:
        method, _, rest = request_line.partition(" ")
        path = rest.rpartition(" ")[0].split("?")[0].rstrip("/")
        if method == "GET" and path.endswith("/models"):
            data = {"object": "list", "data": [{"id": "stub", "object": "model", "owned_by": ""}]}
            return _response(200, json.dumps(data).encode(), keep_alive)
        if method != "POST" or not path.endswith("/chat/completions"):
            error = {"error": {"message": f"no route for {method} {path}", "code": 404}}
            return _response(404, json.dumps(error).encode(), keep_alive)
        try:
            request = json.loads(body)
        except ValueError:
            error = {"error": {"message": "body is not JSON", "code": 400}}
            return _response(400, json.dumps(error).encode(), keep_alive)
        payload = json.dumps(_completion(self.answer, request)).encode()
        return _response(200, payload, keep_alive)

    def connection_lost(self, exc: Exception | None) -> None:
        self.open_transports.discard(self.connection)
        self.transport = None


async def _serve(
    answer: str, host: str, port: int, open_transports: set[asyncio.BaseTransport]
) -> asyncio.AbstractServer:
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: _StubProtocol(answer, open_transports), host, port)


def start_stub_server(
    answer: str = "ok", *, host: str = "127.0.0.1", port: int = 0
) -> tuple[str, Callable[[], None]]:
    """Serve in a background thread; return the base URL (ending in ``/v1``) and a stop function.

    ``port=0`` picks a free port.
    """
    loop = asyncio.new_event_loop()
    open_transports: set[asyncio.BaseTransport] = set()
    server = loop.run_until_complete(_serve(answer, host, port, open_transports))
    bound_port = server.sockets[0].getsockname()[1]
    thread = threading.Thread(target=loop.run_forever, name="stub-server", daemon=True)
    thread.start()

    def stop() -> None:
        async def shutdown() -> None:
            server.close()
            for transport in list(open_transports):  # keep-alive clients would hold it open
                transport.close()
            await server.wait_closed()

        if loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(shutdown(), loop).result(timeout=5)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=5)
        loop.close()

    return f"http://{host}:{bound_port}/v1", stop


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8123)
    parser.add_argument("--answer", default="ok", help="the text of every completion")
    args = parser.parse_args()

    async def run() -> None:
        server = await _serve(args.answer, args.host, args.port, set())
        async with server:
            await server.serve_forever()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
