"""MLflow tracking of runs and bench cells, against a local file store read back with
``mlflow.search_runs``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import scripted_task as scripted

from cotune.runs.bench import BenchSpec, run_bench
from cotune.runs.optimize import RunSpec, run_optimization
from cotune.runs.tracking import TrackingError, log_run

mlflow = pytest.importorskip("mlflow")

TASK_FILE = Path(__file__).with_name("scripted_task.py")


def _store(tmp_path: Path) -> str:
    """A local SQLite store (MLflow 3's recommended local backend)."""
    return f"sqlite:///{tmp_path / 'mlflow.db'}"


def _file_store(tmp_path: Path, monkeypatch) -> str:
    """A plain directory store (in maintenance mode since MLflow 3.7: opted into)."""
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    return (tmp_path / "mlruns").as_uri()


def _runs(uri: str, experiment: str = "cotune"):
    mlflow.set_tracking_uri(uri)
    try:
        return mlflow.search_runs(experiment_names=[experiment], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)


def test_a_finished_run_logs_config_scores_by_lm_calls_usage_and_artifacts(tmp_path):
    uri = _store(tmp_path)
    spec = RunSpec(task=str(TASK_FILE), optimizer="random-search", threads=2,
                   options={"num_candidates": 3}, mlflow=uri)
    run_dir = tmp_path / "run"
    summary = run_optimization(spec, run_dir, lm=scripted.make_scripted_lm())

    (run,) = _runs(uri)
    assert run.info.status == "FINISHED"
    assert run.data.params["optimizer.name"] == "random-search"
    assert run.data.params["seed"] == "0"
    metrics = run.data.metrics
    assert metrics["val_score"] == pytest.approx(summary.val_score)
    assert metrics["test_score"] == pytest.approx(summary.test_score)
    assert metrics["usage.total.calls"] == summary.usage["total"]["calls"]

    client = mlflow.MlflowClient(tracking_uri=uri)
    history = client.get_metric_history(run.info.run_id, "candidate_score")
    candidates = json.loads((run_dir / "candidates.json").read_text())["candidates"]
    assert sorted((m.step, m.value) for m in history) == sorted(
        (c["lm_calls"], c["score"]) for c in candidates)
    best = client.get_metric_history(run.info.run_id, "best_candidate_score")
    # the highest validation score seen; the chosen program's (val_score) may be lower when
    # its gain over the baseline was within noise
    assert max(m.value for m in best) == pytest.approx(max(c["score"] for c in candidates))
    assert [m.step for m in best] == sorted(m.step for m in best)

    assert run.info.artifact_uri.startswith((tmp_path / "mlartifacts").as_uri())
    names = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"program.json", "candidates.json", "report.html", "config.json"} <= names
    program = Path(client.download_artifacts(run.info.run_id, "program.json", str(tmp_path)))
    assert program.read_bytes() == (run_dir / "program.json").read_bytes()

    # logging the same folder again is a no-op: one MLflow run per finished attempt
    assert log_run(run_dir, uri) == run.info.run_id
    assert len(_runs(uri)) == 1


def test_mipro_trials_are_logged_with_lm_calls_as_the_step(tmp_path):
    uri = _store(tmp_path)
    spec = RunSpec(task=str(TASK_FILE), optimizer="mipro", threads=2, preset="light",
                   train_size=8, val_size=6, test_size=2,
                   options={"num_trials": 3, "num_instruction_candidates": 2,
                            "num_demo_candidates": 2, "minibatch_size": 3},
                   mlflow=uri, mlflow_experiment="mipro")
    run_dir = tmp_path / "run"
    run_optimization(spec, run_dir, lm=scripted.make_scripted_lm())
    (run,) = _runs(uri, "mipro")
    history = mlflow.MlflowClient(tracking_uri=uri).get_metric_history(
        run.info.run_id, "trial.minibatch_score")
    trials = json.loads((run_dir / "trials.json").read_text())
    assert sorted((m.step, m.value) for m in history) == sorted(
        (t["lm_calls"], t["minibatch_score"]) for t in trials if "minibatch_score" in t)
    assert len(history) >= 3


def test_every_finished_bench_cell_is_one_mlflow_run(tmp_path, monkeypatch):
    monkeypatch.setattr("cotune.lm.factory.make_lm", scripted.make_scripted_lm)
    uri = _file_store(tmp_path, monkeypatch)
    spec = BenchSpec.from_dict({
        "tasks": [str(TASK_FILE)], "optimizers": ["vanilla", "random-search"], "threads": 2,
        "seeds": [0, 1], "train_size": 6, "val_size": 4, "test_size": 4, "cache": "off",
        "mlflow": uri, "mlflow_experiment": "grid"})
    records = run_bench(spec, tmp_path / "bench")
    runs = _runs(uri, "grid")
    assert sorted(r.info.run_name for r in runs) == sorted(r["cell"] for r in records)
    by_name = {r.info.run_name: r for r in runs}
    for record in records:
        assert by_name[record["cell"]].data.metrics["test_score"] == \
            pytest.approx(record["test_score"])


def test_a_folder_without_a_finished_run_is_a_clear_error(tmp_path):
    with pytest.raises(TrackingError, match="no finished run"):
        log_run(tmp_path, _store(tmp_path))


def test_cotune_optimize_mlflow_logs_the_run(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cotune.cli import app

    monkeypatch.setattr("cotune.lm.factory.make_lm", scripted.make_scripted_lm)
    uri = _store(tmp_path)
    result = CliRunner().invoke(app, [
        "optimize", "--task", str(TASK_FILE), "--optimizer", "random-search",
        "--set", "num_candidates=2", "--threads", "2", "--run-dir", str(tmp_path / "run"),
        "--no-cache", "--mlflow", uri])
    assert result.exit_code == 0, result.output
    (run,) = _runs(uri)
    assert run.info.run_name == "run" and "test_score" in run.data.metrics


def test_an_unusable_store_is_one_line_naming_it(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cotune.cli import app

    monkeypatch.setattr("cotune.lm.factory.make_lm", scripted.make_scripted_lm)
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    store = (tmp_path / "mlruns").as_uri()  # a file store MLflow 3 refuses by default
    result = CliRunner().invoke(app, [
        "optimize", "--task", str(TASK_FILE), "--optimizer", "vanilla", "--threads", "2",
        "--run-dir", str(tmp_path / "run"), "--no-cache", "--mlflow", store])
    assert result.exit_code == 1
    output = " ".join(result.output.split())
    assert "to MLflow at file://" in output and "MLFLOW_ALLOW_FILE_STORE" in output
    assert "Traceback" not in output
    assert (tmp_path / "run" / "result.json").is_file()  # the run itself finished


def test_intervals_beside_the_scores_are_logged_as_low_and_high(tmp_path):
    spec = RunSpec(task=str(TASK_FILE), optimizer="vanilla", threads=2)
    run_dir = tmp_path / "run"
    run_optimization(spec, run_dir, lm=scripted.make_scripted_lm())
    result = json.loads((run_dir / "result.json").read_text())
    result["test_score_interval"] = [0.25, 0.75]
    result["test"]["interval"] = [0.2, 0.8]
    (run_dir / "result.json").write_text(json.dumps(result))
    uri = _store(tmp_path)
    log_run(run_dir, uri)
    (run,) = _runs(uri)
    metrics = run.data.metrics
    assert (metrics["test_score_interval_low"], metrics["test_score_interval_high"]) == \
        (0.25, 0.75)
    assert (metrics["test.interval_low"], metrics["test.interval_high"]) == (0.2, 0.8)
