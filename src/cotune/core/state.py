"""Save and load a program's learnable state as versioned JSON (never pickle).

The format knows programs only by the two protocols below (``Module`` and ``Predict`` meet
them), so the modules that define programs can use it without it importing them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, Protocol

from cotune.core.example import Example
from cotune.core.jsonable import demo_from_json, demo_to_json
from cotune.core.signature import Signature

STATE_VERSION = 1


class Learnable(Protocol):
    """A predictor's state that is saved: what ``Predict`` holds."""

    signature: Signature
    instruction: str
    demos: list[Example]
    lm: Any
    adapter: Any


class Program(Protocol):
    """A program whose predictors' state is saved: what ``Module`` is."""

    def named_predictors(self) -> Sequence[tuple[str, Learnable]]: ...


class StateError(ValueError):
    """A saved program that is corrupt, of an unknown version, or of a different shape."""


def dump_state(program: Program) -> dict[str, Any]:
    predictors = {}
    for name, p in program.named_predictors():
        lm_state = p.lm.describe() if p.lm is not None else None
        predictors[name] = {
            "signature": p.signature.shape(),
            "instruction": p.instruction,
            "demos": [demo_to_json(d) for d in p.demos],
            "lm": lm_state,
        }
        adapter = p.adapter if isinstance(p.adapter, str) else getattr(p.adapter, "name", None)
        if adapter is not None:  # only when set: states saved before adapters stay the same
            predictors[name]["adapter"] = adapter
    return {
        "cotune_state_version": STATE_VERSION,
        "program": type(program).__name__,
        "predictors": predictors,
    }


def load_state(program: Program, state: Any) -> None:
    """Load ``state`` into ``program`` in place, after checking that the shapes agree.

    LM bindings are not restored here (they are live objects); ``state["predictors"][name]["lm"]``
    says which LM each predictor used, for the caller to rebind.
    """
    if not isinstance(state, dict) or "cotune_state_version" not in state:
        raise StateError("not a cotune program state (no 'cotune_state_version' key)")
    version = state["cotune_state_version"]
    if version != STATE_VERSION:
        raise StateError(
            f"unsupported state version {version!r}; this cotune reads {STATE_VERSION}"
        )
    saved = state.get("predictors")
    if not isinstance(saved, dict):
        raise StateError("state has no 'predictors' mapping")
    current = dict(program.named_predictors())
    if set(saved) != set(current):
        raise StateError(
            f"saved program has predictors {sorted(saved)} but {type(program).__name__} has "
            f"{sorted(current)}"
        )
    updates = []
    for name, p in current.items():
        entry = saved[name]
        try:
            shape, instruction, demos = entry["signature"], entry["instruction"], entry["demos"]
            loaded_demos = [demo_from_json(d) for d in demos]
        except (KeyError, TypeError, ValueError) as exc:
            raise StateError(f"predictor {name!r}: malformed entry ({exc})") from exc
        if shape != p.signature.shape():
            raise StateError(
                f"predictor {name!r}: saved signature {shape} differs from {p.signature.shape()}"
            )
        if not isinstance(instruction, str):
            raise StateError(f"predictor {name!r}: instruction must be a string")
        adapter = entry.get("adapter", p.adapter)
        if adapter is not None and not isinstance(adapter, str) and adapter is not p.adapter:
            raise StateError(f"predictor {name!r}: adapter must be a name, like 'json'")
        updates.append((p, instruction, loaded_demos, adapter))
    for p, instruction, loaded_demos, adapter in updates:  # all checked: no half-loaded program
        p.instruction = instruction
        p.demos = loaded_demos
        p.adapter = adapter


def state_to_json(state: dict[str, Any]) -> str:
    return json.dumps(state, indent=2, ensure_ascii=False)


def state_from_json(text: str, source: str = "state") -> dict[str, Any]:
    try:
        state = json.loads(text)
    except json.JSONDecodeError as exc:
        raise StateError(f"{source}: not valid JSON ({exc})") from exc
    if not isinstance(state, dict):
        raise StateError(f"{source}: expected a JSON object")
    return state

