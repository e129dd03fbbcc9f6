"""Checks of a run's settings before anything starts, and data splits cut to the sizes asked."""

from __future__ import annotations

import inspect
from typing import Any

from cotune.core.validate import check_bool, check_int, check_mapping, check_number, check_str
from cotune.optimize.registry import get_optimizer
from cotune.tasks.base import Splits, SplitSizeError, Task

SIZES = ("train_size", "val_size", "test_size")


def check_spec(spec: Any) -> None:
    """A :class:`~cotune.runs.optimize.RunSpec`'s values (each error names the setting)."""
    check_str("task", spec.task)
    check_str("optimizer", spec.optimizer)
    get_optimizer(spec.optimizer)  # an unknown name: the error names the known ones
    check_str("model", spec.model)
    check_str("base_url", spec.base_url, allow_none=True)
    check_int("seed", spec.seed)
    for name in SIZES:
        check_int(name, getattr(spec, name), minimum=0, allow_none=True)
    check_str("preset", spec.preset, allow_none=True)
    check_mapping("options", spec.options)
    check_int("max_calls", spec.max_calls, minimum=0, allow_none=True)
    check_int("max_tokens", spec.max_tokens, minimum=0, allow_none=True)
    check_number("max_seconds", spec.max_seconds, minimum=0, allow_none=True)
    check_int("threads", spec.threads, minimum=1)
    check_str("cache_dir", spec.cache_dir, allow_none=True)
    check_bool("use_cache", spec.use_cache)
    check_number("timeout", spec.timeout, above=0, allow_none=True)
    check_int("n_ctx", spec.n_ctx, minimum=1, allow_none=True)


def load_splits_sized(task: Task, seed: int, sizes: tuple[int | None, int | None, int | None]
                      ) -> Splits:
    """The task's seeded splits.  They are drawn at the task's default sizes (and cut later),
    so that a smaller run sees a prefix of the same examples; when the data is too small for
    the defaults and all three sizes are given, they are drawn at those sizes instead."""
    try:
        return task.load_splits(seed=seed)
    except SplitSizeError as exc:
        if all(s is not None for s in sizes) and _takes_sizes(task):
            return task.load_splits(seed=seed, sizes=tuple(sizes))
        raise _with_hint(exc) from None


def _with_hint(exc: SplitSizeError) -> ValueError:
    return ValueError(f"{exc} (the task's default sizes); give --train-size, --val-size and "
                      "--test-size that fit")


def _takes_sizes(task: Task) -> bool:
    try:
        return "sizes" in inspect.signature(task.load_splits).parameters
    except (TypeError, ValueError):
        return False
