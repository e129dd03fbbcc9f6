"""HotPotQA Conditional (MIPRO paper): HotPotQA where the answer must also follow a formatting
rule that depends on the question, a rule the program is never told.

The program is the plain HotPotQA multi-hop program with its generic instructions; an optimizer
can only discover the rules through the metric, which gives credit only when the answer is right
*and* written in its rule's form.  The rule is chosen deterministically from the question's
``type`` and the shape of the gold answer (first match wins):

=====================  ===================================  ==================================
rule                   when                                 the answer must be
=====================  ===================================  ==================================
``yes_no``             gold is yes / no                     exactly ``yes`` or ``no``, lowercase
``date``               gold is a date with a month          ISO 8601: ``1948-08-02``, or
                       (``August 2, 1948``, ``October       ``1922-10`` when it has no day
                       1922``)
``year``               gold is a bare year (``1961``)       the four digits only
``number``             gold is a number (``15``, ``1,500``) digits only: no separators or units
``comparison_entity``  any other comparison question        the entity exactly as the gold
                                                            writes it (case-sensitive, nothing
                                                            added)
``bridge_entity``      any other bridge question            all lowercase, no leading article,
                                                            no trailing punctuation (``tulsa``)
=====================  ===================================  ==================================

Splits, examples and the program are HotPotQA's; examples also carry ``format_rule``.
"""

from __future__ import annotations

import re
import string
from collections.abc import Callable

from cotune.adapters.numbers import NUMBER
from cotune.core.example import Example, Prediction
from cotune.evaluate.metrics import get_field, normalize_text, parse_number
from cotune.tasks import hotpotqa
from cotune.tasks.base import Splits, Task

DEFAULT_SIZES = hotpotqa.DEFAULT_SIZES

FORMAT_RULES: dict[str, str] = {
    "yes_no": 'exactly "yes" or "no", in lowercase',
    "date": 'ISO 8601: "YYYY-MM-DD", or "YYYY-MM" when the date has no day',
    "year": "the four digits of the year only",
    "number": "digits only, with no thousands separators, words or units",
    "comparison_entity": "the entity exactly as written in the gold answer (case-sensitive)",
    "bridge_entity": "all lowercase, with no leading article and no trailing punctuation",
}

_MONTHS = {
    name: i
    for i, names in enumerate(
        [
            ("january", "jan"),
            ("february", "feb"),
            ("march", "mar"),
            ("april", "apr"),
            ("may",),
            ("june", "jun"),
            ("july", "jul"),
            ("august", "aug"),
            ("september", "sep", "sept"),
            ("october", "oct"),
            ("november", "nov"),
            ("december", "dec"),
        ],
        start=1,
    )
    for name in names
}
_MONTH = "(?P<month>" + "|".join(sorted(_MONTHS, key=len, reverse=True)) + r")\.?"
_YEAR = r"(?P<year>\d{3,4})"
_DAY = r"(?P<day>\d{1,2})(?:st|nd|rd|th)?"
_DATE_FORMS = [
    re.compile(rf"{_MONTH}\s+{_DAY},?\s+{_YEAR}", re.IGNORECASE),  # August 2, 1948
    re.compile(rf"{_DAY}\s+{_MONTH},?\s+{_YEAR}", re.IGNORECASE),  # 2 August 1948
    re.compile(rf"{_MONTH},?\s+{_YEAR}", re.IGNORECASE),  # October 1922
]
_BARE_YEAR = re.compile(r"\d{4}")
_DIGITS = re.compile(r"-?\d+(?:\.\d+)?")
_ISO_DATE = re.compile(r"\d{4}-\d{2}(?:-\d{2})?")
_LEADING_ARTICLE = re.compile(r"(?:the|a|an)\s", re.IGNORECASE)


def iso_date(text: str) -> str | None:
    """``"August 2, 1948"`` -> ``"1948-08-02"``, ``"October 1922"`` -> ``"1922-10"``; None
    when ``text`` as a whole is not a date with a month."""
    text = " ".join(text.split())
    for form in _DATE_FORMS:
        match = form.fullmatch(text)
        if match:
            parts = match.groupdict()
            month = _MONTHS[parts["month"].lower()]
            year = int(parts["year"])
            day = parts.get("day")
            if day is not None and not 1 <= int(day) <= 31:
                return None
            return f"{year:04d}-{month:02d}" + (f"-{int(day):02d}" if day else "")
    return None


def format_rule(answer: str, question_type: str) -> str:
    """The name of the formatting rule (a key of :data:`FORMAT_RULES`) for a gold answer."""
    text = answer.strip()
    if text.lower() in ("yes", "no"):
        return "yes_no"
    if iso_date(text) is not None:
        return "date"
    if _BARE_YEAR.fullmatch(text):
        return "year"
    if NUMBER.fullmatch(text):
        return "number"
    return "comparison_entity" if question_type == "comparison" else "bridge_entity"


def _squeeze(text: str) -> str:
    return " ".join(text.split())


def _bridge_entity_ok(predicted: str, gold: str) -> bool:
    well_formed = (
        predicted == predicted.lower()
        and not _LEADING_ARTICLE.match(predicted)
        and predicted[-1:] not in string.punctuation
    )
    return well_formed and normalize_text(predicted) == normalize_text(gold)


def _number_ok(predicted: str, gold: str) -> bool:
    return bool(_DIGITS.fullmatch(predicted)) and float(predicted) == parse_number(gold)


_CHECKS: dict[str, Callable[[str, str], bool]] = {
    "yes_no": lambda p, g: p == g.strip().lower(),
    "date": lambda p, g: bool(_ISO_DATE.fullmatch(p)) and p == iso_date(g),
    "year": lambda p, g: p == g.strip(),
    "number": _number_ok,
    "comparison_entity": lambda p, g: p == _squeeze(g),
    "bridge_entity": _bridge_entity_ok,
}


def conditional_answer_match(
    example: Example, prediction: Prediction | None, trace: object = None
) -> float:
    """1.0 when the predicted answer is right and follows the question's formatting rule."""
    predicted = get_field(prediction, "answer")
    gold = get_field(example, "answer")
    if not isinstance(predicted, str) or not isinstance(gold, str):
        return 0.0
    rule = format_rule(gold, str(get_field(example, "type") or ""))
    return float(_CHECKS[rule](_squeeze(predicted), gold))


def _with_rule(example: Example) -> Example:
    return example.with_fields(format_rule=format_rule(example["answer"], example["type"]))


def load_splits(seed: int = 0, sizes: tuple[int, int, int] | None = None) -> Splits:
    """HotPotQA's splits (default 200/100/200), each example tagged with its ``format_rule``."""
    splits = hotpotqa.load_splits(seed, sizes)
    return Splits(
        *([_with_rule(ex) for ex in part] for part in (splits.train, splits.val, splits.test))
    )


TASK = Task(
    name="hotpotqa-conditional",
    description="HotPotQA whose answers must also follow hidden per-question-type format rules",
    load_splits=load_splits,
    make_program=hotpotqa.MultiHopQA,
    metric=conditional_answer_match,
    extra_metrics={"retrieval_recall": hotpotqa.gold_titles_recall},
    reference=hotpotqa.TASK.reference,
)
