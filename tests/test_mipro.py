"""MIPRO with scripted LMs: search quality, modes, MIPRO++, resume and budgets."""

from __future__ import annotations

import re

import pytest
from helpers import QA, exact, qa_data
from optimizer_suite import OptimizerSuite
from test_proposer import is_proposal, prompt_lm, prompt_text

from cotune import Budget, Example, LMCache, ScriptedLM, context
from cotune.optimize import (
    MIPRO,
    TIPS,
    BayesianBootstrap,
    MemoryJournal,
    ProposerSettings,
    ZeroShotMIPRO,
    build_optimizer,
)
from cotune.optimize.mipro import PROPOSER_TEMPERATURES

GOOD_INSTRUCTION = "Proposed instruction 5."
"""The planted instruction: the prompt model's proposal with rollout id 5."""
GOLD = {5, 9}
"""Training examples marked "gold": a demo set holding one of them is the planted demo set."""


TRAIN = [
    Example(question=f"train {i}" + (" gold" if i in GOLD else ""), answer=f"a{i}")
    .with_inputs("question")
    for i in range(12)
]
VAL = qa_data("val", 40)


def task_reply(request) -> str:
    """Training questions: always right (so bootstrapping works).  Validation question i: right
    when i is even and the planted instruction is in the prompt, or when i is odd and a gold
    demo is: each half of the planted combination is worth half the score."""
    messages = request.messages
    kind, i = re.search(r"Question: (\w+) (\d+)", messages[-1]["content"]).groups()
    i = int(i)
    if kind == "train":
        return f"Answer: a{i}"
    demos = " ".join(m["content"] for m in messages[1:-1])
    right = GOOD_INSTRUCTION in messages[0]["content"] if i % 2 == 0 else "gold" in demos
    return f"Answer: {'a' if right else 'b'}{i}"


def task_lm(**kwargs) -> ScriptedLM:
    return ScriptedLM(task_reply, name="task", **kwargs)


def small_mipro(**overrides) -> MIPRO:
    settings = dict(
        num_instruction_candidates=4, num_demo_candidates=3, num_trials=8, minibatch_size=10,
        full_eval_every=3, max_bootstrapped_demos=2, max_labeled_demos=1, num_threads=1,
    )
    settings.update(overrides)
    return MIPRO(exact, **settings)


def optimize(optimizer, *, task=None, journal=None, budget=None):
    task = task or task_lm()
    with context(lm=task):
        return optimizer.optimize(QA(), TRAIN, VAL, journal=journal, budget=budget)


# -- search quality -----------------------------------------------------------------------------


def planted_run(seed: int):
    journal = MemoryJournal()
    optimizer = MIPRO(
        exact, num_instruction_candidates=8, num_demo_candidates=8, num_trials=25,
        minibatch_size=20, full_eval_every=5, max_bootstrapped_demos=2, max_labeled_demos=0,
        prompt_lm=prompt_lm(), seed=seed, num_threads=1,
    )
    result = optimize(optimizer, journal=journal)
    gold_sets = [i for i in range(8) if "gold" in str(journal.get(f"demos:mipro:{i}"))]
    return result, gold_sets


def test_tpe_finds_the_planted_combination_in_far_fewer_trials_than_the_grid():
    """8 instructions x 8 demo sets = 64 combinations, 25 trials.  Random search finds one of
    the one or two best combinations in 25 trials with probability 1/3 to 1/2; TPE, which
    learns that each half of the combination scores, nearly always does (TPE is stochastic:
    it may keep exploiting one half, so most seeds, not all, must succeed)."""
    found = planted = 0
    for seed in range(8):
        result, gold_sets = planted_run(seed)
        if not gold_sets:  # no demo set holds a gold demo: nothing planted for this seed
            assert result.best_score == 0.5
            continue
        planted += 1
        if result.best_score == 1.0:
            found += 1
            best = result.program.answer
            assert best.instruction == GOOD_INSTRUCTION
            assert any("gold" in d["question"] for d in best.demos)
            assert len(result.trials) == 25
    assert planted >= 5
    assert found >= planted - 1


# -- modes --------------------------------------------------------------------------------------


def test_instructions_only_leaves_demos_empty():
    result = optimize(ZeroShotMIPRO(exact, prompt_lm=prompt_lm(), num_trials=6,
                                    num_demo_candidates=2, minibatch_size=8, num_threads=1))
    assert result.program.answer.demos == []
    assert all(not c.state["predictors"]["answer"]["demos"] for c in result.candidates)
    assert all(set(t.params) == {"answer:instruction"} for t in result.trials)
    assert result.program.answer.instruction.startswith("Proposed instruction")


def test_demos_only_leaves_instructions_as_they_are():
    prompt = prompt_lm()
    result = optimize(BayesianBootstrap(exact, prompt_lm=prompt, num_trials=6,
                                        num_demo_candidates=4, minibatch_size=8, num_threads=1))
    assert prompt.requests == []
    original = QA().answer.instruction
    assert all(c.state["predictors"]["answer"]["instruction"] == original
               for c in result.candidates)
    assert all(set(t.params) == {"answer:demos"} for t in result.trials)
    assert result.program.answer.demos


def test_mipro_plus_plus_chooses_the_proposer_settings():
    prompt = prompt_lm()
    journal = MemoryJournal()
    result = optimize(small_mipro(meta_optimize_proposer=True, prompt_lm=prompt, num_trials=12),
                      journal=journal)
    keys = {"answer:instruction", "answer:demos", "answer:proposer.use_dataset_summary",
            "answer:proposer.use_program_summary", "answer:proposer.use_demos",
            "answer:proposer.tip", "answer:proposer.temperature"}
    assert all(set(t.params) == keys for t in result.trials)
    proposals = [r for r in prompt.requests if is_proposal(r)]
    assert proposals and journal.keys("proposal:")
    assert {r.temperature for r in proposals} <= set(PROPOSER_TEMPERATURES)
    # proposals are made lazily, one per new (settings, index) asked for, never up front
    assert len(proposals) == len(journal.keys("proposal:")) <= 12
    with_summary = ["DATASET-SUMMARY-TEXT" in prompt_text(r) for r in proposals]
    assert any(with_summary) and not all(with_summary)


def test_the_prompt_model_and_the_task_model_can_differ():
    prompt, task = prompt_lm(), task_lm()
    optimize(small_mipro(prompt_lm=prompt), task=task)
    assert prompt.requests and task.requests
    assert all("Question:" in r.messages[-1]["content"] for r in task.requests)
    assert not any("Question: val" in prompt_text(r) for r in prompt.requests)


def test_presets_and_explicit_settings():
    light = MIPRO(exact)
    assert (light.num_instruction_candidates, light.num_demo_candidates, light.num_trials,
            light.minibatch_size) == (6, 6, 15, 25)
    heavy = MIPRO(exact, preset="heavy", num_trials=7)
    assert heavy.num_trials == 7 and heavy.num_instruction_candidates > 12
    with pytest.raises(ValueError, match="preset"):
        MIPRO(exact, preset="huge")
    with pytest.raises(ValueError, match="meta_optimize_proposer"):
        MIPRO(exact, mode="demos_only", meta_optimize_proposer=True)


# -- proposer settings ---------------------------------------------------------------------------


def test_the_proposer_settings_reach_the_proposer():
    prompt = prompt_lm()
    settings = ProposerSettings(use_dataset_summary=False, use_program_summary=False,
                                tip="persona", temperature=0.5)
    optimize(small_mipro(prompt_lm=prompt, proposer_settings=settings))
    assert prompt.requests and all(is_proposal(r) for r in prompt.requests)  # no summaries
    for request in prompt.requests:
        assert TIPS["persona"] in prompt_text(request) and request.temperature == 0.5


@pytest.mark.parametrize("name", ["mipro", "mipro-0shot", "bayesian-bootstrap"])
def test_the_command_line_options_fold_into_the_proposer_settings(name):
    built = build_optimizer(name, exact, options={"use_demos": False,
                                                  "proposer_temperature": 0.5})
    assert built.proposer_settings == ProposerSettings(use_demos=False, temperature=0.5)
    merged = build_optimizer(name, exact, options={"proposer_settings": {"use_tip": False},
                                                   "use_demos": False})
    assert merged.proposer_settings == ProposerSettings(use_tip=False, use_demos=False)
    with pytest.raises(ValueError, match=f"optimizer '{name}': use_tip must be true or false"):
        build_optimizer(name, exact, options={"use_tip": "maybe"})
    with pytest.raises(ValueError, match="bad option.*unknown proposer setting"):
        build_optimizer(name, exact, options={"proposer_settings": {"use_tips": False}})


def test_flat_proposer_settings_in_python_say_where_they_go():
    with pytest.raises(TypeError, match="use_demos: proposer settings go in proposer_settings="):
        MIPRO(exact, use_demos=False)


def test_run_configs_keep_the_keys_older_run_folders_hold():
    """A run folder's config from before the settings object still matches (and resumes);
    the settings it did not know are recorded only when set."""
    assert MIPRO(exact).config() == {
        "optimizer": "mipro", "seed": 0, "num_threads": 4, "metric_threshold": 1.0,
        "min_gain": "noise", "rescore_top": 0, "preset": "light",
        "num_instruction_candidates": 6, "num_demo_candidates": 6, "num_trials": 15,
        "minibatch_size": 25, "full_eval_every": 5, "max_bootstrapped_demos": 4,
        "max_labeled_demos": 4, "mode": "full", "use_dataset_summary": True,
        "use_program_summary": True, "use_demos": True, "use_tip": True,
        "proposer_temperature": 1.0, "meta_optimize_proposer": False,
        "evaluate_baseline": True, "prompt_lm": None}
    tipped = MIPRO(exact, proposer_settings={"tip": "concise", "use_demos": False}).config()
    assert (tipped["proposer_tip"], tipped["use_demos"]) == ("concise", False)
    assert "proposer_max_demos_shown" not in tipped


def test_full_evaluations_every_k_trials_and_at_the_end():
    result = optimize(small_mipro(prompt_lm=prompt_lm(), num_trials=8, full_eval_every=3))
    searched = [c for c in result.candidates if "trial" in c.description]
    assert [c.description.split(":")[0] for c in searched] == [
        "after trial 2", "after trial 5", "after trial 7"]
    assert result.candidates[0].description.startswith("baseline")
    assert len({tuple(sorted(c.params.items())) for c in searched}) == len(searched)


def test_estimate_is_an_upper_bound():
    optimizer = small_mipro(prompt_lm=prompt_lm())
    estimate = optimizer.estimate_cost(QA(), TRAIN, VAL)
    result = optimize(optimizer)
    assert result.usage.calls <= estimate.lm_calls
    assert set(estimate.breakdown) >= {"proposer", "trials", "full evaluations", "baseline"}


# -- budget -------------------------------------------------------------------------------------


@pytest.mark.parametrize("max_calls", [5, 40, 120])
def test_a_spent_budget_stops_the_run_cleanly(max_calls):
    result = optimize(small_mipro(prompt_lm=prompt_lm()), budget=Budget(max_calls=max_calls))
    assert result.stopped_by_budget
    assert isinstance(result.program, QA)
    assert result.usage.calls <= max_calls


# -- resume -------------------------------------------------------------------------------------


class SimulatedCrash(Exception):
    pass


class CrashingJournal(MemoryJournal):
    """A journal that 'kills the process' once it holds ``crash_at`` entries."""

    def __init__(self) -> None:
        super().__init__()
        self.crash_at: int | None = None

    def put(self, key, value):
        if self.crash_at is not None and len(self.keys()) >= self.crash_at:
            raise SimulatedCrash(key)
        super().put(key, value)


def cached_lms(path):
    cache = LMCache(path)
    return prompt_lm(cache=cache), task_lm(cache=cache)


def run_with_cache(tmp_path, name, journal, settings):
    prompt, task = cached_lms(tmp_path / f"{name}.sqlite")
    result = optimize(small_mipro(prompt_lm=prompt, seed=7, **settings), task=task,
                      journal=journal)
    return result, prompt.requests + task.requests


RESUME_CASES = {
    "full-early": ({}, [2]),
    "full-in-trials": ({}, [9]),
    "full-twice": ({}, [6, 14]),
    "mipro++": ({"meta_optimize_proposer": True}, [12]),
    "mipro++-twice": ({"meta_optimize_proposer": True}, [5, 20]),
}


@pytest.mark.parametrize("case", sorted(RESUME_CASES))
def test_a_killed_run_resumes_to_the_same_program(tmp_path, case):
    settings, crash_points = RESUME_CASES[case]
    reference, reference_requests = run_with_cache(tmp_path, "reference", None, settings)

    journal = CrashingJournal()
    prompt, task = cached_lms(tmp_path / "resumed.sqlite")
    backend_calls = []  # requests that reached the backend, per attempt
    for crash_at in [*crash_points, None]:
        journal.crash_at = crash_at
        before = len(prompt.requests), len(task.requests)
        try:
            result = optimize(small_mipro(prompt_lm=prompt, seed=7, **settings), task=task,
                              journal=journal)
        except SimulatedCrash:
            assert crash_at is not None
            result = None
        backend_calls.append(prompt.requests[before[0]:] + task.requests[before[1]:])
    assert result is not None

    assert result.program.dump_state() == reference.program.dump_state()
    assert [c.score for c in result.candidates] == [c.score for c in reference.candidates]
    assert [t.params for t in result.trials] == [t.params for t in reference.trials]
    # nothing is asked of the backend twice: journaled steps are skipped and the finished LM
    # calls of a step cut off halfway come from the cache
    assert sum(map(len, backend_calls)) == len(reference_requests)
    seen = [set(map(repr, calls)) for calls in backend_calls]
    for i, calls in enumerate(seen):
        assert not calls & set().union(*seen[:i])


def test_a_finished_run_replays_from_its_journal_without_lm_calls():
    journal = MemoryJournal()
    first = optimize(small_mipro(prompt_lm=prompt_lm()), journal=journal)
    prompt, task = prompt_lm(), task_lm()
    again = optimize(small_mipro(prompt_lm=prompt), task=task, journal=journal)
    assert prompt.requests == [] and task.requests == []
    assert again.program.dump_state() == first.program.dump_state()


# -- the shared optimizer suite ----------------------------------------------------------------


class TestMIPROSuite(OptimizerSuite):
    def make_optimizer(self, metric, seed):
        return MIPRO(metric, num_instruction_candidates=3, num_demo_candidates=3, num_trials=6,
                     minibatch_size=4, full_eval_every=3, max_bootstrapped_demos=2,
                     max_labeled_demos=1, prompt_lm=prompt_lm(), seed=seed, num_threads=2)


SUITE_SIZES = dict(num_instruction_candidates=3, num_demo_candidates=3, num_trials=6,
                   minibatch_size=4, full_eval_every=3, max_bootstrapped_demos=2,
                   max_labeled_demos=1, num_threads=2)


class TestZeroShotMIPROSuite(OptimizerSuite):
    def make_optimizer(self, metric, seed):
        return ZeroShotMIPRO(metric, prompt_lm=prompt_lm(), seed=seed, **SUITE_SIZES)


class TestBayesianBootstrapSuite(OptimizerSuite):
    def make_optimizer(self, metric, seed):
        return BayesianBootstrap(metric, seed=seed, **SUITE_SIZES)
