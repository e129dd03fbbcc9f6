"""Hindsight: failing traces relabeled with what the metric says a predictor should have
answered (``Score.predictor_targets``), for demos and fine-tuning records.  Scripted LMs and a
stub trainer; the HoVer metric's targets on hand-made predictions."""

from __future__ import annotations

import re

import pytest
from helpers import QA, qa_data
from optimizer_suite import AddTwo, arithmetic_data, scripted_solver
from test_better_together import StubTrainer

from cotune import Example, Prediction, ScriptedLM, context
from cotune.evaluate.metrics import Score, get_field
from cotune.finetune.errors import NoTrainingDataError
from cotune.optimize import GEPA, BootstrapFewShot, BootstrapFinetune, SuccessfulTrace
from cotune.optimize.traces import collect_successful_traces, relabel
from cotune.optimize.vanilla import Vanilla
from cotune.tasks.hover import all_supporting_retrieved
from cotune.tasks.multihop import names_title


def wrong_answer(request) -> str:
    """Plans, and always answers one more than the sum."""
    if "Plan: <plan>" in request.messages[0]["content"]:
        return "Plan: add the two numbers"
    question = request.messages[-1]["content"].split("Question: ", 1)[1].split("\n")[0]
    a, b = (int(x) for x in question.split(" + "))
    return f"Answer: {a + b + 1}"


def graded(example, prediction, trace=None) -> Score:
    """Exact answer; a wrong one names the right answer as ``solve``'s target."""
    right = get_field(prediction, "answer") == example.answer
    return Score(float(right), "", {}, {} if right else {"solve": {"answer": example.answer}})


def test_relabel_keeps_the_first_call_of_each_named_predictor_with_its_target():
    steps = [("plan", {"q": 1}, {"plan": "p"}), ("solve", {"q": 1}, {"why": "w", "answer": 3}),
             ("solve", {"q": 2}, {"why": "v", "answer": 9})]
    assert relabel(steps, {"solve": {"answer": 2}}, passed=False) == [
        ("solve", {"q": 1}, {"why": "w", "answer": 2})]
    assert relabel(steps, {"plan": {}}, passed=False) == [("plan", {"q": 1}, {"plan": "p"})]
    assert relabel(steps, {}, passed=False) == []
    assert relabel(steps, {"other": {"x": 1}}, passed=False) == []
    # a passing trace keeps what the metric says nothing about, drops what earned nothing
    assert relabel(steps, {}, passed=True) == steps
    assert relabel(steps, {"plan": None}, passed=True) == steps[1:]
    assert relabel(steps, {"plan": None, "solve": {"answer": 2}}, passed=True) == [
        ("solve", {"q": 1}, {"why": "w", "answer": 2})]


def test_failing_traces_are_kept_relabeled_only_with_hindsight():
    train = arithmetic_data(4)
    with context(lm=ScriptedLM(wrong_answer)):
        assert collect_successful_traces(AddTwo(), train, graded, num_threads=2) == []
        traces = collect_successful_traces(AddTwo(), train, graded, num_threads=2,
                                           hindsight=True)
    assert [t.example_index for t in traces] == [0, 1, 2, 3]
    for t, example in zip(traces, train, strict=True):
        assert t.relabeled
        [(name, inputs, outputs)] = t.steps  # the plan step had no target: dropped
        assert name == "solve" and inputs["question"] == example.question
        assert outputs == {"answer": example.answer}
        assert SuccessfulTrace.from_json(t.to_json()) == t


def test_passing_traces_stay_as_traced_beside_relabeled_ones():
    train = arithmetic_data(4)  # the scripted solver is right on even numbers without demos
    with context(lm=scripted_solver()):
        traces = collect_successful_traces(AddTwo(), train, graded, num_threads=2,
                                           hindsight=True)
    assert [(t.example_index, t.relabeled, len(t.steps)) for t in traces] == [
        (0, False, 2), (1, True, 1), (2, False, 2), (3, True, 1)]
    assert "relabeled" not in traces[0].to_json()  # old journals read the same
    assert SuccessfulTrace.from_json({"example_index": 0, "steps": []}).relabeled is False


def test_a_plain_float_metric_gives_hindsight_nothing_to_relabel():
    def plain(example, prediction, trace=None):
        return 0.0

    with context(lm=ScriptedLM(wrong_answer)):
        assert collect_successful_traces(AddTwo(), arithmetic_data(3), plain,
                                         hindsight=True) == []


def test_hindsight_demos_show_the_target_answers(tmp_path):
    train = arithmetic_data(3)
    with context(lm=ScriptedLM(wrong_answer)):
        without = BootstrapFewShot(graded, max_bootstrapped_demos=2, max_labeled_demos=0
                                   ).optimize(AddTwo(), train, workdir=tmp_path / "a").program
        program = BootstrapFewShot(graded, max_bootstrapped_demos=2, max_labeled_demos=0,
                                   hindsight=True
                                   ).optimize(AddTwo(), train, workdir=tmp_path / "b").program
    assert without.solve.demos == []
    assert [(d.question, d.answer) for d in program.solve.demos] == [
        (ex.question, ex.answer) for ex in train[:2]]
    assert program.plan.demos == []  # no target for the planner: its steps are not credited


def test_hindsight_fine_tunes_on_the_relabeled_steps(tmp_path):
    train = arithmetic_data(4)
    trainer = StubTrainer()
    with context(lm=ScriptedLM(wrong_answer)):
        with pytest.raises(NoTrainingDataError, match="hindsight=True would also learn"):
            BootstrapFinetune(graded, trainer=StubTrainer()).optimize(
                AddTwo(), train, workdir=tmp_path / "plain")
        result = BootstrapFinetune(graded, trainer=trainer, hindsight=True).optimize(
            AddTwo(), train, workdir=tmp_path / "hindsight")
    [(_, records, _)] = trainer.calls
    assert [r["messages"][-1]["content"] for r in records] == [
        f"Answer: {ex.answer}" for ex in train]  # the targets, not the traced wrong sums
    assert all("Question:" in r["messages"][-2]["content"] for r in records)
    assert "4 traces, 4 of them relabeled by hindsight" in result.candidates[0].description


def test_hindsight_is_in_the_config_only_when_on_and_must_be_a_bool():
    assert "hindsight" not in Vanilla(graded).config()
    assert Vanilla(graded, hindsight=True).config()["hindsight"] is True
    with pytest.raises(ValueError, match="hindsight"):
        Vanilla(graded, hindsight="yes")


# -- the HoVer metric's targets ------------------------------------------------------------------


def test_names_title_matches_whole_words_without_the_disambiguation():
    assert names_title("The planet Mercury is small", "Mercury (planet)")
    assert names_title("born in new york city", "New York City")
    assert not names_title("Mercury Records", "Mercury Rev")
    assert not names_title("a supper club", "Up")
    assert not names_title("anything", " (film)")


def test_a_passing_trace_drops_the_steps_that_earned_nothing():
    def plan_earned_nothing(example, prediction, trace=None) -> Score:
        return Score(float(get_field(prediction, "answer") == example.answer), "", {},
                     {"plan": None})

    with context(lm=scripted_solver()):
        traces = collect_successful_traces(AddTwo(), arithmetic_data(4), plan_earned_nothing,
                                           hindsight=True)
        plain = collect_successful_traces(AddTwo(), arithmetic_data(4), plan_earned_nothing)
    assert [(t.example_index, t.relabeled, [s[0] for s in t.steps]) for t in traces] == [
        (0, True, ["solve"]), (2, True, ["solve"])]
    assert [[s[0] for s in t.steps] for t in plain] == [["plan", "solve"]] * 2


def test_hover_targets_name_a_missing_document_the_writer_could_read():
    example = Example(claim="Ana Vidal starred in Blue Harbor, directed by Tom Reese.",
                      supporting_titles=["Blue Harbor", "Tom Reese", "Ana Vidal"]
                      ).with_inputs("claim")
    prediction = Prediction(
        search_queries=["the claim", "who directed it", "Reese's birthplace"],
        hop_titles=[["Blue Harbor", "X"], ["Y"], ["Ana Vidal"]],
        retrieved_titles=["Blue Harbor", "X", "Y", "Ana Vidal"],
        notes=["Blue Harbor is a film.", "nothing"])
    score = all_supporting_retrieved(example, prediction)
    assert score == 0.0
    first, second = (score.predictor_targets[f"generate_query[{i}]"] for i in (0, 1))
    # hop 2 found nothing: its writer should have named a document still missing, the first
    # of them in the example's order that the claim or notes name
    assert first["search_query"] == "Tom Reese" and "Tom Reese" in first["reasoning"]
    assert second == {}  # hop 3 found «Ana Vidal»: its query is kept as written
    assert set(score.predictor_targets) == {"generate_query[0]", "generate_query[1]"}


def test_hover_gives_no_credit_to_a_query_with_nothing_left_to_find():
    example = Example(claim="c", supporting_titles=["A", "B"]).with_inputs("claim")
    prediction = Prediction(search_queries=["c", "q2", "q3"], hop_titles=[["A", "B"], [], []],
                            retrieved_titles=["A", "B"], notes=["A and B", "n"])
    score = all_supporting_retrieved(example, prediction)
    assert score == 1.0
    assert score.predictor_targets == {"generate_query[0]": None, "generate_query[1]": None}


def test_hover_gives_no_target_for_a_document_the_writer_never_saw():
    example = Example(claim="The film was shot in a port town.",
                      supporting_titles=["Blue Harbor", "Portmouth"]).with_inputs("claim")
    prediction = Prediction(search_queries=["c", "q2", "q3"], hop_titles=[["Z"], ["Y"], ["W"]],
                            retrieved_titles=["Z", "Y", "W"],
                            notes=["nothing", "Blue Harbor was filmed there."])
    targets = all_supporting_retrieved(example, prediction).predictor_targets
    assert targets["generate_query[0]"] is None  # read only the claim and the first note
    assert targets["generate_query[1]"]["search_query"] == "Blue Harbor"  # the second note


def test_hover_never_tells_two_writers_to_search_for_the_same_document():
    """Hindsight takes a relabeled query to have found its document: the next writer is given
    the next missing title it can read, or no credit when there is none."""
    claim = "Ana Vidal starred in Blue Harbor, directed by Tom Reese."
    example = Example(claim=claim, supporting_titles=["Blue Harbor", "Tom Reese", "Ana Vidal"]
                      ).with_inputs("claim")
    nothing_found = Prediction(search_queries=["c", "q2", "q3"],
                               hop_titles=[["Blue Harbor"], ["Y"], ["W"]],
                               retrieved_titles=["Blue Harbor", "Y", "W"], notes=["n1", "n2"])
    targets = all_supporting_retrieved(example, nothing_found).predictor_targets
    assert [targets[f"generate_query[{i}]"]["search_query"] for i in (0, 1)] == [
        "Tom Reese", "Ana Vidal"]

    two_named = Example(claim="Blue Harbor was directed by Tom Reese.",
                        supporting_titles=["Blue Harbor", "Tom Reese", "Ana Vidal"]
                        ).with_inputs("claim")
    targets = all_supporting_retrieved(two_named, nothing_found).predictor_targets
    assert targets["generate_query[0]"]["search_query"] == "Tom Reese"
    assert targets["generate_query[1]"] is None  # «Ana Vidal» is named nowhere it read


def test_hindsight_demos_reach_a_predictor_that_only_later_traces_credit(tmp_path):
    """The first traces credit the solver only; the planner's one credited step comes last:
    bootstrapping with hindsight goes through every training example, not the first few."""
    train = arithmetic_data(4)

    def planner_credited_last(example, prediction, trace=None) -> Score:
        last = example.question == train[-1].question
        return Score(0.0, "", {}, {"plan": {} if last else None, "solve": {"answer": 0}})

    with context(lm=ScriptedLM(wrong_answer)):
        program = BootstrapFewShot(planner_credited_last, max_bootstrapped_demos=1,
                                   max_labeled_demos=0, hindsight=True
                                   ).optimize(AddTwo(), train, workdir=tmp_path).program
    assert [d.question for d in program.plan.demos] == [train[-1].question]
    assert [(d.question, d.answer) for d in program.solve.demos] == [(train[0].question, 0)]


def hindsight_answer(example, prediction, trace=None) -> Score:
    """Exact answer; a wrong one names the right answer as the ``answer`` step's target."""
    right = prediction.answer == example.answer
    return Score(float(right), "", {}, {} if right else {"answer": {"answer": example.answer}})


def right_only_with_demos(request) -> str:
    """Answers question ``<kind> i`` with ``a<i>`` when the prompt holds a demo, else ``b<i>``."""
    i = request.messages[-1]["content"].split("Question: ", 1)[1].split()[1]
    return f"Answer: {'a' if len(request.messages) > 2 else 'b'}{i}"


@pytest.mark.parametrize("hindsight", [False, True])
def test_gepa_with_hindsight_evolves_demos_from_relabeled_failing_traces(hindsight):
    """Every trace fails, so GEPA has no passing demo to try; with hindsight the failing
    traces' answers, relabeled with the metric's targets, become the demos that fix it."""
    reflector = ScriptedLM(lambda r: "New Instruction: Some words.", name="reflector")
    optimizer = GEPA(hindsight_answer, reflection_lm=reflector, evolve_demos=True,
                     skip_perfect=False, num_threads=2, seed=0, hindsight=hindsight)
    with context(lm=ScriptedLM(right_only_with_demos)):
        result = optimizer.optimize(QA(), qa_data("train", 12), qa_data("val", 20))
    demos = result.program.answer.demos
    prompt = reflector.requests[0].messages[-1]["content"]
    if not hindsight:
        assert demos == [] and result.best_score == 0.0
        assert "should have output" not in prompt
        return
    assert demos and result.best_score == 1.0
    assert all(d.answer == f"a{d.question.split()[1]}" for d in demos)  # the targets
    question = re.search(r"question: (train \d+)", prompt).group(1)
    assert ("answer: b" in prompt and "What the step should have output:\n"
            f"    answer: a{question.split()[1]}" in prompt)
