"""Run a program over examples in parallel and score it; the metrics to score it with."""

from cotune.evaluate.evaluate import (
    Evaluate,
    EvaluationAborted,
    EvaluationResult,
    ExampleResult,
    LMUnavailable,
)
from cotune.evaluate.metrics import (
    Metric,
    Score,
    exact_match,
    get_field,
    normalize_text,
    numeric_match,
    parse_number,
    token_f1,
    token_f1_score,
)

__all__ = [
    "Evaluate",
    "EvaluationAborted",
    "EvaluationResult",
    "ExampleResult",
    "LMUnavailable",
    "Metric",
    "Score",
    "exact_match",
    "get_field",
    "normalize_text",
    "numeric_match",
    "parse_number",
    "token_f1",
    "token_f1_score",
]
