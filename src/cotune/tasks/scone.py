"""ScoNe: natural-language inference under negation (premise, hypothesis -> entailment/neutral).

The shared copy of the ScoNe training split repeats every (premise, hypothesis) pair once per
negation ``category`` (the category column does not vary the text), so rows are deduplicated
first: 994 distinct pairs, from which the splits are drawn with the seed.  Variants of one base
sentence (e.g. "hat" / "sunhat" / "sombrero") can still land in different splits, as in ScoNe.
"""

from __future__ import annotations

from typing import Literal

from cotune.core import Module
from cotune.core.example import Example, Prediction
from cotune.core.predict import ChainOfThought
from cotune.core.signature import InputField, OutputField, Signature
from cotune.evaluate.metrics import get_field
from cotune.tasks.base import Splits, Task, seeded_split
from cotune.tasks.data import DataError, data_path, iter_jsonl

DEFAULT_SIZES = (200, 100, 200)
LABELS = ("entailment", "neutral")
_ROW_FIELDS = {"premise": str, "hypothesis": str, "label": str}


class JudgeEntailment(Signature):
    """Decide whether the premise entails the hypothesis: "entailment" if the hypothesis must be
    true whenever the premise is true, otherwise "neutral"."""

    premise: str = InputField()
    hypothesis: str = InputField()
    label: Literal["entailment", "neutral"] = OutputField()


class SconeProgram(Module):
    def __init__(self, max_tokens: int = 256) -> None:
        self.judge = ChainOfThought(JudgeEntailment, max_tokens=max_tokens)

    def forward(self, premise: str, hypothesis: str) -> Prediction:
        return self.judge(premise=premise, hypothesis=hypothesis)


def load_examples() -> list[Example]:
    """The distinct (premise, hypothesis) pairs, in file order."""
    path = data_path("scone", "train.jsonl")
    examples: dict[tuple[str, str], Example] = {}
    for lineno, row in iter_jsonl(path, _ROW_FIELDS):
        if row["label"] not in LABELS:
            raise DataError(
                f"{path}, line {lineno}: label {row['label']!r} is not one of {list(LABELS)}"
            )
        key = (row["premise"], row["hypothesis"])
        previous = examples.get(key)
        if previous is not None and previous["label"] != row["label"]:
            raise DataError(
                f"{path}, line {lineno}: the same pair appeared before with label "
                f"{previous['label']!r}"
            )
        examples[key] = Example(
            premise=row["premise"], hypothesis=row["hypothesis"], label=row["label"]
        ).with_inputs("premise", "hypothesis")
    return list(examples.values())


def load_splits(seed: int = 0, sizes: tuple[int, int, int] | None = None) -> Splits:
    """Seeded train/val/test (default 200/100/200) from the 994 distinct training pairs."""
    return seeded_split(load_examples(), sizes or DEFAULT_SIZES, seed,
                        source=str(data_path("scone", "train.jsonl")))


def label_match(example: Example, prediction: Prediction | None, trace: object = None) -> float:
    return float(get_field(prediction, "label") == example["label"])


TASK = Task(
    name="scone",
    description="ScoNe negation NLI (premise, hypothesis -> entailment/neutral), CoT, accuracy",
    load_splits=load_splits,
    make_program=SconeProgram,
    metric=label_match,
)
