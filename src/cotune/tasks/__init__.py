"""Benchmark tasks: data loader with seeded splits + program + metric, registered by name."""

from cotune.tasks.base import Reference, Splits, Task, grouped_split, seeded_split
from cotune.tasks.registry import get_task, task_names

__all__ = ["Reference", "Splits", "Task", "get_task", "grouped_split", "seeded_split",
           "task_names"]
