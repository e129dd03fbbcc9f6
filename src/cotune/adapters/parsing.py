"""Turning sloppy LM text into typed field values, or a typed error that carries the text.

pydantic's ``TypeAdapter`` decides what a value of the field's type is (``int``, ``float``,
``bool``, ``Literal``, ``list``, ``dict``, pydantic models); on top of it cotune keeps only the
lenient rules for what small models write around a value:

* a number inside text: ``"12 apples"``, ``"$1,204."``, ``"about 1e3"`` (the first number;
  :data:`NUMBER`);
* a yes/no word at the start: ``"Yes, it is."``, ``"Correct"``, ``"no!"``;
* a choice named in a sentence: ``"Iris versicolor."``, ``"The flower is a virginica"`` (exactly
  one choice, compared without case and punctuation);
* a list as JSON, as bullet or numbered lines, or comma-separated, each item read leniently.
"""

from __future__ import annotations

import functools
import json
import re
import typing
from typing import TYPE_CHECKING, Any, Literal

from cotune.adapters.numbers import NUMBER, first_number, last_number, parse_number
from cotune.core.signature import Field

if TYPE_CHECKING:
    import pydantic

__all__ = [
    "NUMBER",
    "AdapterParseError",
    "coerce",
    "find_json_object",
    "first_number",
    "last_number",
    "parse_number",
]


class AdapterParseError(ValueError):
    """The LM's answer could not be read as the signature's output fields."""

    def __init__(self, message: str, *, raw_text: str, field: str | None = None) -> None:
        super().__init__(f"{message}\n--- raw LM answer ---\n{raw_text[:2000]}")
        self.raw_text = raw_text
        self.field = field


_BOOL_WORDS = {"correct": True, "incorrect": False}
"""Answer words that pydantic does not read as a bool (it reads yes/no, true/false, y/n, 1/0,
on/off, t/f)."""


def coerce(field: Field, value: Any, raw_text: str) -> Any:
    """Convert ``value`` (usually a string) to the field's declared type."""
    annotation = field.annotation
    origin = typing.get_origin(annotation)
    try:
        if annotation is str:
            return value.strip() if isinstance(value, str) else json.dumps(value)
        if origin is Literal:
            return _coerce_choice(annotation, value)
        if annotation is bool:
            return _coerce_bool(value)
        if annotation in (int, float):
            return _coerce_number(annotation, value)
        if annotation is list or origin is list:
            items = _split_list(value)
            args = typing.get_args(annotation)
            if args:
                item_field = Field(field.name, False, args[0])
                items = [coerce(item_field, item, raw_text) for item in items]
            return items
        if annotation is dict or origin is dict or _is_model(annotation):
            return _validate_json(annotation, value)
    except (ValueError, TypeError) as exc:
        raise AdapterParseError(
            f"field {field.name!r}: cannot read {str(value)[:200]!r} "
            f"as {field.type_name()} ({_reason(exc)})",
            raw_text=raw_text,
            field=field.name,
        ) from exc
    raise AdapterParseError(
        f"field {field.name!r}: unsupported type {field.type_name()}", raw_text=raw_text,
        field=field.name,
    )


@functools.lru_cache(maxsize=256)
def _adapter(annotation: Any) -> pydantic.TypeAdapter[Any]:
    import pydantic  # lazy: it would add ~40% to the time of ``import cotune``

    if annotation is float:  # an answer of "nan" or "inf" is no score, size or price
        return pydantic.TypeAdapter(pydantic.FiniteFloat)
    return pydantic.TypeAdapter(annotation)


def _validate(annotation: Any, value: Any) -> Any:
    return _adapter(annotation).validate_python(value)


def _reason(exc: Exception) -> str:
    """A pydantic error in one line (``age: Field required``), other errors as they are."""
    import pydantic

    if not isinstance(exc, pydantic.ValidationError):
        return str(exc)
    parts = []
    for error in exc.errors(include_url=False)[:3]:
        where = ".".join(str(part) for part in error["loc"])
        parts.append(f"{where}: {error['msg']}" if where else error["msg"])
    return "; ".join(parts)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and hasattr(annotation, "model_validate")  # pydantic's


def _normalize(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", " ", text.lower()).strip()


def _coerce_choice(annotation: Any, value: Any) -> Any:
    try:
        return _validate(annotation, value)
    except ValueError:  # pydantic's ValidationError
        pass
    choices = typing.get_args(annotation)
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
    try:
        return _validate(bool, value.strip() if isinstance(value, str) else value)
    except ValueError:  # pydantic's ValidationError
        pass
    words = _normalize(str(value)).split()  # "Yes, because ..." / "no!": its first word
    if words:
        if words[0] in _BOOL_WORDS:
            return _BOOL_WORDS[words[0]]
        try:
            return _validate(bool, words[0])
        except ValueError:  # pydantic's ValidationError
            pass
    raise ValueError("expected yes/no or true/false")


def _coerce_number(kind: type, value: Any) -> int | float:
    if isinstance(value, bool):  # pydantic reads true as 1; an answer of "true" is no number
        raise ValueError("expected a number, not a yes/no")
    if isinstance(value, str):
        try:
            return _validate(kind, value)  # "42", " 0.75 ", "1e-3"
        except ValueError:  # pydantic's ValidationError
            token = first_number(value)  # "12 apples", "$1,204.", "Answer: 3.5"
            if token is None:
                raise ValueError("no number found") from None
            value = parse_number(token)
    return _validate(kind, value)


def _split_list(value: Any) -> list[Any]:
    if isinstance(value, list):
        return value
    text = str(value).strip()
    if text.startswith("["):
        return _validate_json(list, text)
    lines = [re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line) for line in text.splitlines()]
    lines = [line.strip() for line in lines if line.strip()]
    if len(lines) > 1:
        return lines
    return [part.strip() for part in text.split(",") if part.strip()]


def _validate_json(annotation: Any, value: Any) -> Any:
    """``value`` as ``annotation``: parsed as JSON when it is text, else validated as it is."""
    if isinstance(value, str):
        return _adapter(annotation).validate_json(value)
    return _validate(annotation, value)


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
