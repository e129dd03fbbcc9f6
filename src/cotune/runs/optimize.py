"""One durable optimization: task + LM + optimizer + budget, written to a run folder.

``run_optimization`` is what ``cotune optimize`` (and a benchmark runner) calls.  Run it again
with the same folder and it resumes: finished steps come back from the journal, finished LM calls
from the persistent LM cache, and the final program is the one an uninterrupted run produces.

Before anything else the LM is checked with one tiny request (:meth:`LM.check`), so a wrong URL
or model fails in seconds.  The budget covers the whole command: the preflight request, the
optimization, and the held-out test evaluation, whose calls (test examples x predictors) are
reserved from ``max_calls`` before the optimization starts.  An LM that fails for an
infrastructure reason stops the run with that error (the journal keeps nothing computed while
it failed), and the same command resumes once it answers again.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from cotune._version import __version__
from cotune.core import Module
from cotune.core.example import Example
from cotune.core.runtime import context
from cotune.evaluate.stats import bootstrap_ci, paired_bootstrap_ci
from cotune.lm.base import LM
from cotune.lm.budget import Budget, use_budget
from cotune.lm.models import DEFAULT_MODEL
from cotune.lm.redact import redact_data
from cotune.lm.types import BudgetExceeded
from cotune.lm.usage import UsageSnapshot, track_usage
from cotune.optimize.base import OptimizationResult, Optimizer
from cotune.optimize.registry import build_optimizer
from cotune.optimize.reporting import LogReporter, Reporter
from cotune.runs.checks import check_spec, load_splits_sized
from cotune.runs.folder import CANDIDATES, RESULT, TRIALS, RunFolder
from cotune.runs.journal import SQLiteJournal
from cotune.runs.programs import save_program
from cotune.tasks.base import Reference, Splits, Task

# -- the run -----------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """What to run.  Everything but ``threads``, ``budget``, ``cache_dir`` and ``timeout`` must
    be the same when a run folder is resumed."""

    task: str
    optimizer: str = "random-search"
    model: str = DEFAULT_MODEL
    base_url: str | None = None
    seed: int = 0
    """Seeds the data split and the optimizer."""
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    rescore_size: int | None = None
    """Validation examples beyond the first ``val_size`` on which the optimizer re-scores its
    finalists (its ``rescore_top`` option) before choosing."""
    preset: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments of the optimizer (e.g. ``{"num_candidates": 4}``)."""
    max_calls: int | None = None
    """LM calls of the whole command: preflight, optimization and test evaluation."""
    max_tokens: int | None = None
    max_seconds: float | None = None
    threads: int = 4
    cache_dir: str | None = None
    """Where the LM cache lives (``DIR/lm_cache.sqlite``); None: the shared user cache."""
    use_cache: bool = True
    n_ctx: int | None = None
    """Context length of the embedded engine (None: its default, from the model file)."""
    timeout: float | None = None
    """Seconds per HTTP request to ``base_url`` (None: the backend's default, 120 s).  It cannot
    change a result (a timeout is an error, never an answer), so it is not part of the run's
    identity."""
    mlflow: str | None = None
    """An MLflow tracking URI: the finished run is logged there (:mod:`cotune.runs.tracking`);
    not part of the run's identity."""
    mlflow_experiment: str = "cotune"

    def __post_init__(self) -> None:
        check_spec(self)

    def budget(self) -> Budget | None:
        if self.max_calls is None and self.max_tokens is None and self.max_seconds is None:
            return None
        return Budget(self.max_calls, self.max_tokens, self.max_seconds)


@dataclass
class RunSummary:
    run_dir: Path
    val_score: float | None
    test_score: float | None
    usage: dict[str, Any]
    """``optimization``, ``test``, ``preflight`` and ``total`` LM usage (calls, cache hits,
    tokens, ...); ``total`` is what the budget counted."""
    wall_s: float
    """Seconds over every attempt: a run resumed after a crash counts the time lost to it."""
    stopped_by_budget: bool
    attempt: int
    num_candidates: int
    best_index: int | None
    attempt_wall_s: float = 0.0
    """Seconds of this attempt alone (a resume that replays its journal is quick)."""
    test_metrics: dict[str, float] = field(default_factory=dict)
    """The task's extra metrics on the test split (e.g. hotpotqa's ``retrieval_recall``)."""
    val_interval: dict[str, Any] | None = None
    """95% bootstrap interval of the validation score (see :mod:`cotune.evaluate.stats`)."""
    test_interval: dict[str, Any] | None = None
    baseline_test_score: float | None = None
    """The unoptimized program's score on the same test examples."""
    test_gain: dict[str, Any] | None = None
    """Test score minus the baseline's, with its paired 95% interval and ``within_noise``."""
    reference: dict[str, Any] | None = None
    """The task's no-LM baseline on the same test examples (see :func:`compare_with_reference`)."""
    advice: str | None = None
    """What to try when the noise rule kept the baseline over a higher-scoring candidate."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["run_dir"] = str(self.run_dir)
        return data


def run_optimization(
    spec: RunSpec,
    run_dir: str | Path,
    *,
    lm: LM | None = None,
    reporter: Reporter | None = None,
    force: bool = False,
) -> RunSummary:
    """Optimize ``spec.task``'s program into ``run_dir``, resuming what is already there.

    ``lm`` replaces the one ``spec.model`` names (library use, tests); ``force`` discards a run
    of another configuration found in ``run_dir`` instead of refusing to touch it.
    """
    reporter = reporter or LogReporter()
    started = time.monotonic()
    task, splits, rescore_set, optimizer = prepare_run(spec)
    folder = RunFolder(run_dir)
    config = run_config(spec, task, splits, optimizer, lm)
    with folder.session(config, force=force) as attempt:
        if attempt > 1:
            reporter.message(f"resuming the run in {folder.path} (attempt {attempt})")
        lm = lm or _make_lm(spec)
        program = task.make_program()
        total_budget = spec.budget()
        with SQLiteJournal(folder.journal_path) as journal, context(lm=lm), \
                _using(total_budget):
            preflight = _preflight(lm, reporter)
            result = optimizer.optimize(
                program, splits.train, splits.val or None,
                budget=_optimization_budget(spec, program, splits.test, preflight, reporter),
                journal=journal, reporter=reporter, workdir=folder.work_path,
                rescore_set=rescore_set,
            )
            _write_search(folder, program, result)
            test, test_usage = _evaluate_test(result.program, splits.test, task,
                                              spec.threads, journal, reporter)
            baseline, baseline_usage = test, UsageSnapshot()  # the same program: same scores
            if _test_key(program) != _test_key(result.program):
                baseline, baseline_usage = _evaluate_test(program, splits.test, task,
                                                          spec.threads, journal, reporter,
                                                          "unoptimized")
            intervals = score_intervals(result, test, baseline, spec.seed)
            summary = RunSummary(
                run_dir=folder.path,
                val_score=result.best_score,
                test_score=test["score"] if test else None,
                test_metrics=dict((test or {}).get("metrics") or {}),
                usage=_usage_report(result.usage, _added(test_usage, baseline_usage),
                                    preflight),
                wall_s=round(folder.total_seconds(), 1),
                attempt_wall_s=round(time.monotonic() - started, 3),
                stopped_by_budget=result.stopped_by_budget,
                attempt=attempt,
                num_candidates=len(result.candidates),
                best_index=result.best_index,
                **{k: intervals[k] for k in ("val_interval", "test_interval", "test_gain")},
                baseline_test_score=baseline["score"] if baseline else None,
                reference=compare_with_reference(task, program, splits.test, test, spec.seed),
                advice=(result.selection or {}).get("advice"),
            )
            if summary.reference and summary.reference.get("error"):
                reporter.message(summary.reference["error"])
            folder.write_json(RESULT, {
                **summary.to_json(), "test": test,
                "test_metric_intervals": intervals["test_metric_intervals"],
                "baseline_test": baseline, "selection": result.selection,
                "n_ctx": lm.n_ctx,
                "replayed": {"steps": journal.replayed_steps, "calls": journal.replayed_calls},
            })
        folder.set_status("finished")
    if spec.mlflow:
        from cotune.runs.tracking import log_run

        log_run(folder.path, spec.mlflow, experiment=spec.mlflow_experiment)
    return summary


def prepare_run(spec: RunSpec) -> tuple[Task, Splits, list[Example], Optimizer]:
    """What a run is made of before any LM is started: the task, its splits, the re-scoring
    examples and the optimizer, built from ``spec`` the one way that a run, its fingerprint
    and a bench's plan all share."""
    from cotune.tasks.registry import get_task

    task = get_task(spec.task)
    splits = load_data(task, spec)
    rescore_set = rescore_examples(task, spec)
    options = dict(spec.options)
    if rescore_set:  # a rescore set asks for re-scoring: of the best finalist unless told
        options.setdefault("rescore_top", 1)
    optimizer = build_optimizer(spec.optimizer, task.metric, seed=spec.seed, threads=spec.threads,
                                preset=spec.preset, options=options)
    return task, splits, rescore_set, optimizer


def load_data(task: Task, spec: RunSpec) -> Splits:
    """The task's seeded splits, each cut to the size asked for."""
    splits = load_splits_sized(task, spec.seed, (spec.train_size, spec.val_size, spec.test_size))
    return Splits(
        _cut(splits.train, spec.train_size, "train"),
        _cut(splits.val, spec.val_size, "val"),
        _cut(splits.test, spec.test_size, "test"),
    )


def rescore_examples(task: Task, spec: RunSpec) -> list[Example]:
    """The ``rescore_size`` validation examples that follow the first ``val_size`` ones."""
    if not spec.rescore_size:
        return []
    val = task.load_splits(seed=spec.seed).val
    start = len(val) if spec.val_size is None else spec.val_size
    if spec.rescore_size < 0 or start + spec.rescore_size > len(val):
        raise ValueError(f"--rescore-size {spec.rescore_size}: the task's val split has "
                         f"{len(val)} examples, {start} of them already used for validation")
    return val[start : start + spec.rescore_size]


def score_intervals(
    result: OptimizationResult, test: dict[str, Any] | None, baseline: dict[str, Any] | None,
    seed: int,
) -> dict[str, Any]:
    """95% bootstrap intervals of the validation and test scores (and of the task's extra test
    metrics), and the paired interval of the final program's test gain over the baseline."""
    best = result.best_candidate
    val = best.scores if best is not None and best.scores else None
    scores = (test or {}).get("scores")
    base = (baseline or {}).get("scores")
    gain = None
    if scores and base and len(scores) == len(base):
        interval = paired_bootstrap_ci(scores, base, seed=seed)
        gain = {**interval.to_json(), "within_noise": not interval.excludes_zero}
    metric_scores = (test or {}).get("metric_scores") or {}
    return {
        "val_interval": bootstrap_ci(val, seed=seed).to_json() if val else None,
        "test_interval": bootstrap_ci(scores, seed=seed).to_json() if scores else None,
        "test_metric_intervals": {name: bootstrap_ci(values, seed=seed).to_json()
                                  for name, values in metric_scores.items() if values},
        "test_gain": gain,
    }


def compare_with_reference(
    task: Task, program: Module, testset: list[Example], test: dict[str, Any] | None, seed: int
) -> dict[str, Any] | None:
    """The task's no-LM baseline (``task.reference``) on the test examples, and the final
    program's paired difference to it, per metric the baseline is scored on:
    ``{"description", "metrics": {name: {"reference", "reference_interval", "gain"}}}``.
    None when the task has no baseline or the test pass has no per-example scores."""
    if task.reference is None or not testset or not (test or {}).get("scores"):
        return None
    assert test is not None
    metrics = {"score": task.metric, **task.extra_metrics}
    try:  # a task file's own code: a failure is recorded, never the end of a finished run
        reference = task.reference(program)
        if not isinstance(reference, Reference):
            raise TypeError(f"it returned {type(reference).__name__}, not a cotune.tasks."
                            f"Reference")
        unknown = [name for name in reference.metrics if name not in metrics]
        if unknown:
            raise ValueError(f"it scores {unknown}, which are not among the task's metrics "
                             f"{sorted(metrics)}")
        predictions = [reference.predict(example) for example in testset]
        scored = {name: [float(metrics[name](ex, p))
                         for ex, p in zip(testset, predictions, strict=True)]
                  for name in reference.metrics}
    except Exception as exc:
        return {"error": f"the task's no-LM baseline failed: {type(exc).__name__}: {exc}"}
    ours_by_name = {"score": test["scores"], **(test.get("metric_scores") or {})}
    out: dict[str, Any] = {}
    for name, theirs in scored.items():
        ours = ours_by_name.get(name)
        if not ours or len(ours) != len(theirs):
            continue
        gain = paired_bootstrap_ci(ours, theirs, seed=seed)
        out[name] = {"reference": sum(theirs) / len(theirs),
                     "reference_interval": bootstrap_ci(theirs, seed=seed).to_json(),
                     "gain": {**gain.to_json(), "within_noise": not gain.excludes_zero}}
    return {"description": reference.description, "metrics": out} if out else None


def run_config(
    spec: RunSpec, task: Task, splits: Splits, optimizer: Optimizer, lm: LM | None
) -> dict[str, Any]:
    """The run's identity, as written to ``config.json`` and checked on resume."""
    from cotune.tasks.registry import task_names
    from cotune.tasks.user import file_digest

    task_entry: dict[str, Any] = {"name": spec.task}
    if spec.task not in task_names():  # a user's task file: its content is part of the run
        task_entry = {"name": str(Path(spec.task).resolve()), "sha256": file_digest(spec.task)}
    model = ({"name": spec.model, "base_url": spec.base_url} if lm is None
             else {"identity": lm.identity()})
    if spec.n_ctx is not None and lm is None:  # absent by default: older run folders still match
        model["n_ctx"] = spec.n_ctx
    return redact_data({  # a URL's credentials are not part of a run's identity
        "cotune_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": task_entry,
        "optimizer": {"name": spec.optimizer, "preset": spec.preset, **optimizer.config()},
        "model": model,
        "seed": spec.seed,
        "splits": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                   "digest": _splits_digest(splits),
                   **({"rescore": spec.rescore_size} if spec.rescore_size else {})},
        "budget": {"max_calls": spec.max_calls, "max_tokens": spec.max_tokens,
                   "max_seconds": spec.max_seconds},
        "threads": spec.threads,
        "cache": ("off" if not spec.use_cache else spec.cache_dir or "shared"),
    })


def planned_config(spec: RunSpec) -> dict[str, Any]:
    """The ``config.json`` that :func:`run_optimization` would write for ``spec``: the run's
    fingerprint (task file and data hashes, optimizer settings, model, seed, sizes), computed
    without running anything.  A bench compares it with a cell's saved config."""
    task, splits, _, optimizer = prepare_run(spec)
    return run_config(spec, task, splits, optimizer, None)


# -- helpers -----------------------------------------------------------------------------------


def _make_lm(spec: RunSpec) -> LM:
    from cotune.lm import factory
    from cotune.lm.cache import LMCache

    options: dict[str, Any] = {}
    if not spec.use_cache:
        options["cache"] = None
    elif spec.cache_dir is not None:
        options["cache"] = LMCache(Path(spec.cache_dir) / "lm_cache.sqlite")
    if spec.timeout is not None:
        options["timeout"] = spec.timeout
    if spec.n_ctx is not None:
        if spec.base_url:
            raise ValueError("--n-ctx applies to the embedded engine, not to a --base-url server")
        options["n_ctx"] = spec.n_ctx
    return factory.make_lm(spec.model, spec.base_url, **options)


@contextmanager
def _using(budget: Budget | None) -> Iterator[None]:
    if budget is None:
        yield
    else:
        with use_budget(budget):
            yield


def _preflight(lm: LM, reporter: Reporter) -> UsageSnapshot:
    """One tiny request before anything else (for LMs behind an endpoint): a wrong URL or
    model, or a dead server, is an error in seconds, not after a first phase."""
    with track_usage() as meter:
        if type(lm).check is not LM.check:
            reporter.message(f"checking that {lm!r} answers")
        lm.check()
    return meter.snapshot()


def calls_per_example(program: Module) -> int:
    """LM calls a pass of ``program`` makes per example, as the run reserves them: one per
    predictor."""
    return max(1, len(program.predictors()))


def _optimization_budget(
    spec: RunSpec, program: Module, testset: list[Example], preflight: UsageSnapshot,
    reporter: Reporter,
) -> Budget | None:
    """The optimization's own call budget: ``max_calls`` less the preflight's calls and those
    reserved for the two test evaluations (the final program's and the unoptimized one's, one
    call per test example and predictor each), so that the whole command stays within
    ``max_calls``.  Tokens and seconds are capped for the whole command by the outer budget
    alone (they cannot be reserved: they are known only once spent)."""
    per_example = calls_per_example(program)
    reserved = 2 * len(testset) * per_example
    parts = (f"{preflight.calls} preflight call(s) and {reserved} for the test evaluations "
             f"(the final and the unoptimized program: 2 x {len(testset)} examples x "
             f"{per_example} predictor(s))")
    if spec.max_calls is None:
        if preflight.calls or reserved:
            reporter.message(f"LM calls besides the optimization: {parts}")
        return None
    left = spec.max_calls - preflight.calls - reserved
    if left < 1:
        raise ValueError(
            f"--max-calls {spec.max_calls} covers the whole command and leaves nothing for the "
            f"optimization after {parts}: raise it above {preflight.calls + reserved}, or "
            "use a smaller --test-size"
        )
    reporter.message(f"--max-calls {spec.max_calls} covers the whole command: {parts}, "
                     f"{left} for the optimization")
    return Budget(max_calls=left)


def _cut(examples: list[Example], size: int | None, name: str) -> list[Example]:
    if size is None:
        return examples
    if size < 0:
        raise ValueError(f"--{name}-size must be >= 0")
    if size > len(examples):
        raise ValueError(f"--{name}-size {size}: the task's {name} split has {len(examples)}")
    return examples[:size]


def _splits_digest(splits: Splits) -> str:
    """A short hash of the data itself: a changed dataset is a different run."""
    data = [[sorted(ex.to_dict().items(), key=lambda kv: kv[0]) for ex in part]
            for part in (splits.train, splits.val, splits.test)]
    text = json.dumps(data, default=str, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _write_search(folder: RunFolder, original: Module, result: OptimizationResult) -> None:
    folder.write_json(CANDIDATES, {
        "original": original.dump_state(),
        "best_index": result.best_index,
        "candidates": [c.to_json() for c in result.candidates],
        "selection": result.selection,
    })
    folder.write_json(TRIALS, [t.to_json() for t in result.trials])
    save_program(result.program, folder.program_path)


def _evaluate_test(
    program: Module,
    testset: list[Example],
    task: Task,
    threads: int,
    journal: SQLiteJournal,
    reporter: Reporter,
    which: str = "final",
) -> tuple[dict[str, Any] | None, UsageSnapshot]:
    """A program's score on the held-out test split, per example too, and the task's extra
    metrics on the same predictions (journaled by the program's state: not redone)."""
    if not testset:
        return None, UsageSnapshot()
    from cotune.evaluate import Evaluate

    key = _test_key(program)

    def compute() -> dict[str, Any]:
        reporter.message(f"evaluating the {which} program on {len(testset)} test examples")
        result = Evaluate(testset, task.metric, num_threads=threads,
                          display_progress=False)(program)
        values = {name: result.values_of(metric) for name, metric in task.extra_metrics.items()}
        extra = {name: sum(v) / len(v) if v else 0.0 for name, v in values.items()}
        return {"score": result.score, "examples": len(result.results),
                "errors": result.num_errors, "scores": result.scores,
                **({"metrics": extra, "metric_scores": values} if extra else {})}

    with track_usage() as meter:
        try:
            test = journal.memo(key, compute)
        except BudgetExceeded as exc:  # tokens or seconds ran out (calls were reserved)
            partial = getattr(exc, "partial_result", None)
            done = len(partial.results) if partial is not None else 0
            reporter.message(f"the budget ran out during the test evaluation ({exc}; {done} of "
                             f"{len(testset)} examples): no test score")
            test = {"score": None, "examples": done, "stopped_by_budget": True}
    return test, meter.snapshot()


def _test_key(program: Module) -> str:
    state = json.dumps(program.dump_state(), sort_keys=True, default=str)
    return "test:" + hashlib.sha256(state.encode()).hexdigest()[:16]


def _added(a: UsageSnapshot, b: UsageSnapshot) -> UsageSnapshot:
    return UsageSnapshot(**{f.name: getattr(a, f.name) + getattr(b, f.name)
                            for f in fields(UsageSnapshot)})


def _usage_report(
    optimization: UsageSnapshot, test: UsageSnapshot, preflight: UsageSnapshot
) -> dict[str, Any]:
    parts = (("optimization", optimization), ("test", test), ("preflight", preflight))
    total = UsageSnapshot(**{f.name: sum(getattr(u, f.name) for _, u in parts)
                             for f in fields(UsageSnapshot)})
    return {name: {**u.to_json(), "total_tokens": u.total_tokens}
            for name, u in (*parts, ("total", total))}
