"""A user's own task: a Python file that defines the program, the data and the metric.

The file exposes (module-level names):

* ``program`` (a :class:`~cotune.Module` instance) or ``make_program()``;
* ``trainset``, ``valset``, ``testset`` (lists of :class:`~cotune.core.example.Example` with their
  inputs marked; ``valset`` and ``testset`` are optional), or ``load_splits(seed)`` returning a
  :class:`~cotune.tasks.base.Splits` or a ``(train, val, test)`` tuple;
* ``metric(example, prediction, trace=None)`` returning a float or bool;
* optionally ``extra_metrics``, a dict of name -> metric reported beside ``metric`` on the test
  split (never optimized);
* optionally ``reference(program)`` returning a :class:`~cotune.tasks.base.Reference`: a
  baseline without an LM that every run is compared with on its test examples.

Its docstring's first line is the task's description.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from cotune.core import Module
from cotune.core.example import Example
from cotune.tasks.base import Splits, Task


class UserTaskError(ValueError):
    """A task file that cannot be loaded or lacks something a task needs."""


def is_task_file(name: str) -> bool:
    """Whether ``name`` names a task file rather than a built-in task."""
    return name.endswith(".py") or Path(name).exists()


def file_digest(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def load_user_task(path: str | Path) -> Task:
    path = Path(path)
    if not path.is_file():
        raise UserTaskError(f"task file not found: {path}")
    module = _import_file(path)
    make_program = _program_factory(module, path)
    load_splits = _splits_loader(module, path)
    metric = getattr(module, "metric", None)
    if not callable(metric):
        raise UserTaskError(f"{path}: defines no `metric(example, prediction, trace=None)`")
    extra_metrics = getattr(module, "extra_metrics", None) or {}
    if not isinstance(extra_metrics, dict) or not all(
        isinstance(name, str) and callable(m) for name, m in extra_metrics.items()
    ):
        raise UserTaskError(f"{path}: `extra_metrics` must be a dict of name -> metric function")
    reference = getattr(module, "reference", None)
    if reference is not None and not callable(reference):
        raise UserTaskError(f"{path}: `reference` must be a function of the program returning "
                            f"a cotune.tasks.Reference")
    doc = (inspect.getdoc(module) or "").strip()
    return Task(
        name=str(path),
        description=doc.splitlines()[0] if doc else f"user task from {path.name}",
        load_splits=load_splits,
        make_program=make_program,
        metric=metric,
        extra_metrics=extra_metrics,
        reference=reference,
    )


def _import_file(path: Path) -> ModuleType:
    name = f"cotune_user_task_{hashlib.sha256(str(path.resolve()).encode()).hexdigest()[:12]}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise UserTaskError(f"{path}: not an importable Python file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look the module up by name
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[name]
        raise UserTaskError(f"{path}: failed to import ({type(exc).__name__}: {exc})") from exc
    return module


def _program_factory(module: ModuleType, path: Path) -> Callable[[], Module]:
    program = getattr(module, "program", None)
    make_program = getattr(module, "make_program", None)
    if isinstance(program, Module):
        return program.deepcopy
    if callable(make_program):
        def make() -> Module:
            made = make_program()
            if not isinstance(made, Module):
                raise UserTaskError(f"{path}: make_program() returned a {type(made).__name__}, "
                                    "expected a cotune Module")
            return made

        return make
    if program is not None:
        raise UserTaskError(f"{path}: `program` is a {type(program).__name__}, "
                            "expected a cotune Module")
    raise UserTaskError(f"{path}: defines neither `program` nor `make_program()`")


def _splits_loader(module: ModuleType, path: Path) -> Callable[..., Splits]:
    load_splits = getattr(module, "load_splits", None)
    if callable(load_splits):
        def load(seed: int = 0) -> Splits:
            return _as_splits(load_splits(seed=seed), path)

        return load
    if getattr(module, "trainset", None) is None:
        raise UserTaskError(f"{path}: defines neither `trainset` nor `load_splits(seed)`")
    splits = _as_splits(
        (module.trainset, getattr(module, "valset", None), getattr(module, "testset", None)), path
    )
    return lambda seed=0: splits


def _as_splits(value: Any, path: Path) -> Splits:
    if isinstance(value, Splits):
        value = (value.train, value.val, value.test)
    if not isinstance(value, tuple) or len(value) != 3:
        raise UserTaskError(f"{path}: load_splits() must return Splits or (train, val, test)")
    train, val, test = (_examples(v, n, path) for v, n in zip(value, ("train", "val", "test"),
                                                                strict=True))
    if not train:
        raise UserTaskError(f"{path}: the training set is empty")
    return Splits(train, val, test)


def _examples(value: Sequence[Any] | None, split: str, path: Path) -> list[Example]:
    examples = list(value or [])
    for i, ex in enumerate(examples):
        if not isinstance(ex, Example):
            raise UserTaskError(f"{path}: {split}set[{i}] is a {type(ex).__name__}, expected an "
                                "Example (e.g. Example(question=..., answer=...)"
                                ".with_inputs('question'))")
        try:
            ex.input_keys  # noqa: B018 - raises when no inputs are marked
        except ValueError:
            raise UserTaskError(f"{path}: {split}set[{i}] has no inputs marked "
                                "(use .with_inputs(...))") from None
    return examples
