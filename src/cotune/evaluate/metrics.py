"""Metrics: ``metric(example, prediction, trace=None) -> float | bool``.

Each factory names the field to compare and returns a metric function.  A metric never raises
on sloppy data: a missing field, ``None`` or an unreadable value scores 0.  The gold value may be
a list of acceptable answers (e.g. aliases); the best match counts.

>>> em = exact_match("answer")
>>> em(Example(answer="The Eiffel Tower"), Prediction(answer="eiffel tower."))
1.0
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from cotune.adapters.numbers import NUMBER, number_value
from cotune.core.example import Example, Prediction

Metric = Callable[..., float | bool]
"""``metric(example, prediction, trace=None) -> float | bool`` (a :class:`Score` is a float)"""

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCTUATION = str.maketrans("", "", string.punctuation + "‘’“”")

_GSM8K_MARKER = "####"


class Score(float):
    """A metric value that also says *why*: ``Score(0.0, "expected 'versicolor'")``.

    It is a float, so everything that reads a metric as a number keeps working; optimizers
    that learn from text (GEPA) read ``feedback``, and ``predictor_feedback`` where a metric
    has something to say to one predictor of the program (keyed by its name in
    ``program.named_predictors()``, e.g. ``"generate_query[0]"``).

    ``predictor_targets``, keyed the same way, credit single steps where the metric can tell
    from the gold labels: a predictor's outputs as it *should* have given them (HoVer: a query
    naming a supporting document that no search had found yet; ``{}``: right as it was), or
    None for a step that earned nothing.  Optimizers run with ``hindsight=True`` learn from
    those steps (demos, fine-tuning records), failing trace or not; see
    :mod:`cotune.optimize.traces`.
    """

    __slots__ = ("feedback", "predictor_feedback", "predictor_targets")

    def __new__(
        cls,
        value: float | bool,
        feedback: str = "",
        predictor_feedback: Mapping[str, str] | None = None,
        predictor_targets: Mapping[str, Mapping[str, Any] | None] | None = None,
    ) -> Score:
        score = super().__new__(cls, float(value))
        score.feedback = str(feedback)
        score.predictor_feedback = dict(predictor_feedback or {})
        score.predictor_targets = {
            name: None if outputs is None else dict(outputs)
            for name, outputs in (predictor_targets or {}).items()
        }
        return score

    @property
    def value(self) -> float:
        return float(self)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Score, (float(self), self.feedback, self.predictor_feedback,
                        self.predictor_targets))

    def __repr__(self) -> str:
        return f"Score({float(self)!r}, {self.feedback!r})"


# -- helpers -----------------------------------------------------------------------------------


def normalize_text(text: Any) -> str:
    """SQuAD-style normalization: lowercase, drop punctuation and articles, squeeze whitespace.

    ``None`` becomes ``""``; other non-strings are converted with ``str()``.
    """
    if text is None:
        return ""
    s = str(text).lower().translate(_PUNCTUATION)
    s = _ARTICLES.sub(" ", s)
    return " ".join(s.split())


def parse_number(value: Any) -> float | None:
    """Read a number from a value, or None when there is none.

    Numbers pass through (``bool`` does not count).  In text, the part after the last ``####``
    (GSM8K's gold-answer marker) is read when present; then the last number in the text wins,
    since worked answers end with their result.  ``$``, ``%``, thousands commas and units are
    ignored: ``"$1,234.50"`` -> 1234.5, ``"72 apples"`` -> 72, ``"#### -3"`` -> -3.
    """
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        number = float(value)
        return number if math.isfinite(number) else None
    text = str(value)
    if _GSM8K_MARKER in text:
        text = text.rsplit(_GSM8K_MARKER, 1)[1]
    last = None
    for last in NUMBER.finditer(text):  # noqa: B007 - only the last match is wanted
        pass
    if last is None:
        return None
    number = number_value(last)
    return number if math.isfinite(number) else None


def get_field(obj: Any, name: str) -> Any:
    """``obj[name]`` for mappings (Example, Prediction, dict), else ``getattr``; None if absent."""
    if obj is None:
        return None
    if isinstance(obj, Mapping):
        return obj.get(name)
    return getattr(obj, name, None)


def token_f1_score(prediction: Any, gold: Any) -> float:
    """SQuAD token-level F1 between two texts after :func:`normalize_text`."""
    pred_tokens = normalize_text(prediction).split()
    gold_tokens = normalize_text(gold).split()
    if not pred_tokens or not gold_tokens:
        # Both empty (e.g. an unanswerable question answered with nothing) is a match.
        return float(pred_tokens == gold_tokens and prediction is not None and gold is not None)
    common = Counter(pred_tokens) & Counter(gold_tokens)
    overlap = sum(common.values())
    if overlap == 0:
        return 0.0
    precision = overlap / len(pred_tokens)
    recall = overlap / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def _golds(value: Any) -> Iterable[Any]:
    """Several acceptable answers when the gold is a list/tuple/set, else the one."""
    if isinstance(value, (list, tuple, set, frozenset)):
        return value
    return (value,)


def _named(fn: Metric, name: str) -> Metric:
    fn.__name__ = fn.__qualname__ = name
    return fn


# -- metric factories --------------------------------------------------------------------------


def exact_match(field: str = "answer") -> Metric:
    """1.0 when the normalized predicted ``field`` equals the (or any) normalized gold value."""

    def metric(example: Example, prediction: Prediction | None, trace: Any = None) -> float:
        predicted = get_field(prediction, field)
        if predicted is None:
            return 0.0
        guess = normalize_text(predicted)
        golds = _golds(get_field(example, field))
        return float(any(g is not None and normalize_text(g) == guess for g in golds))

    return _named(metric, f"exact_match({field!r})")


def token_f1(field: str = "answer") -> Metric:
    """SQuAD token F1 of the predicted ``field`` against the (best) gold value, in [0, 1]."""

    def metric(example: Example, prediction: Prediction | None, trace: Any = None) -> float:
        predicted = get_field(prediction, field)
        if predicted is None:
            return 0.0
        golds = [g for g in _golds(get_field(example, field)) if g is not None]
        return max((token_f1_score(predicted, g) for g in golds), default=0.0)

    return _named(metric, f"token_f1({field!r})")


def numeric_match(field: str = "answer", tolerance: float = 1e-6) -> Metric:
    """1.0 when the predicted number equals the gold number within ``tolerance``.

    The tolerance is absolute for numbers up to 1 in magnitude and relative beyond
    (``|p - g| <= tolerance * max(1, |g|)``), so both 0.5 and 1e9 compare sensibly.  Numbers are
    read with :func:`parse_number`, so a GSM8K gold solution (``"... #### 72"``) works as is.
    """
    if tolerance < 0:
        raise ValueError("tolerance must be >= 0")

    def metric(example: Example, prediction: Prediction | None, trace: Any = None) -> float:
        predicted = parse_number(get_field(prediction, field))
        if predicted is None:
            return 0.0
        for gold_value in _golds(get_field(example, field)):
            gold = parse_number(gold_value)
            if gold is not None and abs(predicted - gold) <= tolerance * max(1.0, abs(gold)):
                return 1.0
        return 0.0

    return _named(metric, f"numeric_match({field!r})")
