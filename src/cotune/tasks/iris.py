"""Iris: four flower measurements -> species, one predictor. Data from scikit-learn."""

from __future__ import annotations

from typing import Literal

from cotune.core import Module
from cotune.core.example import Example, Prediction
from cotune.core.predict import Predict
from cotune.core.signature import InputField, OutputField, Signature
from cotune.evaluate.metrics import Score
from cotune.tasks.base import Splits, Task, seeded_split

SPECIES = ("setosa", "versicolor", "virginica")


class ClassifyIris(Signature):
    """Given the petal and sepal dimensions in cm, predict the iris species."""

    petal_length: float = InputField()
    petal_width: float = InputField()
    sepal_length: float = InputField()
    sepal_width: float = InputField()
    species: Literal["setosa", "versicolor", "virginica"] = OutputField()


class IrisProgram(Module):
    def __init__(self) -> None:
        self.classify = Predict(ClassifyIris, max_tokens=32)

    def forward(self, **measurements: float) -> Prediction:
        return self.classify(**measurements)


def load_examples() -> list[Example]:
    try:
        from sklearn.datasets import load_iris
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("the iris task needs scikit-learn: pip install 'cotune[tasks]'") from exc
    data = load_iris()
    names = ["sepal_length", "sepal_width", "petal_length", "petal_width"]
    examples = []
    for row, target in zip(data.data, data.target, strict=True):
        fields = {name: round(float(v), 1) for name, v in zip(names, row, strict=True)}
        fields["species"] = SPECIES[int(target)]
        examples.append(Example(fields, input_keys=names))
    return examples


def load_splits(seed: int = 0, sizes: tuple[int, int, int] = (50, 50, 50)) -> Splits:
    return seeded_split(load_examples(), sizes, seed)


def species_match(example: Example, prediction: Prediction, trace: object = None) -> Score:
    """Accuracy, with feedback naming the expected and the predicted species."""
    gold, guess = example["species"], prediction.get("species")
    if guess == gold:
        return Score(1.0, f"Correct: {gold}.")
    return Score(0.0, f"Expected {gold}, got {guess} (petal length {example['petal_length']} "
                      f"cm, petal width {example['petal_width']} cm).")


TASK = Task(
    name="iris",
    description="Iris species from four measurements (scikit-learn), accuracy",
    load_splits=load_splits,
    make_program=IrisProgram,
    metric=species_match,
)
