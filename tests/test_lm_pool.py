"""EndpointPool: one LM over several OpenAI-compatible replicas (fake servers on 127.0.0.1)."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import scripted_task as scripted
from conftest import FakeOpenAIServer, free_port

from cotune import context
from cotune.evaluate import Evaluate
from cotune.lm import LMCache, LMRequestError, LMTransientError
from cotune.lm.factory import make_lm
from cotune.lm.pool import EndpointPool

FAST = {"retry_initial_delay": 0.01, "retry_max_delay": 0.02, "health_interval": 0.05}


def parity_server() -> FakeOpenAIServer:
    return FakeOpenAIServer(lambda body: scripted.scripted_answer(
        SimpleNamespace(messages=body["messages"])))


@pytest.fixture
def servers():
    pair = [parity_server(), parity_server()]
    yield pair
    for s in pair:
        s.close()


def pool_of(servers, **options) -> EndpointPool:
    settings = {**FAST, "cache": None, **options}
    return EndpointPool("fake", [s.url for s in servers], **settings)


def ask(lm, text="hi"):
    return lm.chat([{"role": "user", "content": text}])


def expected(text="hi") -> str:
    return scripted.scripted_answer(SimpleNamespace(messages=[{"role": "user", "content": text}]))


def test_requests_go_to_the_replica_with_fewest_in_flight_within_its_limit(servers):
    for s in servers:
        s.delay = 0.1
    pool = pool_of(servers, max_concurrency=2)
    with ThreadPoolExecutor(8) as workers:
        answers = list(workers.map(lambda i: ask(pool, f"q{i}").text, range(8)))
    assert answers == [expected(f"q{i}") for i in range(8)]
    assert sum(s.attempts for s in servers) == 8 and all(s.attempts >= 2 for s in servers)
    assert all(s.max_in_flight <= 2 for s in servers)  # the per-endpoint limit
    assert pool.usage.calls == 8
    assert all(e.healthy and e.in_flight == 0 for e in pool.stats())


def test_a_slow_replica_gets_fewer_requests_than_a_fast_one(servers):
    slow, fast = servers
    slow.delay = 0.3
    pool = pool_of(servers, max_concurrency=8)
    with ThreadPoolExecutor(4) as workers:
        list(workers.map(lambda i: ask(pool, f"q{i}"), range(24)))
    assert slow.attempts + fast.attempts == 24
    assert fast.attempts > 2 * slow.attempts  # round robin would give 12 and 12


def test_a_5xx_fails_over_to_the_other_replica_and_takes_the_first_out(servers):
    a, b = servers
    a.failures = [503] * 1000
    pool = pool_of(servers, health_interval=60)
    answers = [ask(pool, f"q{i}").text for i in range(5)]
    assert answers == [expected(f"q{i}") for i in range(5)]
    assert a.attempts == 1  # out of rotation after its first failure
    assert b.attempts == 5
    assert pool.usage.calls == 5 and pool.usage.failed_calls == 0
    first, second = pool.stats()
    assert not first.healthy and first.failures == 1 and "503" in first.last_error
    assert second.healthy


def test_a_dead_replica_fails_over_on_the_connection_error(servers):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    pool = EndpointPool("fake", [dead, servers[0].url], cache=None, **FAST)
    assert [ask(pool, f"q{i}").text for i in range(3)] == [expected(f"q{i}") for i in range(3)]
    assert servers[0].attempts == 3
    assert [e.healthy for e in pool.stats()] == [False, True]


def test_a_replica_that_recovers_is_put_back_by_the_health_check(servers):
    a, b = servers
    a.failures = [500]
    pool = pool_of(servers)
    ask(pool)  # a fails, b answers
    assert not pool.stats()[0].healthy
    deadline = time.monotonic() + 5
    while not pool.stats()[0].healthy:
        assert time.monotonic() < deadline, "the health check never put the replica back"
        time.sleep(0.02)
    with ThreadPoolExecutor(4) as workers:
        list(workers.map(lambda i: ask(pool, f"r{i}"), range(8)))
    assert a.attempts > 1  # a serves again


def test_a_rate_limited_replica_stays_in_rotation(servers):
    a, _ = servers
    a.failures = [429]
    pool = pool_of(servers)
    assert ask(pool).text == expected()
    assert pool.stats()[0].healthy


def test_a_4xx_is_the_requests_fault_and_does_not_fail_over(servers):
    a, b = servers
    a.failures = [404]
    pool = pool_of(servers)
    with pytest.raises(LMRequestError, match="404"):
        ask(pool)
    assert b.attempts == 0
    assert pool.stats()[0].healthy


def test_every_replica_down_is_one_transient_error_naming_them_after_the_retries(servers):
    for s in servers:
        s.failures = [502] * 1000
    pool = pool_of(servers, max_retries=2)
    with pytest.raises(LMTransientError) as info:
        ask(pool)
    message = info.value.describe()
    assert "EndpointPool" in message and "after 3 attempts" in message
    assert pool.usage.failed_calls == 1
    assert all(s.attempts >= 1 for s in servers)


def test_one_cache_serves_answers_whichever_replica_gave_them(servers, tmp_path):
    cache = LMCache(tmp_path / "cache")
    first = pool_of(servers, cache=cache)
    ask(first, "same")
    # the other replica alone, under a new pool: the answer comes from the one cache
    alone = EndpointPool("fake", [servers[1].url], cache=cache, **FAST)
    assert ask(alone, "same").cached
    assert sum(s.attempts for s in servers) == 1


def test_check_takes_out_a_dead_replica_and_fails_when_none_is_left(servers):
    dead = f"http://127.0.0.1:{free_port()}/v1"
    pool = EndpointPool("fake", [dead, servers[0].url], cache=None, **FAST)
    pool.check()
    assert [e.healthy for e in pool.stats()] == [False, True]
    with pytest.raises(LMTransientError, match="no endpoint of the pool is healthy"):
        EndpointPool("fake", [dead], cache=None, max_retries=0, **{
            k: v for k, v in FAST.items() if k != "health_interval"}).check()


def test_bad_settings_are_clear_errors():
    with pytest.raises(ValueError, match="at least one base URL"):
        EndpointPool("m", [" "])
    with pytest.raises(ValueError, match="twice"):
        EndpointPool("m", ["http://127.0.0.1:1/v1", "http://127.0.0.1:1/v1/"])
    with pytest.raises(ValueError, match="max_concurrency"):
        EndpointPool("m", ["http://127.0.0.1:1/v1"], max_concurrency=0)


def test_make_lm_serves_comma_separated_base_urls_as_one_pool(servers):
    lm = make_lm("fake", f"{servers[0].url}, {servers[1].url}", timeout=5, cache=None)
    assert isinstance(lm, EndpointPool)
    assert lm.base_urls == [s.url for s in servers] and lm.timeout == 5
    assert lm.describe()["backend"] == "openai-pool"


def test_an_evaluation_completes_with_the_same_results_when_a_replica_fails_midway(servers):
    a, b = servers
    evaluate = Evaluate(scripted.valset + scripted.testset, scripted.metric, num_threads=4,
                        display_progress=False)
    with context(lm=pool_of(servers)):
        clean = evaluate(scripted.Parity())
    calls = 0
    lock = threading.Lock()

    def breaking_metric(example, prediction, trace=None):
        nonlocal calls
        with lock:
            calls += 1
            if calls == 5:
                a.failures = [500] * 10_000  # from now on the first replica answers only 500
        return scripted.metric(example, prediction)

    evaluate.metric = breaking_metric
    pool = pool_of(servers, health_interval=60)
    with context(lm=pool):
        faulty = evaluate(scripted.Parity())
    assert faulty.num_lm_errors == 0 and faulty.num_errors == 0
    assert [dict(r.prediction) for r in faulty.results] == \
        [dict(r.prediction) for r in clean.results]
    assert faulty.score == clean.score
    assert not pool.stats()[0].healthy and b.attempts > 0
    assert faulty.usage.calls == len(evaluate.devset)


def test_an_lm_is_rebuilt_from_its_description(servers):
    from cotune.lm import OpenAILM
    from cotune.lm.factory import lm_from_description

    pool = pool_of(servers, max_concurrency=3)
    again = lm_from_description(pool.describe(), cache=None)
    assert isinstance(again, EndpointPool)
    assert (again.base_urls, again.max_concurrency) == (pool.base_urls, 3)
    assert again.identity() == pool.identity()
    single = OpenAILM("fake", base_url=servers[0].url, cache=None)
    assert lm_from_description(single.describe(), cache=None).identity() == single.identity()
    assert lm_from_description(lambda: single) is single
    with pytest.raises(ValueError, match="backend 'nope'"):
        lm_from_description({"backend": "nope"})


def test_usage_and_budgets_take_what_another_process_counted():
    from cotune.lm import Budget, UsageSnapshot
    from cotune.lm.usage import add_to_active_meters, track_usage

    with track_usage() as meter:
        add_to_active_meters(UsageSnapshot(calls=3, cache_hits=1, prompt_tokens=10,
                                           completion_tokens=5, failed_calls=1))
    assert meter.snapshot() == UsageSnapshot(calls=3, cache_hits=1, prompt_tokens=10,
                                             completion_tokens=5, failed_calls=1)
    b = Budget(max_calls=4)
    b.charge(3, 15)
    assert (b.calls, b.tokens, b.remaining_calls) == (3, 15, 1)
