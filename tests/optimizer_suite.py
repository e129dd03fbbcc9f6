"""The test suite every optimizer must pass.  Plug an optimizer in by subclassing
``OptimizerSuite`` and defining ``make_optimizer`` (see test_optimizer_suite.py; every
registered optimizer has such a subclass, which test_optimizer_registry.py checks)."""

from __future__ import annotations

import re
import threading

import pytest
from helpers import exact as exact_answer

from cotune import Budget, Example, Module, Predict, ScriptedLM, context, load_program, save_program
from cotune.lm import LMError, LMTransientError, is_infrastructure_error
from cotune.optimize import MemoryJournal, Optimizer


class AddTwo(Module):
    """Two predictors, so that demos must reach the right one."""

    def __init__(self):
        self.plan = Predict("question -> plan")
        self.solve = Predict("question, plan -> answer: int")

    def forward(self, question):
        plan = self.plan(question=question).plan
        return self.solve(question=question, plan=plan)


def arithmetic_data(n: int, offset: int = 0) -> list[Example]:
    return [
        Example(question=f"{i} + {i % 7}", answer=i + i % 7).with_inputs("question")
        for i in range(offset, offset + n)
    ]


def scripted_solver() -> ScriptedLM:
    """Plans always; solves right when it has seen at least one demo, or for even numbers.
    Records whether any prompt carried its own query among the demos."""
    lm = ScriptedLM(_answer)
    return lm


def _answer(request) -> str:
    messages = request.messages
    query = messages[-1]["content"]
    if "Plan: <plan>" in messages[0]["content"]:
        return "Plan: add the two numbers"
    a, b = map(int, re.search(r"Question: (\d+) \+ (\d+)", query).groups())
    has_demos = len(messages) > 2
    right = has_demos or a % 2 == 0
    return f"Answer: {a + b if right else a + b + 1}"


class OutageLM(ScriptedLM):
    """``scripted_solver``'s answers, until ``up_for`` requests were answered; from then on
    every request fails as a dead endpoint's does (its retries spent), until :meth:`recover`."""

    def __init__(self, up_for: int, script=None, **kwargs) -> None:
        super().__init__(script or _answer, max_retries=1, retry_initial_delay=0.001, **kwargs)
        self.up_for: int | None = up_for
        self.answered = 0
        self.failed = 0
        self._count_lock = threading.Lock()

    def recover(self) -> None:
        self.up_for = None

    def _complete(self, request):
        with self._count_lock:
            down = self.up_for is not None and self.answered >= self.up_for
            if down:
                self.failed += 1
            else:
                self.answered += 1
        if down:
            raise LMTransientError("connection refused by http://127.0.0.1:9/v1")
        return super()._complete(request)


class SimulatedKill(BaseException):
    """The process dies here: nothing in cotune may catch it (as nothing catches a kill)."""


class KillingJournal(MemoryJournal):
    """A journal that 'kills the process' when a step is about to be recorded once it holds
    ``kill_at`` steps: the step in flight is lost, as it is when a run is killed."""

    def __init__(self, kill_at: int | None = None) -> None:
        super().__init__()
        self.kill_at = kill_at
        self._kill_lock = threading.Lock()  # the kill comes before any step beyond kill_at

    def put(self, key, value):
        with self._kill_lock:
            if self.kill_at is not None and len(self.keys()) >= self.kill_at:
                raise SimulatedKill(key)
            super().put(key, value)


def journal_entries(journal) -> dict:
    return {k: journal.get(k) for k in journal.keys("")}


def own_demo_violations(lm: ScriptedLM) -> list[str]:
    """Queries that also appear as a demo in the same prompt."""
    bad = []
    for request in lm.requests:
        query = request.messages[-1]["content"]
        demo_inputs = [m["content"] for m in request.messages[1:-1] if m["role"] == "user"]
        if query in demo_inputs:
            bad.append(query)
    return bad


class OptimizerSuite:
    budget_calls = 25

    def make_optimizer(self, metric, seed: int) -> Optimizer:
        raise NotImplementedError

    def run(self, seed=0, budget=None, lm=None, journal=None, workdir=None):
        lm = lm or scripted_solver()
        program = AddTwo()
        with context(lm=lm):
            result = self.make_optimizer(exact_answer, seed).optimize(
                program, arithmetic_data(16), arithmetic_data(8, offset=100), budget=budget,
                journal=journal, workdir=workdir,
            )
        return program, result, lm

    def test_an_lm_outage_stops_it_and_the_rerun_gives_the_clean_result(self, tmp_path):
        """An LM failure is no score: the optimizer stops with the LM's error, its journal
        keeps only steps finished before the outage (exactly as the clean run computed them),
        and the rerun with the LM back gives the clean run's result."""
        from cotune.runs.journal import SQLiteJournal

        work = tmp_path / "work"
        reference = scripted_solver()
        with SQLiteJournal(tmp_path / "clean.sqlite") as journal:
            _, clean, _ = self.run(lm=reference, journal=journal, workdir=work)
            clean_steps = {k: journal.get(k) for k in journal.keys("")}
        if len(reference.requests) < 2:
            pytest.skip("this optimizer makes no LM calls")

        lm = OutageLM(up_for=len(reference.requests) // 2)
        with SQLiteJournal(tmp_path / "run.sqlite") as journal:
            with pytest.raises(LMError) as info:
                self.run(lm=lm, journal=journal, workdir=work)
            assert is_infrastructure_error(info.value) and lm.failed > 0
            assert "127.0.0.1:9" in info.value.describe()
            kept = {k: journal.get(k) for k in journal.keys("")}
        assert all(clean_steps[k] == v for k, v in kept.items())

        lm.recover()
        with SQLiteJournal(tmp_path / "run.sqlite") as journal:
            _, again, _ = self.run(lm=lm, journal=journal, workdir=work)
            assert {k: journal.get(k) for k in journal.keys("")} == clean_steps
        assert again.program.dump_state() == clean.program.dump_state()
        assert [c.score for c in again.candidates] == [c.score for c in clean.candidates]

    def test_a_killed_run_resumes_to_the_uninterrupted_result(self, tmp_path):
        """Killed halfway through its journaled steps, the rerun on the same journal replays
        what was finished, computes only the rest (fewer LM calls than a run from scratch)
        and ends with the program, candidates and journal of the run never killed."""
        work = tmp_path / "work"
        clean_journal, reference = KillingJournal(), scripted_solver()
        _, clean, _ = self.run(lm=reference, journal=clean_journal, workdir=work)
        steps = journal_entries(clean_journal)
        if len(steps) < 2:
            pytest.skip("this optimizer journals fewer than two steps: no point between them")

        journal = KillingJournal(kill_at=len(steps) // 2)
        with pytest.raises(SimulatedKill):
            self.run(journal=journal, workdir=work)
        kept = journal_entries(journal)
        assert len(kept) == len(steps) // 2 and all(steps[k] == v for k, v in kept.items())

        journal.kill_at = None
        lm = scripted_solver()
        _, resumed, _ = self.run(lm=lm, journal=journal, workdir=work)
        assert resumed.program.dump_state() == clean.program.dump_state()
        assert [c.score for c in resumed.candidates] == [c.score for c in clean.candidates]
        assert journal_entries(journal) == steps
        assert len(lm.requests) < len(reference.requests)

    def test_a_run_stopped_by_its_budget_resumes_to_the_unbudgeted_result(self, tmp_path):
        """A call budget stops the run mid-step; rerun on the same run journal without the
        budget, it ends where the run that never stopped ends."""
        from cotune.runs.journal import SQLiteJournal

        work = tmp_path / "work"
        reference = scripted_solver()
        with SQLiteJournal(tmp_path / "clean.sqlite") as journal:
            _, clean, _ = self.run(lm=reference, journal=journal, workdir=work)
            steps = journal_entries(journal)
        if len(reference.requests) < 2:
            pytest.skip("this optimizer makes no LM calls")

        cap = len(reference.requests) // 2
        with SQLiteJournal(tmp_path / "run.sqlite") as journal:
            _, stopped, _ = self.run(budget=Budget(max_calls=cap), journal=journal, workdir=work)
            assert stopped.stopped_by_budget and stopped.usage.calls <= cap
            kept = journal_entries(journal)
        assert all(steps[k] == v for k, v in kept.items())

        with SQLiteJournal(tmp_path / "run.sqlite") as journal:
            _, resumed, _ = self.run(journal=journal, workdir=work)
            assert journal_entries(journal) == steps
        assert not resumed.stopped_by_budget
        assert resumed.program.dump_state() == clean.program.dump_state()
        assert [c.score for c in resumed.candidates] == [c.score for c in clean.candidates]

    def test_does_not_mutate_its_input(self):
        program, result, _ = self.run()
        assert program.dump_state() == AddTwo().dump_state()
        assert result.program is not program

    def test_same_seed_same_result(self):
        _, first, _ = self.run(seed=3)
        _, second, _ = self.run(seed=3)
        assert first.program.dump_state() == second.program.dump_state()
        assert [c.score for c in first.candidates] == [c.score for c in second.candidates]

    def test_respects_its_budget(self):
        lm = scripted_solver()
        _, result, _ = self.run(budget=Budget(max_calls=self.budget_calls), lm=lm)
        assert len(lm.requests) <= self.budget_calls
        assert isinstance(result.program, AddTwo)
        assert result.usage.calls <= self.budget_calls

    def test_a_training_example_is_never_its_own_demo(self):
        _, result, lm = self.run()
        assert own_demo_violations(lm) == []
        with context(lm=lm):
            for ex in arithmetic_data(16):
                result.program(question=ex.question)
        assert own_demo_violations(lm) == []

    def test_returned_program_saves_and_loads(self, tmp_path):
        _, result, _ = self.run()
        path = save_program(result.program, tmp_path / "program.json")
        loaded = load_program(AddTwo(), path)
        assert loaded.dump_state() == result.program.dump_state()

    def test_rejects_bad_data_clearly(self):
        with pytest.raises(ValueError, match="trainset"):
            self.make_optimizer(exact_answer, 0).optimize(AddTwo(), [])
        with pytest.raises(ValueError, match="inputs"):
            self.make_optimizer(exact_answer, 0).optimize(AddTwo(), [Example(question="1 + 1")])
