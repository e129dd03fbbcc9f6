"""Examples (data points with inputs marked explicitly) and predictions."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any


class Example(Mapping[str, Any]):
    """An immutable record of named fields, some of which are marked as the inputs.

    >>> ex = Example(question="2+2?", answer="4").with_inputs("question")
    >>> ex.inputs(), ex.labels()
    """

    __slots__ = ("_fields", "_input_keys")

    def __init__(
        self,
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        input_keys: Iterable[str] | None = None,
        **kwargs: Any,
    ) -> None:
        data = dict(fields or {})
        data.update(kwargs)
        object.__setattr__(self, "_fields", data)
        keys = None if input_keys is None else frozenset(input_keys)
        if keys is not None and not keys <= data.keys():
            missing = sorted(keys - data.keys())
            raise ValueError(f"input keys {missing} are not fields of the example")
        object.__setattr__(self, "_input_keys", keys)

    # Mapping protocol
    def __getitem__(self, key: str) -> Any:
        return self._fields[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._fields)

    def __len__(self) -> int:
        return len(self._fields)

    def __getattr__(self, name: str) -> Any:
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no field {name!r}; fields: {sorted(self._fields)}"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable; use .with_fields()")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Example):
            return NotImplemented
        return self._fields == other._fields and self._input_keys == other._input_keys

    def __hash__(self) -> int:
        return hash((_freeze(self._fields), self._input_keys))

    def __repr__(self) -> str:
        body = ", ".join(f"{k}={v!r}" for k, v in self._fields.items())
        marked = "" if self._input_keys is None else f" inputs={sorted(self._input_keys)}"
        return f"{type(self).__name__}({body}){marked}"

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild, (type(self), self._fields, self._input_keys))

    # Inputs vs labels
    @property
    def input_keys(self) -> frozenset[str]:
        if self._input_keys is None:
            raise ValueError("this example has no inputs marked; call .with_inputs(...) first")
        return self._input_keys

    def with_inputs(self, *keys: str) -> Example:
        return type(self)(self._fields, input_keys=keys)

    def inputs(self) -> dict[str, Any]:
        return {k: v for k, v in self._fields.items() if k in self.input_keys}

    def labels(self) -> dict[str, Any]:
        return {k: v for k, v in self._fields.items() if k not in self.input_keys}

    def with_fields(self, **changes: Any) -> Example:
        return type(self)({**self._fields, **changes}, input_keys=self._input_keys)

    def to_dict(self) -> dict[str, Any]:
        return dict(self._fields)


class Prediction(Example):
    """The output fields of a module call.  ``completions`` holds every sampled answer when the
    LM was asked for several (n > 1); the fields themselves are the first."""

    __slots__ = ("completions",)

    def __init__(
        self,
        fields: Mapping[str, Any] | None = None,
        /,
        *,
        completions: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(fields, **kwargs)
        object.__setattr__(self, "completions", completions or [self.to_dict()])


def _rebuild(cls: type[Example], fields: dict[str, Any], input_keys: frozenset[str] | None):
    return cls(fields, input_keys=input_keys)


def _freeze(value: Any) -> Any:
    """A hashable stand-in for nested JSON-like values."""
    if isinstance(value, Mapping):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(_freeze(v) for v in value)
    if isinstance(value, set):
        return frozenset(_freeze(v) for v in value)
    try:
        hash(value)
    except TypeError:
        return repr(value)
    return value
