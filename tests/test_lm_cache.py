"""The persistent LM cache: hits, bypasses, keys, threads, processes, damaged entries."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cotune.lm import LMCache, OpenAILM, ScriptedLM, cache_disabled, track_usage

MESSAGES = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture
def cache(tmp_path: Path) -> LMCache:
    return LMCache(tmp_path / "lm_cache.sqlite")


def test_second_identical_call_is_a_hit(cache):
    lm = ScriptedLM(["four", "five"], cache=cache)
    with track_usage() as meter:
        first = lm.chat(MESSAGES)
        second = lm.chat(MESSAGES)
    assert (first.text, first.cached) == ("four", False)
    assert (second.text, second.cached) == ("four", True)
    assert len(lm.requests) == 1
    assert meter.snapshot().cache_hits == 1
    assert meter.snapshot().calls == 2
    assert lm.usage.cache_hits == 1
    assert second.usage == first.usage


def test_hit_survives_a_new_cache_object(cache):
    ScriptedLM("four", cache=cache).chat(MESSAGES)
    lm = ScriptedLM("other", cache=LMCache(cache.path))
    assert lm.chat(MESSAGES).text == "four"
    assert lm.requests == []


def test_openai_backend_hits_the_cache(fake_openai_server, cache):
    lm = OpenAILM("m", base_url=fake_openai_server.url, cache=cache)
    first = lm.chat(MESSAGES)
    second = lm.chat(MESSAGES)
    assert second.cached and second.text == first.text
    assert fake_openai_server.attempts == 1
    assert lm.usage.cache_hits == 1


def test_per_call_bypass(cache):
    lm = ScriptedLM(["a", "b", "c"], cache=cache)
    lm.chat(MESSAGES)
    response = lm.chat(MESSAGES, cache=False)
    assert (response.text, response.cached) == ("b", False)
    assert len(lm.requests) == 2
    assert lm.chat(MESSAGES).text == "a"  # the bypassed answer was not stored either


def test_global_bypass_with_context_manager(cache):
    lm = ScriptedLM(["a", "b", "c"], cache=cache)
    with cache_disabled():
        assert lm.chat(MESSAGES).text == "a"
        assert lm.chat(MESSAGES).text == "b"
    assert len(cache) == 0
    assert lm.chat(MESSAGES).text == "c"
    assert lm.chat(MESSAGES).cached


def test_global_bypass_with_environment(cache, monkeypatch):
    monkeypatch.setenv("COTUNE_CACHE", "off")
    lm = ScriptedLM(["a", "b"], cache=cache)
    assert lm.chat(MESSAGES).text == "a"
    assert lm.chat(MESSAGES).text == "b"
    assert len(cache) == 0


def test_different_requests_and_lms_are_different_entries(cache):
    lm = ScriptedLM(lambda request: f"answer {len(lm.requests)}", cache=cache)
    lm.chat(MESSAGES)
    lm.chat(MESSAGES, rollout_id=1)
    lm.chat(MESSAGES, rollout_id=2)
    lm.chat(MESSAGES, temperature=0.9)
    lm.chat(MESSAGES, max_tokens=7)
    lm.chat(MESSAGES, seed=3)
    ScriptedLM("x", model="other-model", cache=cache).chat(MESSAGES)
    assert len(lm.requests) == 6
    assert len(cache) == 7


def test_openai_identity_separates_endpoints_models_and_adapters(fake_openai_server, cache):
    url = fake_openai_server.url
    for lm in (
        OpenAILM("m", base_url=url, cache=cache),
        OpenAILM("m2", base_url=url, cache=cache),
        OpenAILM("m", base_url=url, cache=cache, lora="adapter"),
        OpenAILM("m", base_url=url.replace("127.0.0.1", "localhost"), cache=cache),
    ):
        assert not lm.chat(MESSAGES).cached
    assert fake_openai_server.attempts == 4
    assert len(cache) == 4


def test_threads_write_concurrently(cache):
    errors: list[BaseException] = []
    barrier = threading.Barrier(16)

    def work(worker: int) -> None:
        try:
            barrier.wait()
            for i in range(25):
                cache.put(f"own-{worker}-{i}", {"worker": worker, "i": i})
                cache.put(f"shared-{i}", {"i": i})
                assert cache.get(f"own-{worker}-{i}") == {"worker": worker, "i": i}
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(w,)) for w in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(cache) == 16 * 25 + 25
    assert all(cache.get(f"shared-{i}") == {"i": i} for i in range(25))


_WRITER = """
import sys
from cotune.lm import LMCache
cache = LMCache(sys.argv[1])
worker = int(sys.argv[2])
for i in range(100):
    cache.put(f"p{worker}-{i}", {"worker": worker, "i": i})
    cache.put(f"shared-{i}", {"i": i})
"""


def test_processes_write_concurrently(cache):
    processes = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(cache.path), str(w)])
        for w in range(4)
    ]
    assert [p.wait(timeout=60) for p in processes] == [0, 0, 0, 0]
    assert len(cache) == 4 * 100 + 100
    for w in range(4):
        assert all(cache.get(f"p{w}-{i}") == {"worker": w, "i": i} for i in range(100))


@pytest.mark.parametrize(
    "damage", ["{not json", '{"choices": 3}', "[]", '{"choices": [{"txt": "x"}]}', "null"]
)
def test_corrupt_entry_is_a_miss(cache, damage):
    lm = ScriptedLM(["first", "second"], cache=cache)
    lm.chat(MESSAGES)
    with sqlite3.connect(cache.path) as conn:
        conn.execute("UPDATE answers SET response = ?", (damage,))
    response = lm.chat(MESSAGES)
    assert (response.text, response.cached) == ("second", False)
    assert lm.chat(MESSAGES).text == "second"  # the fresh answer replaced the damaged one
    assert lm.chat(MESSAGES).cached
