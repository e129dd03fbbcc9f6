"""Journals: ``memo`` gives a first run and a resumed run values of the same types, and a
replayed step is charged to budgets and meters through ``charge_replayed``."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest

from cotune import ScriptedLM
from cotune.evaluate.metrics import Score
from cotune.lm import Budget, BudgetExceeded, track_usage, use_budget
from cotune.lm.types import TokenUsage
from cotune.optimize import MemoryJournal
from cotune.optimize.better_together import PrefixedJournal
from cotune.runs.journal import SQLiteJournal

# what the steps of optimizers return, with the shapes JSON does not keep
VALUE = {"pair": (1, 2), 3: "three", "nested": [{"t": (0.5, None)}], "score": Score(1.0, "why"),
         "ok": True}
RECORDED = {"pair": [1, 2], "3": "three", "nested": [{"t": [0.5, None]}], "score": 1.0,
            "ok": True}


def shape(value):
    """The types of ``value`` all the way down."""
    if isinstance(value, dict):
        return ("dict", {type(k).__name__ + ":" + str(k): shape(v) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [shape(v) for v in value])
    return type(value).__name__


def journals(tmp_path: Path):
    """``(journal, a reopened view of it)`` for each kind of journal."""
    memory = MemoryJournal()
    path = tmp_path / "journal.sqlite"
    return {
        "memory": (memory, memory),
        "sqlite": (SQLiteJournal(path), SQLiteJournal(path)),
        "prefixed": (PrefixedJournal(SQLiteJournal(path), "bt:"),
                     PrefixedJournal(SQLiteJournal(path), "bt:")),
    }


@pytest.mark.parametrize("kind", ["memory", "sqlite", "prefixed"])
def test_memo_returns_the_same_types_fresh_and_replayed(tmp_path, kind):
    journal, reopened = journals(tmp_path)[kind]
    fresh = journal.memo("step", lambda: VALUE)
    replayed = reopened.memo("step", lambda: pytest.fail("recomputed"))
    assert fresh == replayed == RECORDED
    assert shape(fresh) == shape(replayed) == shape(RECORDED)
    assert type(fresh["score"]) is float  # not a Score that only the first run would have


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_memo_returns_the_recorded_form_even_when_it_does_not_record(tmp_path, kind):
    from cotune.lm import LMTransientError

    class Down(ScriptedLM):
        def _complete(self, request):
            raise LMTransientError("connection refused")

    def step():
        with contextlib.suppress(LMTransientError):
            Down("x", max_retries=0).chat([{"role": "user", "content": "q"}])
        return VALUE

    journal, _ = journals(tmp_path)[kind]
    assert shape(journal.memo("step", step)) == shape(RECORDED)
    assert journal.keys() == []  # computed while the LM failed: not recorded


def test_the_sqlite_journal_returns_what_it_wrote_secrets_redacted(tmp_path):
    value = {"url": "http://user:hunter2@host/v1"}
    path = tmp_path / "journal.sqlite"
    fresh = SQLiteJournal(path).memo("step", lambda: value)
    assert fresh == SQLiteJournal(path).memo("step", lambda: None)
    assert "hunter2" not in fresh["url"]


def test_a_value_that_is_not_json_is_refused_fresh_as_it_would_be_on_writing(tmp_path):
    for journal in (MemoryJournal(), SQLiteJournal(tmp_path / "j.sqlite")):
        with pytest.raises(TypeError):
            journal.memo("bad", object)
        assert journal.keys() == []


def test_a_replayed_step_charges_its_calls_and_tokens_as_the_first_run_spent_them(tmp_path):
    path, lm = tmp_path / "journal.sqlite", ScriptedLM("two words")

    def step() -> str:
        return "|".join(lm.chat([{"role": "user", "content": f"q {i}"}]).text for i in range(3))

    with track_usage() as first_meter, use_budget(Budget()) as first_budget:
        SQLiteJournal(path).memo("step", step)
    first = first_meter.snapshot()
    journal = SQLiteJournal(path)
    with track_usage() as meter, use_budget(Budget()) as b:
        journal.memo("step", step)
    replayed = meter.snapshot()
    assert len(lm.requests) == 3  # the replay made no call
    assert (b.calls, b.tokens) == (first_budget.calls, first_budget.tokens) == (3, 3 * 4)
    assert (replayed.calls, replayed.cache_hits, replayed.backend_calls) == (3, 3, 0)
    assert (replayed.prompt_tokens, replayed.completion_tokens) == \
        (first.prompt_tokens, first.completion_tokens)
    assert replayed.cost == 0.0
    assert (journal.replayed_steps, journal.replayed_calls) == (1, 3)


def test_the_journal_charges_a_replay_through_the_lm_layer(tmp_path, monkeypatch):
    charged = []
    monkeypatch.setattr("cotune.runs.journal.charge_replayed",
                        lambda calls, usage: charged.append((calls, usage)))
    path, lm = tmp_path / "journal.sqlite", ScriptedLM("a b c")
    SQLiteJournal(path).memo("step", lambda: lm.chat([{"role": "user", "content": "x y"}]).text)
    SQLiteJournal(path).memo("step", lambda: pytest.fail("recomputed"))
    assert charged == [(1, TokenUsage(2, 3))]


def test_a_smaller_budget_stops_the_replay_where_the_first_run_would_have_stopped(tmp_path):
    path, lm = tmp_path / "journal.sqlite", ScriptedLM("x")
    SQLiteJournal(path).memo("step", lambda: [lm.chat([{"role": "user", "content": str(i)}]).text
                                              for i in range(3)])
    with track_usage() as meter, use_budget(Budget(max_calls=2)) as b, \
            pytest.raises(BudgetExceeded):
        SQLiteJournal(path).memo("step", lambda: pytest.fail("recomputed"))
    assert b.calls == 2 and meter.snapshot().calls == 2
