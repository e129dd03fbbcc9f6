"""Turning sloppy LM text into typed field values, or a typed error that carries the text."""

from __future__ import annotations

import json
import re
import typing
from typing import Any, Literal

from cotune.adapters.numbers import NUMBER, number_value
from cotune.core.signature import Field


class AdapterParseError(ValueError):
    """The LM's answer could not be read as the signature's output fields."""

    def __init__(self, message: str, *, raw_text: str, field: str | None = None) -> None:
        super().__init__(f"{message}\n--- raw LM answer ---\n{raw_text[:2000]}")
        self.raw_text = raw_text
        self.field = field


_TRUE = {"true", "yes", "y", "1", "correct"}
_FALSE = {"false", "no", "n", "0", "incorrect"}


def coerce(field: Field, value: Any, raw_text: str) -> Any:
    """Convert ``value`` (usually a string) to the field's declared type."""
    annotation = field.annotation
    origin = typing.get_origin(annotation)
    try:
        if annotation is str:
            return value.strip() if isinstance(value, str) else json.dumps(value)
        if origin is Literal:
            return _coerce_choice(typing.get_args(annotation), value)
        if annotation is bool:
            return _coerce_bool(value)
        if annotation in (int, float):
            return _coerce_number(annotation, value)
        if annotation is list or origin is list:
            items = _coerce_list(value)
            args = typing.get_args(annotation)
            if args:
                item_field = Field(field.name, False, args[0])
                items = [coerce(item_field, item, raw_text) for item in items]
            return items
        if annotation is dict or origin is dict:
            data = value if isinstance(value, dict) else _load_json(value, dict)
            return dict(data)
        if hasattr(annotation, "model_validate"):  # a pydantic model
            data = value if isinstance(value, dict) else _load_json(value, dict)
            return annotation.model_validate(data)
    except (ValueError, TypeError) as exc:
        raise AdapterParseError(
            f"field {field.name!r}: cannot read {str(value)[:200]!r} "
            f"as {field.type_name()} ({exc})",
            raw_text=raw_text,
            field=field.name,
        ) from exc
    raise AdapterParseError(
        f"field {field.name!r}: unsupported type {field.type_name()}", raw_text=raw_text,
        field=field.name,
    )


def _normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _coerce_choice(choices: tuple[Any, ...], value: Any) -> Any:
    if value in choices:
        return value
    text = _normalize(str(value))
    by_norm = {_normalize(str(c)): c for c in choices}
    if text in by_norm:
        return by_norm[text]
    # "Iris versicolor." or "The answer is B": accept when exactly one choice is named.
    padded = f" {text} "
    named = [c for norm, c in by_norm.items() if norm and f" {norm} " in padded]
    if len(named) == 1:
        return named[0]
    detail = "names several choices" if named else "names none of the choices"
    raise ValueError(f"{detail} {list(choices)}")


def _coerce_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    words = _normalize(str(value)).split()
    if words and words[0] in _TRUE:
        return True
    if words and words[0] in _FALSE:
        return False
    raise ValueError("expected yes/no or true/false")


def _coerce_number(kind: type, value: Any) -> int | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = value
    else:
        match = NUMBER.search(str(value))
        if match is None:
            raise ValueError("no number found")
        number = number_value(match)
    if kind is int:
        if float(number) != int(number):
            raise ValueError(f"{number} is not a whole number")
        return int(number)
    return float(number)


def _coerce_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    text = str(value).strip()
    if text.startswith("["):
        return list(_load_json(text, list))
    lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line) for line in text.splitlines()]
    lines = [line.strip() for line in lines if line.strip()]
    if len(lines) > 1:
        return lines
    return [part.strip() for part in text.split(",") if part.strip()]


def _load_json(text: Any, kind: type) -> Any:
    data = json.loads(str(text))
    if not isinstance(data, kind):
        raise ValueError(f"expected a JSON {kind.__name__}")
    return data


def find_json_object(text: str) -> dict[str, Any] | None:
    """The first JSON object embedded in ``text`` (e.g. inside a ```json fence), if any."""
    decoder = json.JSONDecoder(strict=False)  # raw newlines in strings: grammars allow them
    for match in re.finditer(r"\{", text):
        try:
            data, _ = decoder.raw_decode(text, match.start())
        except json.JSONDecodeError:
            continue
        if isinstance(data, dict):
            return data
    return None


def last_number(text: str) -> str | None:
    matches = [m.group() for m in NUMBER.finditer(text)]
    return matches[-1] if matches else None
