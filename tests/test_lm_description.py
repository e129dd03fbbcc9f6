"""``describe()`` on every LM and ``lm_from_description`` / ``from_description`` back: what a
saved program records of its LM builds the same LM again (real SmolLM2 for the embedded
engine, with a LoRA adapter too)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from cotune.core.state import StateError
from cotune.lm import (
    LM,
    AdapterFileError,
    EndpointPool,
    LlamaCppLM,
    OpenAILM,
    ScriptedLM,
    lm_from_description,
)
from cotune.lm.types import Choice, LMRequest, LMResponse, TokenUsage

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def json_round_trip(description):
    return json.loads(json.dumps(description))  # as program.json keeps it


class EchoLM(LM):
    """A third-party backend that implements only ``_complete``."""

    def _complete(self, request: LMRequest) -> LMResponse:
        return LMResponse(choices=(Choice(request.messages[-1]["content"], "stop"),),
                          usage=TokenUsage(1, 1), model=self.model)


def test_every_lm_describes_itself_with_a_backend_and_a_model():
    echo = EchoLM("echo-1", cache=None)
    assert echo.describe() == {"backend": "EchoLM", "model": "echo-1"}
    scripted = ScriptedLM("hi", model="m", name="teacher")
    assert scripted.describe() == {"backend": "scripted", "model": "m", "name": "teacher"}
    assert json_round_trip(scripted.describe()) == scripted.describe()


def test_an_lm_whose_answers_are_code_is_refused_with_a_clear_error():
    scripted = ScriptedLM("hi")
    with pytest.raises(ValueError, match="ScriptedLM cannot be rebuilt .*pass a factory"):
        lm_from_description(scripted.describe())
    assert lm_from_description(lambda: scripted) is scripted
    with pytest.raises(ValueError, match="backend 'EchoLM'.*known: llamacpp, openai"):
        lm_from_description(EchoLM("e", cache=None).describe())


@pytest.mark.parametrize("bad", [None, "openai", ["openai"]])
def test_a_description_that_is_no_object_is_a_clear_error(bad):
    with pytest.raises(ValueError, match="a dict or a factory"):
        lm_from_description(bad)


@pytest.mark.parametrize("bad", [{"backend": "openai"}, {"backend": "openai", "model": 3},
                                 {"backend": "openai", "model": ""}])
def test_a_description_without_a_model_names_the_field(bad):
    with pytest.raises(ValueError, match="no 'model'"):
        lm_from_description(bad)


def test_an_endpoint_lm_comes_back_the_same_and_answers(fake_openai_server):
    fake_openai_server.answer = "Paris"
    lm = OpenAILM("fake", base_url=fake_openai_server.url, lora="tuned", cache=None)
    described = json_round_trip(lm.describe())
    again = lm_from_description(described, cache=None)
    assert isinstance(again, OpenAILM)
    assert again.describe() == lm.describe() and again.identity() == lm.identity()
    assert again.chat(QUESTION).text == "Paris"
    assert fake_openai_server.requests[-1]["model"] == "tuned"  # the adapter's name went too
    assert OpenAILM.from_description(described, cache=None).describe() == described


def test_a_pool_comes_back_with_its_replicas_and_slots():
    pool = EndpointPool("m", ["http://127.0.0.1:9/v1", "http://127.0.0.1:10/v1"],
                        max_concurrency=3, lora="x", cache=None)
    try:
        again = lm_from_description(json_round_trip(pool.describe()), cache=None)
        assert isinstance(again, EndpointPool)
        assert again.describe() == pool.describe()
        assert (again.base_urls, again.max_concurrency, again.lora) == \
            (pool.base_urls, 3, "x")
        smaller = EndpointPool.from_description(pool.describe(), max_concurrency=1, cache=None)
        assert smaller.max_concurrency == 1  # options win over the description
    finally:
        pool.close()


def test_a_gguf_description_with_a_missing_or_changed_file_is_an_adapter_file_error(
    smollm2_path: Path, tmp_path: Path
):
    adapter = tmp_path / "lora.gguf"
    described = {"backend": "llamacpp", "model": "smollm2-135m", "lora_path": str(adapter),
                 "lora_sha256": "0" * 64, "n_ctx": 512}
    with pytest.raises(AdapterFileError, match="lora.gguf is missing"):
        LlamaCppLM.from_description(described)
    adapter.write_bytes(b"not the recorded adapter")
    with pytest.raises(AdapterFileError, match="has changed since it was recorded"):
        lm_from_description(described)
    with pytest.raises(AdapterFileError, match="base model .* is missing"):
        lm_from_description({"backend": "llamacpp", "model": "no-such-model.gguf",
                             "path": str(tmp_path / "gone.gguf")})
    with pytest.raises(AdapterFileError, match="base model .* has changed"):
        lm_from_description({"backend": "llamacpp", "model": "smollm2-135m",
                             "sha256": "0" * 64})
    assert issubclass(AdapterFileError, StateError)  # a saved program that cannot load


# -- the embedded engine, for real ---------------------------------------------------------------


@pytest.fixture(scope="module")
def adapter(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LoRA adapter with random weights (no training), the way the server tests make one."""
    for module in ("gguf", "safetensors", "numpy"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install 'cotune[finetune]')")
    from test_lm_llama_server import random_lora

    return random_lora(smollm2_path, tmp_path_factory.mktemp("lora"), seed=0)


@pytest.fixture(scope="module")
def smol() -> LlamaCppLM:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed")
    lm = LlamaCppLM("smollm2-135m", n_ctx=512, n_threads=1, max_tokens=6, seed=3, cache=None)
    yield lm
    lm.close()


@pytest.mark.real_model
def test_the_embedded_engine_comes_back_from_its_description(smol: LlamaCppLM) -> None:
    described = json_round_trip(smol.describe())
    assert described["backend"] == "llamacpp" and described["lora_path"] is None
    again = LlamaCppLM.from_description(described, n_threads=1, cache=None)
    try:
        assert again.describe() == smol.describe() and again.identity() == smol.identity()
        assert again.chat(QUESTION, max_tokens=6).text == smol.chat(QUESTION).text
    finally:
        again.close()


@pytest.mark.real_model
def test_with_lora_keeps_the_runtime_settings_and_changes_the_answers(
    smol: LlamaCppLM, adapter: Path
) -> None:
    tuned = smol.with_lora(adapter)
    try:
        assert tuned is not smol and smol.lora_path is None and tuned.lora_path == adapter
        settings = ("model_path", "n_ctx", "n_threads", "seed", "max_tokens", "temperature",
                    "max_retries", "_cache_setting")
        assert [getattr(tuned, s) for s in settings] == [getattr(smol, s) for s in settings]
        described = tuned.describe()
        assert described["lora_path"] == str(adapter) and len(described["lora_sha256"]) == 64
        assert tuned.identity() != smol.identity()  # the adapter keys its cached answers

        rebuilt = lm_from_description(json_round_trip(described), like=smol)  # a saved program
        assert isinstance(rebuilt, LlamaCppLM) and rebuilt.identity() == tuned.identity()
        assert rebuilt.n_threads == 1 and rebuilt.max_tokens == 6  # the base LM's settings
        answer = tuned.chat(QUESTION).text
        assert rebuilt.chat(QUESTION).text == answer
        rebuilt.close()
        base = smol.with_lora(None)
        assert base.identity() == smol.identity()
        base.close()
    finally:
        tuned.close()


@pytest.mark.real_model
def test_a_description_of_another_model_does_not_borrow_the_like_lm(
    smol: LlamaCppLM, smollm2_path: Path
) -> None:
    other = {**smol.describe(), "n_ctx": 256}  # same file, another context length
    rebuilt = lm_from_description(other, like=smol, n_threads=1, cache=None)
    try:
        assert rebuilt.n_ctx == 256 and rebuilt.max_tokens == 512  # built anew, own defaults
    finally:
        rebuilt.close()
