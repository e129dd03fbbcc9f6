"""Where the benchmark data lives, and a strict JSON Lines reader.

The data files are shared between projects and never copied into this one.  They are found at
``$COTUNE_DATA_DIR`` or else at ``shared/data`` in the nearest ancestor of the current directory
or of this package (for a checkout at ``/work/main`` that is ``/work/shared/data``, i.e.
``../shared/data`` relative to the project root).
"""

from __future__ import annotations

import json
import os
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

DATA_ENV_VAR = "COTUNE_DATA_DIR"

FieldTypes = Mapping[str, Any]
"""Required field -> expected type: ``str``, ``int``, ``list[str]``, or a tuple of types."""


class DataError(ValueError):
    """A data file with a malformed row, or a data folder that cannot be found."""


def data_dir() -> Path:
    """The folder holding ``gsm8k/``, ``hotpotqa/``, ``scone/`` and ``heart/``."""
    configured = os.environ.get(DATA_ENV_VAR)
    if configured:
        path = Path(configured).expanduser()
        if not path.is_dir():
            raise DataError(f"{DATA_ENV_VAR}={configured!r} is not a directory")
        return path
    for start in (Path.cwd(), Path(__file__).resolve().parent):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if candidate.is_dir():
                return candidate
    raise DataError(
        "cannot find the benchmark data folder (shared/data above the current directory or the "
        f"cotune package); set {DATA_ENV_VAR} to the folder holding gsm8k/, hotpotqa/, scone/ "
        "and heart/"
    )


def data_path(*parts: str) -> Path:
    """A file under :func:`data_dir`, e.g. ``data_path("gsm8k", "train.jsonl")``."""
    return data_dir().joinpath(*parts)


def iter_jsonl(path: str | os.PathLike[str], required: FieldTypes) -> Iterator[tuple[int, dict]]:
    """``(line number, row)`` for every non-blank line, each checked against ``required``.

    Raises :class:`FileNotFoundError` for a missing file and :class:`DataError` (naming the file
    and line) for a line that is not UTF-8 or not a JSON object or lacks a field or has one of
    the wrong type, and for a file without a single row.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"data file not found: {path} (set {DATA_ENV_VAR} to the folder holding the "
            "benchmark data)"
        )
    rows = 0
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            where = f"{path}, line {lineno}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise DataError(f"{where}: not UTF-8 text (byte {raw[exc.start]:#04x} at column "
                                f"{exc.start + 1})") from None
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{where}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{where}: expected a JSON object, got {type(row).__name__}")
            check_row(row, required, where)
            rows += 1
            yield lineno, row
    if rows == 0:
        raise DataError(f"{path}: no rows (the file is empty; expected one JSON object a line)")


def read_jsonl(path: str | os.PathLike[str], required: FieldTypes) -> list[dict]:
    """Every row of a JSON Lines file, validated as in :func:`iter_jsonl`."""
    return [row for _, row in iter_jsonl(path, required)]


def check_row(row: Mapping[str, Any], required: FieldTypes, where: str) -> None:
    missing = [name for name in required if name not in row]
    if missing:
        raise DataError(f"{where}: missing fields {missing}")
    for name, expected in required.items():
        if not _has_type(row[name], expected):
            raise DataError(
                f"{where}: field {name!r} should be {_type_name(expected)}, "
                f"got {type(row[name]).__name__} {str(row[name])[:80]!r}"
            )


def _has_type(value: Any, expected: Any) -> bool:
    if isinstance(expected, tuple):
        return any(_has_type(value, e) for e in expected)
    origin = typing.get_origin(expected)
    if origin is list:
        (item,) = typing.get_args(expected)
        return isinstance(value, list) and all(_has_type(v, item) for v in value)
    if expected in (int, float) and isinstance(value, bool):
        return False
    return isinstance(value, expected)


def _type_name(expected: Any) -> str:
    if isinstance(expected, tuple):
        return " or ".join(_type_name(e) for e in expected)
    if typing.get_origin(expected) is not None:
        return str(expected)  # e.g. "list[str]"
    return expected.__name__
