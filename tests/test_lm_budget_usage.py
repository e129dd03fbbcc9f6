"""Budgets and usage accounting at the LM choke point."""

from __future__ import annotations

import pytest

from cotune.core import imap_unordered
from cotune.lm import (
    Budget,
    BudgetExceeded,
    LMCache,
    LMRequestError,
    LMTransientError,
    ScriptedLM,
    budget,
    track_usage,
)

MESSAGES = [{"role": "user", "content": "one two three"}]  # ScriptedLM: 3 prompt tokens


def ask(lm: ScriptedLM, i: int = 0):
    return lm.chat([{"role": "user", "content": f"question {i} here"}])


def test_call_budget_lets_exactly_max_calls_through():
    lm = ScriptedLM("four words of answer")
    with budget(max_calls=3) as b:
        for i in range(3):
            ask(lm, i)
        with pytest.raises(BudgetExceeded):
            ask(lm, 3)
    assert len(lm.requests) == 3
    assert b.calls == 3
    assert b.exhausted
    ask(lm, 4)  # outside the block there is no cap


def test_token_budget_stops_the_next_call():
    lm = ScriptedLM("a b c d e")  # 3 prompt + 5 completion tokens a call
    with budget(max_tokens=20) as b:
        ask(lm, 0)
        ask(lm, 1)
        assert b.tokens == 16
        ask(lm, 2)  # 16 < 20: allowed, and it overshoots
        with pytest.raises(BudgetExceeded, match="token"):
            ask(lm, 3)
    assert b.tokens == 24
    assert len(lm.requests) == 3


def test_per_lm_budget_applies_only_to_that_lm():
    capped = ScriptedLM("x", budget=Budget(max_calls=2))
    free = ScriptedLM("y")
    ask(capped, 0)
    ask(capped, 1)
    with pytest.raises(BudgetExceeded):
        ask(capped, 2)
    for i in range(5):
        ask(free, i)
    assert capped.budget.calls == 2


def test_nested_budgets_all_apply():
    lm = ScriptedLM("x")
    with budget(max_calls=5) as outer:
        with budget(max_calls=1) as inner:
            ask(lm, 0)
            with pytest.raises(BudgetExceeded):
                ask(lm, 1)
        ask(lm, 2)
    assert (inner.calls, outer.calls) == (1, 2)


def test_cache_hits_count_as_calls(tmp_path):
    lm = ScriptedLM("x", cache=LMCache(tmp_path / "c.sqlite"))
    with budget(max_calls=2):
        ask(lm, 0)
        assert ask(lm, 0).cached
        with pytest.raises(BudgetExceeded):
            ask(lm, 0)
    assert len(lm.requests) == 1


def test_failed_call_does_not_consume_budget():
    def script(request):
        if "bad" in request.messages[0]["content"]:
            raise LMRequestError("rejected", status_code=400)
        return "ok"

    lm = ScriptedLM(script)
    with budget(max_calls=2) as b:
        with pytest.raises(LMRequestError):
            lm.chat([{"role": "user", "content": "bad"}])
        assert b.calls == 0
        ask(lm, 0)
        ask(lm, 1)
        with pytest.raises(BudgetExceeded):
            ask(lm, 2)


def test_transient_failures_are_retried_then_count_once():
    failures = [LMTransientError("503"), LMTransientError("timeout")]

    def script(request):
        if failures:
            raise failures.pop(0)
        return "ok"

    lm = ScriptedLM(script, retry_initial_delay=0.001)
    with budget(max_calls=1) as b, track_usage() as meter:
        assert ask(lm).text == "ok"
    assert b.calls == 1
    assert meter.snapshot().calls == 1


def test_track_usage_counts_calls_hits_and_tokens(tmp_path):
    lm = ScriptedLM("a b", cache=LMCache(tmp_path / "c.sqlite"))
    with track_usage() as meter:
        lm.chat(MESSAGES)
        lm.chat(MESSAGES)  # hit
        lm.chat(MESSAGES, n=2, rollout_id=1)
    usage = meter.snapshot()
    assert usage.calls == 3
    assert usage.cache_hits == 1
    assert usage.backend_calls == 2
    assert usage.prompt_tokens == 3 * 3
    assert usage.completion_tokens == 2 + 2 + 4
    assert usage.total_tokens == 9 + 8
    assert usage.to_json()["backend_calls"] == 2


def test_nested_track_usage_blocks_count_their_own_calls():
    lm = ScriptedLM("x")
    with track_usage() as outer:
        ask(lm, 0)
        with track_usage() as inner:
            ask(lm, 1)
            ask(lm, 2)
        ask(lm, 3)
    assert inner.snapshot().calls == 2
    assert outer.snapshot().calls == 4
    assert lm.usage.calls == 4


def test_usage_and_budget_reach_worker_threads():
    lm = ScriptedLM("x y")
    with track_usage() as meter, budget(max_calls=30) as b:
        results = [f.result() for _, f in imap_unordered(lambda i: ask(lm, i), range(20), 4)]
    assert len(results) == 20
    assert meter.snapshot().calls == 20
    assert meter.snapshot().completion_tokens == 40
    assert b.calls == 20


def test_budget_stops_worker_threads():
    lm = ScriptedLM("x")
    with budget(max_calls=5):
        futures = [f for _, f in imap_unordered(lambda i: ask(lm, i), range(12), 3)]
    outcomes = [f.exception() for f in futures]
    assert sum(e is None for e in outcomes) == 5
    assert all(isinstance(e, BudgetExceeded) for e in outcomes if e is not None)
    assert len(lm.requests) == 5


def test_price_per_million_and_free_cache_hits(tmp_path):
    lm = ScriptedLM(
        "a b c d", cache=LMCache(tmp_path / "c.sqlite"), price_per_million=(2.0, 10.0)
    )
    with track_usage() as meter:
        lm.chat(MESSAGES)  # 3 prompt, 4 completion tokens
        lm.chat(MESSAGES)  # cache hit: free
    expected = (3 * 2.0 + 4 * 10.0) / 1e6
    assert meter.snapshot().cost == pytest.approx(expected)
    assert lm.usage.cost == pytest.approx(expected)


def test_no_price_means_zero_cost():
    lm = ScriptedLM("x")
    ask(lm)
    assert lm.usage.cost == 0.0


# -- steps replayed from a journal ---------------------------------------------------------------


def test_a_replayed_step_is_charged_as_the_cache_hits_it_stands_for(tmp_path):
    from cotune.lm.types import TokenUsage
    from cotune.lm.usage import charge_replayed

    lm = ScriptedLM("a b c d e", cache=LMCache(tmp_path / "c.sqlite"))
    for i in range(3):
        ask(lm, i)
    with track_usage() as hits_meter, budget() as hits_budget:
        for i in range(3):
            assert ask(lm, i).cached
    with track_usage() as meter, budget() as b:
        charge_replayed(3, TokenUsage(3 * 3, 3 * 5))
    assert meter.snapshot() == hits_meter.snapshot()
    assert (b.calls, b.tokens) == (hits_budget.calls, hits_budget.tokens) == (3, 24)
    assert meter.snapshot().cache_hits == 3 and meter.snapshot().backend_calls == 0


def test_a_replay_stops_at_the_call_the_budget_has_no_room_for():
    from cotune.lm.types import TokenUsage
    from cotune.lm.usage import charge_replayed

    with track_usage() as meter, budget(max_calls=5) as outer, budget(max_calls=2) as inner, \
            pytest.raises(BudgetExceeded):
        charge_replayed(3, TokenUsage(10, 10))
    # two calls fit; the tokens come with the last call, which never came
    assert (inner.calls, inner.tokens, meter.snapshot().calls, meter.snapshot().total_tokens) \
        == (2, 0, 2, 0)
    assert outer.calls == 2  # the call the inner budget refused is charged to no budget
    with budget(max_tokens=10) as b:
        charge_replayed(1, TokenUsage(6, 6))  # the tokens of a call are known after it
        with pytest.raises(BudgetExceeded, match="token budget"):
            charge_replayed(1, TokenUsage())
    assert b.tokens == 12
    with track_usage() as none:
        charge_replayed(0, TokenUsage(5, 5))
    assert none.snapshot().calls == 0 and none.snapshot().total_tokens == 0
