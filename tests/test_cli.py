"""The `cotune optimize` and `cotune show` commands (scripted LM; one real-model run)."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import scripted_task as scripted  # tests/ is on pytest's path (pyproject)
from helpers import TASK_FILE, cotune, use_scripted_lms

from cotune import load_program
from cotune.runs.folder import RunFolder
from cotune.runs.report import format_gain, format_score


@pytest.fixture(autouse=True)
def scripted_lm(monkeypatch, tmp_path):
    use_scripted_lms(monkeypatch, tmp_path)


def optimize(run: Path, *extra: str):
    return cotune("optimize", "--task", TASK_FILE, "--optimizer", "random-search",
                  "--set", "num_candidates=3", "--threads", "2", "--run-dir", run, *extra)


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    error = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(error) == 1, result.output
    for fragment in fragments:
        assert fragment in error[0], error[0]


def test_optimize_writes_a_run_folder_and_prints_a_summary(tmp_path):
    run = tmp_path / "run"
    result = optimize(run, "--cache-dir", run)
    assert result.exit_code == 0, result.output
    assert "projected LM calls" in result.output
    assert "best 1.000" in result.output or "best 0." in result.output  # progress, best so far
    for column in ("val score", "test score", "LM calls", "cache hits", "tokens", "wall s"):
        assert column in result.output
    assert f"run folder: {run}" in result.output.replace("\n", "")
    summary = RunFolder(run).read_json("result.json")
    flat = " ".join(result.output.split())
    val = format_score(summary["val_score"], summary["val_interval"])
    assert f"with 95% bootstrap intervals: val {val}" in flat
    baseline = f"{summary['baseline_test_score']:.3f}"
    assert f"test vs the unoptimized program ({baseline}): {format_gain(summary['test_gain'])}" \
        in flat
    assert (f"the baseline stayed: {summary['advice']}" in flat) == bool(summary["advice"])
    evens = summary["reference"]["metrics"]["score"]
    stated = (f"always 'even' (no LM) on the same test examples: score "
              f"{evens['reference']:.3f}, the program minus it {format_gain(evens['gain'])}")
    assert stated in flat
    assert stated in " ".join(cotune("show", run).output.split())  # the same words in both

    folder = RunFolder(run)
    assert folder.status()["state"] == "finished"
    assert folder.cache_path.is_file()  # --cache-dir RUN: the LM cache lives in the run
    load_program(scripted.Parity(), folder.program_path)
    summary = folder.read_json("result.json")
    assert summary["test"]["examples"] == 8 and summary["usage"]["total"]["calls"] > 0

    again = optimize(run, "--cache-dir", run)
    assert again.exit_code == 0, again.output
    assert "resuming" in again.output and RunFolder(run).status()["attempt"] == 2


def test_train_val_test_sizes(tmp_path):
    run = tmp_path / "run"
    result = optimize(run, "--train-size", "8", "--val-size", "5", "--test-size", "3")
    assert result.exit_code == 0, result.output
    assert RunFolder(run).config()["splits"] | {"digest": None} == {
        "train": 8, "val": 5, "test": 3, "digest": None}
    assert RunFolder(run).read_json("result.json")["test"]["examples"] == 3


def test_show_prints_the_winner_the_score_path_and_the_cost(tmp_path):
    run = tmp_path / "run"
    assert optimize(run).exit_code == 0
    candidates = RunFolder(run).read_json("candidates.json")
    best = candidates["candidates"][candidates["best_index"]]
    winner = best["state"]["predictors"]["classify"]

    result = cotune("show", run)
    assert result.exit_code == 0, result.output
    out = result.output
    assert "predictor classify" in out
    original = "Say whether the number is even or odd."
    if winner["instruction"] == original:
        assert f"instruction (unchanged): {original}" in out
    else:
        assert f"winning instruction:  {winner['instruction']}" in out
        assert f"original instruction: {original}" in out
    assert f"demos: {len(winner['demos'])}" in out
    for demo in winner["demos"]:
        assert f"text={demo['fields']['text']} -> parity={demo['fields']['parity']}" in out
    assert "score path" in out
    for c in candidates["candidates"]:
        assert f"{c['score']:.3f}" in out
    assert "zero-shot" in out and "cost" in out and "backend calls" in out
    assert "held-out test score" in out
    result_json = RunFolder(run).read_json("result.json")
    flat = " ".join(out.split())
    assert format_score(result_json["test_score"], result_json["test_interval"]) in flat
    assert "gain vs baseline" in flat
    assert f"why this program: {result_json['selection']['reason']}" in flat


def test_show_an_unfinished_run(tmp_path):
    run = tmp_path / "run"
    with RunFolder(run).session({"task": {"name": "x"}}):
        result = cotune("show", run)
    assert result.exit_code == 0, result.output
    assert "status running" in result.output and "no result yet" in result.output
    assert "no process is running it" not in result.output

    killed = cotune("show", run)  # the session is over, its status still says running
    assert "status running" in killed.output and "no process is running it" in killed.output


def test_show_a_corrupt_run_folder_is_one_clear_error(tmp_path):
    run = tmp_path / "run"
    assert optimize(run).exit_code == 0
    (run / "candidates.json").write_text('{"candidates": [trunc')
    assert_one_line_error(cotune("show", run), "candidates.json is corrupt")

    (run / "config.json").write_text("")
    assert_one_line_error(cotune("show", run), "config.json is corrupt")

    assert_one_line_error(cotune("show", tmp_path / "nowhere"), "not a cotune run folder")


def test_a_small_call_budget_stops_cleanly(tmp_path):
    run = tmp_path / "run"
    result = optimize(run, "--max-calls", "30")
    assert result.exit_code == 0, result.output
    assert "budget spent" in result.output and "stopped by the budget" in result.output
    folder = RunFolder(run)
    assert folder.status()["state"] == "finished"
    summary = folder.read_json("result.json")
    assert summary["stopped_by_budget"] is True
    assert summary["usage"]["optimization"]["calls"] <= 30
    assert summary["usage"]["total"]["calls"] <= 30  # the test evaluation's calls included
    assert "--max-calls 30 covers the whole command" in " ".join(result.output.split())
    load_program(scripted.Parity(), folder.program_path)


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["--task", "no-such-task"], ["unknown task 'no-such-task'"]),
        (["--task", TASK_FILE, "--optimizer", "nope"], ["unknown optimizer 'nope'"]),
        (["--task", TASK_FILE, "--optimizer", "bootstrap", "--set", "colour=blue"],
         ["bad option", "colour"]),
        (["--task", TASK_FILE, "--set", "novalue"], ["--set expects KEY=VALUE"]),
        (["--task", TASK_FILE, "--optimizer", "bootstrap", "--train-size", "500"],
         ["--train-size 500", "has 20"]),
        (["--task", TASK_FILE, "--optimizer", "bootstrap", "--preset", "light"],
         ["--preset applies to the MIPRO optimizers"]),
    ],
)
def test_bad_arguments_are_one_clear_error(tmp_path, args, fragments):
    result = cotune("optimize", *args, "--run-dir", tmp_path / "run")
    assert_one_line_error(result, *fragments)


def test_a_config_mismatch_is_an_error_unless_forced(tmp_path):
    run = tmp_path / "run"
    assert optimize(run).exit_code == 0
    mismatch = optimize(run, "--seed", "1")
    assert_one_line_error(mismatch, "different configuration", "seed: 0 -> 1", "--force")
    assert RunFolder(run).config()["seed"] == 0

    forced = optimize(run, "--seed", "1", "--force")
    assert forced.exit_code == 0, forced.output
    assert RunFolder(run).config()["seed"] == 1
    assert RunFolder(run).status()["attempt"] == 1


def test_a_task_file_with_errors_is_one_clear_error(tmp_path):
    task = tmp_path / "broken.py"
    task.write_text("from cotune import Predict\nprogram = Predict('a -> b')\n")
    result = cotune("optimize", "--task", task, "--run-dir", tmp_path / "run")
    assert_one_line_error(result, "broken.py", "trainset")


def test_a_failing_run_is_one_clear_error_and_marked_failed(tmp_path, monkeypatch):
    def no_model(*args, **kwargs):
        raise FileNotFoundError("model file not found: /models/missing.gguf")

    monkeypatch.setattr("cotune.lm.factory.make_lm", no_model)
    run = tmp_path / "run"
    assert_one_line_error(optimize(run), "missing.gguf")
    status = RunFolder(run).status()
    assert status["state"] == "failed" and "missing.gguf" in status["error"]


# -- the real model ----------------------------------------------------------------------------


def _mipro_available() -> bool:
    return importlib.util.find_spec("cotune.optimize.mipro") is not None


@pytest.mark.skipif(not _mipro_available(), reason="no MIPRO yet")
def test_show_a_mipro_run_lists_its_trials(tmp_path):
    run = tmp_path / "run"
    result = cotune("optimize", "--task", TASK_FILE, "--optimizer", "mipro", "--preset", "light",
                    "--set", "num_trials=3", "--set", "num_instruction_candidates=2",
                    "--set", "num_demo_candidates=2", "--set", "minibatch_size=4",
                    "--threads", "2", "--run-dir", run)
    assert result.exit_code == 0, result.output
    shown = cotune("show", run)
    assert shown.exit_code == 0, shown.output
    assert "search trials (3" in shown.output and "score path" in shown.output


@pytest.mark.real_model
def test_optimize_iris_with_the_real_model(tmp_path, smollm2_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("llama_cpp")
    run = tmp_path / "run"
    if _mipro_available():
        # the smallest MIPRO that still bootstraps, proposes, searches and fully evaluates:
        # about 45 short calls and 2 long proposer calls (~1-2 minutes on 2 idle cores)
        small = {"num_trials": 2, "num_instruction_candidates": 2, "num_demo_candidates": 2,
                 "minibatch_size": 5, "full_eval_every": 2, "max_bootstrapped_demos": 1,
                 "max_labeled_demos": 1, "use_dataset_summary": "false",
                 "evaluate_baseline": "false"}
        optimizer = ["--optimizer", "mipro", "--preset", "light"]
        for key, value in small.items():
            optimizer += ["--set", f"{key}={value}"]
    else:
        optimizer = ["--optimizer", "random-search", "--set", "num_candidates=1"]
    command = [sys.executable, "-m", "cotune.cli", "optimize", "--task", "iris", *optimizer,
               "--model", "smollm2-135m", "--train-size", "10", "--val-size", "10",
               "--test-size", "10", "--max-calls", "120", "--threads", "2", "--run-dir", str(run),
               "--cache-dir", str(run)]
    env = {**os.environ, "COTUNE_CACHE_DIR": str(tmp_path / "shared-cache")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "test score" in done.stdout

    folder = RunFolder(run)
    assert folder.status()["state"] == "finished"
    result = folder.read_json("result.json")
    assert result["test"]["examples"] == 10 and 0.0 <= result["test_score"] <= 1.0
    assert result["usage"]["total"]["backend_calls"] > 0
    assert folder.read_json("candidates.json")["candidates"]
    config = json.loads((run / "config.json").read_text())
    assert config["model"]["name"] == "smollm2-135m"
    from cotune.tasks.iris import IrisProgram

    load_program(IrisProgram(), folder.program_path)
    shown = subprocess.run([sys.executable, "-m", "cotune.cli", "show", str(run)],
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and "score path" in shown.stdout
