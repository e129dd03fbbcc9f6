"""GSM8K: grade-school math word problems, one chain-of-thought predictor, numeric answer.

Examples hold ``question`` (the input), ``answer`` (the gold number after ``#### ``, as an int
when whole) and ``solution`` (the worked solution, kept for reference; not an input).  Splits are
drawn with the seed from the 7,473-row training pool; the official test split stays unseen.
"""

from __future__ import annotations

from cotune.core import Module
from cotune.core.example import Example, Prediction
from cotune.core.predict import ChainOfThought
from cotune.core.signature import InputField, OutputField, Signature
from cotune.evaluate.metrics import Score, numeric_match, parse_number
from cotune.tasks.base import Splits, Task, seeded_split
from cotune.tasks.data import DataError, data_path, iter_jsonl

DEFAULT_SIZES = (200, 100, 200)
_MARKER = "####"


class SolveMath(Signature):
    """Solve the math word problem."""

    question: str = InputField()
    # float rather than int: "12.50" or "18.0" still parse; a wrong non-whole answer scores 0
    # instead of failing to parse, which keeps small models' traces usable.
    answer: float = OutputField(desc="the final answer, as a number only")


class GSM8KProgram(Module):
    def __init__(self, max_tokens: int = 256) -> None:
        self.solve = ChainOfThought(SolveMath, max_tokens=max_tokens)

    def forward(self, question: str) -> Prediction:
        return self.solve(question=question)


def gold_number(solution: str) -> int | float:
    """The number after the last ``#### `` of a GSM8K solution (``"... #### 1,080"`` -> 1080)."""
    if _MARKER not in solution:
        raise ValueError(f"no '{_MARKER}' final answer in the solution {solution[-80:]!r}")
    number = parse_number(solution.rsplit(_MARKER, 1)[1])
    if number is None:
        raise ValueError(f"no number after '{_MARKER}' in {solution[-80:]!r}")
    return int(number) if number.is_integer() else number


def load_examples() -> list[Example]:
    path = data_path("gsm8k", "train.jsonl")
    examples = []
    for lineno, row in iter_jsonl(path, {"question": str, "answer": str}):
        try:
            answer = gold_number(row["answer"])
        except ValueError as exc:
            raise DataError(f"{path}, line {lineno}: {exc}") from None
        fields = {"question": row["question"], "answer": answer, "solution": row["answer"]}
        examples.append(Example(fields, input_keys=["question"]))
    return examples


def load_splits(seed: int = 0, sizes: tuple[int, int, int] | None = None) -> Splits:
    """Seeded train/val/test (default 200/100/200) from the GSM8K training pool."""
    return seeded_split(load_examples(), sizes or DEFAULT_SIZES, seed,
                        source=str(data_path("gsm8k", "train.jsonl")))


_numeric_answer = numeric_match("answer")


def answer_match(example: Example, prediction: Prediction | None, trace: object = None) -> Score:
    """Numeric accuracy, with feedback giving the expected number and the number read."""
    value = _numeric_answer(example, prediction)
    gold = example.get("answer")
    if value:
        return Score(value, f"Correct: {gold}.")
    read = parse_number(prediction.get("answer")) if prediction is not None else None
    got = "no number" if read is None else f"{read:g}"
    return Score(value, f"Expected the number {gold}; the answer gave {got}.")

TASK = Task(
    name="gsm8k",
    description="GSM8K math word problems, chain of thought, numeric answer accuracy",
    load_splits=load_splits,
    make_program=GSM8KProgram,
    metric=answer_match,
)
