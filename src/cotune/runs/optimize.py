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
    n_ctx: int | None = None
    """Context length of the embedded engine (None: its default, from the model file)."""

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
                workdir=folder.work_path,
            )
            _write_search(folder, program, result)
            test, test_usage = _evaluate_test(result.program, splits.test, task,
                                              spec.threads, journal, reporter)
            summary = RunSummary(
                run_dir=folder.path,
                val_score=result.best_score,
                test_score=test["score"] if test else None,
                test_metrics=dict((test or {}).get("metrics") or {}),
                usage=_usage_report(result.usage, test_usage),
                wall_s=round(time.monotonic() - started, 3),
                stopped_by_budget=result.stopped_by_budget,
                attempt=attempt,
                num_candidates=len(result.candidates),
                best_index=result.best_index,
            )
            folder.write_json(RESULT, {
                **summary.to_json(), "test": test, "n_ctx": getattr(lm, "n_ctx", None),
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
    if spec.n_ctx is not None and lm is None:  # absent by default: older run folders still match
        model["n_ctx"] = spec.n_ctx
    return {
        "cotune_version": cotune.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "task": task_entry,
        "optimizer": {"name": spec.optimizer, "preset": spec.preset, **optimizer.config()},
        "model": model,
        "seed": spec.seed,
        "splits": {"train": len(splits.train), "val": len(splits.val), "test": len(splits.test),
                   "digest": _splits_digest(splits)},
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
    if spec.n_ctx is not None:
        if spec.base_url:
            raise ValueError("--n-ctx applies to the embedded engine, not to a --base-url server")
        options["n_ctx"] = spec.n_ctx
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
) -> tuple[dict[str, Any] | None, UsageSnapshot]:
    """The final program's score on the held-out test split, and the task's extra metrics on
    the same predictions (journaled: not redone)."""
    if not testset:
        return None, UsageSnapshot()
    from cotune.evaluate import Evaluate

    state = json.dumps(program.dump_state(), sort_keys=True, default=str)
    key = "test:" + hashlib.sha256(state.encode()).hexdigest()[:16]

    def compute() -> dict[str, Any]:
        reporter.message(f"evaluating the final program on {len(testset)} test examples")
        result = Evaluate(testset, task.metric, num_threads=threads,
                          display_progress=False)(program)
        extra = {name: result.mean_of(metric) for name, metric in task.extra_metrics.items()}
        return {"score": result.score, "examples": len(result.results),
                "errors": result.num_errors, **({"metrics": extra} if extra else {})}

    with track_usage() as meter:
        test = journal.memo(key, compute)
    return test, meter.snapshot()


def _usage_report(optimization: UsageSnapshot, test: UsageSnapshot) -> dict[str, Any]:
    total = UsageSnapshot(**{k: getattr(optimization, k) + getattr(test, k)
                             for k in ("calls", "cache_hits", "prompt_tokens",
                                       "completion_tokens", "cost", "repairs")})
    return {name: {**u.to_json(), "total_tokens": u.total_tokens}
            for name, u in (("optimization", optimization), ("test", test), ("total", total))}
