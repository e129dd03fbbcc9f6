"""Checks of option values (optimizer settings, run and bench settings): a wrong value is a
``ValueError`` that names the option, the value and what it should be.

Values often come from the command line (``--set num_candidates=abc``) or a spec file, so a
string is never silently taken for a number, and ``True`` is not an integer.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any


def check_int(name: str, value: Any, *, minimum: int | None = None,
              allow_none: bool = False) -> int | None:
    """``value`` if it is an integer (not a bool) >= ``minimum``."""
    if value is None and allow_none:
        return None
    bound = f" >= {minimum}" if minimum is not None else ""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer{bound}, got {_show(value)}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be an integer{bound}, got {value}")
    return value


def check_number(name: str, value: Any, *, minimum: float | None = None,
                 maximum: float | None = None, above: float | None = None,
                 allow_none: bool = False) -> float | None:
    """``value`` if it is a real number in range (``above``: strictly greater than)."""
    if value is None and allow_none:
        return None
    parts = [f">= {minimum}" if minimum is not None else "",
             f"> {above}" if above is not None else "",
             f"<= {maximum}" if maximum is not None else ""]
    bound = " and ".join(p for p in parts if p)
    wanted = f"{name} must be a number" + (f" {bound}" if bound else "")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        raise ValueError(f"{wanted}, got {_show(value)}")
    if ((minimum is not None and value < minimum) or (above is not None and value <= above)
            or (maximum is not None and value > maximum)):
        raise ValueError(f"{wanted}, got {value}")
    return value


def check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {_show(value)}")
    return value


def check_str(name: str, value: Any, *, allow_none: bool = False) -> str | None:
    """A non-empty string."""
    if value is None and allow_none:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} must be a non-empty string, got {_show(value)}")
    return value


def check_choice(name: str, value: Any, choices: Collection[Any]) -> Any:
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}, "
                         f"got {_show(value)}")
    return value


def check_mapping(name: str, value: Any, *, allow_none: bool = False) -> Mapping[str, Any] | None:
    if value is None and allow_none:
        return None
    if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
        raise ValueError(f"{name} must be a table of settings (name = value), "
                         f"got {_show(value)}")
    return value


def _show(value: Any) -> str:
    """The value and, where it is not obvious, its type: ``'abc' (a string)``."""
    kinds = {str: "a string", bool: "a boolean", list: "a list", dict: "a table",
             float: "a number", int: "an integer", type(None): "nothing"}
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    kind = kinds.get(type(value))
    return f"{text} ({kind})" if kind in ("a string", "a boolean", "a list", "a table") else text
