"""Values as JSON can hold them, and a demo (an :class:`Example`) as JSON and back."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cotune.core.example import Example


def jsonable(value: Any) -> Any:
    """JSON-native values as they are; containers recursively; a pydantic model as its JSON
    dump; anything else as ``str``."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [jsonable(v) for v in value]
    if hasattr(value, "model_dump"):  # pydantic
        return jsonable(value.model_dump(mode="json"))
    return str(value)


def demo_to_json(demo: Example) -> dict[str, Any]:
    """``{"fields": ..., "inputs": [...]}``: how a saved program and the journal hold a demo."""
    return {"fields": jsonable(demo.to_dict()), "inputs": sorted(demo.input_keys)}


def demo_from_json(data: Mapping[str, Any]) -> Example:
    """The demo :func:`demo_to_json` wrote (a ``KeyError`` or ``TypeError`` when malformed)."""
    return Example(data["fields"], input_keys=data["inputs"])
