"""Running a program on a few examples and keeping, per example, what a reflection LM needs:
each predictor's inputs and outputs (the trace), the score, and the metric's feedback.

A metric may return a :class:`~cotune.evaluate.metrics.Score` with feedback; a plain float or
bool gets a feedback line made of the score and the example's expected outputs.  The program is
run through :class:`~cotune.evaluate.Evaluate`, so failures follow its rules: an unparsable
answer is a scored failure of that example (its error text becomes the feedback), an
infrastructure failure or a spent budget stops the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cotune.core import Module
from cotune.core.example import Example, Prediction
from cotune.core.trace import trace
from cotune.evaluate import Evaluate
from cotune.evaluate.metrics import Score

_MAX_VALUE_CHARS = 300
_MAX_ERROR_CHARS = 600


def run_with_feedback(
    program: Module,
    examples: Sequence[Example],
    metric: Callable[..., Any],
    *,
    num_threads: int = 4,
) -> list[dict[str, Any]]:
    """One JSON record per example, in order: ``score``, ``feedback``, ``predictor_feedback``,
    ``predictor_targets`` (the metric's hindsight credit per predictor, see
    :class:`~cotune.evaluate.metrics.Score`), ``steps`` (``[name, inputs, outputs]`` per
    predictor call), ``error`` (None, or why the program or metric failed) and the example's
    ``inputs``."""
    names = {id(p): name for name, p in program.named_predictors()}
    traces: dict[int, list[list[Any]]] = {}
    raw: dict[int, list[Any]] = {}
    feedback: dict[int, Score] = {}
    position = {id(ex): i for i, ex in enumerate(examples)}
    lock = threading.Lock()

    def traced(**inputs: Any) -> Any:
        with trace() as t:
            prediction = program(**inputs)
        steps = [[names[id(s.predictor)], jsonable(s.inputs), jsonable(s.outputs.to_dict())]
                 for s in t.steps if id(s.predictor) in names]
        with lock:
            traces[id(prediction)] = steps
            raw[id(prediction)] = t.steps
        return prediction

    def scored(example: Example, prediction: Prediction) -> float:
        with lock:
            steps = raw.get(id(prediction), [])
        value = metric(example, prediction, steps)  # the trace, as other optimizers pass it
        score = value if isinstance(value, Score) else Score(float(value))
        with lock:
            feedback[position[id(example)]] = score
        return float(score)

    result = Evaluate(list(examples), scored, num_threads=num_threads,
                      display_progress=False)(traced)
    records = []
    for i, r in enumerate(result.results):
        score = feedback.get(i)
        text = score.feedback if score is not None else ""
        if r.error is not None:
            text = f"The program failed: {r.error[:_MAX_ERROR_CHARS]}"
        elif not text:
            text = default_feedback(r.example, r.prediction, r.score)
        records.append({
            "score": r.score,
            "feedback": text,
            "predictor_feedback": dict(score.predictor_feedback) if score is not None else {},
            "predictor_targets": jsonable(score.predictor_targets) if score is not None else {},
            "steps": traces.get(id(r.prediction), []) if r.prediction is not None else [],
            "error": r.error,
            "inputs": jsonable(r.example.inputs()),
        })
    return records


def default_feedback(example: Example, prediction: Any, score: float) -> str:
    """The feedback of a metric that returned a bare number: the score, and the expected
    value of every output field the example holds a label for."""
    text = f"Score: {score:g}."
    produced = set(prediction.keys()) if isinstance(prediction, Mapping) else set()
    expected = [(k, v) for k, v in example.labels().items() if not produced or k in produced]
    if expected:
        text += " Expected " + "; ".join(f"{k}: {short(v)}" for k, v in expected) + "."
    return text


def jsonable(value: Any) -> Any:
    """JSON-native values as they are, containers recursively, anything else as ``str``."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return float(value) if isinstance(value, Score) else value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "model_dump"):
        return jsonable(value.model_dump(mode="json"))
    return str(value)


def short(value: Any, limit: int = _MAX_VALUE_CHARS) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
