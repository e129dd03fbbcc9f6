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
from cotune.evaluate.stats import Interval, bootstrap_ci, paired_bootstrap_ci

__all__ = [
    "Evaluate",
    "EvaluationAborted",
    "EvaluationResult",
    "ExampleResult",
    "Interval",
    "LMUnavailable",
    "Metric",
    "Score",
    "bootstrap_ci",
    "exact_match",
    "get_field",
    "normalize_text",
    "numeric_match",
    "paired_bootstrap_ci",
    "parse_number",
    "token_f1",
    "token_f1_score",
]
