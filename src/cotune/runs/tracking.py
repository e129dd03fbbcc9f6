"""Experiment tracking: a finished run folder logged to MLflow (optional extra ``cotune[mlflow]``).

One MLflow run per finished cotune run (and so per bench cell), in the experiment named by
``experiment`` (default ``cotune``), with:

* params: the run's ``config.json``, flattened (``optimizer.name``, ``splits.train``, ...);
* metrics with **LM calls as the step**: every candidate's validation score
  (``candidate_score``), the highest of them so far (``best_candidate_score``: not always the
  chosen program's, since the choice respects noise), and every numeric ``*score``
  score of the search trials (``trial.minibatch_score``, ``trial.score``, ...);
* the final scores: ``val_score``, ``test_score``, the test's extra metrics and whatever
  interval the result carries (a ``[low, high]`` pair becomes ``..._low`` / ``..._high``);
* usage: ``usage.<part>.<field>`` for the optimization, the test, the preflight and the total;
* artifacts: ``program.json``, ``candidates.json``, ``trials.json``, ``result.json``,
  ``config.json`` and the ``report.html`` written for it (for a ``sqlite:///`` store, in
  ``mlartifacts/`` beside the database when cotune creates the experiment).

Logging reads the run folder, so it is the same for a run that just finished and for one
finished earlier; a folder already logged to that experiment (same folder, same attempt) is
not logged twice.  mlflow is imported on first use only.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from cotune.optimize.trials import Trial
from cotune.runs.folder import CANDIDATES, CONFIG, PROGRAM, RESULT, TRIALS

DEFAULT_EXPERIMENT = "cotune"
RUN_DIR_TAG = "cotune.run_dir"
ATTEMPT_TAG = "cotune.attempt"
_MAX_PARAM_CHARS = 6000


class TrackingError(RuntimeError):
    """MLflow is missing, or the tracking store refused what was logged."""


def log_run(
    run_dir: str | Path,
    tracking_uri: str,
    *,
    experiment: str = DEFAULT_EXPERIMENT,
    run_name: str | None = None,
    tags: Mapping[str, str] | None = None,
) -> str:
    """Log the finished run in ``run_dir`` to the MLflow store at ``tracking_uri``
    (``sqlite:///mlflow.db``, an ``http(s)://`` tracking server, or a ``file:`` directory,
    which MLflow 3 accepts only with ``MLFLOW_ALLOW_FILE_STORE=true``); return the MLflow
    run id (the existing one when this folder and attempt were logged already)."""
    folder = Path(run_dir).resolve()
    result = _read(folder / RESULT)
    config = _read(folder / CONFIG)
    if result is None or config is None:
        raise TrackingError(f"{folder} holds no finished run ({RESULT} or {CONFIG} is missing)")
    attempt = str(result.get("attempt", 1))
    try:
        with _store_lock(tracking_uri):
            client, entities = _client(tracking_uri)  # a new SQLite store is created here
            return _log(client, entities, folder, config, result, attempt, tracking_uri,
                        experiment, run_name, tags)
    except TrackingError:
        raise
    except Exception as exc:  # the store's own errors: name the store
        raise TrackingError(f"logging {folder} to MLflow at {tracking_uri} failed: "
                            f"{type(exc).__name__}: {exc}") from exc


def _log(client: Any, entities: Any, folder: Path, config: Mapping[str, Any],
         result: Mapping[str, Any], attempt: str, tracking_uri: str, experiment: str,
         run_name: str | None, tags: Mapping[str, str] | None) -> str:
    exp_id = _experiment_id(client, experiment, tracking_uri)
    found = client.search_runs(
        [exp_id], filter_string=f"tags.`{RUN_DIR_TAG}` = '{_quote(str(folder))}' and "
                                f"tags.`{ATTEMPT_TAG}` = '{attempt}'", max_results=1)
    if found:
        return found[0].info.run_id
    all_tags = {RUN_DIR_TAG: str(folder), ATTEMPT_TAG: attempt, **(tags or {})}
    run = client.create_run(exp_id, run_name=run_name or folder.name, tags=all_tags)
    run_id = run.info.run_id
    params = [entities.Param(k, v) for k, v in _params(config)]
    metrics = [entities.Metric(k, v, ts, step) for k, v, step, ts in _metrics(folder, result)]
    for i in range(0, len(params), 100):  # log_batch's limits: 100 params, 1000 metrics
        client.log_batch(run_id, params=params[i:i + 100])
    for i in range(0, len(metrics), 1000):
        client.log_batch(run_id, metrics=metrics[i:i + 1000])
    for path in _artifacts(folder):
        client.log_artifact(run_id, str(path))
    client.set_terminated(run_id, "FINISHED")
    return run_id


def _experiment_id(client: Any, experiment: str, tracking_uri: str) -> str:
    """The experiment's id, created if need be (another process, e.g. a bench cell on
    another Ray worker, may create it at the same moment: then its id)."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    try:
        return client.create_experiment(experiment,
                                        artifact_location=_artifact_location(tracking_uri))
    except Exception:
        exp = client.get_experiment_by_name(experiment)
        if exp is None:
            raise
        return exp.experiment_id


@contextlib.contextmanager
def _store_lock(tracking_uri: str) -> Iterator[None]:
    """For a SQLite store, an exclusive lock (``DB.lock`` beside it) while logging: bench
    cells finishing at once in several processes (Ray workers) would otherwise race to create
    the database's tables.  Other stores are servers that serialize writes themselves."""
    if not tracking_uri.startswith("sqlite:///"):
        yield
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    db = Path(tracking_uri[len("sqlite:///"):])
    db.parent.mkdir(parents=True, exist_ok=True)
    with open(db.with_name(db.name + ".lock"), "a+") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def _client(tracking_uri: str) -> tuple[Any, Any]:
    try:
        import mlflow.entities as entities
        from mlflow.tracking import MlflowClient
    except ImportError as exc:
        raise TrackingError("MLflow tracking needs mlflow: pip install 'cotune[mlflow]'") \
            from exc
    return MlflowClient(tracking_uri=tracking_uri), entities


def _artifact_location(tracking_uri: str) -> str | None:
    """For a SQLite store, ``mlartifacts/`` beside the database file (MLflow's own default
    would be ``./mlruns`` in whatever directory the run happened to start in); for other
    stores the store's default."""
    if not tracking_uri.startswith("sqlite:///"):
        return None
    db = Path(tracking_uri[len("sqlite:///"):]).resolve()
    return (db.parent / "mlartifacts").as_uri()


def _read(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise TrackingError(f"{path}: unreadable ({exc})") from exc


def _quote(text: str) -> str:
    return text.replace("\\", "\\\\").replace("'", "\\'")


def _params(config: Mapping[str, Any]) -> list[tuple[str, str]]:
    out = []
    for key, value in _flatten(config):
        text = value if isinstance(value, str) else json.dumps(value, default=str)
        out.append((key, text[:_MAX_PARAM_CHARS]))
    return out


def _flatten(data: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            yield from _flatten(value, f"{name}.")
        else:
            yield name, value


def _metrics(folder: Path, result: Mapping[str, Any]) -> list[tuple[str, float, int, int]]:
    """``(key, value, step, timestamp ms)``: the search's scores by LM calls, then the final
    scores and usage at the run's last step."""
    now = int(time.time() * 1000)
    out: list[tuple[str, float, int, int]] = []
    candidates = (_read(folder / CANDIDATES) or {}).get("candidates") or []
    best = -math.inf
    last_step = 0
    for c in sorted(candidates, key=lambda c: c.get("lm_calls", 0)):
        step = int(c.get("lm_calls") or 0)
        last_step = max(last_step, step)
        if _number(c.get("score")):
            out.append(("candidate_score", float(c["score"]), step, now))
            best = max(best, float(c["score"]))
            out.append(("best_candidate_score", best, step, now))
    for trial in _trials(folder):
        last_step = max(last_step, trial.lm_calls)
        for key in ("minibatch_score", "parent_minibatch_score", "score"):
            value = getattr(trial, key)
            if _number(value):
                out.append((f"trial.{key}", float(value), trial.lm_calls, now))
    final = {"val_score": result.get("val_score"), "test_score": result.get("test_score"),
             "wall_s": result.get("wall_s")}
    for key, value in result.items():  # intervals beside the scores (e.g. [low, high] pairs)
        if key not in final and isinstance(value, (list, tuple)) and _pair(value):
            final[key] = value
    for key, value in (result.get("test_metrics") or {}).items():
        final[f"test.{key}"] = value
    test = result.get("test") or {}
    for key, value in test.items() if isinstance(test, Mapping) else ():
        if key not in ("score", "metrics", "examples"):
            final[f"test.{key}"] = value
    for part, usage in (result.get("usage") or {}).items():
        for key, value in (usage or {}).items():
            final[f"usage.{part}.{key}"] = value
    for key, value in final.items():
        if _number(value):
            out.append((key, float(value), last_step, now))
        elif _pair(value):
            out.append((f"{key}_low", float(value[0]), last_step, now))
            out.append((f"{key}_high", float(value[1]), last_step, now))
    return out


def _trials(folder: Path) -> list[Trial]:
    trials = _read(folder / TRIALS) or []
    try:
        return [Trial.from_json(t) for t in trials] if isinstance(trials, list) else []
    except ValueError as exc:
        raise TrackingError(f"{folder / TRIALS}: unreadable ({exc})") from exc


def _pair(value: Any) -> bool:
    return isinstance(value, (list, tuple)) and len(value) == 2 and all(map(_number, value))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _artifacts(folder: Path) -> list[Path]:
    from cotune.runs.report import write_report

    paths = [folder / name for name in (PROGRAM, CANDIDATES, TRIALS, RESULT, CONFIG)]
    paths.append(write_report(folder))
    return [p for p in paths if p.is_file()]
