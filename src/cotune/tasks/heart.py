"""Heart disease (MIPRO paper): from a patient's record, predict whether heart disease is present.

Rows are the UCI heart-disease table (four sites).  The model sees the record rendered as one
readable line; a value that is missing (an empty string, or a cholesterol or blood pressure of 0,
which is how two of the sites recorded "not measured") reads "unknown".  The label is
``heart_disease = "yes"`` when the diagnosis ``num`` (0-4) is above 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

from cotune.core import Module
from cotune.core.example import Example, Prediction
from cotune.core.predict import ChainOfThought
from cotune.core.signature import InputField, OutputField, Signature
from cotune.evaluate.metrics import get_field
from cotune.tasks.base import Splits, Task, seeded_split
from cotune.tasks.data import DataError, data_path, iter_jsonl

DEFAULT_SIZES = (200, 100, 200)
MISSING = "unknown"

# column, how it reads, unit
RECORD_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("age", "Age", "years"),
    ("sex", "Sex", ""),
    ("dataset", "Hospital", ""),
    ("cp", "Chest pain type", ""),
    ("trestbps", "Resting blood pressure", "mm Hg"),
    ("chol", "Serum cholesterol", "mg/dl"),
    ("fbs", "Fasting blood sugar above 120 mg/dl", ""),
    ("restecg", "Resting ECG", ""),
    ("thalch", "Maximum heart rate", "bpm"),
    ("exang", "Exercise-induced angina", ""),
    ("oldpeak", "ST depression induced by exercise", "mm"),
    ("slope", "Slope of the peak exercise ST segment", ""),
    ("ca", "Major vessels colored by fluoroscopy", ""),
    ("thal", "Thallium stress test", ""),
)
_ZERO_MEANS_MISSING = {"trestbps", "chol"}
_BOOLEANS = {"TRUE": "yes", "FALSE": "no"}
_ROW_FIELDS = {name: str for name, _, _ in RECORD_FIELDS} | {"num": str}


class DiagnoseHeartDisease(Signature):
    """Given a patient's record, predict whether the patient has heart disease."""

    patient: str = InputField(desc="the patient's record")
    heart_disease: Literal["yes", "no"] = OutputField()


class HeartProgram(Module):
    def __init__(self, max_tokens: int = 256) -> None:
        self.diagnose = ChainOfThought(DiagnoseHeartDisease, max_tokens=max_tokens)

    def forward(self, patient: str) -> Prediction:
        return self.diagnose(patient=patient)


def render_value(column: str, value: str, unit: str = "") -> str:
    value = value.strip()
    if not value or (column in _ZERO_MEANS_MISSING and value == "0"):
        return MISSING
    value = _BOOLEANS.get(value, value)
    if column == "sex":
        value = value.lower()
    return f"{value} {unit}" if unit else value


def render_record(row: Mapping[str, str]) -> str:
    """``"Age: 54 years; Sex: female; ...; Thallium stress test: unknown"``."""
    return "; ".join(
        f"{label}: {render_value(column, row.get(column, ''), unit)}"
        for column, label, unit in RECORD_FIELDS
    )


def load_examples() -> list[Example]:
    path = data_path("heart", "train.jsonl")
    examples = []
    for lineno, row in iter_jsonl(path, _ROW_FIELDS):
        num = row["num"].strip()
        if num not in {"0", "1", "2", "3", "4"}:
            raise DataError(f"{path}, line {lineno}: diagnosis 'num' should be 0-4, got {num!r}")
        examples.append(
            Example(
                patient=render_record(row), heart_disease="yes" if num != "0" else "no"
            ).with_inputs("patient")
        )
    return examples


def load_splits(seed: int = 0, sizes: tuple[int, int, int] | None = None) -> Splits:
    """Seeded train/val/test (default 200/100/200) from the 644 patient records."""
    return seeded_split(load_examples(), sizes or DEFAULT_SIZES, seed,
                        source=str(data_path("heart", "train.jsonl")))


def diagnosis_match(example: Example, prediction: Prediction | None, trace: object = None) -> float:
    return float(get_field(prediction, "heart_disease") == example["heart_disease"])


TASK = Task(
    name="heart",
    description="UCI heart disease: patient record -> disease present (yes/no), CoT, accuracy",
    load_splits=load_splits,
    make_program=HeartProgram,
    metric=diagnosis_match,
)
