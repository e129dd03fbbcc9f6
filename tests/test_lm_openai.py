"""OpenAILM against a scripted local HTTP server (retries, error mapping, request body), and
against the real llama.cpp server with SmolLM2 (``real_model``)."""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler

import pytest
from conftest import free_port
from local_server import serve_locally, stop_serving

from cotune.lm import (
    EndpointPool,
    LMCache,
    LMInvalidResponse,
    LMRequestError,
    LMTransientError,
    OpenAILM,
    track_usage,
)

MESSAGES = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(params=["http", "sdk"])
def transport(request) -> str:
    return request.param


@pytest.fixture
def make_lm(fake_openai_server, transport):
    """OpenAILM for the fake server, over each transport, with fast retries and no cache."""

    def make(server=None, **kwargs) -> OpenAILM:
        return _make_lm(server or fake_openai_server, transport=transport, **kwargs)

    return make


def _make_lm(server, **kwargs) -> OpenAILM:
    options = {
        "cache": None,
        "max_retries": 3,
        "retry_initial_delay": 0.01,
        "retry_max_delay": 0.05,
        "timeout": 10.0,
        "base_url": server.url,
    }
    options.update(kwargs)
    return OpenAILM("test-model", **options)


def test_import_cotune_does_not_import_openai():
    code = "import sys, cotune, cotune.lm; assert 'openai' not in sys.modules, 'eager import'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_auto_transport_picks_the_pooled_http_for_plain_http(fake_openai_server):
    assert _make_lm(fake_openai_server).transport == "http"
    assert _make_lm(fake_openai_server, transport="sdk").transport == "sdk"
    remote = OpenAILM("m", base_url="https://example.invalid/v1", api_key="k", cache=None)
    assert remote.transport == "sdk"
    with pytest.raises(ValueError, match="http://"):
        OpenAILM("m", base_url="https://example.invalid/v1", api_key="k", transport="http")


def test_auto_transport_leaves_proxied_endpoints_to_the_sdk(fake_openai_server, monkeypatch):
    monkeypatch.setenv("http_proxy", "http://proxy.invalid:3128")
    monkeypatch.setenv("no_proxy", "")
    assert _make_lm(fake_openai_server).transport == "sdk"
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert _make_lm(fake_openai_server).transport == "http"


def test_answer_is_parsed(fake_openai_server, make_lm):
    fake_openai_server.answer = "hello there"
    response = make_lm().chat(MESSAGES, n=2)
    assert [c.text for c in response.choices] == ["hello there", "hello there"]
    assert response.finish_reason == "stop"
    assert response.usage.prompt_tokens == 7
    assert response.usage.completion_tokens == 6
    assert response.model == "test-model"
    assert not response.cached


def test_null_content_is_an_invalid_answer_retried_then_raised(fake_openai_server, make_lm):
    fake_openai_server.answer = None  # content null, finish_reason "stop": no text at all
    with pytest.raises(LMInvalidResponse, match="without text"):
        make_lm(max_retries=2).chat(MESSAGES)
    assert fake_openai_server.attempts == 3


def test_request_body(fake_openai_server, make_lm):
    lm = make_lm(temperature=0.7)
    lm.chat(MESSAGES, max_tokens=17, stop=["\n\n", "END"], seed=123, n=3)
    body = fake_openai_server.requests[-1]
    assert body["max_tokens"] == 17
    assert "max_completion_tokens" not in body
    assert body["seed"] == 123
    assert body["stop"] == ["\n\n", "END"]
    assert body["n"] == 3
    assert body["temperature"] == 0.7
    assert body["model"] == "test-model"
    assert body["messages"] == MESSAGES


def test_empty_stop_and_no_seed_are_left_out(fake_openai_server, make_lm):
    make_lm().chat(MESSAGES)
    body = fake_openai_server.requests[-1]
    assert "stop" not in body
    assert "seed" not in body


def test_a_sampled_request_sends_a_seed_derived_from_itself(fake_openai_server, make_lm):
    lm = make_lm()
    for rollout in (1, 1, 2):
        lm.chat(MESSAGES, temperature=1.0, rollout_id=rollout, cache=False)
    seeds = [body["seed"] for body in fake_openai_server.requests[-3:]]
    assert seeds[0] == seeds[1] != seeds[2]  # the same request, the same seed, on any run
    assert all(isinstance(s, int) and 0 <= s < 2**31 for s in seeds)


def test_lora_adapter_is_the_request_model(fake_openai_server, make_lm):
    lm = make_lm(lora="my-adapter")
    lm.chat(MESSAGES)
    assert fake_openai_server.requests[-1]["model"] == "my-adapter"
    assert lm.identity()["lora"] == "my-adapter"
    assert lm.identity() != make_lm().identity()


def test_api_key_is_sent_but_never_described(fake_openai_server, make_lm, monkeypatch):
    secret = "sk-test-very-secret-123"
    monkeypatch.setenv("MY_KEY", secret)
    for lm in (
        make_lm(api_key=secret),
        make_lm(api_key_env="MY_KEY"),
    ):
        lm.chat(MESSAGES)
        assert fake_openai_server.headers[-1]["authorization"] == f"Bearer {secret}"
        for shown in (json.dumps(lm.identity()), json.dumps(lm.describe()), repr(lm)):
            assert secret not in shown
        assert lm.describe() == {
            "backend": "openai",
            "model": "test-model",
            "base_url": fake_openai_server.url,
            "lora": None,
        }


def test_url_credentials_are_sent_as_basic_auth_by_both_transports(fake_openai_server,
                                                                    make_lm):
    url = fake_openai_server.url.replace("http://", "http://al%40ice:p%3Aw@")
    lm = make_lm(api_key="sk-test-very-secret-123", base_url=url)
    assert lm.chat(MESSAGES).text == "ok"
    sent = fake_openai_server.headers[-1]
    assert sent["authorization"] == "Basic " + base64.b64encode(b"al@ice:p:w").decode()
    assert sent["host"] == fake_openai_server.url.split("/")[2]  # no credentials in the Host


class _AuthServer:
    """Answers ``GET /v1/models`` with 200 to the one ``Authorization`` it expects, else 401."""

    def __init__(self, authorization: str) -> None:
        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                ok = self.path == "/v1/models" and \
                    self.headers.get("Authorization") == authorization
                self.send_response(200 if ok else 401)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"{}")

        self._httpd = serve_locally(Handler)
        self.port = self._httpd.server_address[1]

    def close(self) -> None:
        stop_serving(self._httpd)


def test_the_health_probe_asks_as_the_requests_do(transport):
    server = _AuthServer("Basic " + base64.b64encode(b"al:pw").decode())
    try:
        url = f"http://al:pw@127.0.0.1:{server.port}/v1"
        assert OpenAILM("m", base_url=url, cache=None, transport=transport).is_up()
        assert EndpointPool("m", [url], cache=None, transport=transport).probe(url)
        wrong = f"http://127.0.0.1:{server.port}/v1"  # the key is sent, not the credentials
        assert not OpenAILM("m", base_url=wrong, api_key="some-key-1234", cache=None,
                            transport=transport).is_up()
    finally:
        server.close()
    dead = f"http://127.0.0.1:{free_port()}/v1"
    assert not OpenAILM("m", base_url=dead, cache=None, transport=transport).is_up(timeout=1)


def test_local_server_needs_no_key(fake_openai_server, make_lm, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert make_lm().chat(MESSAGES).text == "ok"


def test_remote_server_without_key_is_refused(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAILM("m", base_url="https://example.invalid/v1", cache=None)


def test_base_url_from_environment(fake_openai_server, monkeypatch, transport):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai_server.url)
    lm = OpenAILM("test-model", cache=None, transport=transport)
    assert lm.base_url == fake_openai_server.url
    assert lm.chat(MESSAGES).text == "ok"


STALL = 2.0
"""A stall (seconds) far past the client timeout that the stall tests set."""


def _timeout_for(failure: int | float) -> float:
    return 0.5 if isinstance(failure, float) else 10.0  # short only where a stall must time out


@pytest.mark.parametrize(
    "failure", [503, 500, 429, STALL], ids=["503", "500", "429", "timeout"]
)
def test_transient_failures_are_retried(fake_openai_server, make_lm, failure):
    fake_openai_server.failures = [failure, failure]
    lm = make_lm(timeout=_timeout_for(failure))
    assert lm.chat(MESSAGES).text == "ok"
    assert fake_openai_server.attempts == 3


@pytest.mark.parametrize("failure", [503, 429, STALL], ids=["503", "429", "timeout"])
def test_transient_failure_surfaces_after_max_retries(fake_openai_server, make_lm, failure):
    fake_openai_server.failures = [failure] * 5
    lm = make_lm(timeout=_timeout_for(failure), max_retries=2)
    with pytest.raises(LMTransientError):
        lm.chat(MESSAGES)
    assert fake_openai_server.attempts == 3


def test_connection_refused_is_transient(transport):
    lm = OpenAILM(
        "m",
        base_url="http://127.0.0.1:9/v1",
        cache=None,
        max_retries=1,
        retry_initial_delay=0.01,
        transport=transport,
    )
    with pytest.raises(LMTransientError):
        lm.chat(MESSAGES)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(fake_openai_server, make_lm, status):
    fake_openai_server.failures = [status]
    with pytest.raises(LMRequestError) as info:
        make_lm().chat(MESSAGES)
    assert info.value.status_code == status
    assert str(status) in str(info.value)
    assert f"scripted failure {status}" in str(info.value)
    assert fake_openai_server.attempts == 1


def test_max_concurrency_limits_requests_in_flight(fake_openai_server, make_lm):
    fake_openai_server.delay = 0.1
    lm = make_lm(max_concurrency=2)
    threads = [threading.Thread(target=lm.chat, args=(MESSAGES,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake_openai_server.attempts == 8
    assert fake_openai_server.max_in_flight == 2


# -- the pooled HTTP transport (urllib3) against answers in every framing ----------------------


def _completion(text: str) -> bytes:
    message = {"role": "assistant", "content": text}
    choice = {"index": 0, "message": message, "finish_reason": "stop"}
    return json.dumps({"choices": [choice], "usage": {"prompt_tokens": 1}}).encode()


class RawServer:
    """Answers the i-th request with ``replies[i]`` (raw bytes); closes the connection after
    it when ``close_after`` is set.  Counts requests and connections."""

    def __init__(self, replies: list[bytes], close_after: bool = False) -> None:
        self.replies = replies
        self.close_after = close_after
        self.requests = 0
        self.connections = 0
        self._sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self._sock.getsockname()[1]}/v1"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        buffer = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(buffer) < length:
                    buffer += conn.recv(65536)
                buffer = buffer[length:]
                reply = self.replies[min(self.requests, len(self.replies) - 1)]
                self.requests += 1
                conn.sendall(reply)
                if self.close_after:
                    return

    def close(self) -> None:
        self._sock.close()


def _raw_lm(server: RawServer, **kwargs) -> OpenAILM:
    options = {"cache": None, "max_retries": 0, "timeout": 10.0, "transport": "http"}
    return OpenAILM("m", base_url=server.url, **{**options, **kwargs})


@pytest.fixture
def raw_server():
    servers: list[RawServer] = []

    def start(replies: list[bytes], close_after: bool = False) -> RawServer:
        servers.append(RawServer(replies, close_after))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _with_length(body: bytes, *headers: str) -> bytes:
    head = "".join(f"{h}\r\n" for h in headers)
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%b\r\n%b" % (len(body), head.encode(), body)


def test_http_keeps_the_connection_alive(raw_server):
    server = raw_server([_with_length(_completion("a"))])
    lm = _raw_lm(server)
    assert [lm.chat(MESSAGES).text for _ in range(3)] == ["a", "a", "a"]
    assert (server.requests, server.connections) == (3, 1)


def test_http_pools_as_many_connections_as_requests_may_be_in_flight(raw_server):
    server = raw_server([_with_length(_completion("a"))])
    lm = _raw_lm(server, max_concurrency=3)
    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(lambda _: lm.chat(MESSAGES).text, range(64))) == {"a"}
    assert server.requests == 64
    assert 1 <= server.connections <= 3


def test_http_sends_head_and_body_in_one_write(raw_server, monkeypatch):
    import http.client

    writes: list[bytes] = []
    send = http.client.HTTPConnection.send
    monkeypatch.setattr(http.client.HTTPConnection, "send",
                        lambda self, data: (writes.append(bytes(data)), send(self, data))[1])
    server = raw_server([_with_length(_completion("a"))])
    lm = _raw_lm(server)
    assert [lm.chat(MESSAGES).text for _ in range(2)] == ["a", "a"]
    assert len(writes) == 2  # one per request: not the head, then the body
    assert all(w.startswith(b"POST /v1/chat/completions ") and w.endswith(b"}") for w in writes)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_http_a_forked_child_opens_its_own_connection(raw_server):
    server = raw_server([_with_length(_completion("a"))])
    lm = _raw_lm(server)
    assert lm.chat(MESSAGES).text == "a"  # the parent's pooled connection
    pid = os.fork()
    if pid == 0:  # the child: must not write on the parent's socket
        os._exit(0 if lm.chat(MESSAGES).text == "a" else 1)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert lm.chat(MESSAGES).text == "a"  # the parent's connection is still its own
    assert (server.requests, server.connections) == (3, 2)


def test_http_reads_chunked_answers(raw_server):
    body = _completion("chunked answer")
    chunks = b"".join(
        b"%x;ext=1\r\n%b\r\n" % (len(body[i : i + 7]), body[i : i + 7])
        for i in range(0, len(body), 7)
    )
    reply = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n%b0\r\nX-T: 1\r\n\r\n" % chunks
    server = raw_server([reply])
    lm = _raw_lm(server)
    assert lm.chat(MESSAGES).text == "chunked answer"
    assert lm.chat(MESSAGES).text == "chunked answer"
    assert server.connections == 1


def test_http_honours_connection_close(raw_server):
    server = raw_server([_with_length(_completion("a"), "Connection: close")], close_after=True)
    lm = _raw_lm(server)
    assert lm.chat(MESSAGES).text == "a"
    assert lm.chat(MESSAGES).text == "a"
    assert (server.requests, server.connections) == (2, 2)


def test_http_reads_to_the_close_without_a_length(raw_server):
    server = raw_server([b"HTTP/1.0 200 OK\r\n\r\n" + _completion("until close")], True)
    assert _raw_lm(server).chat(MESSAGES).text == "until close"


def test_http_resends_once_when_the_server_dropped_an_idle_connection(raw_server):
    # answers as if keeping the connection alive, then closes it: the next request finds it dead
    server = raw_server([_with_length(_completion("a"))], close_after=True)
    lm = _raw_lm(server)  # max_retries=0: only the transport's own resend can save the call
    assert lm.chat(MESSAGES).text == "a"
    assert lm.chat(MESSAGES).text == "a"
    assert (server.requests, server.connections) == (2, 2)


def test_http_skips_interim_answers(raw_server):
    server = raw_server([b"HTTP/1.1 100 Continue\r\n\r\n" + _with_length(_completion("b"))])
    assert _raw_lm(server).chat(MESSAGES).text == "b"


@pytest.mark.parametrize(
    "reply",
    [
        b"garbage\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 500\r\n\r\n{\"choices\": [",
        _with_length(b"{not json"),
    ],
    ids=["not-http", "truncated", "not-json"],
)
def test_http_broken_answers_are_transient(raw_server, reply):
    server = raw_server([reply], close_after=True)
    with pytest.raises(LMTransientError):
        _raw_lm(server).chat(MESSAGES)


def test_http_error_body_message_is_reported(raw_server):
    body = json.dumps({"detail": "model 'm' not found"}).encode()
    reply = b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)
    server = raw_server([reply])
    with pytest.raises(LMRequestError, match="model 'm' not found") as info:
        _raw_lm(server).chat(MESSAGES)
    assert info.value.status_code == 404


# -- the real llama.cpp server with SmolLM2 ----------------------------------------------------


@pytest.mark.real_model
def test_real_server_answers(llama_server_url):
    lm = OpenAILM("smollm2", base_url=llama_server_url, cache=None, max_tokens=12)
    response = lm.chat([{"role": "user", "content": "What is the capital of France?"}])
    assert response.text.strip()
    assert response.usage.prompt_tokens > 0
    assert response.usage.completion_tokens > 0


@pytest.mark.real_model
@pytest.mark.parametrize("transport_name", ["http", "sdk"])
def test_real_server_respects_max_tokens(llama_server_url, transport_name):
    lm = OpenAILM("smollm2", base_url=llama_server_url, cache=None, transport=transport_name)
    response = lm.chat([{"role": "user", "content": "Write a long story about a dragon."}],
                       max_tokens=5)  # fmt: skip
    assert response.usage.completion_tokens <= 5
    assert response.finish_reason == "length"


@pytest.mark.real_model
def test_real_server_second_call_is_a_cache_hit(llama_server_url, tmp_path):
    lm = OpenAILM(
        "smollm2", base_url=llama_server_url, cache=LMCache(tmp_path / "c.sqlite"), max_tokens=8
    )
    messages = [{"role": "user", "content": "Name a color."}]
    with track_usage() as meter:
        first = lm.chat(messages)
        second = lm.chat(messages)
    assert not first.cached
    assert second.cached
    assert second.text == first.text
    assert meter.snapshot().cache_hits == 1
    assert meter.snapshot().backend_calls == 1
