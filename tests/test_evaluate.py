import json
import random
import threading
import time

import pytest

from cotune import (
    BudgetExceeded,
    Example,
    Module,
    NoLMError,
    Predict,
    Prediction,
    ScriptedLM,
    budget,
    context,
)
from cotune.evaluate import (
    Evaluate,
    EvaluationAborted,
    EvaluationResult,
    LMUnavailable,
    exact_match,
    numeric_match,
)
from cotune.lm import ContextOverflow, LMInvalidResponse, LMRequestError, LMTransientError


def question_of(request) -> str:
    """The question of the last user message that has one (``Question: ...``; a repair
    request ends with the request to answer again)."""
    asked = [m["content"] for m in request.messages if "Question:" in m["content"]]
    return asked[-1].split("Question:", 1)[1].strip()


def make_devset(n: int) -> list[Example]:
    return [Example(question=f"q{i}", answer=str(i)).with_inputs("question") for i in range(n)]


def answering_lm(wrong: set[int] = frozenset(), delay: float = 0.0, **kwargs) -> ScriptedLM:
    """Answers ``q{i}`` with ``i`` (or a wrong number for i in ``wrong``), after random sleeps."""
    rng = random.Random(0)
    lock = threading.Lock()

    def answer(request):
        i = int(question_of(request)[1:])
        if delay:
            with lock:
                pause = rng.uniform(0, delay)
            time.sleep(pause)
        return f"Answer: {i + 1000 if i in wrong else i}"

    return ScriptedLM(answer, **kwargs)


def evaluate(devset, metric=None, **kwargs) -> Evaluate:
    kwargs.setdefault("display_progress", False)
    return Evaluate(devset, metric or exact_match(), **kwargs)


def test_mean_score_and_per_example_results():
    devset = make_devset(10)
    program = Predict("question -> answer", lm=answering_lm(wrong={1, 4, 7}))
    result = evaluate(devset, num_threads=1)(program)
    assert isinstance(result, EvaluationResult)
    assert result.score == pytest.approx(0.7)
    assert result.num_errors == 0
    assert result.complete and result.num_total == 10
    assert [r.score for r in result.results] == [0.0 if i in {1, 4, 7} else 1.0 for i in range(10)]
    assert result.results[3].prediction.answer == "3"
    assert result.elapsed_s > 0


def test_results_follow_devset_order_with_threads():
    devset = make_devset(64)
    lm = answering_lm(delay=0.01)
    seen_threads: set[str] = set()

    class Program(Module):
        def __init__(self):
            self.predict = Predict("question -> answer", lm=lm)

        def forward(self, question):
            seen_threads.add(threading.current_thread().name)
            return self.predict(question=question)

    result = evaluate(devset, num_threads=8)(Program())
    assert [r.example for r in result.results] == devset
    assert [r.prediction.answer for r in result.results] == [ex.answer for ex in devset]
    assert result.score == 1.0
    assert len(seen_threads) > 1


def test_context_lm_budget_and_usage_reach_worker_threads():
    devset = make_devset(20)
    lm = answering_lm(delay=0.002)
    program = Predict("question -> answer")  # no LM of its own
    with context(lm=lm), budget(max_calls=100) as b:
        result = evaluate(devset, num_threads=4)(program)
    assert result.score == 1.0
    assert b.calls == 20
    assert result.usage.calls == 20
    assert result.usage.backend_calls == 20
    assert result.usage.prompt_tokens > 0 and result.usage.completion_tokens == 40
    assert len(lm.requests) == 20


def test_unparsable_answer_is_a_recorded_failure():
    devset = make_devset(6)

    def answer(request):
        i = int(question_of(request)[1:])
        return "I have no idea, sorry" if i == 2 else f"Answer: {i}"

    program = Predict("question -> answer: int", lm=ScriptedLM(answer))
    result = evaluate(devset, numeric_match(), num_threads=3, failure_score=-1.0)(program)
    failed = result.results[2]
    assert failed.failed and failed.prediction is None
    assert failed.error_type == "AdapterParseError"
    assert "I have no idea, sorry" in failed.error
    assert failed.score == -1.0
    assert result.num_errors == 1
    assert result.usage.repairs == 1  # one repair request before the example failed
    assert result.score == pytest.approx((5 - 1) / 6)
    assert not any(r.failed for i, r in enumerate(result.results) if i != 2)


def test_metric_exceptions_are_recorded_failures():
    def flaky_metric(example, prediction, trace=None):
        if example.answer == "1":
            raise KeyError("boom")
        return True

    program = Predict("question -> answer", lm=answering_lm())
    result = evaluate(make_devset(3), flaky_metric, num_threads=1)(program)
    assert result.score == pytest.approx(2 / 3)
    assert result.num_errors == 1
    bad = result.results[1]
    assert bad.prediction.answer == "1"  # the prediction is kept
    assert bad.error_type == "KeyError" and "metric failed" in bad.error


@pytest.mark.parametrize("num_threads", [1, 4])
def test_max_errors_aborts_with_partial_results(num_threads):
    lm = ScriptedLM("gibberish without a number")
    program = Predict("question -> answer: int", lm=lm)
    devset = make_devset(200)
    with pytest.raises(EvaluationAborted, match="max_errors=3") as info:
        evaluate(devset, num_threads=num_threads, max_errors=3)(program)
    partial = info.value.partial_result
    assert partial.num_errors == 4
    assert not partial.complete and partial.num_total == 200
    assert all(r.failed for r in partial.results)
    assert len(lm.requests) <= 2 * (4 + num_threads)  # stopped submitting new work (each
    # example asks once, then once more to repair its unparsable answer)
    # partial results keep dev-set order
    indices = [devset.index(r.example) for r in partial.results]
    assert indices == sorted(indices)


def test_max_errors_not_exceeded_completes():
    lm = ScriptedLM("gibberish")
    program = Predict("question -> answer: int", lm=lm)
    result = evaluate(make_devset(3), num_threads=1, max_errors=3)(program)
    assert result.num_errors == 3 and result.complete and result.score == 0.0


@pytest.mark.parametrize("num_threads", [1, 8])
def test_budget_exceeded_propagates_with_partial_results(num_threads):
    lm = answering_lm(delay=0.001)
    program = Predict("question -> answer", lm=lm)
    devset = make_devset(100)
    with context(lm=lm), budget(max_calls=10), pytest.raises(BudgetExceeded) as info:
        evaluate(devset, num_threads=num_threads, max_errors=1000)(program)
    assert len(lm.requests) == 10
    partial = info.value.partial_result
    assert len(partial.results) <= 10
    assert partial.num_errors == 0  # not counted as an example failure
    assert all(not r.failed for r in partial.results)


def test_budget_bound_to_the_lm_propagates_too():
    from cotune import Budget

    lm = answering_lm(budget=Budget(max_calls=3))
    with pytest.raises(BudgetExceeded):
        evaluate(make_devset(10), num_threads=2)(Predict("question -> answer", lm=lm))


@pytest.mark.parametrize("num_threads", [1, 4])
def test_keyboard_interrupt_propagates(num_threads):
    calls = []

    def program(question):
        calls.append(question)
        if question == "q5":
            raise KeyboardInterrupt
        return Prediction(answer=question[1:])

    with pytest.raises(KeyboardInterrupt):
        evaluate(make_devset(100), num_threads=num_threads)(program)
    assert len(calls) < 100


def test_missing_lm_is_not_an_example_failure():
    with pytest.raises(NoLMError):
        evaluate(make_devset(5), num_threads=2)(Predict("question -> answer"))


def test_examples_without_inputs_are_rejected_up_front():
    devset = [*make_devset(2), Example(question="q2", answer="2")]
    with pytest.raises(ValueError, match=r"devset\[2\] has no inputs marked.*with_inputs"):
        Evaluate(devset, exact_match())
    with pytest.raises(TypeError, match="not a cotune Example"):
        Evaluate([{"question": "q"}], exact_match())
    with pytest.raises(ValueError, match="empty"):
        Evaluate([], exact_match())


def test_plain_function_programs_and_bool_metrics():
    result = evaluate(make_devset(4), lambda ex, pred: pred.answer == ex.answer, num_threads=2)(
        lambda question: Prediction(answer=question[1:] if question != "q0" else "x")
    )
    assert result.score == 0.75


def test_to_json_is_serializable():
    program = Predict("question -> answer: int", lm=answering_lm(wrong={0}))
    result = evaluate(make_devset(3), numeric_match(), num_threads=1)(program)
    data = json.loads(json.dumps(result.to_json()))
    assert data["score"] == pytest.approx(2 / 3)
    assert data["num_examples"] == 3 and data["num_errors"] == 0
    assert data["usage"]["calls"] == 3
    assert data["results"][1] == {
        "example": {"question": "q1", "answer": "1"},
        "prediction": {"answer": 1},
        "score": 1.0,
        "error": None,
        "error_type": None,
        "lm_error": False,
    }
    assert data["num_lm_errors"] == 0
    assert "results" not in result.to_json(include_results=False)


def test_progress_bar_runs():
    pytest.importorskip("rich")
    program = Predict("question -> answer", lm=answering_lm(wrong={0}))
    result = Evaluate(make_devset(5), exact_match(), num_threads=2, display_progress=True)(program)
    assert result.score == pytest.approx(0.8)


def test_another_metric_is_averaged_over_the_same_predictions():
    def length_of_answer(example, prediction, trace=None):
        if example.question == "q1":
            raise ValueError("a metric that breaks on one example")
        return len(prediction.answer) / 10

    calls = []
    program = Predict("question -> answer", lm=answering_lm(wrong={0}))

    def run(question):
        calls.append(question)
        if question == "q3":
            raise RuntimeError("the program fails on q3")
        return program(question=question)

    result = evaluate(make_devset(4), num_threads=2)(run)
    # answers "1000", "1" (its metric raises: 0), "2", none (the program failed: 0)
    assert result.mean_of(length_of_answer) == pytest.approx((0.4 + 0 + 0.1 + 0) / 4)
    assert result.mean_of(lambda ex, pred: 1.0) == 0.75
    assert len(calls) == 4  # the program ran once per example, not again per metric


def test_evaluate_is_reusable_across_programs():
    ev = evaluate(make_devset(5), num_threads=2)
    assert ev(Predict("question -> answer", lm=answering_lm())).score == 1.0
    assert ev(Predict("question -> answer", lm=answering_lm(wrong={0, 1}))).score == 0.6


def test_progress_bar_inside_another_live_display():
    rich_progress = pytest.importorskip("rich.progress")
    program = Predict("question -> answer", lm=answering_lm())
    with rich_progress.Progress() as outer:  # e.g. an optimizer's own progress bar
        outer.add_task("optimizing", total=1)
        result = Evaluate(make_devset(3), exact_match(), display_progress=True)(program)
    assert result.score == 1.0


def test_programs_may_return_plain_values():
    result = evaluate(make_devset(2), lambda ex, pred: pred == ex.answer, num_threads=1)(
        lambda question: question[1:]
    )
    assert result.score == 1.0
    assert json.loads(json.dumps(result.to_json()))["results"][0]["prediction"] == "0"


# -- the LM's own failures are not scores ------------------------------------------------------


class FlakyLM(ScriptedLM):
    """Answers like ``answering_lm`` but fails, after its retries, on the questions in ``down``
    with ``error`` (an infrastructure failure unless it is a ContextOverflow)."""

    def __init__(self, down: set[int], error=None, **kwargs) -> None:
        super().__init__(lambda r: f"Answer: {question_of(r)[1:]}", max_retries=1,
                         retry_initial_delay=0.001, **kwargs)
        self.down = down
        self.error = error or LMTransientError("connection refused by 127.0.0.1:9")

    def _complete(self, request):
        if int(question_of(request)[1:]) in self.down:
            raise self.error
        return super()._complete(request)


def test_an_lm_failure_stops_the_evaluation_naming_the_lm_and_the_error():
    program = Predict("question -> answer: int", lm=FlakyLM({3}, model="flaky-model"))
    with pytest.raises(LMUnavailable) as info:
        evaluate(make_devset(6), num_threads=1)(program)
    error = info.value
    assert "flaky-model" in str(error) and "connection refused by 127.0.0.1:9" in str(error)
    assert "after 2 attempts" in str(error)  # its retries were spent first
    assert "flaky-model" in error.lm and "connection refused" in error.first_error
    partial = error.partial_result
    assert partial.num_lm_errors == 1 and partial.num_errors == 0
    assert [r.lm_error for r in partial.results] == [False, False, False, True]
    assert partial.score == 1.0  # the failed example is in no mean: it is not a 0
    assert isinstance(error, EvaluationAborted)


def test_lm_failures_below_the_threshold_are_counted_apart_from_wrong_answers():
    lm = FlakyLM({1, 4})
    program = Predict("question -> answer: int", lm=lm)
    devset = make_devset(6)
    devset[0] = Example(question="q0", answer="999").with_inputs("question")  # a wrong answer
    result = evaluate(devset, num_threads=2, max_lm_errors=2)(program)
    assert result.num_lm_errors == 2 and result.num_errors == 0
    assert result.score == pytest.approx(3 / 4)  # 4 scored examples, one of them wrong
    assert result.to_json()["num_lm_errors"] == 2
    assert [r.lm_error for r in result.results] == [False, True, False, False, True, False]


def test_an_lm_that_fails_on_every_example_always_stops_the_evaluation():
    program = Predict("question -> answer: int", lm=FlakyLM(set(range(4))))
    with pytest.raises(LMUnavailable, match="failed on 4 of the 4 examples"):
        evaluate(make_devset(4), num_threads=2, max_lm_errors=None)(program)


@pytest.mark.parametrize("error", [LMRequestError("HTTP 404 from http://x/v1: no model"),
                                   LMInvalidResponse("a completion without choices")],
                         ids=["4xx", "invalid answer"])
def test_request_errors_and_invalid_answers_are_lm_failures(error):
    program = Predict("question -> answer: int", lm=FlakyLM({0}, error))
    with pytest.raises(LMUnavailable, match=type(error).__name__):
        evaluate(make_devset(3), num_threads=1)(program)


def test_a_prompt_too_long_for_the_context_stays_a_scored_failure_of_its_example():
    overflow = ContextOverflow("prompt of 5000 tokens exceeds the context window of 2048")
    program = Predict("question -> answer: int", lm=FlakyLM({2}, overflow))
    result = evaluate(make_devset(4), num_threads=2)(program)
    assert result.num_lm_errors == 0 and result.num_errors == 1
    assert result.score == 0.75
    assert result.results[2].error_type == "ContextOverflow" and not result.results[2].lm_error


def test_an_lm_failure_inside_the_metric_is_an_lm_failure_too():
    def judged(example, prediction):
        raise LMTransientError("the judge LM timed out")

    program = Predict("question -> answer: int", lm=answering_lm())
    with pytest.raises(LMUnavailable, match="judge LM timed out"):
        evaluate(make_devset(2), judged, num_threads=1)(program)
