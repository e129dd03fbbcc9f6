"""Tasks by name.  Modules are imported on demand so that one task's dependencies never
slow down or break another."""

from __future__ import annotations

import importlib

from cotune.tasks.base import Task

_TASK_MODULES = {"iris": "cotune.tasks.iris"}


def task_names() -> list[str]:
    return sorted(_TASK_MODULES)


def get_task(name: str) -> Task:
    if name not in _TASK_MODULES:
        raise KeyError(f"unknown task {name!r}; known tasks: {', '.join(task_names())}")
    return importlib.import_module(_TASK_MODULES[name]).TASK
