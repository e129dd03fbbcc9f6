"""The embedded llama.cpp backend, mostly against the real packaged SmolLM2-135M model."""

from __future__ import annotations

import importlib.util
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from import_check import modules_loaded_by

from cotune.lm import LlamaCppLM, LMCache, LMRequestError

QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]


def test_importing_cotune_lm_does_not_import_llama_cpp() -> None:
    assert modules_loaded_by("import cotune.lm", {"llama_cpp"}) == []


def test_a_missing_lora_file_is_reported_before_loading(smollm2_path: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="LoRA"):
        LlamaCppLM(smollm2_path, lora_path=tmp_path / "absent.gguf", cache=None)


def test_thread_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from cotune.lm.llamacpp import THREADS_ENV, default_threads

    monkeypatch.setenv(THREADS_ENV, "3")
    assert default_threads() == 3
    monkeypatch.delenv(THREADS_ENV)
    assert default_threads() >= 1
    for bad in ("0", "two", "-1"):
        monkeypatch.setenv(THREADS_ENV, bad)
        with pytest.raises(ValueError, match=THREADS_ENV):
            default_threads()


@pytest.mark.real_model
def test_the_environment_sets_the_threads_of_a_loaded_model(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed")
    monkeypatch.setenv("COTUNE_LLAMA_THREADS", "1")
    lm = LlamaCppLM(smollm2_path, n_ctx=256, cache=None)
    try:
        assert lm.n_threads == 1
        assert lm.chat(QUESTION, max_tokens=4).text.strip()
    finally:
        lm.close()


@pytest.fixture(scope="module")
def smol(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaCppLM]:
    """SmolLM2 loaded once for the module, with a private cache that tests opt into."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed")
    cache_dir = tmp_path_factory.mktemp("llamacpp_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COTUNE_CACHE_DIR", str(cache_dir))  # the model's hash marker goes here
        lm = LlamaCppLM("smollm2-135m", n_ctx=512, cache=LMCache(cache_dir / "cache.sqlite"))
        yield lm
        lm.close()


@pytest.mark.real_model
def test_greedy_answer_is_deterministic(smol: LlamaCppLM) -> None:
    first = smol.chat(QUESTION, max_tokens=16, cache=False)
    second = smol.chat(QUESTION, max_tokens=16, cache=False)
    assert first.text.strip()
    assert first.text == second.text
    assert not first.cached and not second.cached
    assert first.usage.prompt_tokens > 0 and first.usage.completion_tokens > 0
    assert first.model == "smollm2-135m"


@pytest.mark.real_model
def test_max_tokens_stops_with_length(smol: LlamaCppLM) -> None:
    messages = [{"role": "user", "content": "Write a long story about a dragon."}]
    response = smol.chat(messages, max_tokens=4, cache=False)
    assert 0 < response.usage.completion_tokens <= 4
    assert response.finish_reason == "length"


@pytest.mark.real_model
def test_stop_sequences_end_the_answer(smol: LlamaCppLM) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    response = smol.chat(messages, max_tokens=64, stop=["5"], cache=False)
    assert "5" not in response.text
    assert response.finish_reason == "stop"


@pytest.mark.real_model
def test_concurrent_calls_are_serialized_safely(smol: LlamaCppLM) -> None:
    questions = [
        "What is the capital of France?",
        "What color is the sky on a clear day?",
        "How many legs does a dog have?",
        "What is 2 + 2?",
    ]
    chats = [[{"role": "user", "content": q}] for q in questions]
    alone = [smol.chat(c, max_tokens=24, cache=False).text for c in chats]
    with ThreadPoolExecutor(max_workers=4) as pool:
        together = list(pool.map(lambda c: smol.chat(c, max_tokens=24, cache=False).text, chats))
    assert all(t.strip() for t in together)
    assert together == alone  # no answer was mixed up with another thread's


@pytest.mark.real_model
def test_a_prompt_longer_than_the_context_is_a_request_error(smol: LlamaCppLM) -> None:
    too_long = [{"role": "user", "content": "apple " * 1000}]  # > n_ctx=512 tokens
    with pytest.raises(LMRequestError, match="context"):
        smol.chat(too_long, max_tokens=8, cache=False)
    assert smol.chat(QUESTION, max_tokens=8, cache=False).text.strip()  # still usable


@pytest.mark.real_model
def test_the_second_identical_call_is_a_fast_cache_hit(smol: LlamaCppLM) -> None:
    messages = [{"role": "user", "content": "Write a short poem about the sea."}]
    start = time.perf_counter()
    first = smol.chat(messages, max_tokens=64, cache=True)
    first_s = time.perf_counter() - start
    start = time.perf_counter()
    second = smol.chat(messages, max_tokens=64, cache=True)
    second_s = time.perf_counter() - start
    assert not first.cached and second.cached
    assert second.text == first.text
    assert second_s < 0.05 * first_s, (first_s, second_s)


@pytest.mark.real_model
def test_n_samples_at_temperature_one(smol: LlamaCppLM) -> None:
    messages = [{"role": "user", "content": "Invent a name for a cat."}]
    response = smol.chat(messages, temperature=1.0, max_tokens=16, n=2, seed=7, cache=False)
    assert len(response.choices) == 2
    assert all(c.text.strip() for c in response.choices)
    again = smol.chat(messages, temperature=1.0, max_tokens=16, n=2, seed=7, cache=False)
    assert [c.text for c in again.choices] == [c.text for c in response.choices]


@pytest.mark.real_model
def test_identity_and_describe(smol: LlamaCppLM) -> None:
    identity = smol.identity()
    assert identity["backend"] == "llamacpp"
    assert len(identity["sha256"]) == 64
    assert identity["lora_sha256"] is None
    described = json.loads(json.dumps(smol.describe()))
    assert described["model"] == "smollm2-135m"
    assert Path(described["path"]).is_file()
    assert described["lora_path"] is None


def test_a_sampled_request_carries_a_seed_derived_from_itself() -> None:
    from cotune.lm.types import LMRequest

    def request(text: str, rollout: int | None = None, **kw) -> LMRequest:
        return LMRequest(({"role": "user", "content": text},), temperature=1.0,
                         rollout_id=rollout, **kw)

    seed = request("a").sampling_seed()
    assert seed == request("a").sampling_seed()  # no shared generator: the request decides
    assert 0 <= seed < 2**31
    assert len({request("a", r).sampling_seed() for r in range(20)}) == 20  # rollouts differ
    assert request("b").sampling_seed() != seed
    assert request("a").sampling_seed(salt=1) != seed  # LlamaCppLM(seed=1) mixes its seed in
    assert request("a", seed=5).sampling_seed() == 5  # an explicit seed wins


@pytest.mark.real_model
def test_sampled_calls_without_a_seed_repeat_in_any_order(
    smol: LlamaCppLM, smollm2_path: Path
) -> None:
    """The cause of irreproducible MIPRO runs: proposals sampled at temperature 1.0 without a
    seed drew seeds from one generator in call order (threads!).  Now each sampled request
    carries a seed derived from itself, so a fresh engine in another order, from threads,
    samples the same texts."""
    prompts = [[{"role": "user", "content": f"Invent a name for a {animal}."}]
               for animal in ("cat", "dog", "horse", "goat")]

    def sample(lm: LlamaCppLM, messages, rollout: int = 1) -> str:
        return lm.chat(messages, temperature=1.0, max_tokens=12, rollout_id=rollout,
                       cache=False).text

    first = [sample(smol, m) for m in prompts]
    fresh = LlamaCppLM(smollm2_path, cache=None)
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            again = list(pool.map(lambda m: sample(fresh, m), reversed(prompts)))[::-1]
    finally:
        fresh.close()
    assert again == first
    assert [sample(smol, m, rollout=2) for m in prompts] != first  # another rollout, another draw
