"""What many scripted tests share: a QA program, its metric and data; the CLI run on the
parity task (tests/scripted_task.py) with scripted LMs."""

from __future__ import annotations

from pathlib import Path

import scripted_task as scripted
from typer.testing import CliRunner

from cotune import Example, Module, Predict
from cotune.cli import app

TASK_FILE = Path(__file__).with_name("scripted_task.py")


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


def use_scripted_lms(monkeypatch, tmp_path: Path) -> None:
    """Every LM the CLI makes is the parity task's scripted LM; the shared cache is private."""
    monkeypatch.setattr("cotune.lm.factory.make_lm", scripted.make_scripted_lm)
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path / "shared-cache"))


def cotune(*args: object):
    """``cotune ARGS...`` in this process (typer's test runner)."""
    return CliRunner().invoke(app, [str(a) for a in args])
