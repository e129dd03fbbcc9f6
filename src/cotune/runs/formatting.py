"""How scores, intervals and bench values are written: the same in the terminal
(``cotune show``, ``cotune optimize``), in Markdown (a bench's ``results.md``) and in HTML
(``cotune report``)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cotune.evaluate.stats import Interval


def format_metrics(
    metrics: Mapping[str, float] | None, intervals: Mapping[str, Any] | None = None
) -> str:
    """A task's extra test metrics in one line: ``retrieval_recall 0.583`` (with its interval
    ``[0.52, 0.64]`` where ``intervals`` has one); "" when none."""
    return ", ".join(f"{name} {format_score(value, (intervals or {}).get(name))}"
                     for name, value in (metrics or {}).items())


def format_score(value: Any, interval: Any = None) -> str:
    """``0.540 [0.420, 0.660]``: a score with its 95% interval (``-`` for no score; the
    score alone for an old run folder without intervals)."""
    if not is_number(value):
        return "-"
    ci = as_interval(interval)
    return f"{value:.3f}" + (f" [{ci.low:.3f}, {ci.high:.3f}]" if ci is not None else "")


def format_interval(interval: Any) -> str:
    """``[0.420, 0.660]``; ``-`` when there is none."""
    ci = as_interval(interval)
    return "-" if ci is None else f"[{ci.low:.3f}, {ci.high:.3f}]"


def format_gain(gain: Any) -> str:
    """A paired difference: ``+0.120 [+0.040, +0.200]``, or ``... (within noise)`` when its
    interval includes 0, ``+0.000 (no example differs)`` when the two programs scored the same
    on every example (the same program, most often); ``-`` when there is none."""
    ci = as_interval(gain)
    if ci is None:
        return "-"
    if ci.low == ci.high == 0:
        return "+0.000 (no example differs)"
    return ci.format(signed=True) + (" (within noise)" if not ci.excludes_zero else "")


def format_reference(reference: Any) -> str:
    """A no-LM baseline as the bench table shows it, per metric its score and the program's
    paired gain: ``retrieval_recall 0.908: -0.030 [-0.080, +0.020] (within noise)``."""
    if not isinstance(reference, Mapping) or not isinstance(reference.get("metrics"), Mapping):
        return "-"
    parts = [f"{name} {m['reference']:.3f}: {format_gain(m.get('gain'))}"
             for name, m in reference["metrics"].items()
             if isinstance(m, Mapping) and is_number(m.get("reference"))]
    return "; ".join(parts) or "-"


def as_interval(value: Any) -> Interval | None:
    """An :class:`Interval`, or its JSON form; None for anything else."""
    return value if isinstance(value, Interval) else Interval.from_json(value)


# -- a bench's table ---------------------------------------------------------------------------

BENCH_COLUMNS = (  # a bench's table, in results.md and on its report page
    ("task", "task"), ("optimizer", "label"), ("model", "model"), ("seed", "seed"),
    ("test", "test_score"), ("test 95% CI", "test_interval"),
    ("vs vanilla (paired 95% CI)", "test_gain"), ("other test metrics", "test_metrics"),
    ("no-LM baseline, and program - baseline (paired 95% CI)", "reference"),
    ("val", "val_score"),
    ("LM calls", "lm_calls"), ("backend calls", "backend_calls"), ("tokens", "tokens"),
    ("train s", "train_s"), ("wall s", "wall_s"), ("status", "status"),
)


TEXT_COLUMNS = frozenset({"task", "label", "model", "status", "test_metrics", "test_gain",
                          "reference"})
"""Bench columns that are left-aligned."""


_OPTIONAL_COLUMNS = frozenset({"test_metrics", "test_interval", "test_gain", "reference"})


def columns_in_use(
    columns: Sequence[tuple[str, str]], records: Sequence[Mapping[str, Any]]
) -> list[tuple[str, str]]:
    """The bench columns to show: "other test metrics" and the intervals only where some
    cell has them (an old bench folder has none)."""
    return [(title, key) for title, key in columns
            if key not in _OPTIONAL_COLUMNS or any(r.get(key) for r in records)]


def seed_spread(records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per task, optimizer entry and model run over two or more seeds: the spread of the test
    score over those seeds (finished cells with a test score) and the mean paired gain."""
    from cotune.evaluate.stats import spread

    groups: dict[tuple[str, str, str], list[Mapping[str, Any]]] = {}
    for r in records:
        if is_number(r.get("test_score")):
            key = (str(r.get("task")), str(r.get("label")), str(r.get("model")))
            groups.setdefault(key, []).append(r)
    out = []
    for (task, label, model), rows in groups.items():
        if len({r.get("seed") for r in rows}) < 2:
            continue
        gains = [g["estimate"] for r in rows if isinstance(g := r.get("test_gain"), Mapping)
                 and is_number(g.get("estimate"))]
        out.append({"task": task, "label": label, "model": model,
                    "seeds": sorted(r.get("seed") for r in rows),
                    **spread([r["test_score"] for r in rows]),
                    "gain_mean": sum(gains) / len(gains) if gains else None})
    return out


def format_value(key: str, value: Any) -> str:
    """A bench record's value as the tables (Markdown and HTML) show it."""
    if value is None:
        return "-"
    if key == "task" and isinstance(value, str) and value.endswith(".py"):
        return Path(value).stem
    if key == "test_metrics" and isinstance(value, Mapping):
        return format_metrics(value) or "-"
    if key.endswith("_interval") and isinstance(value, Mapping):
        return format_interval(value)
    if key == "test_gain":
        return format_gain(value)
    if key == "reference":
        return format_reference(value)
    if key == "gain_mean" and is_number(value):
        return f"{value:+.3f}"
    if key.endswith("_score") and is_number(value):
        return f"{value:.3f}"
    if key.endswith("_s") and is_number(value):
        return f"{value:.1f}"
    return str(value)


# -- small pieces ------------------------------------------------------------------------------


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def score(value: Any) -> str:
    """``0.540``; ``-`` for no score."""
    return f"{value:.3f}" if is_number(value) else "-"


def num(value: Any) -> str:
    return str(value) if is_number(value) else "-"


def seconds(value: Any) -> str:
    return f"{value:.1f}" if is_number(value) else "-"


def fmt(value: float) -> str:
    """A number on a plot: ``12``, ``0.667``."""
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.3g}"


def clip(value: Any, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
