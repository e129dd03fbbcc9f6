"""What a bench will cost before it runs (``cotune bench --plan``): each cell's state in the
bench folder and its projected LM calls, computed without starting an LM.

A grid of multi-hop cells on a small CPU runs for tens of hours, so the plan says how many LM
calls are left and, once cells of the same bench have finished, about how long that is at the
rate those cells ran.  The projection is the optimizer's own (:meth:`Optimizer.estimate_cost`,
the figure a run prints when it starts) plus what every run adds around it: re-scoring the
finalists on the rescore examples and the held-out test passes of the final and the
unoptimized program.  Calls answered from an LM cache count as calls here: the projection is
of calls, the cache decides how many reach the LM.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotune.optimize.reporting import CostEstimate
from cotune.runs.bench import CELLS, VANILLA, BenchSpec, Cell, existing_cell
from cotune.runs.folder import RunFolder, RunFolderError, error_text
from cotune.runs.optimize import calls_per_example, prepare_run, run_config
from cotune.runs.view import RunView

FINISHED, STARTED, NEW, REFUSED, BROKEN = "finished", "started", "new", "refused", "broken"
"""A cell's state: done; a run folder to resume; nothing yet; a folder made with other
settings (the bench refuses it); a cell that cannot be planned (an unknown task, bad data)."""


@dataclass(frozen=True)
class CellPlan:
    """One cell: what is left of it and what it has cost so far."""

    cell: str
    state: str
    calls: int = 0
    """Projected LM calls of the whole run (0 for a cell that cannot be planned)."""
    breakdown: dict[str, int] = field(default_factory=dict)
    bound: str = "at most"
    """How to read ``calls``: ``exact``, ``at most`` (an upper bound) or ``about``."""
    calls_made: int | None = None
    """A finished cell's LM calls, from its result."""
    seconds: float | None = None
    """Seconds the cell's attempts have taken so far (finished or started)."""
    note: str | None = None
    """Why a cell is refused or cannot be planned."""

    @property
    def left(self) -> bool:
        return self.state in (STARTED, NEW)


@dataclass(frozen=True)
class BenchPlan:
    cells: list[CellPlan]

    @property
    def calls_left(self) -> int:
        """Projected LM calls of the cells still to run (a started cell counts whole: the
        cache answers what it already made)."""
        return sum(c.calls for c in self.cells if c.left)

    @property
    def seconds_per_call(self) -> float | None:
        """Wall seconds per LM call over the finished cells, or None before any finished."""
        done = [c for c in self.cells
                if c.state == FINISHED and c.calls_made and c.seconds is not None]
        calls = sum(c.calls_made or 0 for c in done)
        return sum(c.seconds or 0.0 for c in done) / calls if calls else None

    def summary(self) -> str:
        counts = {s: sum(c.state == s for c in self.cells)
                  for s in (FINISHED, STARTED, NEW, REFUSED, BROKEN)}
        told = ", ".join(f"{n} {s}" for s, n in counts.items() if n)
        text = (f"{len(self.cells)} cells ({told}); projected LM calls of the cells left: at "
                f"most {self.calls_left:,}")
        rate = self.seconds_per_call
        if rate is not None and self.calls_left:
            hours = rate * self.calls_left / 3600
            text += (f", about {hours:.1f} h at the finished cells' {rate:.2f} s per call "
                     "(a rough guide: calls differ in length from task to task)")
        return text


def plan_bench(spec: BenchSpec, bench_dir: str | Path) -> BenchPlan:
    """Every cell of ``spec``, as a bench run in ``bench_dir`` would meet it."""
    bench_dir = Path(bench_dir)
    return BenchPlan([plan_cell(spec, cell, bench_dir) for cell in spec.cells()])


def plan_cell(spec: BenchSpec, cell: Cell, bench_dir: Path) -> CellPlan:
    folder = RunFolder(bench_dir / CELLS / cell.name)
    run_spec = spec.run_spec(cell, folder.path)
    try:
        task, splits, rescore_set, optimizer = prepare_run(run_spec)
        program = task.make_program()
        estimate = optimizer.estimate_cost(program, splits.train, splits.val or None)
        per_example = calls_per_example(program)
        # the final program's test pass, and the unoptimized one's unless it is the same
        test_passes = 1 if cell.optimizer.name == VANILLA else 2
        extra = {"rescore (at most)": (optimizer.rescore_top + 1) * len(rescore_set)
                 * per_example if optimizer.rescore_top and rescore_set else 0,
                 "test": test_passes * len(splits.test) * per_example}
        state, made, seconds, note = _state(
            folder, run_config(run_spec, task, splits, optimizer, None))
    except Exception as exc:  # the bench would record this cell as failed: say so, go on
        return CellPlan(cell.name, BROKEN, note=error_text(exc))
    return CellPlan(cell.name, state, *_add(estimate, extra), calls_made=made,
                    seconds=seconds, note=note)


def _add(estimate: CostEstimate, extra: dict[str, int]) -> tuple[int, dict[str, int], str]:
    breakdown = dict(estimate.breakdown or {"optimization": estimate.lm_calls})
    breakdown.update({k: v for k, v in extra.items() if v})
    bound = "about" if estimate.approximate else "exact" if estimate.exact else "at most"
    if bound == "exact" and extra.get("rescore (at most)"):
        bound = "at most"
    return estimate.lm_calls + sum(extra.values()), breakdown, bound


def _state(folder: RunFolder, planned: dict[str, Any]
           ) -> tuple[str, int | None, float | None, str | None]:
    """(state, LM calls made, seconds so far, why refused) of a cell's run folder, judged as
    the bench judges it (:func:`existing_cell`) against the config the cell would write."""
    if not folder.exists():
        return NEW, None, None, None
    try:
        changed, done = existing_cell(folder, planned)
        seconds = folder.total_seconds()
    except RunFolderError as exc:
        return REFUSED, None, None, str(exc)
    if changed:
        return REFUSED, None, seconds, "made with other settings or data: " + "; ".join(
            changed[:3])
    if done:
        result = RunView.load(folder.path).result
        return FINISHED, result.total.calls if result else None, seconds, None
    return STARTED, None, seconds, None


def plan_table(plan: BenchPlan) -> list[Sequence[str]]:
    """The plan as rows of text: cell, state, projected calls, their parts, time so far."""
    rows: list[Sequence[str]] = []
    for c in plan.cells:
        if c.state == BROKEN:
            rows.append((c.cell, c.state, "-", c.note or "", "-"))
            continue
        calls = f"{c.calls:,}" if c.bound == "exact" else f"{c.bound} {c.calls:,}"
        if c.calls_made is not None:
            calls += f" (made {c.calls_made:,})"
        parts = ", ".join(f"{k} {v:,}" for k, v in c.breakdown.items())
        if c.note:
            parts = f"{c.note}. {parts}"
        seconds = "-" if c.seconds is None else f"{c.seconds:,.0f} s"
        rows.append((c.cell, c.state, calls, parts, seconds))
    return rows
