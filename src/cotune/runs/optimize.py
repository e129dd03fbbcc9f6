"""One durable optimization: task + LM + optimizer + budget, written to a run folder.

``run_optimization`` is what ``cotune optimize`` (and a benchmark runner) calls.  Run it again
with the same folder and it resumes: finished steps come back from the journal, finished LM calls
from the persistent LM cache, and the final program is the one an uninterrupted run produces.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cotune.core.example import Example
from cotune.core.module import Module
from cotune.core.runtime import context
from cotune.evaluate.stats import bootstrap_ci, paired_bootstrap_ci
from cotune.lm.base import LM
from cotune.lm.budget import Budget
from cotune.lm.models import DEFAULT_MODEL
from cotune.lm.usage import UsageSnapshot, track_usage
from cotune.optimize.base import Metric, OptimizationResult, Optimizer
from cotune.optimize.reporting import LogReporter, Reporter
from cotune.runs.folder import CANDIDATES, RESULT, TRIALS, RunFolder
from cotune.runs.journal import SQLiteJournal
from cotune.runs.programs import save_program
from cotune.tasks.base import Splits, Task

OptimizerFactory = Callable[..., Optimizer]


# -- optimizers by name ------------------------------------------------------------------------


def _lazy(module: str, name: str) -> OptimizerFactory:
    """A factory that imports the optimizer's module on first use (MIPRO pulls in optuna)."""

    def build(metric: Metric, **kwargs: Any) -> Optimizer:
        try:
            cls = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"{name} is not available in this cotune ({exc})") from exc
        return cls(metric, **kwargs)

    return build


OPTIMIZERS: dict[str, tuple[OptimizerFactory, bool, str]] = {
    # name: (factory, takes a --preset, description)
    "vanilla": (_lazy("cotune.optimize.vanilla", "Vanilla"), False,
                "no optimization: the program as it comes"),
    "labeled": (_lazy("cotune.optimize.bootstrap", "LabeledFewShot"), False,
                "labelled demos sampled from the training set"),
    "bootstrap": (_lazy("cotune.optimize.bootstrap", "BootstrapFewShot"), False,
                  "demos bootstrapped from the program's own traces"),
    "random-search": (_lazy("cotune.optimize.random_search", "BootstrapRandomSearch"), False,
                      "bootstrap random search over demo sets"),
    "mipro": (_lazy("cotune.optimize.mipro", "MIPRO"), True,
              "MIPRO: instructions and demos, Bayesian search"),
    "mipro-0shot": (_lazy("cotune.optimize.mipro", "ZeroShotMIPRO"), True,
                    "MIPRO, instructions only (0-shot)"),
    "bayesian-bootstrap": (_lazy("cotune.optimize.mipro", "BayesianBootstrap"), True,
                           "MIPRO's Bayesian search over demo sets only"),
    "finetune": (_lazy("cotune.optimize.finetune", "BootstrapFinetune"), False,
                 "LoRA fine-tuning on the program's own passing traces"),
    "bettertogether": (_lazy("cotune.optimize.better_together", "BetterTogether"), False,
                       "BetterTogether: prompt (p) and weight (w) steps, e.g. 'p -> w -> p'"),
}


def optimizer_names() -> list[str]:
    return list(OPTIMIZERS)


def build_optimizer(
    name: str,
    metric: Metric,
    *,
    seed: int = 0,
    threads: int = 4,
    preset: str | None = None,
    options: dict[str, Any] | None = None,
) -> Optimizer:
    """An optimizer by registry name; ``options`` are its constructor's keyword arguments."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; known: {', '.join(OPTIMIZERS)}")
    factory, takes_preset, _ = OPTIMIZERS[name]
    kwargs: dict[str, Any] = {"seed": seed, "num_threads": threads, **(options or {})}
    if takes_preset and preset is not None:
        kwargs["preset"] = preset
    elif preset is not None:
        raise ValueError(f"--preset applies to the MIPRO optimizers, not to {name!r}")
    try:
        return factory(metric, **kwargs)
    except TypeError as exc:
        raise ValueError(f"optimizer {name!r}: bad option ({exc})") from exc


# -- the run -----------------------------------------------------------------------------------


@dataclass
class RunSpec:
    """What to run.  Everything but ``threads``, ``budget`` and ``cache_dir`` must be the same
    when a run folder is resumed."""

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
    max_tokens: int | None = None
    max_seconds: float | None = None
    threads: int = 4
    cache_dir: str | None = None
    """Where the LM cache lives (``DIR/lm_cache.sqlite``); None: the shared user cache."""
    use_cache: bool = True

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
    """``optimization``, ``test`` and ``total`` LM usage (calls, cache hits, tokens, ...)."""
    wall_s: float
    stopped_by_budget: bool
    attempt: int
    num_candidates: int
    best_index: int | None
    test_metrics: dict[str, float] = field(default_factory=dict)
    """The task's extra metrics on the test split (e.g. hotpotqa's ``retrieval_recall``)."""
    val_interval: dict[str, Any] | None = None
    """95% bootstrap interval of the validation score (see :mod:`cotune.evaluate.stats`)."""
    test_interval: dict[str, Any] | None = None
    baseline_test_score: float | None = None
    """The unoptimized program's score on the same test examples."""
    test_gain: dict[str, Any] | None = None
    """Test score minus the baseline's, with its paired 95% interval and ``within_noise``."""

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
    from cotune.tasks.registry import get_task

    reporter = reporter or LogReporter()
    started = time.monotonic()
    task = get_task(spec.task)
    splits = load_data(task, spec)
    rescore_set = rescore_examples(task, spec)
    optimizer = build_optimizer(spec.optimizer, task.metric, seed=spec.seed, threads=spec.threads,
                                preset=spec.preset, options=spec.options)
    folder = RunFolder(run_dir)
    config = run_config(spec, task, splits, optimizer, lm)
    with folder.session(config, force=force) as attempt:
        if attempt > 1:
            reporter.message(f"resuming the run in {folder.path} (attempt {attempt})")
        lm = lm or _make_lm(spec)
        program = task.make_program()
        with SQLiteJournal(folder.journal_path) as journal, context(lm=lm):
            result = optimizer.optimize(
                program, splits.train, splits.val or None,
                budget=spec.budget(), journal=journal, reporter=reporter,
                workdir=folder.work_path, rescore_set=rescore_set,
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
                usage=_usage_report(result.usage, _added(test_usage, baseline_usage)),
                wall_s=round(time.monotonic() - started, 3),
                stopped_by_budget=result.stopped_by_budget,
                attempt=attempt,
                num_candidates=len(result.candidates),
                best_index=result.best_index,
                **{k: intervals[k] for k in ("val_interval", "test_interval", "test_gain")},
                baseline_test_score=baseline["score"] if baseline else None,
            )
            folder.write_json(RESULT, {
                **summary.to_json(), "test": test,
                "test_metric_intervals": intervals["test_metric_intervals"],
                "baseline_test": baseline, "selection": result.selection,
                "replayed": {"steps": journal.replayed_steps, "calls": journal.replayed_calls},
            })
        folder.set_status("finished")
    return summary


def load_data(task: Task, spec: RunSpec) -> Splits:
    """The task's seeded splits, each cut to the size asked for."""
    splits = task.load_splits(seed=spec.seed)
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


def run_config(
    spec: RunSpec, task: Task, splits: Splits, optimizer: Optimizer, lm: LM | None
) -> dict[str, Any]:
    """The run's identity, as written to ``config.json`` and checked on resume."""
    import cotune
    from cotune.tasks.registry import task_names
    from cotune.tasks.user import file_digest

    task_entry: dict[str, Any] = {"name": spec.task}
    if spec.task not in task_names():  # a user's task file: its content is part of the run
        task_entry = {"name": str(Path(spec.task).resolve()), "sha256": file_digest(spec.task)}
    model = ({"name": spec.model, "base_url": spec.base_url} if lm is None
             else {"identity": lm.identity()})
    return {
        "cotune_version": cotune.__version__,
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
    }


# -- helpers -----------------------------------------------------------------------------------


def _make_lm(spec: RunSpec) -> LM:
    from cotune.lm import factory
    from cotune.lm.cache import LMCache

    options: dict[str, Any] = {}
    if not spec.use_cache:
        options["cache"] = None
    elif spec.cache_dir is not None:
        options["cache"] = LMCache(Path(spec.cache_dir) / "lm_cache.sqlite")
    return factory.make_lm(spec.model, spec.base_url, **options)


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
    folder.write_json(TRIALS, result.trials)
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
        test = journal.memo(key, compute)
    return test, meter.snapshot()


def _test_key(program: Module) -> str:
    state = json.dumps(program.dump_state(), sort_keys=True, default=str)
    return "test:" + hashlib.sha256(state.encode()).hexdigest()[:16]


def _added(a: UsageSnapshot, b: UsageSnapshot) -> UsageSnapshot:
    return UsageSnapshot(**{k: getattr(a, k) + getattr(b, k) for k in
                            ("calls", "cache_hits", "prompt_tokens", "completion_tokens", "cost")})


def _usage_report(optimization: UsageSnapshot, test: UsageSnapshot) -> dict[str, Any]:
    total = UsageSnapshot(**{k: getattr(optimization, k) + getattr(test, k)
                             for k in ("calls", "cache_hits", "prompt_tokens",
                                       "completion_tokens", "cost")})
    return {name: {**u.to_json(), "total_tokens": u.total_tokens}
            for name, u in (("optimization", optimization), ("test", test), ("total", total))}
