"""A bench grid on a Ray cluster (optional extra ``cotune[ray]``): one Ray task per cell.

Each cell runs :func:`~cotune.runs.bench.run_cell` in a Ray worker, with the CPUs it declares
(``cpus_per_cell``, default the bench's ``threads``) and, for cells that fine-tune
(``finetune``, ``bettertogether`` with a ``w`` step), ``gpus_per_cell`` GPUs.  The bench
folder must be on storage every node sees (one machine, NFS, ...): cells write their run
folders there exactly as a sequential bench does, so a bench interrupted anywhere resumes cell
by cell (finished cells are read back, unfinished ones resume from their journal), whether
the rerun is sequential or on Ray.  A cell that fails, even by losing its worker, is recorded
as failed and the others go on.  ``results.json`` and ``results.md`` are rewritten as each
cell ends.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cotune.optimize.better_together import BetterTogether
from cotune.optimize.finetune import BootstrapFinetune
from cotune.optimize.reporting import LogReporter, Reporter
from cotune.runs.bench import (
    CELLS,
    SPEC_FILE,
    BenchSpec,
    Cell,
    CellDone,
    cell_record,
    run_cell,
    sort_records,
    write_results,
)
from cotune.runs.folder import RunFolder, error_text, write_atomic

FINETUNING = (BootstrapFinetune.name,)


def run_bench_on_ray(
    spec: BenchSpec,
    bench_dir: str | Path,
    *,
    address: str | None = None,
    cpus_per_cell: float | None = None,
    gpus_per_cell: float = 0,
    reporter: Reporter | None = None,
    on_cell: CellDone | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) every cell of ``spec`` as a Ray task; return the records (as
    :func:`~cotune.runs.bench.run_bench` does).  ``address``: the cluster (``"auto"``,
    ``"HOST:PORT"``; ``"local"`` or None: a local one); unused when this process is already
    connected."""
    ray = _ray()
    if not ray.is_initialized():
        ray.init(address=None if address in (None, "local") else address,
                 include_dashboard=False, log_to_driver=False)
    bench_dir = Path(bench_dir).resolve()
    cells = spec.cells()
    write_atomic(bench_dir / SPEC_FILE, json.dumps(spec.to_json(), indent=2, ensure_ascii=False))
    reporter = reporter or LogReporter()
    cpus = spec.threads if cpus_per_cell is None else cpus_per_cell
    task = ray.remote(_cell_task)
    refs: dict[Any, Cell] = {}
    for cell in cells:
        gpus = gpus_per_cell if _fine_tunes(cell) else 0
        ref = task.options(num_cpus=cpus, num_gpus=gpus, max_retries=0,
                           name=f"cotune-cell-{cell.name}").remote(spec, cell, str(bench_dir))
        refs[ref] = cell
    reporter.message(f"{len(cells)} cells submitted to Ray ({cpus:g} CPUs each)")
    records: list[dict[str, Any]] = []
    try:
        while refs:
            (ref,), _ = ray.wait(list(refs), num_returns=1)
            cell = refs.pop(ref)
            try:
                record = ray.get(ref)
            except ray.exceptions.RayError as exc:  # the worker died, or Ray could not run it
                folder = RunFolder(bench_dir / CELLS / cell.name)
                record = cell_record(cell, folder, bench_dir, state="failed",
                                     error=f"the Ray task failed: {error_text(exc)[:2000]}")
            records.append(record)
            write_results(bench_dir, records)
            if on_cell is not None:
                on_cell(record)
    except KeyboardInterrupt:
        for ref in refs:
            ray.cancel(ref, force=True)
        raise
    return sort_records(records)


def _cell_task(spec: BenchSpec, cell: Cell, bench_dir: str) -> dict[str, Any]:
    """A Ray task: one cell, run in a worker (an interruption there is the cell's record)."""
    return run_cell(spec, cell, Path(bench_dir), LogReporter())


def _fine_tunes(cell: Cell) -> bool:
    optimizer = cell.optimizer
    if optimizer.name in FINETUNING:
        return True
    return optimizer.name == BetterTogether.name and "w" in (optimizer.strategy or "p -> w")


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:
        raise ImportError("a bench on Ray needs ray: pip install 'cotune[ray]'") from exc
    return ray
