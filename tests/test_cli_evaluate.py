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


def test_evaluate_reports_intervals_the_extra_metrics_and_the_no_lm_baseline(made, tmp_path):
    from cotune.evaluate.stats import bootstrap_ci, paired_bootstrap_ci

    out = tmp_path / "results.json"
    result = evaluate("--split", "test", "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads(out.read_text())
    assert (data["task"], data["split"], data["seed"]) == (str(TASK_FILE), "test", 0)
    scores = [r["score"] for r in data["results"]]
    assert 0 < sum(scores) < len(scores)  # the scripted LM errs on some numbers: a real spread
    interval = bootstrap_ci(scores, seed=0)
    assert data["interval"] == interval.to_json()
    assert f"[{interval.low:.3f}, {interval.high:.3f}]" in result.output

    said_odd = [float(r["prediction"]["parity"] == "odd") for r in data["results"]]
    assert data["metrics"]["said_odd"]["values"] == said_odd
    assert data["metrics"]["said_odd"]["interval"] == bootstrap_ci(said_odd, seed=0).to_json()

    # the scripted task's no-LM baseline answers "even": paired with the program's scores
    evens = [float(r["example"]["parity"] == "even") for r in data["results"]]
    baseline = data["reference"]["metrics"]["score"]
    assert baseline["reference"] == sum(evens) / len(evens)
    gain = paired_bootstrap_ci(scores, evens, seed=0)
    assert baseline["gain"]["estimate"] == pytest.approx(gain.estimate)
    assert "always 'even' (no LM) on the same test examples: score" in result.output


def test_paired_diff_compares_an_extra_metric_of_two_evaluations(made, tmp_path):
    import subprocess
    import sys

    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert evaluate("--split", "test", "--out", first).exit_code == 0
    assert evaluate("--split", "test", "--demos", "2", "--out", second).exit_code == 0
    script = Path(__file__).parents[1] / "benchmarks" / "paired_diff.py"
    done = subprocess.run([sys.executable, str(script), str(first), str(second),
                           "--metric", "said_odd", "--resamples", "200"],
                          capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    odd = [json.loads(f.read_text())["metrics"]["said_odd"]["values"] for f in (first, second)]
    assert report["metric"] == "said_odd"
    assert report["difference"] == pytest.approx((sum(odd[1]) - sum(odd[0])) / len(odd[0]))

    missing = subprocess.run([sys.executable, str(script), str(first), str(second),
                              "--metric", "recall"], capture_output=True, text=True)
    assert missing.returncode != 0
    assert "records no per-example 'recall'" in missing.stderr
    assert "said_odd" in missing.stderr
