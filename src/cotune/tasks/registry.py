"""Tasks by name.  Modules are imported on demand so that one task's dependencies never
slow down or break another.  A name ending in ``.py`` (or an existing path) is a user's task
file (see :mod:`cotune.tasks.user`)."""

from __future__ import annotations

import importlib

from cotune.tasks.base import Task

_TASK_MODULES = {
    "iris": "cotune.tasks.iris",
    "gsm8k": "cotune.tasks.gsm8k",
    "hotpotqa": "cotune.tasks.hotpotqa",
    "hotpotqa-conditional": "cotune.tasks.hotpotqa_conditional",
    "hover": "cotune.tasks.hover",
    "scone": "cotune.tasks.scone",
    "heart": "cotune.tasks.heart",
}


def task_names() -> list[str]:
    return sorted(_TASK_MODULES)


def get_task(name: str) -> Task:
    if name in _TASK_MODULES:
        return importlib.import_module(_TASK_MODULES[name]).TASK
    from cotune.tasks.user import is_task_file, load_user_task

    if is_task_file(name):
        return load_user_task(name)
    raise KeyError(
        f"unknown task {name!r}; known tasks: {', '.join(task_names())} "
        "(or a path to a task file, e.g. my_task.py)"
    )
