"""Run folders, program files and journals: the top layer, where I/O lives.

``RunFolder``, ``SQLiteJournal``, ``RunSpec``, ``run_optimization`` and ``RunView`` (what a run
folder holds, read back) are imported on first use, so that ``import cotune`` does not pull in
the optimizers.
"""

from __future__ import annotations

import importlib
from typing import Any

from cotune.runs.programs import load_program, save_program

_LAZY = {
    "RunFolder": "cotune.runs.folder",
    "RunFolderError": "cotune.runs.folder",
    "SQLiteJournal": "cotune.runs.journal",
    "JournalError": "cotune.runs.journal",
    "RunSpec": "cotune.runs.optimize",
    "RunSummary": "cotune.runs.optimize",
    "run_optimization": "cotune.runs.optimize",
    "RunView": "cotune.runs.view",
}

__all__ = ["load_program", "save_program", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
