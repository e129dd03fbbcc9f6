"""GEPA with scripted LMs: the Pareto frontier, parent and predictor choice, reflective
acceptance, demos from passing traces, merge, the length guard, cost, budgets and resume."""

from __future__ import annotations

import random
import re
from collections import Counter
from pathlib import Path

import pytest
from helpers import QA, exact, qa_data
from optimizer_suite import AddTwo, OptimizerSuite, arithmetic_data, exact_answer
from test_mipro import CrashingJournal, SimulatedCrash

from cotune import Budget, LMCache, Score, ScriptedLM, context
from cotune.lm.usage import UsageMeter
from cotune.optimize import GEPA, LogReporter, MemoryJournal, OptimizationRun
from cotune.optimize.gepa import _Candidate, _Loop
from cotune.optimize.pareto import Frontier, leader_sets, pareto_frontier

TRAIN, VAL = qa_data("train", 12), qa_data("val", 20)


def number(request) -> int:
    return int(re.search(r"Question: \w+ (\d+)", request.messages[-1]["content"]).group(1))


def task_lm(rule, **kwargs) -> ScriptedLM:
    """Answers question ``i`` right when ``rule(i, system prompt, has demos)`` holds."""

    def reply(request):
        i = number(request)
        right = rule(i, request.messages[0]["content"], len(request.messages) > 2)
        return f"Answer: {'a' if right else 'b'}{i}"

    return ScriptedLM(reply, name="task", **kwargs)


def reflector(answer, **kwargs) -> ScriptedLM:
    """A reflection LM: ``answer(request)`` (or a fixed text) as the new instruction."""
    script = answer if callable(answer) else (lambda request: answer)
    return ScriptedLM(lambda r: f"New Instruction: {script(r)}", name="reflector", **kwargs)


def gepa(reflection_lm, **settings) -> GEPA:
    defaults = dict(num_threads=2, evolve_demos=False, skip_perfect=False, seed=0)
    return GEPA(exact, reflection_lm=reflection_lm, **{**defaults, **settings})


def optimize(optimizer, task, *, program=None, train=TRAIN, val=VAL, **kwargs):
    with context(lm=task):
        return optimizer.optimize(program or QA(), train, val, **kwargs)


def instruction(result) -> str:
    return result.program.answer.instruction


# -- the Pareto frontier -----------------------------------------------------------------------


def test_the_frontier_keeps_per_example_winners_and_drops_dominated_candidates():
    scores = [[1, 0, 0, 1],   # 0: alone best on example 0
              [0, 1, 0, 0],   # 1: only ties with 2, which also wins example 2: dominated
              [0, 1, 1, 0],   # 2: alone best on example 2
              [0, 0, 0, 1]]   # 3: only ties with 0: dominated
    assert leader_sets(scores) == [{0}, {1, 2}, {2}, {0, 3}]
    assert pareto_frontier(scores).leads == {0: 2, 2: 2}


def test_a_frontier_of_equals_keeps_the_earliest():
    assert pareto_frontier([[0.5, 1], [0.5, 1], [0.5, 1]]).leads == {0: 2}
    assert pareto_frontier([[0, 0], [1, 0]]).leads == {1: 2}


def test_parents_are_sampled_in_proportion_to_the_examples_they_lead():
    frontier = Frontier({0: 1, 3: 3})
    rng = random.Random(0)
    counts = Counter(frontier.sample(rng) for _ in range(4000))
    assert set(counts) == {0, 3}
    assert counts[3] / 4000 == pytest.approx(0.75, abs=0.03)


def test_mismatched_scores_are_an_error():
    with pytest.raises(ValueError, match="every validation example"):
        leader_sets([[1, 0], [1]])


# -- reflective mutation ---------------------------------------------------------------------


GOOD = "Answer with the letter a then the number."


def planted_rule(i, system, has_demos):
    return GOOD in system or (i % 2 == 0 and "BAD" not in system)


def test_a_worse_child_is_rejected_and_a_planted_better_one_is_accepted():
    # reflection 2 writes the planted instruction; the first two make things worse
    proposals = {0: "BAD: answer b.", 1: "BAD again.", 2: GOOD}
    refl = reflector(lambda r: proposals.get(r.rollout_id, "BAD."))
    result = optimize(gepa(refl), task_lm(planted_rule))
    reflective = [t for t in result.trials if t.kind == "reflect"]
    assert [t.accepted for t in reflective[:3]] == [False, False, True]
    assert reflective[0].minibatch_score < reflective[0].parent_minibatch_score
    assert instruction(result) == GOOD
    assert result.best_score == 1.0 and result.candidates[0].score == 0.5
    assert result.candidates[result.best_index].params["parents"] == [0]


def test_an_equal_child_is_not_accepted():
    refl = reflector("Some other words.")  # changes nothing the task LM cares about
    result = optimize(gepa(refl, max_metric_calls=60), task_lm(planted_rule))
    assert all(not t.accepted for t in result.trials)
    assert len(result.candidates) == 1 and instruction(result) == QA().answer.instruction


def split_lm(rule) -> ScriptedLM:
    """Answers ``train i`` / ``val i`` right when ``rule(split, i, system prompt)`` holds."""

    def reply(request):
        split, i = re.search(r"Question: (\w+) (\d+)", request.messages[-1]["content"]).groups()
        return f"Answer: {'a' if rule(split, int(i), request.messages[0]['content']) else 'b'}{i}"

    return ScriptedLM(reply, name="task")


def lucky(split, i, system):
    """The seed is right on the validation questions but one; LUCKY on the training ones only."""
    return split == "train" if "LUCKY" in system else (split == "val" and i > 0)


def test_a_child_worse_on_the_validation_subsample_is_not_completed():
    task = split_lm(lucky)
    result = optimize(gepa(reflector("LUCKY guess."), val_subsample=5,
                           max_metric_calls=20 + 6 + 20), task)
    (trial,) = result.trials
    assert trial.minibatch_score > trial.parent_minibatch_score  # it passed the batch
    assert not trial.accepted and "validation subsample" in trial.outcome
    assert len(trial.details["val_subsample"]) == 5 and trial.details["val_subsample_score"] == 0.0
    assert trial.details["metric_calls"] == 20 + 6 + 5  # the subsample, not the whole set
    assert len(result.candidates) == 1
    val_questions = [r for r in task.requests if "Question: val" in r.messages[-1]["content"]]
    assert len(val_questions) == 20 + 5


def test_a_child_as_good_on_the_subsample_is_completed_on_the_whole_validation_set():
    task = split_lm(lambda split, i, system: GOOD in system or (split == "val" and i % 2 == 0))
    result = optimize(gepa(reflector(GOOD), val_subsample=5, max_metric_calls=200), task)
    trial = result.trials[0]
    assert trial.accepted and trial.details["val_subsample_score"] == 1.0
    assert trial.details["metric_calls"] == 20 + 6 + 20  # subsample + rest: one pass in all
    assert result.best_score == 1.0 and instruction(result) == GOOD
    assert len(result.trials) == 1  # perfect on validation: nothing left to do


def test_without_a_subsample_an_accepted_child_gets_one_whole_validation_pass():
    task = split_lm(lucky)
    result = optimize(gepa(reflector("LUCKY guess."), val_subsample=None,
                           max_metric_calls=20 + 6 + 20), task)
    (trial,) = result.trials
    assert trial.accepted and trial.details["val_subsample_score"] == 0.0
    assert len(trial.details["val_subsample"]) == 20 and trial.details["metric_calls"] == 46
    assert len(result.candidates) == 2  # kept: worse, but scored on every example


def test_predictors_take_turns_round_robin():
    refl = reflector("A new instruction.")  # never improves: the parent stays the seed
    lm = ScriptedLM(lambda r: "Plan: add" if "Plan: <plan>" in r.messages[0]["content"]
                    else "Answer: 0")
    result = optimize(gepa(refl, max_metric_calls=8 + 4 * 6 + 8), lm, program=AddTwo(),
                      train=arithmetic_data(16), val=arithmetic_data(8, offset=100))
    assert [t.params["predictor"] for t in result.trials] == ["plan", "solve", "plan", "solve"]
    assert {p for t in result.trials for p in t.parents} == {0}


def test_the_reflection_sees_inputs_outputs_and_the_metrics_feedback():
    def with_feedback(example, prediction, trace=None):
        right = prediction.answer == example.answer
        return Score(float(right), "" if right else f"expected {example.answer} here")

    refl = reflector("Try harder.")
    optimizer = GEPA(with_feedback, reflection_lm=refl, max_metric_calls=46, seed=0,
                     evolve_demos=False)
    optimize(optimizer, task_lm(lambda i, s, d: False))
    prompt = refl.requests[0].messages[-1]["content"]
    question = re.search(r"question: (train \d+)", prompt).group(1)
    expected = "a" + question.split()[1]
    assert "answer: b" in prompt and f"expected {expected} here" in prompt


def test_a_plain_float_metric_gets_the_score_and_expected_output_as_feedback():
    refl = reflector("Try harder.")
    optimize(gepa(refl, max_metric_calls=46), task_lm(lambda i, s, d: False))
    prompt = refl.requests[0].messages[-1]["content"]
    question = re.search(r"question: (train \d+)", prompt).group(1)
    assert f"Feedback: Score: 0. Expected answer: a{question.split()[1]}." in prompt


def test_a_separate_reflection_lm_is_counted_in_usage_and_budget():
    refl = reflector("BAD.")
    task = task_lm(planted_rule)
    result = optimize(gepa(refl), task, budget=Budget(max_calls=80))
    assert refl.requests and task.requests
    assert result.usage.calls == len(refl.requests) + len(task.requests) <= 80
    assert result.stopped_by_budget


# -- demos and the length guard --------------------------------------------------------------


def test_demos_are_added_from_passing_traces():
    # right on even questions, and on every question once the prompt holds a demo
    result = optimize(gepa(reflector("Some words."), evolve_demos=True),
                      task_lm(lambda i, s, has_demos: has_demos or i % 2 == 0))
    best = result.candidates[result.best_index]
    assert best.params["kind"] in ("demos", "instruction+demos") and result.best_score == 1.0
    demos = result.program.answer.demos
    assert demos and all(d.answer == f"a{d.question.split()[1]}" for d in demos)
    assert {d.question for d in demos} <= {ex.question for ex in TRAIN}
    assert all(int(d.question.split()[1]) % 2 == 0 for d in demos)  # the traces that passed


def test_demos_stay_within_max_demos():
    result = optimize(gepa(reflector("Some words."), evolve_demos=True, max_demos=1,
                           max_metric_calls=200),
                      task_lm(lambda i, s, has_demos: i % 2 == 0))
    assert all(max(c.params["demos"].values()) <= 1 for c in result.candidates)


def test_instruction_growth_is_capped_and_reported():
    long_text = "Sentence about the task. " * 200
    result = optimize(gepa(reflector(long_text), max_instruction_chars=200),
                      task_lm(lambda i, system, d: "Sentence" in system))
    assert len(instruction(result)) <= 200 and instruction(result).endswith("task.")
    best = result.candidates[result.best_index]
    assert best.params["instruction_chars"] == {"answer": len(instruction(result))}
    child = result.trials[0].children[0]
    assert child.details["truncated"] and child.details["instruction_chars"] <= 200


# -- merge -----------------------------------------------------------------------------------


def _pool_loop(task_lm_, val_scores):
    """A GEPA loop over AddTwo holding a seed and two children that each changed one
    predictor: 1 changed `plan`, 2 changed `solve`."""
    optimizer = GEPA(exact_answer, reflection_lm=reflector("x"), num_threads=1)
    run = OptimizationRun(optimizer, MemoryJournal(), LogReporter(), UsageMeter(),
                          None, Path("."))
    student = AddTwo()
    loop = _Loop(optimizer, run, student, arithmetic_data(8), arithmetic_data(4, 100),
                 task_lm_)
    seed = student.dump_state()
    for index, (name, text) in enumerate([(None, None), ("plan", "PLAN-X"),
                                          ("solve", "SOLVE-Y")]):
        state = {**seed, "predictors": {k: dict(v) for k, v in seed["predictors"].items()}}
        origin = {"plan": 0, "solve": 0}
        if name:
            state["predictors"][name]["instruction"] = text
            origin[name] = index
        loop.pool.append(_Candidate(state, [0] if name else [], origin, val_scores[index]))
        run.offer(loop.program(state), loop.pool[-1].mean, f"candidate {index}")
    return loop


def solver_that_needs(marker):
    def reply(request):
        system = request.messages[0]["content"]
        if "Plan: <plan>" in system:
            return "Plan: add"
        a, b = map(int, re.search(r"(\d+) \+ (\d+)", request.messages[-1]["content"]).groups())
        return f"Answer: {a + b if marker in system else 0}"

    return ScriptedLM(reply)


def test_merge_combines_two_candidates_that_changed_different_predictors():
    loop = _pool_loop(None, [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]])
    lm = solver_that_needs("SOLVE-Y")
    with context(lm=lm):
        assert loop._merge(0)
    merged = loop.pool[3]
    assert merged.parents == [1, 2] and merged.origin == {"plan": 1, "solve": 2}
    instructions = {k: v["instruction"] for k, v in merged.state["predictors"].items()}
    assert instructions == {"plan": "PLAN-X", "solve": "SOLVE-Y"}
    assert merged.val_scores == [1, 1, 1, 1]
    assert loop.run.trials[-1].kind == "merge" and loop.run.trials[-1].accepted
    assert loop.metric_calls == 4  # the differing examples, then the rest: one pass in all


def test_a_merge_that_loses_on_the_differing_examples_is_rejected():
    loop = _pool_loop(None, [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]])
    with context(lm=solver_that_needs("NOTHING")):
        assert loop._merge(0)
    assert len(loop.pool) == 3 and not loop.run.trials[-1].accepted


def test_no_merge_without_disjoint_changes():
    loop = _pool_loop(None, [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]])
    loop.pool[2].origin = {"plan": 2, "solve": 0}  # both changed only `plan`
    assert loop._merge_pair(0) is None


def test_a_run_tries_a_merge_after_accepted_children():
    """Questions a % 3 == 0 need PLAN-X in the plan, == 1 need SOLVE-Y in the solver's
    instruction, == 2 need the plan *without* PLAN-X: no single edit wins everything, so the
    frontier keeps candidates that changed different predictors."""

    def reply(request):
        system = request.messages[0]["content"]
        if "Plan: <plan>" in system:
            return "Plan: PLAN-X" if "PLAN-X" in system else "Plan: add"
        user = request.messages[-1]["content"]
        a, b = map(int, re.search(r"(\d+) \+ (\d+)", user).groups())
        right = {0: "PLAN-X" in user, 1: "SOLVE-Y" in system, 2: "PLAN-X" not in user}[a % 3]
        return f"Answer: {a + b if right else 0}"

    def which(request):
        fields = request.messages[-1]["content"].split("Step Fields:")[1].split("\n")[0]
        return "PLAN-X" if fields.strip().endswith("plan") else "SOLVE-Y"

    result = optimize(GEPA(exact_answer, reflection_lm=reflector(which), seed=5, num_threads=1,
                           evolve_demos=False, skip_perfect=False, max_metric_calls=300),
                      ScriptedLM(reply), program=AddTwo(), train=arithmetic_data(18),
                      val=arithmetic_data(9, offset=100))
    kinds = [(t.kind, t.accepted) for t in result.trials]
    assert kinds[:3] == [("reflect", True), ("reflect", True), ("merge", False)]
    merge = result.trials[2]
    changed = [result.candidates[c].params["predictor"] for c in merge.parents]
    assert sorted(changed) == ["plan", "solve"] and merge.details["ancestor"] == 0


# -- cost, budgets, resume -------------------------------------------------------------------


def ladder_rule(i, system, has_demos):
    """Each "level N" instruction solves a different, growing share of the questions."""
    level = int(m.group(1)) if (m := re.search(r"level (\d+)", system)) else 0
    return (i * 7 + level * 3) % 10 < min(9, level + 1)


def ladder_reflector():
    def next_level(request):
        m = re.search(r"level (\d+)", request.messages[-1]["content"])
        return f"Work at level {int(m.group(1)) + 1 if m else 1}."

    return reflector(next_level)


@pytest.mark.parametrize("case", ["rejected", "rejected-with-demos", "accepted"])
def test_the_projected_cost_matches_the_run_within_ten_percent(case):
    settings = {"evolve_demos": case == "rejected-with-demos"}
    if case == "accepted":
        refl, task = ladder_reflector(), task_lm(ladder_rule)
    else:
        refl, task = reflector("BAD."), task_lm(planted_rule)
    optimizer = gepa(refl, **settings)
    projected = optimizer.estimate_cost(QA(), TRAIN, VAL).lm_calls
    result = optimize(optimizer, task)
    actual = len(refl.requests) + len(task.requests)
    assert actual == result.usage.calls
    assert abs(actual - projected) <= 0.1 * actual, (case, projected, actual)
    budget = optimizer.metric_budget(len(VAL))
    # stopped once the rest could not pay for an iteration and its child's validation pass
    spent = result.trials[-1].details["metric_calls"]
    assert budget - 3 * 4 - len(VAL) <= spent <= budget
    if case == "accepted":
        assert sum(bool(t.accepted) for t in result.trials) >= 2


def test_a_metric_budget_smaller_than_the_validation_set_is_refused():
    with pytest.raises(ValueError, match="max_metric_calls=5"):
        optimize(gepa(reflector("x"), max_metric_calls=5), task_lm(planted_rule))


def test_an_lm_call_budget_stops_cleanly_with_the_best_so_far():
    refl = reflector(lambda r: GOOD if r.rollout_id == 0 else "BAD.")
    task = task_lm(lambda i, system, d: (GOOD in system and i % 4 != 1) or i % 2 == 0)
    result = optimize(gepa(refl, max_metric_calls=400), task, budget=Budget(max_calls=70))
    assert result.stopped_by_budget and result.usage.calls <= 70
    # the next iteration (7 calls) and its child's validation (20) did not fit: stopped
    # before it rather than inside it
    assert result.usage.calls > 70 - 7 - 20
    assert instruction(result) == GOOD and result.best_score == 0.75


def cached_lms(path):
    cache = LMCache(path)
    return (ladder_reflector_cached(cache), task_lm(ladder_rule, cache=cache))


def ladder_reflector_cached(cache):
    def next_level(request):
        m = re.search(r"level (\d+)", request.messages[-1]["content"])
        return f"New Instruction: Work at level {int(m.group(1)) + 1 if m else 1}."

    return ScriptedLM(next_level, name="reflector", cache=cache)


def resumable(refl):
    return GEPA(exact, reflection_lm=refl, seed=5, num_threads=2, max_metric_calls=200,
                num_proposals=2, evolve_demos=True)


@pytest.mark.parametrize("crash_points", [[1], [4], [3, 9], [12]])
def test_a_killed_run_resumes_to_the_same_program(tmp_path, crash_points):
    refl, task = cached_lms(tmp_path / "reference.sqlite")
    reference = optimize(resumable(refl), task)
    reference_requests = refl.requests + task.requests

    journal = CrashingJournal()
    refl, task = cached_lms(tmp_path / "resumed.sqlite")
    backend = []
    result = None
    for crash_at in [*crash_points, None]:
        journal.crash_at = crash_at
        before = len(refl.requests), len(task.requests)
        try:
            result = optimize(resumable(refl), task, journal=journal)
        except SimulatedCrash:
            assert crash_at is not None
        backend.append(refl.requests[before[0]:] + task.requests[before[1]:])
    assert result is not None
    assert result.program.dump_state() == reference.program.dump_state()
    assert [c.score for c in result.candidates] == [c.score for c in reference.candidates]
    strip = [{k: v for k, v in t.to_json().items() if k != "lm_calls"} for t in result.trials]
    assert strip == [{k: v for k, v in t.to_json().items() if k != "lm_calls"}
                     for t in reference.trials]
    assert sum(map(len, backend)) == len(reference_requests)  # nothing asked twice
    seen = [set(map(repr, calls)) for calls in backend]
    for i, calls in enumerate(seen):
        assert not calls & set().union(*seen[:i])


def test_a_finished_run_replays_from_its_journal_without_lm_calls():
    journal = MemoryJournal()
    first = optimize(gepa(ladder_reflector()), task_lm(ladder_rule), journal=journal)
    refl, task = ladder_reflector(), task_lm(ladder_rule)
    again = optimize(gepa(refl), task, journal=journal)
    assert refl.requests == [] and task.requests == []
    assert again.program.dump_state() == first.program.dump_state()


def test_parallel_proposals_are_deterministic_under_a_seed():
    def run():
        refl = ScriptedLM(lambda r: f"New Instruction: level {r.rollout_id % 5}.")
        return optimize(gepa(refl, num_proposals=3, num_threads=4, seed=2,
                             max_metric_calls=150), task_lm(ladder_rule))

    first, second = run(), run()
    assert first.program.dump_state() == second.program.dump_state()
    assert first.trials == second.trials  # LM-call counts included: no timing leaks in
    assert any(len(t.children) == 3 for t in first.trials)


def test_bad_settings_are_clear():
    with pytest.raises(ValueError, match="preset"):
        GEPA(exact, preset="huge")
    with pytest.raises(ValueError, match="minibatch_size"):
        GEPA(exact, minibatch_size=0)
    with pytest.raises(ValueError, match="max_instruction_chars"):
        GEPA(exact, max_instruction_chars=3)
    with pytest.raises(ValueError, match="val_subsample"):
        GEPA(exact, val_subsample=0)


# -- the shared optimizer suite ----------------------------------------------------------------


class TestGEPASuite(OptimizerSuite):
    def make_optimizer(self, metric, seed):
        return GEPA(metric, reflection_lm=reflector("Add the two numbers exactly."),
                    max_metric_calls=60, seed=seed, num_threads=2)


def test_gepa_is_the_g_step_of_better_together():
    from test_better_together import StubTrainer

    from cotune.optimize import BetterTogether

    refl = reflector("Add the two numbers exactly.")
    bt = BetterTogether(exact_answer, strategy="g -> w", trainer=StubTrainer(saveable=False),
                        gepa_options={"reflection_lm": refl, "max_metric_calls": 40},
                        num_threads=2)
    assert isinstance(bt.steps["g"], GEPA) and bt.config()["steps"]["g"]["max_metric_calls"] == 40
    with context(lm=ScriptedLM(lambda r: "Plan: add" if "Plan: <plan>" in r.messages[0][
            "content"] else "Answer: 3")):
        result = bt.optimize(AddTwo(), arithmetic_data(16), arithmetic_data(8, offset=100))
    assert [t.params["name"] for t in result.trials] == ["g", "w"] and refl.requests


def test_the_metric_gets_the_trace_like_other_optimizers_pass_it():
    seen = []

    def metric(example, prediction, trace=None):
        seen.append([type(step).__name__ for step in trace or []])
        return exact(example, prediction)

    optimizer = GEPA(metric, reflection_lm=reflector("x"), max_metric_calls=46,
                     evolve_demos=False)
    optimize(optimizer, task_lm(planted_rule))
    assert ["TraceStep"] in seen


@pytest.mark.parametrize(("text", "kept"), [
    ("Given the petal.\n\nSteps Fields: x", "Given the petal."),
    ("Predict it.\nExplanation:\nThe task is", "Predict it."),
    ("Predict.\nExample 4:\n  Inputs:\n    sepal_length: 5.0", "Predict."),
    ("Use petal length: under 2.5 cm is setosa.", "Use petal length: under 2.5 cm is setosa."),
])
def test_echoes_of_the_prompt_are_cut_from_reflections(text, kept):
    from cotune.optimize.reflection import strip_echo

    assert strip_echo(text) == kept


@pytest.mark.parametrize("budget", [Budget(max_tokens=2500), Budget(max_seconds=0.0)])
def test_token_and_time_budgets_stop_the_run_with_the_best_so_far(budget):
    refl = reflector(lambda r: GOOD if r.rollout_id == 0 else "BAD.")
    result = optimize(gepa(refl, max_metric_calls=400),
                      task_lm(lambda i, system, d: (GOOD in system and i % 4 != 1) or i % 2 == 0),
                      budget=budget)
    assert result.stopped_by_budget and isinstance(result.program, QA)
    if budget.max_tokens is not None:
        assert budget.tokens >= 2500 and instruction(result) == GOOD
        assert result.best_score == max(c.score for c in result.candidates)


def test_a_one_example_validation_gain_does_not_replace_the_seed_unless_asked():
    # the child is right on every question, the seed on all but validation question 0: the
    # child wins its mini-batch (train) and gains one of 20 validation examples, within noise
    def rule(split, i, system):
        return GOOD in system or (split == "val" and i > 0)

    careful = optimize(gepa(reflector(GOOD), val_subsample=None, max_metric_calls=60),
                       split_lm(rule))
    assert len(careful.candidates) == 2 and careful.candidates[1].score == 1.0
    verdict = careful.candidates[1].vs_baseline
    assert verdict["interval"] is not None and verdict["interval"]["low"] <= 0 < verdict["gain"]
    assert careful.best_index == 0 and instruction(careful) == QA().answer.instruction
    assert "the baseline stays" in careful.selection["reason"]
    eager = optimize(gepa(reflector(GOOD), val_subsample=None, max_metric_calls=60, min_gain=0),
                     split_lm(rule))
    assert eager.best_index == 1 and instruction(eager) == GOOD
