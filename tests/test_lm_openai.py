"""OpenAILM against a scripted local HTTP server (retries, error mapping, request body), and
against the real llama.cpp server with SmolLM2 (``real_model``)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import pytest

from cotune.lm import LMCache, LMRequestError, LMTransientError, OpenAILM, track_usage

MESSAGES = [{"role": "user", "content": "Say hi."}]


def make_lm(server, **kwargs) -> OpenAILM:
    options = {
        "cache": None,
        "max_retries": 3,
        "retry_initial_delay": 0.01,
        "retry_max_delay": 0.05,
        "timeout": 5.0,
    }
    options.update(kwargs)
    return OpenAILM("test-model", base_url=server.url, **options)


def test_import_cotune_does_not_import_openai():
    code = "import sys, cotune, cotune.lm; assert 'openai' not in sys.modules, 'eager import'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_answer_is_parsed(fake_openai_server):
    fake_openai_server.answer = "hello there"
    response = make_lm(fake_openai_server).chat(MESSAGES, n=2)
    assert [c.text for c in response.choices] == ["hello there", "hello there"]
    assert response.finish_reason == "stop"
    assert response.usage.prompt_tokens == 7
    assert response.usage.completion_tokens == 6
    assert response.model == "test-model"
    assert not response.cached


def test_null_content_becomes_empty_text(fake_openai_server):
    fake_openai_server.answer = None
    assert make_lm(fake_openai_server).chat(MESSAGES).text == ""


def test_request_body(fake_openai_server):
    lm = make_lm(fake_openai_server, temperature=0.7)
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


def test_empty_stop_and_no_seed_are_left_out(fake_openai_server):
    make_lm(fake_openai_server).chat(MESSAGES)
    body = fake_openai_server.requests[-1]
    assert "stop" not in body
    assert "seed" not in body


def test_lora_adapter_is_the_request_model(fake_openai_server):
    lm = make_lm(fake_openai_server, lora="my-adapter")
    lm.chat(MESSAGES)
    assert fake_openai_server.requests[-1]["model"] == "my-adapter"
    assert lm.identity()["lora"] == "my-adapter"
    assert lm.identity() != make_lm(fake_openai_server).identity()


def test_api_key_is_sent_but_never_described(fake_openai_server, monkeypatch):
    secret = "sk-test-very-secret-123"
    monkeypatch.setenv("MY_KEY", secret)
    for lm in (
        make_lm(fake_openai_server, api_key=secret),
        make_lm(fake_openai_server, api_key_env="MY_KEY"),
    ):
        lm.chat(MESSAGES)
        assert fake_openai_server.headers[-1]["Authorization"] == f"Bearer {secret}"
        for shown in (json.dumps(lm.identity()), json.dumps(lm.describe()), repr(lm)):
            assert secret not in shown
        assert lm.describe() == {
            "backend": "openai",
            "model": "test-model",
            "base_url": fake_openai_server.url,
            "lora": None,
        }


def test_local_server_needs_no_key(fake_openai_server, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    assert make_lm(fake_openai_server).chat(MESSAGES).text == "ok"


def test_remote_server_without_key_is_refused(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        OpenAILM("m", base_url="https://example.invalid/v1", cache=None)


def test_base_url_from_environment(fake_openai_server, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", fake_openai_server.url)
    lm = OpenAILM("test-model", cache=None)
    assert lm.base_url == fake_openai_server.url
    assert lm.chat(MESSAGES).text == "ok"


@pytest.mark.parametrize(
    "failure", [503, 500, 429, 0.5], ids=["503", "500", "429", "timeout"]
)
def test_transient_failures_are_retried(fake_openai_server, failure):
    fake_openai_server.failures = [failure, failure]
    lm = make_lm(fake_openai_server, timeout=0.2)
    assert lm.chat(MESSAGES).text == "ok"
    assert fake_openai_server.attempts == 3


@pytest.mark.parametrize("failure", [503, 429, 0.5], ids=["503", "429", "timeout"])
def test_transient_failure_surfaces_after_max_retries(fake_openai_server, failure):
    fake_openai_server.failures = [failure] * 5
    lm = make_lm(fake_openai_server, timeout=0.2, max_retries=2)
    with pytest.raises(LMTransientError):
        lm.chat(MESSAGES)
    assert fake_openai_server.attempts == 3


def test_connection_refused_is_transient():
    lm = OpenAILM(
        "m", base_url="http://127.0.0.1:9/v1", cache=None, max_retries=1, retry_initial_delay=0.01
    )
    with pytest.raises(LMTransientError):
        lm.chat(MESSAGES)


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_client_errors_are_not_retried(fake_openai_server, status):
    fake_openai_server.failures = [status]
    with pytest.raises(LMRequestError) as info:
        make_lm(fake_openai_server).chat(MESSAGES)
    assert info.value.status_code == status
    assert str(status) in str(info.value)
    assert f"scripted failure {status}" in str(info.value)
    assert fake_openai_server.attempts == 1


def test_max_concurrency_limits_requests_in_flight(fake_openai_server):
    fake_openai_server.delay = 0.05
    lm = make_lm(fake_openai_server, max_concurrency=2)
    threads = [threading.Thread(target=lm.chat, args=(MESSAGES,)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert fake_openai_server.attempts == 8
    assert fake_openai_server.max_in_flight == 2


# -- the real llama.cpp server with SmolLM2 ----------------------------------------------------


@pytest.mark.real_model
def test_real_server_answers(llama_server_url):
    lm = OpenAILM("smollm2", base_url=llama_server_url, cache=None, max_tokens=32)
    response = lm.chat([{"role": "user", "content": "What is the capital of France?"}])
    assert response.text.strip()
    assert response.usage.prompt_tokens > 0
    assert response.usage.completion_tokens > 0


@pytest.mark.real_model
def test_real_server_respects_max_tokens(llama_server_url):
    lm = OpenAILM("smollm2", base_url=llama_server_url, cache=None)
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
