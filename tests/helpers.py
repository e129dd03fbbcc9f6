"""A program, a metric and data that many scripted tests share."""

from __future__ import annotations

from cotune import Example, Module, Predict


class QA(Module):
    """One predictor: ``question -> answer``."""

    def __init__(self):
        self.answer = Predict("question -> answer")

    def forward(self, question):
        return self.answer(question=question)


def exact(example, prediction, trace=None) -> float:
    return float(prediction.answer == example.answer)


def qa_data(kind: str, n: int) -> list[Example]:
    """``n`` examples ``"<kind> i" -> "ai"``."""
    return [Example(question=f"{kind} {i}", answer=f"a{i}").with_inputs("question")
            for i in range(n)]
