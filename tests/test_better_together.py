"""BootstrapFinetune and BetterTogether with a scripted LM and a stub trainer: no model, no
torch, milliseconds."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import pytest
from optimizer_suite import AddTwo, arithmetic_data, exact_answer, scripted_solver

from cotune import Example, Module, Predict, ScriptedLM, context
from cotune.finetune.errors import NoTrainingDataError
from cotune.optimize import BetterTogether, BootstrapFinetune, MemoryJournal, Optimizer
from cotune.optimize.better_together import PrefixedJournal, parse_strategy
from cotune.optimize.finetune import (
    RECORDS_FILE,
    AdapterFileError,
    restore_tuned_lm,
    training_groups,
)
from cotune.runs.journal import SQLiteJournal

# -- stubs ---------------------------------------------------------------------------------------


def solver_off_by(error: int):
    """A "fine-tuned" solver's script: plans, and always answers the sum plus ``error``."""

    def answer(request) -> str:
        if "Plan: <plan>" in request.messages[0]["content"]:
            return "Plan: add the two numbers"
        query = request.messages[-1]["content"]
        a, b = map(int, re.search(r"Question: (\d+) \+ (\d+)", query).groups())
        return f"Answer: {a + b + error}"

    return answer


always_right = solver_off_by(0)
"""A perfectly fine-tuned solver."""
always_off_by_one = solver_off_by(1)
"""A fine-tuning that went wrong."""


class TunedLM(ScriptedLM):
    """What the stub trainer returns: a scripted LM that stands for a base LM plus an adapter."""

    def __init__(self, base_name: str, adapter: Path | None, *, saveable: bool = True,
                 script=always_right) -> None:
        super().__init__(script, name=f"{base_name}+lora")
        self.adapter = adapter
        self.saveable = saveable

    def describe(self):
        if not self.saveable:  # like the context LM: nothing to record in program.json
            return None
        return {"backend": "stub", "lora_path": str(self.adapter),
                "lora_sha256": hashlib.sha256(self.adapter.read_bytes()).hexdigest()}


class StubTrainer:
    """Logs every fine-tuning call, writes a fake adapter and returns a :class:`TunedLM`."""

    def __init__(self, log: list | None = None, *, saveable: bool = True,
                 script=always_right) -> None:
        self.calls: list[tuple[object, list, Path]] = []
        self.loads = 0
        self.log = log if log is not None else []
        self.saveable = saveable
        self.script = script

    def fine_tune(self, lm, records, out_dir):
        self.calls.append((lm, records, out_dir))
        self.log.append("w")
        adapter = Path(out_dir) / "adapter.gguf"
        adapter.write_text(json.dumps(records))
        return TunedLM(getattr(lm, "name", "lm"), adapter if self.saveable else None,
                       saveable=self.saveable, script=self.script)

    def load_tuned(self, lm, description):
        path = Path(description["lora_path"])
        if hashlib.sha256(path.read_bytes()).hexdigest() != description["lora_sha256"]:
            raise AdapterFileError(f"{path} changed")
        self.loads += 1
        return TunedLM(getattr(lm, "name", "lm"), path)


class LoggingPromptStep(Optimizer):
    """A stand-in "p" step: logs the training order it got, marks the instruction, and offers
    the program with a fixed score (or None without a validation set)."""

    name = "stub-p"

    def __init__(self, metric, log, scores=(0.5,), **kwargs):
        super().__init__(metric, **kwargs)
        self.log = log
        self.orders: list[list[str]] = []
        self.scores = list(scores)

    def estimate_cost(self, program, trainset, valset):
        from cotune.optimize import CostEstimate

        return CostEstimate(0)

    def _optimize(self, run, student, trainset, valset):
        self.log.append("p")
        self.orders.append([ex.question for ex in trainset])
        score = self.scores[(len(self.orders) - 1) % len(self.scores)]
        for p in student.predictors():
            p.instruction += f" [p{len(self.orders)}]"
        run.offer(student, score if valset else None, "stub prompt step")


class RecordingReporter:
    def __init__(self):
        self.messages: list[str] = []

    def projected(self, optimizer, estimate):
        pass

    def start_phase(self, name, total):
        pass

    def advance(self, best_score, **info):
        pass

    def end_phase(self):
        pass

    def message(self, text):
        self.messages.append(text)


class Classify(Module):
    def __init__(self):
        self.solve = Predict("question -> answer: int")

    def forward(self, question):
        return self.solve(question=question)


def never(example, prediction, trace=None):
    return 0.0


# -- BootstrapFinetune: training data ------------------------------------------------------------


def test_training_records_are_the_inference_prompts_plus_the_answer(tmp_path):
    program = Classify()
    train = arithmetic_data(6)
    # demos, one of them a training query: Predict drops it from that query's prompt
    program.solve.demos = [Example(question="1 + 1", answer=2).with_inputs("question"),
                           Example(question="40 + 5", answer=45).with_inputs("question")]
    program.solve.instruction = "Add the numbers."
    lm, trainer = ScriptedLM(always_right), StubTrainer()
    with context(lm=lm):
        BootstrapFinetune(exact_answer, trainer=trainer).optimize(program, train, workdir=tmp_path)

    [(tuned_for, records, out_dir)] = trainer.calls
    assert tuned_for is lm
    assert len(records) == len(train) == len(lm.requests)
    sent = {r.messages[-1]["content"]: r for r in lm.requests}
    for record in records:
        *prompt, target = record["messages"]
        request = sent[prompt[-1]["content"]]
        assert prompt == [dict(m) for m in request.messages]
        assert target == {"role": "assistant", "content": always_right(request)}
    lengths = {r["messages"][-2]["content"]: len(r["messages"]) for r in records}
    assert lengths["Question: 1 + 1"] == 1 + 2 + 2  # system, one demo pair, query, answer
    assert lengths["Question: 2 + 2"] == 1 + 4 + 2
    saved = [json.loads(line) for line in (out_dir / RECORDS_FILE).read_text().splitlines()]
    assert saved == records


def test_the_records_are_written_once_by_a_trainer_that_keeps_them(tmp_path):
    """LoraTrainer writes train_records.jsonl itself (train_lora): BootstrapFinetune then
    leaves the file as the trainer wrote it, and writes it only for a trainer that does not."""
    writes = []

    class RecordingTrainer(StubTrainer):
        def fine_tune(self, lm, records, out_dir):
            from cotune.finetune.records import write_records

            path = Path(out_dir) / RECORDS_FILE
            writes.append(path.exists())  # nobody wrote the records before the trainer
            write_records(path, records[:1])
            return super().fine_tune(lm, records, out_dir)

    trainer = RecordingTrainer()
    with context(lm=ScriptedLM(always_right)):
        BootstrapFinetune(exact_answer, trainer=trainer).optimize(
            Classify(), arithmetic_data(4), workdir=tmp_path)
    [(_, records, out_dir)] = trainer.calls
    assert len(records) == 4 and writes == [False]
    saved = [json.loads(line) for line in (out_dir / RECORDS_FILE).read_text().splitlines()]
    assert saved == records[:1]  # the trainer's file, not overwritten


def test_train_without_demos_renders_zero_shot_prompts(tmp_path):
    program = Classify()
    program.solve.demos = [Example(question="40 + 5", answer=45).with_inputs("question")]
    trainer = StubTrainer()
    with context(lm=ScriptedLM(always_right)):
        BootstrapFinetune(exact_answer, trainer=trainer, train_without_demos=True).optimize(
            program, arithmetic_data(3), workdir=tmp_path)
    assert {len(r["messages"]) for r in trainer.calls[0][1]} == {3}


def test_predictors_sharing_an_lm_share_one_adapter(tmp_path):
    trainer = StubTrainer()
    with context(lm=scripted_solver()):
        result = BootstrapFinetune(exact_answer, trainer=trainer).optimize(
            AddTwo(), arithmetic_data(6), workdir=tmp_path)
    [(_, records, _)] = trainer.calls
    passing = 3  # the scripted solver gets even numbers right without demos
    assert len(records) == 2 * passing  # a plan and a solve record per passing trace
    plan, solve = result.program.predictors()
    assert plan.lm is solve.lm and isinstance(plan.lm, TunedLM)


def test_one_adapter_per_predictor_on_request(tmp_path):
    trainer = StubTrainer()
    with context(lm=scripted_solver()):
        result = BootstrapFinetune(exact_answer, trainer=trainer, per_predictor=True).optimize(
            AddTwo(), arithmetic_data(6), workdir=tmp_path)
    assert len(trainer.calls) == 2
    assert [len(records) for _, records, _ in trainer.calls] == [3, 3]
    assert "Plan:" in trainer.calls[0][1][0]["messages"][-1]["content"]
    assert "Answer:" in trainer.calls[1][1][0]["messages"][-1]["content"]
    assert len({c[2] for c in trainer.calls}) == 2  # separate folders
    plan, solve = result.program.predictors()
    assert plan.lm is not solve.lm


def test_predictors_with_different_lms_get_their_own_adapters(tmp_path):
    program = AddTwo()
    planner, solver = scripted_solver(), scripted_solver()
    program.plan.lm, program.solve.lm = planner, solver
    assert [g.predictors for g in training_groups(program)] == [["plan"], ["solve"]]
    trainer = StubTrainer()
    BootstrapFinetune(exact_answer, trainer=trainer).optimize(
        program, arithmetic_data(4), workdir=tmp_path)
    assert [c[0] for c in trainer.calls] == [planner, solver]


def test_the_tuned_program_replaces_the_baseline_with_a_gain_beyond_noise(tmp_path):
    """The untuned program is right on the even half of the 12 validation questions, the tuned
    one on all: a paired gain whose interval excludes 0."""
    with context(lm=scripted_solver()):
        result = BootstrapFinetune(exact_answer, trainer=StubTrainer()).optimize(
            AddTwo(), arithmetic_data(6), arithmetic_data(12, offset=50), workdir=tmp_path)
    baseline, tuned = result.candidates
    assert baseline.description.startswith("baseline") and baseline.score == 0.5
    assert baseline.state["predictors"]["solve"]["lm"] is None  # the untuned program, kept apart
    assert tuned.score == 1.0 and tuned.vs_baseline["allowed"]
    assert tuned.params["adapters"][0]["records"] == 6
    assert result.best_index == 1
    assert result.program.solve.lm.name.endswith("+lora")
    assert tuned.state["predictors"]["solve"]["lm"]["backend"] == "stub"


def test_a_tuned_program_worse_on_validation_is_refused(tmp_path):
    reporter = RecordingReporter()
    with context(lm=scripted_solver()):
        result = BootstrapFinetune(
            exact_answer, trainer=StubTrainer(script=always_off_by_one)
        ).optimize(AddTwo(), arithmetic_data(6), arithmetic_data(12, offset=50),
                   workdir=tmp_path, reporter=reporter)
    baseline, tuned = result.candidates
    assert (baseline.score, tuned.score) == (0.5, 0.0)
    assert result.best_index == 0 and not tuned.vs_baseline["allowed"]
    assert result.program.solve.lm is None  # the program as given, answered by the context LM
    assert "baseline stays" in result.selection["reason"]


def test_without_baseline_scoring_the_tuned_program_is_the_only_candidate(tmp_path):
    with context(lm=scripted_solver()):
        finetune = BootstrapFinetune(exact_answer, trainer=StubTrainer(script=always_off_by_one),
                                     evaluate_baseline=False)
        result = finetune.optimize(AddTwo(), arithmetic_data(6), arithmetic_data(4, offset=50),
                                   workdir=tmp_path)
    [candidate] = result.candidates
    assert candidate.score == 0.0 and result.best_index == 0
    estimate = finetune.estimate_cost(AddTwo(), arithmetic_data(6), arithmetic_data(4))
    assert "baseline" not in estimate.breakdown


def test_the_cost_estimate_counts_the_baseline_pass():
    estimate = BootstrapFinetune(exact_answer, trainer=StubTrainer()).estimate_cost(
        AddTwo(), arithmetic_data(6), arithmetic_data(4))
    assert estimate.breakdown == {"bootstrap": 12, "evaluation": 8, "baseline": 8}
    assert estimate.lm_calls == 28


def test_no_passing_trace_is_a_clear_error(tmp_path):
    trainer = StubTrainer()
    with context(lm=scripted_solver()), pytest.raises(NoTrainingDataError, match="5 training"):
        BootstrapFinetune(never, trainer=trainer).optimize(
            AddTwo(), arithmetic_data(5), workdir=tmp_path)
    assert trainer.calls == []


def test_an_lm_that_cannot_be_fine_tuned_is_a_clear_error(fake_openai_server, tmp_path):
    finetune = pytest.importorskip("cotune.finetune", reason="no finetune layer")
    if not hasattr(finetune, "LoraTrainer"):
        pytest.skip("the finetune layer has no LoraTrainer yet")
    from cotune.finetune.errors import NotFineTunableError
    from cotune.lm import OpenAILM

    fake_openai_server.answer = "Answer: 2"
    lm = OpenAILM(model="gpt-test", base_url=fake_openai_server.url, api_key="x", cache=None)
    always = lambda example, prediction, trace=None: 1.0  # noqa: E731
    with context(lm=lm), pytest.raises(NotFineTunableError):
        BootstrapFinetune(always).optimize(Classify(), arithmetic_data(2), workdir=tmp_path)


# -- BootstrapFinetune: resume -------------------------------------------------------------------


def test_a_resumed_run_rebuilds_the_adapter_instead_of_retraining(tmp_path):
    trainer = StubTrainer()
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    lm = scripted_solver()

    def run():
        with context(lm=lm):
            return BootstrapFinetune(exact_answer, trainer=trainer).optimize(
                AddTwo(), arithmetic_data(6), arithmetic_data(3, offset=50),
                journal=journal, workdir=tmp_path / "work")

    first = run()
    calls_after_first = len(lm.requests)
    second = run()
    assert len(trainer.calls) == 1 and trainer.loads == 1
    assert len(lm.requests) == calls_after_first  # traces came from the journal
    assert second.program.dump_state() == first.program.dump_state()

    adapter = tmp_path / "work" / "finetune-0" / "adapter.gguf"
    adapter.write_text("changed")
    reporter = RecordingReporter()
    with context(lm=lm):
        BootstrapFinetune(exact_answer, trainer=trainer).optimize(
            AddTwo(), arithmetic_data(6), journal=journal, reporter=reporter,
            workdir=tmp_path / "work")
    assert len(trainer.calls) == 2
    assert any("training again" in m for m in reporter.messages)


def test_rebuilding_a_llamacpp_adapter_checks_the_file(tmp_path):
    adapter = tmp_path / "lora.gguf"
    description = {"backend": "llamacpp", "model": "smollm2-135m", "lora_path": str(adapter),
                   "lora_sha256": "0" * 64, "n_ctx": 2048}
    with pytest.raises(AdapterFileError, match="missing"):
        restore_tuned_lm(description)
    adapter.write_bytes(b"GGUF not the recorded one")
    with pytest.raises(AdapterFileError, match="changed"):
        restore_tuned_lm(description)
    with pytest.raises(AdapterFileError, match="only llama.cpp"):
        restore_tuned_lm({"backend": "openai", "model": "x"})


# -- BetterTogether: strategies ------------------------------------------------------------------


def make_bt(strategy, log, *, trainer=None, scores=(0.5,), **kwargs):
    p = LoggingPromptStep(exact_answer, log, scores)
    bt = BetterTogether(exact_answer, strategy=strategy, prompt_optimizer=p,
                        trainer=trainer or StubTrainer(log), **kwargs)
    return bt, p


@pytest.mark.parametrize(("strategy", "order"), [
    ("p -> w -> p", ["p", "w", "p"]),
    ("w -> p", ["w", "p"]),
    ("p->w", ["p", "w"]),
    ("w", ["w"]),
])
def test_steps_run_in_strategy_order(strategy, order, tmp_path):
    log: list[str] = []
    bt, _ = make_bt(strategy, log)
    with context(lm=scripted_solver()):
        result = bt.optimize(AddTwo(), arithmetic_data(8), workdir=tmp_path)
    assert log == order
    assert [c.params["step_name"] for c in result.candidates] == order
    assert [t.params["name"] for t in result.trials] == order


def test_the_training_set_is_reshuffled_before_each_step(tmp_path):
    def orders(seed):
        log: list[str] = []
        bt, p = make_bt("p -> w -> p", log, seed=seed)
        with context(lm=scripted_solver()):
            bt.optimize(AddTwo(), arithmetic_data(12), workdir=tmp_path / f"s{seed}")
        return p.orders

    first, second = orders(0)
    assert first != second
    assert sorted(first) == sorted(second) == sorted(ex.question for ex in arithmetic_data(12))
    assert orders(0) == [first, second]  # seeded: the same again
    assert orders(1) != [first, second]


def test_the_w_step_sees_the_p_step_prompts_and_p_sees_the_tuned_lm(tmp_path):
    log: list[str] = []
    trainer = StubTrainer(log)
    bt, _ = make_bt("p -> w -> p", log, trainer=trainer)
    with context(lm=scripted_solver()):
        result = bt.optimize(AddTwo(), arithmetic_data(8), workdir=tmp_path)
    system = trainer.calls[0][1][0]["messages"][0]["content"]
    assert "[p1]" in system
    final = result.program
    assert final.solve.instruction.endswith("[p1] [p2]")
    assert isinstance(final.solve.lm, TunedLM)
    assert (tmp_path / "step1-w" / "finetune-0" / RECORDS_FILE).is_file()


def test_the_best_step_wins_on_the_validation_set(tmp_path):
    log: list[str] = []
    bt, _ = make_bt("p -> w -> p", log, scores=(0.2, 0.6))
    with context(lm=scripted_solver()):
        result = bt.optimize(AddTwo(), arithmetic_data(8), arithmetic_data(4, offset=50),
                             workdir=tmp_path)
    assert [c.score for c in result.candidates] == [0.2, 1.0, 0.6]  # w: the tuned LM is right
    assert result.best_index == 1
    assert isinstance(result.program.solve.lm, TunedLM)
    assert result.program.solve.instruction.endswith("[p1]")
    assert [t.score for t in result.trials] == [0.2, 1.0, 0.6]


def test_a_real_p_step_then_w(tmp_path):
    from cotune.optimize import BootstrapRandomSearch

    trainer = StubTrainer()
    p = BootstrapRandomSearch(exact_answer, num_candidates=2, max_bootstrapped_demos=2)
    bt = BetterTogether(exact_answer, strategy="p -> w", prompt_optimizer=p, trainer=trainer)
    journal = MemoryJournal()
    with context(lm=scripted_solver()):  # 8 validation examples: demos' gain is beyond noise
        result = bt.optimize(AddTwo(), arithmetic_data(8), arithmetic_data(8, offset=50),
                             workdir=tmp_path, journal=journal)
    assert [c.params["strategy_prefix"] for c in result.candidates] == ["p", "p -> w"]
    # the w step does not score its input again: BetterTogether compares the steps itself
    assert journal.keys("step1:w:finetune:records")
    assert not journal.keys("step1:w:eval:baseline")
    assert result.candidates[0].state["predictors"]["solve"]["demos"]
    assert len(trainer.calls) == 1
    assert result.best_score == 1.0


def test_training_set_scores_of_a_step_never_pick_the_winner(tmp_path):
    from cotune.optimize import BootstrapRandomSearch

    p = BootstrapRandomSearch(exact_answer, num_candidates=1, max_bootstrapped_demos=2)
    bt = BetterTogether(exact_answer, strategy="p -> w -> p", prompt_optimizer=p,
                        trainer=StubTrainer())
    with context(lm=scripted_solver()):
        result = bt.optimize(AddTwo(), arithmetic_data(8), workdir=tmp_path)
    assert [c.score for c in result.candidates] == [None, None, None]
    assert result.best_index == 2


def test_without_a_validation_set_the_last_step_is_returned(tmp_path):
    log: list[str] = []
    bt, _ = make_bt("p -> w -> p", log)
    with context(lm=scripted_solver()):
        result = bt.optimize(AddTwo(), arithmetic_data(8), workdir=tmp_path)
    assert [c.score for c in result.candidates] == [None, None, None]
    assert result.best_index == 2
    assert result.program.solve.instruction.endswith("[p1] [p2]")


def test_a_w_step_without_passing_traces_is_reported_and_skipped(tmp_path):
    log: list[str] = []
    reporter = RecordingReporter()
    p = LoggingPromptStep(never, log)
    trainer = StubTrainer(log)
    bt = BetterTogether(never, strategy="w -> p", prompt_optimizer=p, trainer=trainer)
    with context(lm=scripted_solver()):
        result = bt.optimize(AddTwo(), arithmetic_data(6), arithmetic_data(2, offset=50),
                             reporter=reporter, workdir=tmp_path)
    assert log == ["p"] and trainer.calls == []
    skipped = result.candidates[0]
    assert "no trace passed the metric" in skipped.params["error"]
    assert skipped.score == 0.0  # the unchanged program, evaluated
    assert result.trials[0].error == skipped.params["error"]
    assert any("skipped" in m for m in reporter.messages)
    assert result.program.solve.lm is None  # never fine-tuned


@pytest.mark.parametrize("strategy", ["", "  ", "p ->", "-> w", "p -> -> w", "p => w", "p -> x"])
def test_bad_strategies_are_clear_errors(strategy):
    with pytest.raises(ValueError, match="valid steps: 'p', 'w'"):
        BetterTogether(exact_answer, strategy=strategy, trainer=StubTrainer())


def test_more_steps_can_be_registered():
    log: list[str] = []
    extra = LoggingPromptStep(exact_answer, log)
    bt = BetterTogether(exact_answer, strategy="p -> q", steps={"q": extra}, trainer=StubTrainer())
    assert bt.strategy == ["p", "q"]
    assert parse_strategy("q->p", ["p", "q"]) == ["q", "p"]
    with pytest.raises(ValueError, match="'p', 'w', 'q'"):
        BetterTogether(exact_answer, strategy="z", steps={"q": extra}, trainer=StubTrainer())


def test_a_resumed_strategy_replays_its_finished_steps(tmp_path):
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    trainer = StubTrainer()
    lm = scripted_solver()

    def run():
        from cotune.optimize import BootstrapRandomSearch

        p = BootstrapRandomSearch(exact_answer, num_candidates=1, max_bootstrapped_demos=2)
        bt = BetterTogether(exact_answer, strategy="p -> w -> p", prompt_optimizer=p,
                            trainer=trainer)
        with context(lm=lm):
            return bt.optimize(AddTwo(), arithmetic_data(8), arithmetic_data(4, offset=50),
                               journal=journal, workdir=tmp_path / "work")

    first = run()
    calls = len(lm.requests)
    second = run()
    assert len(trainer.calls) == 1 and trainer.loads == 1
    assert len(lm.requests) == calls
    assert second.program.dump_state() == first.program.dump_state()
    assert [c.score for c in second.candidates] == [c.score for c in first.candidates]
    assert journal.keys("step1:w:finetune:adapter") == ["step1:w:finetune:adapter0"]


def test_prefixed_journal_keeps_its_own_keys():
    inner = MemoryJournal()
    a, b = PrefixedJournal(inner, "a:"), PrefixedJournal(inner, "b:")
    assert a.memo("k", lambda: 1) == 1
    assert b.memo("k", lambda: 2) == 2
    assert a.get("k") == 1 and a.keys() == ["k"]
    assert inner.keys() == ["a:k", "b:k"]


def test_the_cost_estimate_adds_up_the_steps():
    log: list[str] = []
    bt, _ = make_bt("w -> w", log)
    estimate = bt.estimate_cost(AddTwo(), arithmetic_data(10), arithmetic_data(5))
    assert estimate.lm_calls == 2 * (10 * 2 + 5 * 2)
    assert list(estimate.breakdown) == ["step 0 (w)", "step 1 (w)"]


def test_config_names_the_strategy_and_steps():
    bt, _ = make_bt("p -> w -> p", [])
    config = bt.config()
    assert config["strategy"] == "p -> w -> p"
    assert set(config["steps"]) == {"p", "w"}
    assert config["steps"]["w"]["trainer"] == {"class": "StubTrainer"}
    assert config["steps"]["w"]["evaluate_baseline"] is False



def test_loading_a_program_with_a_missing_adapter_is_a_clear_error(tmp_path):
    from cotune import StateError, load_program, save_program

    program = Classify()
    path = save_program(program, tmp_path / "program.json")
    state = json.loads(path.read_text())
    state["predictors"]["solve"]["lm"] = {
        "backend": "llamacpp", "model": "smollm2-135m", "lora_path": str(tmp_path / "gone.gguf"),
        "lora_sha256": "0" * 64, "n_ctx": 2048}
    path.write_text(json.dumps(state))
    assert load_program(Classify(), path).solve.lm is None  # LMs only on request
    with pytest.raises(StateError, match="gone.gguf is missing"):
        load_program(Classify(), path, restore_lms=True)
