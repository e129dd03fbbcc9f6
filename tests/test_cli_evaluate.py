"""`cotune evaluate` scores the program as it is unless demos are asked for (scripted LM)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import scripted_task as scripted  # tests/ is on pytest's path (pyproject)
from typer.testing import CliRunner

from cotune.cli import app

TASK_FILE = Path(__file__).with_name("scripted_task.py")


@pytest.fixture
def made(monkeypatch, tmp_path) -> list:
    """The scripted LMs the CLI makes, so a test can read the requests they were sent."""
    lms: list = []

    def make_lm(*args, **kwargs):
        lm = scripted.make_scripted_lm(*args, **kwargs)
        lms.append(lm)
        return lm

    monkeypatch.setattr("cotune.lm.factory.make_lm", make_lm)
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path / "shared-cache"))
    return lms


def evaluate(*args: object):
    return CliRunner().invoke(app, ["evaluate", "--task", str(TASK_FILE), "--threads", "2",
                                    *[str(a) for a in args]])


def demos_per_request(lm) -> set[int]:
    """Demos in each prompt: system + (user, assistant) per demo + the query."""
    return {(len(r.messages) - 2) // 2 for r in lm.requests}


def test_evaluate_runs_the_program_as_it_is_by_default(made, tmp_path):
    out = tmp_path / "results.json"
    result = evaluate("--split", "test", "--out", out)
    assert result.exit_code == 0, result.output
    [lm] = made
    assert len(lm.requests) == len(scripted.testset)
    assert demos_per_request(lm) == {0}
    assert len(json.loads(out.read_text())["results"]) == len(scripted.testset)


def test_evaluate_adds_labelled_demos_only_when_asked(made):
    result = evaluate("--split", "test", "--demos", "2")
    assert result.exit_code == 0, result.output
    [lm] = made
    assert demos_per_request(lm) == {2}
    train_queries = {f"Text: {ex['text']}" for ex in scripted.trainset}
    demo_queries = {m["content"] for m in lm.requests[0].messages[1:-1] if m["role"] == "user"}
    assert demo_queries <= train_queries
