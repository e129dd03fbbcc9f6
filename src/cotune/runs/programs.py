"""Program files: a program's learnable state as versioned JSON on disk."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cotune.core import Module
from cotune.core.state import StateError, load_state, state_from_json, state_to_json
from cotune.lm.base import LM
from cotune.lm.description import has_lora
from cotune.lm.factory import lm_from_description


def save_program(program: Module, path: str | os.PathLike[str]) -> Path:
    """Write atomically (temp file + rename), so a crash never leaves a half-written file."""
    from cotune.runs.folder import write_atomic

    return write_atomic(Path(path), state_to_json(program.dump_state()))


def load_program(
    program: Module, path: str | os.PathLike[str], *, restore_lms: bool = False
) -> Module:
    """Load the state saved at ``path`` into ``program`` (in place) and return it.

    With ``restore_lms``, predictors saved with a fine-tuned LM get it back (see
    :func:`restore_saved_lms`); otherwise they use whatever LM they are given at run time.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise StateError(f"{path}: not a UTF-8 text file") from exc
    state = state_from_json(text, source=str(path))
    try:
        load_state(program, state)
        if restore_lms:
            restore_saved_lms(program, state)
    except StateError as exc:
        if str(exc).startswith(str(path)):
            raise
        raise type(exc)(f"{path}: {exc}") from exc
    except (KeyError, TypeError, AttributeError, ValueError) as exc:  # a malformed entry
        raise StateError(f"{path}: not a usable program state ({type(exc).__name__}: "
                         f"{exc})") from exc
    return program


def restore_saved_lms(program: Module, state: dict[str, Any], *, like: LM | None = None
                      ) -> Module:
    """Bind to each predictor the fine-tuned LM its saved state names (a llama.cpp model plus a
    LoRA adapter), after checking both files against their recorded sha256: a missing or
    changed file is an ``AdapterFileError`` (a :class:`StateError`).  Predictors sharing an
    adapter share one loaded LM; those saved without an adapter are left as they are.
    ``like``: a llama.cpp LM whose runtime settings (threads, cache) the rebuilt LMs copy
    (see :func:`cotune.lm.lm_from_description`)."""
    loaded: dict[str, LM] = {}
    for name, p in program.named_predictors():
        description = state["predictors"][name].get("lm")
        if not has_lora(description):
            continue
        key = json.dumps(description, sort_keys=True)
        if key not in loaded:
            loaded[key] = lm_from_description(description, like=like)
        p.lm = loaded[key]
    return program
