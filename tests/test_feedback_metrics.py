"""Score: a metric value with feedback; the built-in tasks' feedback metrics."""

from __future__ import annotations

import copy
import json
import pickle

from cotune import Example, Prediction, Score
from cotune.evaluate import Evaluate
from cotune.optimize.feedback import default_feedback


def test_a_score_is_a_float_with_feedback():
    score = Score(True, "right", {"step": "well done"})
    assert score == 1.0 and float(score) + 1 == 2.0 and score.value == 1.0
    assert score.feedback == "right" and score.predictor_feedback == {"step": "well done"}
    assert json.loads(json.dumps(score)) == 1.0
    for clone in (pickle.loads(pickle.dumps(score)), copy.deepcopy(score)):
        assert clone == 1.0 and clone.feedback == "right"
        assert clone.predictor_feedback == {"step": "well done"}
    assert repr(Score(0, "no")) == "Score(0.0, 'no')"


def test_evaluate_reads_a_score_as_its_value():
    devset = [Example(q="a", answer="x").with_inputs("q")]
    result = Evaluate(devset, lambda ex, pred: Score(0.5, "half"), display_progress=False)(
        lambda q: Prediction(answer="x"))
    assert result.score == 0.5


def test_default_feedback_names_the_expected_outputs():
    example = Example(question="q", answer="7", solution="long").with_inputs("question")
    assert default_feedback(example, Prediction(answer="8"), 0.0) == \
        "Score: 0. Expected answer: 7."
    assert "solution" in default_feedback(example, None, 0.0)


def test_iris_feedback_names_both_species():
    from cotune.tasks.iris import species_match

    example = Example(petal_length=4.5, petal_width=1.5, sepal_length=6.0, sepal_width=3.0,
                      species="versicolor")
    wrong = species_match(example, Prediction(species="setosa"))
    assert wrong == 0.0 and "Expected versicolor, got setosa" in wrong.feedback
    assert "petal length 4.5 cm" in wrong.feedback
    assert species_match(example, Prediction(species="versicolor")) == 1.0


def test_gsm8k_feedback_gives_the_expected_number():
    from cotune.tasks.gsm8k import answer_match

    example = Example(question="q", answer=72)
    wrong = answer_match(example, Prediction(answer=70.0))
    assert wrong == 0.0 and wrong.feedback == "Expected the number 72; the answer gave 70."
    assert "no number" in answer_match(example, Prediction()).feedback
    assert answer_match(example, Prediction(answer=72.0)) == 1.0


def test_hotpotqa_feedback_says_which_gold_titles_each_hop_missed():
    from cotune.tasks.hotpotqa import answer_exact_match

    example = Example(question="q", answer="Paris", gold_titles=["France", "Seine"])
    prediction = Prediction(answer="Lyon", search_queries=["capital of France", "river"],
                            hop_titles=[["France", "Lyon"], ["Loire"]],
                            retrieved_titles=["France", "Lyon", "Loire"])
    score = answer_exact_match(example, prediction)
    assert score == 0.0 and "Expected the answer 'Paris', got 'Lyon'" in score.feedback
    assert "missed the passages titled Seine" in score.feedback
    hop0, hop1 = (score.predictor_feedback[f"generate_query[{i}]"] for i in (0, 1))
    assert "'capital of France' found France; still missing the passages titled Seine" in hop0
    assert "'river' found no gold passage" in hop1
    assert score.predictor_feedback["generate_answer"] == score.feedback


def test_hop_reports_tell_a_refound_gold_document_from_a_new_one():
    from cotune.tasks.multihop import HopReport, hop_reports

    prediction = Prediction(search_queries=["claim", "second"],  # the third hop's query is lost
                            hop_titles=[["B", "x"], ["y", "B", "A"], ["C"]])
    first, second, third = hop_reports(["A", "B", "C"], prediction)
    assert first == HopReport(0, "claim", hits=["B"], new=["B"], missing=["A", "C"])
    assert second == HopReport(1, "second", hits=["B", "A"], new=["A"], missing=["C"])
    assert third == HopReport(2, "", hits=["C"], new=["C"], missing=[])
    assert hop_reports(["A"], None) == []
