"""Signatures: the typed input and output fields of one LM call, plus its instruction.

Two ways to declare one::

    Signature.parse("context, question -> answer: int", "Answer with a number.")

    class QA(Signature):
        \"\"\"Answer the question.\"\"\"
        question: str = InputField(desc="a trivia question")
        answer: Literal["yes", "no"] = OutputField()
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import typing
from dataclasses import dataclass, replace
from typing import Any, Literal

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_ALLOWED_TYPE_NAMES: dict[str, Any] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": bool,
    "list": list,
    "dict": dict,
    "Literal": Literal,
}


class SignatureError(ValueError):
    """A signature that cannot be understood."""


@dataclass(frozen=True)
class Field:
    name: str
    is_input: bool
    annotation: Any = str
    description: str = ""

    @functools.cached_property
    def title(self) -> str:
        """How the field is named in prompts: ``question_text`` -> ``Question Text``."""
        return " ".join(part.capitalize() for part in self.name.split("_") if part)

    @property
    def choices(self) -> tuple[Any, ...] | None:
        """The allowed values of a ``Literal[...]`` field, else None."""
        if typing.get_origin(self.annotation) is Literal:
            return typing.get_args(self.annotation)
        return None

    def type_name(self) -> str:
        return type_to_str(self.annotation)


@dataclass(frozen=True)
class _FieldMarker:
    is_input: bool
    description: str


def InputField(desc: str = "") -> Any:  # noqa: N802 - reads like a type in declarations
    return _FieldMarker(is_input=True, description=desc)


def OutputField(desc: str = "") -> Any:  # noqa: N802
    return _FieldMarker(is_input=False, description=desc)


class Signature:
    """An immutable list of input fields, output fields and an instruction."""

    _declared: tuple[Field, ...] = ()
    _declared_instruction: str = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        hints = typing.get_type_hints(cls, include_extras=False)
        fields: list[Field] = []
        for name in cls.__dict__.get("__annotations__", {}):
            marker = cls.__dict__.get(name)
            if not isinstance(marker, _FieldMarker):
                raise SignatureError(
                    f"{cls.__name__}.{name} must be declared with InputField() or OutputField()"
                )
            fields.append(Field(name, marker.is_input, hints.get(name, str), marker.description))
            delattr(cls, name)
        cls._declared = tuple(fields)
        # cleandoc: the lines after the first lose the class body's indentation, as Python 3.13
        # strips it at compile time; without it the prompt (and its cache key) would differ by
        # the Python version and carry "one\n    that" into the instruction
        cls._declared_instruction = inspect.cleandoc(cls.__doc__ or "")

    def __init__(
        self, fields: typing.Iterable[Field] | None = None, instruction: str | None = None
    ) -> None:
        fields = tuple(self._declared if fields is None else fields)
        names = [f.name for f in fields]
        for name in names:
            if not _IDENTIFIER.match(name):
                raise SignatureError(f"field name {name!r} is not a valid identifier")
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SignatureError(f"duplicate field names: {duplicates}")
        self.fields = fields
        if not self.input_fields:
            raise SignatureError("a signature needs at least one input field")
        if not self.output_fields:
            raise SignatureError("a signature needs at least one output field")
        if instruction is None:
            instruction = self._declared_instruction or self.default_instruction()
        self.instruction = instruction

    @property
    def input_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.is_input)

    @property
    def output_fields(self) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if not f.is_input)

    def field(self, name: str) -> Field:
        for f in self.fields:
            if f.name == name:
                return f
        raise KeyError(name)

    def default_instruction(self) -> str:
        ins = ", ".join(f"`{f.name}`" for f in self.input_fields)
        outs = ", ".join(f"`{f.name}`" for f in self.output_fields)
        return f"Given the fields {ins}, produce the fields {outs}."

    def with_instruction(self, instruction: str) -> Signature:
        return Signature(self.fields, instruction)

    def prepend_output(self, name: str, annotation: Any = str, description: str = "") -> Signature:
        """A copy with a new output field placed before the existing outputs."""
        new = Field(name, False, annotation, description)
        fields = list(self.input_fields) + [new] + list(self.output_fields)
        return Signature(fields, self.instruction)

    def with_field_description(self, name: str, description: str) -> Signature:
        fields = [replace(f, description=description) if f.name == name else f for f in self.fields]
        return Signature(fields, self.instruction)

    def shape(self) -> dict[str, list[str]]:
        """Field names only: what a saved program must agree on to be loaded."""
        return {
            "inputs": [f.name for f in self.input_fields],
            "outputs": [f.name for f in self.output_fields],
        }

    def output_schema(self) -> dict[str, Any]:
        """The JSON schema of an answer: one object with every output field, in order (a
        chain of thought's ``reasoning`` first), all required, nothing else allowed."""
        defs: dict[str, Any] = {}
        properties = {}
        for f in self.output_fields:
            prop = type_schema(f.annotation, defs)
            if f.description:
                prop = {**prop, "description": f.description}
            properties[f.name] = prop
        schema: dict[str, Any] = {
            "type": "object",
            "properties": properties,
            "required": list(properties),
            "additionalProperties": False,
        }
        if defs:
            schema["$defs"] = defs
        return schema

    def spec(self) -> str:
        def part(fs: tuple[Field, ...]) -> str:
            return ", ".join(f"{f.name}: {f.type_name()}" if f.annotation is not str else f.name
                             for f in fs)

        return f"{part(self.input_fields)} -> {part(self.output_fields)}"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Signature):
            return NotImplemented
        return self.fields == other.fields and self.instruction == other.instruction

    def __hash__(self) -> int:
        return hash((self.fields, self.instruction))

    def __repr__(self) -> str:
        return f"Signature({self.spec()!r}, instruction={self.instruction!r})"

    @classmethod
    def parse(cls, spec: str, instruction: str | None = None) -> Signature:
        """Parse ``"a, b: int -> c: list[str], d: Literal['x', 'y']"``."""
        if spec.count("->") != 1:
            raise SignatureError(f"signature {spec!r} must have exactly one '->'")
        left, right = spec.split("->")
        fields = [*_parse_side(left, True, spec), *_parse_side(right, False, spec)]
        return cls(fields, instruction)


def ensure_signature(value: str | Signature | type[Signature]) -> Signature:
    if isinstance(value, Signature):
        return value
    if isinstance(value, str):
        return Signature.parse(value)
    if isinstance(value, type) and issubclass(value, Signature):
        return value()
    raise SignatureError(
        f"expected a signature string, Signature or Signature class, got {value!r}"
    )


def _parse_side(text: str, is_input: bool, spec: str) -> list[Field]:
    side = "input" if is_input else "output"
    text = text.strip()
    if not text:
        raise SignatureError(f"signature {spec!r} has no {side} fields")
    fields = []
    for item in _split_top_level(text):
        name, _, type_text = item.partition(":")
        name = name.strip()
        if not _IDENTIFIER.match(name):
            raise SignatureError(f"bad {side} field name {name!r} in signature {spec!r}")
        annotation = _parse_type(type_text.strip(), spec) if type_text.strip() else str
        fields.append(Field(name, is_input, annotation))
    return fields


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets or quotes."""
    parts, depth, quote, current = [], 0, "", []
    for ch in text:
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "'\"":
            quote = ch
        elif ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _parse_type(text: str, spec: str) -> Any:
    """Turn a type written in a signature string into a type, without eval."""
    try:
        node = ast.parse(text, mode="eval").body
    except SyntaxError as exc:
        raise SignatureError(f"bad type {text!r} in signature {spec!r}") from exc

    def convert(n: ast.AST) -> Any:
        if isinstance(n, ast.Name) and n.id in _ALLOWED_TYPE_NAMES:
            return _ALLOWED_TYPE_NAMES[n.id]
        if isinstance(n, ast.Subscript) and isinstance(n.value, ast.Name):
            args = n.slice.elts if isinstance(n.slice, ast.Tuple) else [n.slice]
            if n.value.id == "Literal":
                if not all(isinstance(a, ast.Constant) for a in args):
                    raise SignatureError(f"Literal choices must be constants in {spec!r}")
                return Literal[tuple(a.value for a in args)]  # type: ignore[misc]
            if n.value.id == "list" and len(args) == 1:
                return list[convert(args[0])]  # type: ignore[misc]
            if n.value.id == "dict" and len(args) == 2:
                return dict[convert(args[0]), convert(args[1])]  # type: ignore[misc]
        raise SignatureError(
            f"unsupported type {text!r} in signature {spec!r}; "
            "use str, int, float, bool, list[...], dict[...], Literal[...] (or a Signature class)"
        )

    return convert(node)


def type_schema(annotation: Any, defs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The JSON schema of one field type: ``Literal`` -> enum, ``int`` -> integer, ``float`` ->
    number, ``bool``, ``list[...]`` -> array, ``dict[...]`` -> object, a pydantic model -> its
    own schema.  A pydantic model's ``$defs`` go into ``defs`` (they belong at the root of the
    schema that embeds it, where its ``#/$defs/...`` references point)."""
    simple = {str: "string", int: "integer", float: "number", bool: "boolean",
              list: "array", dict: "object"}
    if annotation in simple:
        return {"type": simple[annotation]}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is Literal:
        schema: dict[str, Any] = {"enum": list(args)}
        kinds = {type(a) for a in args}
        if len(kinds) == 1 and (kind := kinds.pop()) in simple:
            schema = {"type": simple[kind], **schema}
        return schema
    if origin is list:
        return {"type": "array", "items": type_schema(args[0], defs)} if args else {"type": "array"}
    if origin is dict:
        if len(args) == 2:
            return {"type": "object", "additionalProperties": type_schema(args[1], defs)}
        return {"type": "object"}
    if hasattr(annotation, "model_json_schema"):  # a pydantic model
        schema = dict(annotation.model_json_schema())
        if defs is not None:
            defs.update(schema.pop("$defs", {}))
        return schema
    raise SignatureError(f"no JSON schema for the type {type_to_str(annotation)}")


def type_to_str(annotation: Any) -> str:
    if annotation in (str, int, float, bool, list, dict):
        return annotation.__name__
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return "Literal[" + ", ".join(repr(a) for a in typing.get_args(annotation)) + "]"
    if origin in (list, dict):
        return f"{origin.__name__}[" + ", ".join(
            type_to_str(a) for a in typing.get_args(annotation)) + "]"
    return getattr(annotation, "__name__", repr(annotation))
