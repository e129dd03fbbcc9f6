"""The LM layer under faults: every kind the fault proxy injects is retried and recovered (or,
once the retries are spent, a typed error naming the LM), invalid answers are never cached,
``Retry-After`` is honoured, a prompt that does not fit the context is a ContextOverflow, an
unusable cache names its file, and the preflight check fails fast."""

from __future__ import annotations

import email.utils
import time

import pytest
from fault_proxy import KINDS, FaultProxy, proxies

from cotune.lm import (
    Choice,
    ContentRefused,
    ContextOverflow,
    LMCache,
    LMCacheError,
    LMError,
    LMInvalidResponse,
    LMRequestError,
    LMResponse,
    LMTransientError,
    OpenAILM,
    ScriptedLM,
    is_infrastructure_error,
    track_usage,
)
from cotune.lm.openai_backend import _status_error, retry_after

MESSAGES = [{"role": "user", "content": "Say hi."}]
TIMEOUT = 0.3
"""The client timeout of these tests; a hang lasts longer."""
INVALID = {"garbage", "empty-choices"}
"""The kinds that are an answer, just not a usable one (LMInvalidResponse)."""


@pytest.fixture(params=["http", "sdk"])
def transport(request) -> str:
    return request.param


@pytest.fixture
def proxy_for(fake_openai_server):
    with proxies(fake_openai_server.url, hang_s=TIMEOUT + 0.3, retry_after="0") as make:
        yield make


def lm_for(proxy: FaultProxy, transport: str, **kwargs) -> OpenAILM:
    options = {"cache": None, "max_retries": 3, "retry_initial_delay": 0.01,
               "retry_max_delay": 0.02, "timeout": TIMEOUT, "transport": transport}
    return OpenAILM("fake-model", base_url=proxy.url, **{**options, **kwargs})


@pytest.mark.parametrize("kind", KINDS)
def test_every_fault_is_retried_and_only_the_good_answer_is_cached(
    kind, transport, proxy_for, fake_openai_server, tmp_path
):
    proxy = proxy_for(rate=1.0, kinds=[kind], max_faults=2)
    cache = LMCache(tmp_path / "cache.sqlite")
    lm = lm_for(proxy, transport, cache=cache)
    with track_usage() as meter:
        assert lm.chat(MESSAGES).text == "ok"
    assert proxy.stats()["faults"] == {kind: 2}
    assert fake_openai_server.attempts == 1
    assert meter.snapshot().failed_calls == 0
    assert len(cache) == 1
    again = lm.chat(MESSAGES)
    assert again.cached and again.text == "ok"


@pytest.mark.parametrize("kind", KINDS)
def test_a_fault_that_outlasts_the_retries_is_a_typed_error_and_nothing_is_cached(
    kind, transport, proxy_for, tmp_path
):
    proxy = proxy_for(rate=1.0, kinds=[kind])
    cache = LMCache(tmp_path / "cache.sqlite")
    lm = lm_for(proxy, transport, cache=cache, max_retries=1)
    with track_usage() as meter, pytest.raises(LMTransientError) as info:
        lm.chat(MESSAGES)
    error = info.value
    assert isinstance(error, LMInvalidResponse) == (kind in INVALID)
    assert is_infrastructure_error(error)
    assert error.attempts == 2 and proxy.stats()["faults"] == {kind: 2}
    assert "fake-model" in error.lm and proxy.url in error.lm
    assert "fake-model" in error.describe() and "after 2 attempts" in error.describe()
    assert len(cache) == 0
    assert meter.snapshot().failed_calls == 1 and meter.snapshot().calls == 0
    assert lm.usage.failed_calls == 1


def test_a_cached_answer_without_choices_is_a_miss_and_is_replaced(fake_openai_server, tmp_path):
    cache = LMCache(tmp_path / "cache.sqlite")
    lm = OpenAILM("m", base_url=fake_openai_server.url, cache=cache)
    request_key = _key(lm)
    cache.put(request_key, {"choices": [], "usage": {}, "model": "m"})  # an old cotune's entry
    response = lm.chat(MESSAGES)
    assert response.text == "ok" and not response.cached
    assert cache.get(request_key)["choices"][0]["text"] == "ok"


def _key(lm) -> str:
    from cotune.lm import LMRequest

    request = LMRequest(messages=tuple(MESSAGES), temperature=lm.temperature,
                        max_tokens=lm.max_tokens)
    return request.fingerprint(lm.identity())


class NoChoicesLM(ScriptedLM):
    """A backend that answers without choices ``bad`` times, then properly."""

    def __init__(self, bad: int, **kwargs) -> None:
        super().__init__("fine", retry_initial_delay=0.001, **kwargs)
        self.bad = bad

    def _complete(self, request):
        if self.bad > 0:
            self.bad -= 1
            return LMResponse(choices=())
        return super()._complete(request)


def test_an_answer_without_choices_is_retried_never_cached_and_never_an_index_error(tmp_path):
    cache = LMCache(tmp_path / "cache.sqlite")
    assert NoChoicesLM(2, cache=cache, max_retries=2).chat(MESSAGES).text == "fine"
    assert len(cache) == 1
    cache.clear()
    with pytest.raises(LMInvalidResponse, match="no choices"):
        NoChoicesLM(5, cache=cache, max_retries=1).chat(MESSAGES)
    assert len(cache) == 0


def test_a_choice_whose_text_is_not_a_string_is_invalid():
    class NoText(ScriptedLM):
        def _complete(self, request):
            return LMResponse(choices=(Choice(text=None),))  # type: ignore[arg-type]

    with pytest.raises(LMInvalidResponse, match="no text"):
        NoText("x", max_retries=0).chat(MESSAGES)


# -- Retry-After --------------------------------------------------------------------------------


def _time_one_429(proxy_for, transport, retry_after_value: str, **kwargs) -> float:
    proxy = proxy_for(rate=1.0, kinds=["429"], max_faults=1, retry_after=retry_after_value)
    lm = lm_for(proxy, transport, **kwargs)
    start = time.monotonic()
    assert lm.chat(MESSAGES).text == "ok"
    return time.monotonic() - start


def test_retry_after_in_seconds_is_honoured(proxy_for, transport):
    assert _time_one_429(proxy_for, transport, "1") >= 0.95  # the backoff alone: 0.01 s


def test_retry_after_as_an_http_date_is_honoured(proxy_for):
    when = email.utils.formatdate(time.time() + 2, usegmt=True)  # whole seconds: waits 1-2 s
    assert _time_one_429(proxy_for, "http", when) >= 0.9


def test_retry_after_is_capped(proxy_for, transport):
    assert _time_one_429(proxy_for, transport, "3600", retry_after_cap=0.2) < 2


def test_without_retry_after_the_backoff_applies(proxy_for, transport):
    proxy = proxy_for(rate=1.0, kinds=["429-bare"], max_faults=1)
    lm = lm_for(proxy, transport)
    start = time.monotonic()
    lm.chat(MESSAGES)
    assert time.monotonic() - start < 0.5


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [({"Retry-After": "3"}, 3.0), ({b"retry-after": b"2.5"}, 2.5),
     ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5), ({"Retry-After": "-4"}, 0.0),
     ({"Retry-After": "soon"}, None), ({}, None), (None, None)],
)
def test_retry_after_header_values(headers, seconds):
    assert retry_after(headers) == seconds


# -- what a 4xx means ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        "This model's maximum context length is 4097 tokens. However, you requested 5000 "
        "tokens (4488 in the messages, 512 in the completion).",  # OpenAI, vLLM
        "the request exceeds the available context size, try increasing it",  # llama-server
        "Requested tokens (3000) exceed context window of 2048",  # llama-cpp-python's server
    ],
)
def test_a_prompt_too_long_for_the_context_is_a_context_overflow(message):
    error = _status_error(400, message, "http://127.0.0.1:8000/v1")
    assert isinstance(error, ContextOverflow) and not is_infrastructure_error(error)


def test_a_content_filter_refusal_is_a_failure_of_that_request():
    message = ("The response was filtered due to the prompt triggering Azure OpenAI's content "
               "management policy.")
    error = _status_error(400, message, "https://x.openai.azure.com/openai/v1")
    assert isinstance(error, ContentRefused) and not is_infrastructure_error(error)


@pytest.mark.parametrize(("status", "message"), [(404, "The model `x` does not exist."),
                                                 (401, "Invalid API key"),
                                                 (400, "unknown field: foo")])
def test_other_client_errors_are_infrastructure_errors(status, message):
    error = _status_error(status, message, "http://127.0.0.1:8000/v1")
    assert type(error) is LMRequestError and is_infrastructure_error(error)


# -- an unusable cache --------------------------------------------------------------------------


def test_an_unusable_cache_file_is_an_error_naming_it(tmp_path, monkeypatch, fake_openai_server):
    bad = tmp_path / "lm_cache.sqlite"
    bad.write_bytes(b"this is not an SQLite database, just some bytes" * 40)
    with pytest.raises(LMCacheError, match=str(bad)):
        LMCache(bad)
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path))  # the shared cache, opened lazily
    lm = OpenAILM("m", base_url=fake_openai_server.url)
    with track_usage() as meter, pytest.raises(LMCacheError, match="not usable") as info:
        lm.chat(MESSAGES)
    assert is_infrastructure_error(info.value) and str(bad) in info.value.describe()
    assert meter.snapshot().failed_calls == 1
    assert fake_openai_server.attempts == 0


# -- the preflight check ------------------------------------------------------------------------


def test_check_of_a_dead_endpoint_fails_within_seconds(transport):
    from conftest import free_port

    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    lm = OpenAILM("some-model", base_url=url, cache=None, transport=transport)
    start = time.monotonic()
    with pytest.raises(LMTransientError) as info:
        lm.check()
    assert time.monotonic() - start < 3  # 3 attempts with the default backoff, not 5
    assert info.value.attempts == 3
    assert url in info.value.describe() and "some-model" in info.value.describe()


def test_check_reports_an_unknown_model_at_once_and_bypasses_the_cache(fake_openai_server,
                                                                        tmp_path):
    cache = LMCache(tmp_path / "cache.sqlite")
    lm = OpenAILM("m", base_url=fake_openai_server.url, cache=cache)
    lm.check()
    assert fake_openai_server.requests[-1]["max_tokens"] == 1 and len(cache) == 0
    fake_openai_server.failures = [404]
    with pytest.raises(LMRequestError, match="404") as info:
        lm.check()
    assert info.value.attempts == 1
    assert isinstance(info.value, LMError)


# -- the real model -----------------------------------------------------------------------------


@pytest.mark.real_model
def test_faults_in_front_of_the_real_server_change_no_answer(llama_server_url):
    """Every kind but the hang (its timeout would have to outlast a real answer), half of the
    requests: the answers are the ones the server gives without faults."""
    prompts = [[{"role": "user", "content": f"What is {i} + {i}? Answer with a number."}]
               for i in range(4)]
    direct = OpenAILM("smollm2", base_url=llama_server_url, cache=None, max_tokens=8)
    want = [direct.chat(p, max_tokens=8).text for p in prompts]
    with FaultProxy(llama_server_url.removesuffix("/v1"), rate=0.5, seed=3, retry_after="0",
                    kinds=[k for k in KINDS if k != "hang"]) as proxy:
        lm = OpenAILM("smollm2", base_url=proxy.url, cache=None, max_tokens=8, max_retries=8,
                      retry_initial_delay=0.01, retry_max_delay=0.02, timeout=60)
        got = [lm.chat(p, max_tokens=8).text for p in prompts]
        assert sum(proxy.stats()["faults"].values()) > 0
    assert got == want


@pytest.mark.real_model
def test_a_prompt_too_long_for_the_real_server_is_a_context_overflow(llama_server_url):
    lm = OpenAILM("smollm2", base_url=llama_server_url, cache=None, max_retries=0)
    with pytest.raises(ContextOverflow):
        lm.chat([{"role": "user", "content": "word " * 3000}], max_tokens=8)


@pytest.mark.real_model
def test_a_prompt_too_long_for_the_embedded_engine_is_a_context_overflow(smollm2_path):
    from cotune.lm import LlamaCppLM

    lm = LlamaCppLM(smollm2_path, n_ctx=256, n_threads=1, cache=None)
    with pytest.raises(ContextOverflow, match="context"):
        lm.chat([{"role": "user", "content": "word " * 400}], max_tokens=8)
