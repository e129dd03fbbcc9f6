"""SVG plots drawn here (no plotting library, nothing fetched): line and point plots with
axes, ticks and a legend, horizontal bar charts, and the lineage graph of an evolutionary
search."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cotune.runs.formatting import clip, fmt, is_number
from cotune.runs.html import esc
from cotune.runs.view import Lineage, LineageNode

TRIAL_COLOR = "#8c959f"
EVAL_COLOR = "#0969da"
BEST_COLOR = "#cf222e"
PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#bf3989",
           "#6e7781")


@dataclass
class Series:
    label: str
    points: list[tuple[float, float]]
    color: str
    kind: str = "points"
    """points (dots), line (dots joined), step (a best-so-far staircase), ring (a marker)."""


@dataclass(frozen=True)
class Frame:
    """Maps data coordinates into the plot area of an SVG of ``width`` x ``height``."""

    x_ticks: list[float]
    y_ticks: list[float]
    width: int = 1040
    height: int = 360
    left: int = 64
    right: int = 20
    top: int = 44
    bottom: int = 52

    def x(self, value: float) -> float:
        lo, hi = self.x_ticks[0], self.x_ticks[-1]
        return self.left + (value - lo) / (hi - lo) * (self.width - self.left - self.right)

    def y(self, value: float) -> float:
        lo, hi = self.y_ticks[0], self.y_ticks[-1]
        return self.height - self.bottom - (value - lo) / (hi - lo) * (
            self.height - self.top - self.bottom)


def line_plot(series: Sequence[Series], *, x_label: str, y_label: str, title: str,
              y_from_zero: bool = True) -> str:
    """An SVG plot with axes, ticks, grid, axis labels and a legend."""
    xs = [x for s in series for x, _ in s.points]
    ys = [y for s in series for _, y in s.points]
    y_lo = 0.0 if y_from_zero and min(ys) >= 0 else min(ys)
    y_hi = 1.0 if y_from_zero and min(ys) >= 0 and max(ys) <= 1 else max(ys)
    frame = Frame(nice_ticks(min(0.0, min(xs)), max(xs), integer=True), nice_ticks(y_lo, y_hi))
    parts = [_axes(frame, x_label, y_label)]
    parts += [_draw(frame, s) for s in series]
    parts.append(_legend(series, frame))
    return _svg(frame.width, frame.height, title, parts)


def _axes(frame: Frame, x_label: str, y_label: str) -> str:
    f = frame
    x0, x1 = f.left, f.width - f.right
    y0, y1 = f.height - f.bottom, f.top
    out = []
    for t in f.y_ticks:
        y = f.y(t)
        out.append(f'<line class="grid" x1="{x0}" y1="{y:.1f}" x2="{x1}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="{x0 - 8}" y="{y + 4:.1f}" text-anchor="end">'
                   f"{_tick(t)}</text>")
    for t in f.x_ticks:
        x = f.x(t)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{y0}" x2="{x:.1f}" y2="{y1}"/>'
                   f'<text class="tick" x="{x:.1f}" y="{y0 + 18}" text-anchor="middle">'
                   f"{_tick(t)}</text>")
    out.append(f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x1}" y2="{y0}"/>'
               f'<line class="axis" x1="{x0}" y1="{y0}" x2="{x0}" y2="{y1}"/>')
    out.append(f'<text class="label" x="{(x0 + x1) / 2:.1f}" y="{f.height - 10}" '
               f'text-anchor="middle">{esc(x_label)}</text>')
    cy = (y0 + y1) / 2
    out.append(f'<text class="label" x="16" y="{cy:.1f}" text-anchor="middle" '
               f'transform="rotate(-90 16 {cy:.1f})">{esc(y_label)}</text>')
    return "".join(out)


def _draw(frame: Frame, s: Series) -> str:
    pts = [(frame.x(x), frame.y(y), x, y) for x, y in s.points]
    tip = esc(s.label)
    if s.kind == "step":
        path = [f"M{pts[0][0]:.1f},{pts[0][1]:.1f}"]
        for px, py, _, _ in pts[1:]:
            path.append(f"H{px:.1f}V{py:.1f}")
        return (f'<path d="{"".join(path)}" fill="none" stroke="{s.color}" stroke-width="2">'
                f"<title>{tip}</title></path>")
    marks = []
    if s.kind == "line" and len(pts) > 1:
        line = " ".join(f"{px:.1f},{py:.1f}" for px, py, _, _ in pts)
        marks.append(f'<polyline points="{line}" fill="none" stroke="{s.color}" '
                     'stroke-width="1.5"/>')
    radius = {"points": 4.5, "line": 2.5, "ring": 9}.get(s.kind, 4)
    fill = "none" if s.kind == "ring" else s.color
    opacity = ' fill-opacity="0.6"' if s.kind == "points" else ""
    for px, py, x, y in pts:
        marks.append(f'<circle cx="{px:.1f}" cy="{py:.1f}" r="{radius}" fill="{fill}"'
                     f'{opacity} stroke="{s.color}" stroke-width="{2 if fill == "none" else 1}">'
                     f"<title>{tip}: {fmt(y)} at {fmt(x)}</title></circle>")
    return "".join(marks)


def _legend(series: Sequence[Series], frame: Frame) -> str:
    x, out = frame.left, []
    for s in series:
        fill = "none" if s.kind == "ring" else s.color
        swatch = (f'<line x1="{x}" y1="18" x2="{x + 16}" y2="18" stroke="{s.color}" '
                  'stroke-width="2"/>' if s.kind in ("step", "line") else
                  f'<circle cx="{x + 8}" cy="18" r="5" fill="{fill}" stroke="{s.color}" '
                  'stroke-width="2"/>')
        out.append(f'{swatch}<text class="legend" x="{x + 22}" y="22">{esc(s.label)}</text>')
        x += 34 + 7 * len(s.label)
    return "".join(out)


def bar_chart(bars: Sequence[tuple[str, float | None, str]], *, x_label: str,
              title: str) -> str:
    """Horizontal bars, one per ``(label, value, group)``; a group shares a colour; a missing
    value is written out instead of drawn."""
    groups = list(dict.fromkeys(group for _, _, group in bars))
    values = [v for _, v, _ in bars if isinstance(v, (int, float))]
    hi = 1.0 if not values or (min(values) >= 0 and max(values) <= 1) else max(values)
    frame = Frame(nice_ticks(0.0, hi), [0.0, 1.0], width=1040, left=420, right=60, top=16,
                  bottom=48, height=16 + 48 + 26 * len(bars))
    out = []
    y_axis = frame.height - frame.bottom
    for t in frame.x_ticks:
        x = frame.x(t)
        out.append(f'<line class="grid" x1="{x:.1f}" y1="{frame.top}" x2="{x:.1f}" '
                   f'y2="{y_axis}"/><text class="tick" x="{x:.1f}" y="{y_axis + 18}" '
                   f'text-anchor="middle">{_tick(t)}</text>')
    for i, (label, value, group) in enumerate(bars):
        y = frame.top + 26 * i + 4
        out.append(f'<text class="tick" x="{frame.left - 8}" y="{y + 14}" text-anchor="end">'
                   f"{esc(clip(label, 64))}</text>")
        if isinstance(value, (int, float)):
            color = PALETTE[groups.index(group) % len(PALETTE)]
            width = max(frame.x(value) - frame.left, 1.0)
            out.append(f'<rect x="{frame.left}" y="{y}" width="{width:.1f}" height="18" '
                       f'fill="{color}"><title>{esc(label)}: {fmt(value)}</title></rect>'
                       f'<text class="tick" x="{frame.left + width + 6:.1f}" y="{y + 14}">'
                       f"{fmt(value)}</text>")
        else:
            out.append(f'<text class="tick missing" x="{frame.left + 6}" y="{y + 14}">'
                       "no test score</text>")
    out.append(f'<line class="axis" x1="{frame.left}" y1="{y_axis}" '
               f'x2="{frame.width - frame.right}" y2="{y_axis}"/>'
               f'<line class="axis" x1="{frame.left}" y1="{frame.top}" x2="{frame.left}" '
               f'y2="{y_axis}"/><text class="label" x="{(frame.left + frame.width) / 2:.1f}" '
               f'y="{frame.height - 10}" text-anchor="middle">{esc(x_label)}</text>')
    return _svg(frame.width, frame.height, title, out)


def nice_ticks(lo: float, hi: float, count: int = 5, *, integer: bool = False) -> list[float]:
    """Round tick values (1, 2, 2.5 or 5 times a power of ten; no 2.5 and no fractions for
    ``integer`` data such as LM calls or steps) covering ``[lo, hi]``."""
    if not (math.isfinite(lo) and math.isfinite(hi)):
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5 if lo else 0.0, hi + 0.5 if hi else 1.0
    raw = (hi - lo) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    multiples = (1, 2, 5, 10) if integer else (1, 2, 2.5, 5, 10)
    step = next(m * magnitude for m in multiples if m * magnitude >= raw)
    step = max(step, 1) if integer else step
    start = math.floor(lo / step + 1e-9) * step
    ticks = [start]
    while ticks[-1] < hi - 1e-9 * step:
        ticks.append(start + len(ticks) * step)
    return [round(t, 10) for t in ticks]


def _svg(width: int, height: int, title: str, parts: Iterable[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" role="img" '
            f'viewBox="0 0 {width} {height}" width="{width}" height="{height}">'
            f"<title>{esc(title)}</title>{''.join(parts)}</svg>")


def _tick(value: float) -> str:
    return f"{round(value, 6):.7g}"


def points(pairs: Iterable[tuple[Any, Any]]) -> list[tuple[float, float]]:
    """The pairs that are both finite numbers (a missing score is not drawn)."""
    return [(float(x), float(y)) for x, y in pairs
            if is_number(x) and is_number(y) and math.isfinite(x) and math.isfinite(y)]


def best_so_far(evals: Sequence[tuple[float, float]],
                 others: Sequence[tuple[float, float]] = ()) -> list[tuple[float, float]]:
    """The staircase of the best full evaluation so far, drawn up to the last point plotted."""
    best: list[tuple[float, float]] = []
    for x, y in sorted(evals, key=lambda p: p[0]):
        if not best or y > best[-1][1]:
            best.append((x, y))
    last_x = max(x for x, _ in [*evals, *others]) if evals else None
    if best and last_x is not None and last_x > best[-1][0]:
        best.append((last_x, best[-1][1]))
    return best


# -- the lineage of an evolutionary search -----------------------------------------------------

NODE_W, NODE_H, COL_W, ROW_H = 190, 38, 232, 48
ACCEPTED_COLOR, REJECTED_COLOR, FRONTIER_COLOR = "#1f2328", "#8c959f", "#1a7f37"


def lineage_graph(lineage: Lineage, *, title: str = "Lineage") -> str:
    """The search tree: one column per generation from the seed; a box per kept candidate
    (its validation score; a green border when it is on the Pareto frontier, a red one for the
    winner) and a dashed box per child that was tried and rejected (its mini-batch score);
    solid edges from parent to kept child, dashed ones to rejected children."""
    parents: dict[str, list[str]] = {}
    for edge in lineage.edges:
        parents.setdefault(edge.child, []).append(edge.parent)
    columns: dict[int, list[LineageNode]] = {}
    for node in lineage.nodes:
        columns.setdefault(node.depth, []).append(node)
    row: dict[str, int] = {}

    def parent_row(n: LineageNode) -> int:
        return min((row.get(p, 0) for p in parents.get(n.id, [])), default=0)

    for depth in sorted(columns):  # children next to their parents, in the order tried
        columns[depth].sort(key=lambda n: (parent_row(n), -1 if n.iteration is None
                                           else n.iteration, not n.accepted, n.id))
        free = 0
        for n in columns[depth]:  # level with the parent where the column has room
            row[n.id] = max(free, parent_row(n))
            free = row[n.id] + 1
    where = {n.id: (24 + n.depth * COL_W, 44 + row[n.id] * ROW_H) for n in lineage.nodes}
    width = 24 + (max(columns, default=0) + 1) * COL_W
    height = 44 + (max(row.values(), default=0) + 1) * ROW_H + 8
    parts = [_lineage_legend()]
    for edge in lineage.edges:
        if edge.parent in where and edge.child in where:
            parts.append(_edge(where[edge.parent], where[edge.child], edge.accepted,
                               f"{edge.parent}->{edge.child}"))
    parts += [_node(node, *where[node.id]) for node in lineage.nodes]
    return _svg(max(width, 900), height, title, parts)


def _edge(a: tuple[float, float], b: tuple[float, float], accepted: bool, name: str) -> str:
    x1, y1 = a[0] + NODE_W, a[1] + NODE_H / 2
    x2, y2 = b[0], b[1] + NODE_H / 2
    mid = (x1 + x2) / 2
    color = ACCEPTED_COLOR if accepted else REJECTED_COLOR
    dash = "" if accepted else ' stroke-dasharray="4 3"'
    kind = "accepted" if accepted else "rejected"
    return (f'<path class="edge {kind}" data-edge="{esc(name)}" d="M{x1:.1f},{y1:.1f} '
            f'C{mid:.1f},{y1:.1f} {mid:.1f},{y2:.1f} {x2:.1f},{y2:.1f}" fill="none" '
            f'stroke="{color}" stroke-width="{1.6 if accepted else 1}"{dash}/>')


def _node(node: LineageNode, x: float, y: float) -> str:
    if node.accepted:
        classes = ["node", "candidate"] + (["frontier"] if node.on_frontier else []) + \
            (["best"] if node.best else [])
        stroke = BEST_COLOR if node.best else FRONTIER_COLOR if node.on_frontier \
            else ACCEPTED_COLOR
        width = 2.5 if node.best or node.on_frontier else 1
        head = f"#{node.candidate} {node.kind}" + (" ★" if node.on_frontier else "")
        line = f"val {_score(node.score)}"
        fill, dash = ("#fff8c5" if node.best else "#ffffff"), ""
    else:
        classes, stroke, width = ["node", "rejected"], REJECTED_COLOR, 1
        head = f"it {node.iteration} {node.kind}"
        line = f"mini-batch {_score(node.minibatch_score)} (rejected)"
        fill, dash = "#f6f8fa", ' stroke-dasharray="4 3"'
    tip = [head, line] + ([node.note] if node.note else [])
    return (f'<g class="{" ".join(classes)}" data-node="{esc(node.id)}">'
            f"<title>{esc(' · '.join(tip))}</title>"
            f'<rect x="{x:.1f}" y="{y:.1f}" width="{NODE_W}" height="{NODE_H}" rx="5" '
            f'fill="{fill}" stroke="{stroke}" stroke-width="{width}"{dash}/>'
            f'<text class="tick" x="{x + 8:.1f}" y="{y + 15:.1f}">{esc(clip(head, 26))}</text>'
            f'<text class="tick" x="{x + 8:.1f}" y="{y + 30:.1f}">{esc(line)}</text></g>')


def _lineage_legend() -> str:
    items = [("kept candidate (validation score)", ACCEPTED_COLOR, ""),
             ("on the Pareto frontier ★", FRONTIER_COLOR, ""),
             ("the winner", BEST_COLOR, ""),
             ("rejected child (mini-batch score)", REJECTED_COLOR, ' stroke-dasharray="4 3"')]
    x, out = 24, []
    for label, color, dash in items:
        out.append(f'<rect x="{x}" y="10" width="16" height="12" rx="2" fill="none" '
                   f'stroke="{color}" stroke-width="2"{dash}/>'
                   f'<text class="legend" x="{x + 22}" y="21">{esc(label)}</text>')
        x += 34 + 7 * len(label)
    return "".join(out)


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"
