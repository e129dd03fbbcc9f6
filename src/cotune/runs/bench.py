"""Benchmarks: a grid of tasks x optimizers x models x seeds, one resumable run folder per cell.

::

    BENCH/
      bench.json        the grid as it was run (``cotune bench --out BENCH`` reruns it)
      results.json      one record per cell: scores, LM usage, training and wall time, status
      results.md        the same as a Markdown table, sorted by task then optimizer (and, when
                        a cell ran over several seeds, the spread of its test score over them)
      cells/NAME/       each cell's run folder (see :mod:`cotune.runs.folder`)

Every cell goes through :func:`run_optimization`, so a rerun of the same bench skips the
finished cells and resumes an interrupted one from its journal.  A failing cell is recorded with
its error and the others still run; Ctrl-C stops the bench (after writing what is done).
The ``vanilla`` pseudo-optimizer scores the unoptimized program: the baseline row of the table.
Every test score carries its 95% bootstrap interval, and every cell its paired difference to
the unoptimized program on the same test examples (what the vanilla cell scores; every run
evaluates it, journaled), marked "within noise" when that interval includes 0.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cotune.core.validate import (
    check_choice,
    check_int,
    check_mapping,
    check_number,
    check_str,
)
from cotune.evaluate.stats import Interval
from cotune.lm.models import DEFAULT_MODEL
from cotune.lm.redact import is_redacted_url
from cotune.lm.types import LMError, is_infrastructure_error
from cotune.optimize.better_together import ARROW
from cotune.optimize.registry import get_optimizer, registered_optimizers
from cotune.optimize.reporting import LogReporter, Reporter
from cotune.optimize.vanilla import Vanilla
from cotune.runs.folder import (
    RESULT,
    RunFolder,
    RunFolderError,
    config_differences,
    error_text,
    write_atomic,
)
from cotune.runs.formatting import (
    BENCH_COLUMNS,
    TEXT_COLUMNS,
    columns_in_use,
    format_value,
    seed_spread,
)
from cotune.runs.optimize import RunSpec, planned_config, run_optimization
from cotune.runs.view import ReferenceComparison, RunView, Usage

SPEC_FILE = "bench.json"
RESULTS_JSON = "results.json"
RESULTS_MD = "results.md"
CELLS = "cells"
VANILLA = Vanilla.name
CACHE_MODES = ("cell", "shared", "off")


# -- the grid ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskEntry:
    """A task and the split sizes to cut it to (None: the whole split); ``rescore_size``: the
    validation examples after the first ``val_size`` that finalists are re-scored on."""

    name: str
    train_size: int | None = None
    val_size: int | None = None
    test_size: int | None = None
    rescore_size: int | None = None

    @property
    def label(self) -> str:
        """The registry name, or a task file's stem."""
        return Path(self.name).stem if self.name.endswith(".py") else self.name


@dataclass(frozen=True)
class OptimizerEntry:
    """An optimizer of the grid: ``NAME[:ARG]`` where ARG is what the registry says the
    optimizer takes: bettertogether's strategy (``bettertogether:p->w``) or a preset
    (``mipro:light``).  ``tag`` names the entry in
    tables and folders where the grid has the same optimizer twice with other options."""

    name: str
    strategy: str | None = None
    preset: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    tag: str | None = None

    @property
    def label(self) -> str:
        if self.tag:
            return self.tag
        arg = self.strategy or self.preset
        return f"{self.name}:{arg.replace(' ', '')}" if arg else self.name

    def run_options(self) -> dict[str, Any]:
        options = dict(self.options)
        if self.strategy is not None:
            options["strategy"] = self.strategy
        return options


@dataclass(frozen=True)
class Cell:
    task: TaskEntry
    optimizer: OptimizerEntry
    model: str
    seed: int

    @property
    def name(self) -> str:
        """The cell's folder name: readable, and unique within a grid (checked)."""
        model = Path(self.model).stem if self.model.endswith(".gguf") else self.model
        return "-".join(_slug(part) for part in
                        (self.task.label, self.optimizer.label, model, f"seed{self.seed}"))


@dataclass
class BenchSpec:
    """What to run: the grid, and the settings every cell shares (a budget per cell)."""

    tasks: list[TaskEntry]
    optimizers: list[OptimizerEntry]
    models: list[str] = field(default_factory=lambda: [DEFAULT_MODEL])
    seeds: list[int] = field(default_factory=lambda: [0])
    base_url: str | None = None
    n_ctx: int | None = None
    """Context length of the embedded engine (None: the model's default)."""
    max_calls: int | None = None
    max_tokens: int | None = None
    max_seconds: float | None = None
    threads: int = 4
    timeout: float | None = None
    """Seconds per request to ``base_url`` (see :attr:`RunSpec.timeout`)."""
    cache: str = "cell"
    """``cell``: each cell keeps its LM cache in its run folder (independent cells, fair wall
    times); ``shared``: the user's LM cache; ``off``: no cache."""
    mlflow: str | None = None
    """An MLflow tracking URI: every cell that finishes is logged there as one MLflow run."""
    mlflow_experiment: str = "cotune"

    def cells(self) -> list[Cell]:
        cells = [Cell(t, o, m, s) for t in self.tasks for o in self.optimizers
                 for m in self.models for s in self.seeds]
        names = [c.name for c in cells]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"the grid names two cells alike: {', '.join(duplicates)}")
        return cells

    def run_spec(self, cell: Cell, cell_dir: Path) -> RunSpec:
        cache_dir = str(cell_dir) if self.cache == "cell" else None
        return RunSpec(
            task=cell.task.name, optimizer=cell.optimizer.name, model=cell.model,
            base_url=self.base_url, seed=cell.seed, train_size=cell.task.train_size,
            val_size=cell.task.val_size, test_size=cell.task.test_size,
            rescore_size=cell.task.rescore_size, preset=cell.optimizer.preset,
            options=cell.optimizer.run_options(),
            max_calls=self.max_calls, max_tokens=self.max_tokens, max_seconds=self.max_seconds,
            threads=self.threads, cache_dir=cache_dir, use_cache=self.cache != "off",
            timeout=self.timeout, mlflow=self.mlflow, mlflow_experiment=self.mlflow_experiment,
            n_ctx=self.n_ctx,
        )

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["optimizers"] = [
            {("label" if k == "tag" else k): v for k, v in asdict(o).items() if v not in (None, {})}
            for o in self.optimizers
        ]
        data["tasks"] = [{k: v for k, v in asdict(t).items() if v is not None} for t in self.tasks]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> BenchSpec:
        """From a spec file's content (or CLI options): see :func:`load_spec_file`."""
        unknown = set(data) - _SPEC_KEYS
        if unknown:
            raise ValueError(f"unknown bench setting(s) {sorted(unknown)}; known: "
                             f"{', '.join(sorted(_SPEC_KEYS))}")
        sizes = {k: check_int(k, data.get(k), minimum=0, allow_none=True)
                 for k in ("train_size", "val_size", "test_size")}
        tasks = [_task_entry(t, sizes) for t in _as_list(data.get("tasks"), "tasks")]
        optimizers = [_optimizer_entry(o) for o in _as_list(data.get("optimizers"), "optimizers")]
        if not tasks or not optimizers:
            raise ValueError("a bench needs at least one task and one optimizer "
                             "(e.g. --task iris --optimizer vanilla --optimizer mipro)")
        settings = {k: data[k] for k in _SETTINGS if data.get(k) is not None}
        if "models" in settings:
            settings["models"] = [check_str("models[]", m)
                                  for m in _as_list(settings["models"], "models")]
        if "seeds" in settings:
            settings["seeds"] = [check_int("seeds[]", s) for s in _as_list(settings["seeds"],
                                                                           "seeds")]
        for key in ("models", "seeds"):
            if key in settings and not settings[key]:
                raise ValueError(f"{key} must not be empty")
        check_str("base_url", settings.get("base_url"), allow_none=True)
        for key in ("max_calls", "max_tokens"):
            check_int(key, settings.get(key), minimum=0, allow_none=True)
        check_number("max_seconds", settings.get("max_seconds"), minimum=0, allow_none=True)
        check_int("threads", settings.get("threads", 1), minimum=1)
        check_choice("cache", settings.get("cache", "cell"), CACHE_MODES)
        spec = cls(tasks=tasks, optimizers=optimizers, **settings)
        spec.cells()  # two cells named alike is an error of the spec
        return spec


_SETTINGS = ("models", "seeds", "base_url", "max_calls", "max_tokens", "max_seconds", "threads",
             "cache", "timeout", "mlflow", "mlflow_experiment", "n_ctx")
_SPEC_KEYS = {"tasks", "optimizers", "train_size", "val_size", "test_size", *_SETTINGS}


def load_spec_file(path: str | Path) -> dict[str, Any]:
    """A bench spec from JSON or TOML (by extension).  Keys: ``tasks`` (names, or tables with
    ``name``, ``train_size``/``val_size``/``test_size`` and ``rescore_size``), ``optimizers``
    (``NAME[:ARG]``, or tables with ``name``, ``strategy``, ``preset``, ``options`` and a
    ``label``), ``models``, ``seeds``, default split sizes, the per-cell budget
    (``max_calls``, ``max_tokens``, ``max_seconds``), ``threads``, ``base_url``, ``n_ctx`` and
    ``cache``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"bench spec not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        data = _load_toml(text) if path.suffix == ".toml" else json.loads(text)
    except ValueError as exc:  # both decoders' errors are ValueErrors
        raise ValueError(f"{path}: not a valid bench spec ({exc})") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{path}: a bench spec is an object of settings")
    return data


def resolve_spec(
    spec_file: str | Path | None, bench_dir: str | Path, overrides: Mapping[str, Any]
) -> BenchSpec:
    """The bench to run: the spec file, else the ``bench.json`` of an earlier run in
    ``bench_dir`` (so that ``cotune bench --out DIR`` resumes it), with ``overrides`` (CLI
    options; None means not given) on top."""
    data: dict[str, Any] = {}
    previous = Path(bench_dir) / SPEC_FILE
    source: Path | None = None
    if spec_file is not None:
        source = Path(spec_file)
    elif previous.is_file() and not overrides.get("tasks") and not overrides.get("optimizers"):
        source = previous
    if source is not None:
        data = load_spec_file(source)
    data.update({k: v for k, v in overrides.items() if v not in (None, [])})
    if is_redacted_url(data.get("base_url")):
        raise ValueError(f"{source}: base_url {data['base_url']} had credentials, which cotune "
                         "never writes to disk; give --base-url (with them) again")
    try:
        return BenchSpec.from_dict(data)
    except ValueError as exc:
        raise ValueError(f"{source}: {exc}" if source is not None else str(exc)) from None


def _load_toml(text: str) -> Any:
    try:
        import tomllib  # Python 3.11+
    except ImportError:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ValueError("reading TOML needs Python 3.11+ (or tomli); write the spec "
                             "as JSON instead") from None
    return tomllib.loads(text)


def parse_optimizer(text: str) -> OptimizerEntry:
    """``vanilla``, ``mipro:light``, ``bettertogether:p->w`` (spaces optional)."""
    name, _, arg = (part.strip() for part in text.partition(":"))
    takes = get_optimizer(name).arg  # an unknown name: the error names the known ones
    if not arg:
        return OptimizerEntry(name)
    if takes == "strategy":
        return OptimizerEntry(name, strategy=normalize_strategy(arg))
    if takes == "preset":
        return OptimizerEntry(name, preset=arg)
    takers = ", ".join(f"{e.name}:{e.arg.upper()}" for e in registered_optimizers() if e.arg)
    raise ValueError(f"optimizer {name!r} takes no ':{arg}' (only {takers} do)")


def normalize_strategy(strategy: str) -> str:
    """``p->w`` -> ``p -> w``: one spelling per strategy, as BetterTogether records it."""
    return f" {ARROW} ".join(part.strip() for part in strategy.split(ARROW))


def _task_entry(item: Any, sizes: Mapping[str, int | None]) -> TaskEntry:
    if isinstance(item, str):
        return TaskEntry(check_str("tasks[]", item), **sizes)
    if isinstance(item, Mapping) and "name" in item:
        name = check_str("a task's name", item["name"])
        extra = set(item) - {"name", "rescore_size", *sizes}
        if extra:
            raise ValueError(f"task {name!r}: unknown key(s) {sorted(extra)}")
        for key in (*sizes, "rescore_size"):
            check_int(f"task {name!r}: {key}", item.get(key), minimum=0, allow_none=True)
        return TaskEntry(**{**sizes, **item})
    raise ValueError(f"a task is a name or a table with 'name', not {item!r}")


def _optimizer_entry(item: Any) -> OptimizerEntry:
    if isinstance(item, str):
        return parse_optimizer(item)
    if isinstance(item, Mapping) and "name" in item:
        entry = parse_optimizer(check_str("an optimizer's name", item["name"]))
        strategy = item.get("strategy", entry.strategy)
        unknown = set(item) - {"name", "strategy", "preset", "options", "label"}
        if unknown:
            raise ValueError(f"unknown optimizer setting(s) {sorted(unknown)} in {dict(item)!r}; "
                             "known: name, strategy, preset, options, label")
        where = f"optimizer {entry.name!r}"
        check_str(f"{where}: strategy", strategy, allow_none=True)
        check_str(f"{where}: preset", item.get("preset"), allow_none=True)
        check_mapping(f"{where}: options", item.get("options"), allow_none=True)
        label = item.get("label")
        if label is not None and (not isinstance(label, str) or not label.strip()):
            raise ValueError(f"an optimizer's label must be a non-empty string, not {label!r}")
        return OptimizerEntry(
            entry.name, strategy=normalize_strategy(strategy) if strategy else None,
            preset=item.get("preset", entry.preset), options=dict(item.get("options") or {}),
            tag=label.strip() if label else None,
        )
    raise ValueError(f"an optimizer is NAME[:ARG] or a table with 'name', not {item!r}")


def _as_list(value: Any, name: str) -> list[Any]:
    if value is None:
        return []
    if isinstance(value, (str, Mapping)):
        return [value]
    if isinstance(value, (int, float)) and name == "seeds":
        return [value]
    if isinstance(value, Sequence):
        return list(value)
    raise ValueError(f"{name} must be a list, not {value!r}")


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._]+", "-", text).strip("-") or "x"


# -- running -----------------------------------------------------------------------------------

CellDone = Callable[[dict[str, Any]], None]


def run_bench(
    spec: BenchSpec,
    bench_dir: str | Path,
    *,
    reporter: Reporter | None = None,
    on_cell: CellDone | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) every cell of ``spec`` under ``bench_dir``; return the records, also
    written to ``results.json`` and ``results.md`` after every cell."""
    bench_dir = Path(bench_dir)
    cells = spec.cells()
    write_atomic(bench_dir / SPEC_FILE, json.dumps(spec.to_json(), indent=2, ensure_ascii=False))
    reporter = reporter or LogReporter()
    records: list[dict[str, Any]] = []
    for cell in cells:
        record = run_cell(spec, cell, bench_dir, reporter)
        records.append(record)
        write_results(bench_dir, records)
        if on_cell is not None:
            on_cell(record)
        if record["status"] == "interrupted":
            raise KeyboardInterrupt(f"bench interrupted in cell {cell.name}")
    return sort_records(records)


def run_cell(spec: BenchSpec, cell: Cell, bench_dir: Path, reporter: Reporter) -> dict[str, Any]:
    """One cell's record: read back when the cell already finished, else run (or resume)
    it.  Errors become the record's ``error``; an interruption its status.

    A cell folder made with other settings, another task file or other data (the same
    fingerprint as ``cotune optimize`` checks: task and data hashes, optimizer settings, model,
    seed, sizes) is never reused: the cell is refused with what changed."""
    folder = RunFolder(bench_dir / CELLS / cell.name)
    run_spec = spec.run_spec(cell, folder.path)
    started = time.monotonic()
    try:
        if folder.exists():
            changed, done = existing_cell(folder, planned_config(run_spec))
            if changed:
                raise RunFolderError(
                    f"{folder.path} holds this cell's run made with other settings or data ("
                    + "; ".join(changed[:5]) + "): remove that folder to rerun the cell, or "
                    "give the bench another --out")
            if done:
                return cell_record(cell, folder, bench_dir, skipped=True)
        run_optimization(run_spec, folder.path, reporter=reporter)
    except KeyboardInterrupt:
        return cell_record(cell, folder, bench_dir, error="interrupted", state="interrupted",
                           wall_s=_seconds_so_far(folder, started))
    except Exception as exc:  # one failing cell must not stop the bench
        return cell_record(cell, folder, bench_dir, error=error_text(exc), state="failed",
                           wall_s=_seconds_so_far(folder, started),
                           lm_unavailable=isinstance(exc, LMError) and is_infrastructure_error(exc))
    return cell_record(cell, folder, bench_dir)


def _seconds_so_far(folder: RunFolder, started: float) -> float:
    """A cell that did not finish: its attempts' seconds as its folder recorded them, or the
    seconds since ``started`` where the run never got as far as its folder's status."""
    try:
        if folder.exists():
            return folder.total_seconds()
    except RunFolderError:  # a corrupt status.json: the error this record carries says so
        pass
    return time.monotonic() - started


def existing_cell(folder: RunFolder, planned: Mapping[str, Any]) -> tuple[list[str], bool]:
    """What a bench makes of a cell folder that exists, given the config the cell would write
    now: (what changed from the saved one: the cell is refused when anything did; whether it
    finished under the same budget: then it is kept, else it is resumed)."""
    saved = folder.config()
    changed = config_differences(saved, planned)
    status = RunView.load(folder.path).status
    done = (not changed and status.get("state") == "finished" and folder.file(RESULT).is_file()
            and saved.get("budget") == planned.get("budget"))
    return changed, done


# -- records -----------------------------------------------------------------------------------


def cell_record(
    cell: Cell,
    folder: RunFolder,
    bench_dir: Path,
    *,
    skipped: bool = False,
    error: str | None = None,
    state: str | None = None,
    wall_s: float | None = None,
    lm_unavailable: bool = False,
) -> dict[str, Any]:
    """What the results table shows of a cell, read from its run folder.  ``lm_unavailable``:
    the cell failed because its LM did (a rerun once the LM is back resumes it)."""
    view = RunView.load(folder.path)
    result = view.result if error is None else None
    total = result.total if result is not None else Usage()
    status = view.status
    return {
        "cell": cell.name,
        "task": cell.task.name,
        "optimizer": cell.optimizer.name,
        "strategy": cell.optimizer.strategy,
        "preset": cell.optimizer.preset,
        "label": cell.optimizer.label,
        "model": cell.model,
        "seed": cell.seed,
        "status": state or status.get("state", "unknown"),
        "error": error or status.get("error"),
        "lm_unavailable": lm_unavailable,
        "test_score": result.test_score if result else None,
        "test_interval": _json(result.test_interval) if result else None,
        "test_gain": _gain_json(result.test_gain) if result else None,
        "test_metrics": (result.test_metrics or None) if result else None,
        "reference": _reference_json(result.reference) if result else None,
        "val_score": result.val_score if result else None,
        "val_interval": _json(result.val_interval) if result else None,
        "lm_calls": total.calls,
        "backend_calls": total.backend_calls,
        "cache_hits": total.cache_hits,
        "tokens": total.total_tokens,
        "cost": total.cost,
        "train_s": view.training_seconds(),
        "wall_s": round(wall_s, 3) if wall_s is not None else (result.wall_s if result
                                                                else None),
        "stopped_by_budget": result.stopped_by_budget if result else None,
        "attempt": status.get("attempt"),
        "skipped": skipped,
        "run_dir": folder.path.relative_to(bench_dir).as_posix(),
    }


def _json(interval: Interval | None) -> dict[str, Any] | None:
    return None if interval is None else interval.to_json()


def _reference_json(reference: ReferenceComparison | None) -> dict[str, Any] | None:
    """The no-LM baseline as a bench record holds it: per metric its score and the gain."""
    if reference is None:
        return None
    return {"description": reference.description,
            "metrics": {g.metric: {"reference": g.reference, "gain": _gain_json(g.gain)}
                        for g in reference.metrics}}


def _gain_json(gain: Interval | None) -> dict[str, Any] | None:
    """A paired gain as ``result.json`` holds it: the interval and ``within_noise``."""
    return None if gain is None else {**gain.to_json(), "within_noise": not gain.excludes_zero}


def sort_records(records: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """By task, then optimizer (vanilla first), then model and seed."""
    return sorted(records, key=lambda r: (format_value("task", r["task"]), r["task"],
                                          r["optimizer"] != VANILLA, r["label"], r["model"],
                                          r["seed"]))


def write_results(bench_dir: Path, records: Sequence[dict[str, Any]]) -> None:
    records = sort_records(records)
    write_atomic(bench_dir / RESULTS_JSON, json.dumps(records, indent=2, ensure_ascii=False))
    write_atomic(bench_dir / RESULTS_MD, markdown_table(records))


def markdown_table(records: Sequence[dict[str, Any]]) -> str:
    """The records as a Markdown table; errors follow it, one line per failed cell."""
    columns = columns_in_use(BENCH_COLUMNS, records)
    lines = ["| " + " | ".join(title for title, _ in columns) + " |",
             "|" + "|".join("---" if key in TEXT_COLUMNS else "---:" for _, key in columns) + "|"]
    for record in records:
        lines.append("| " + " | ".join(_md_cell(record, key) for _, key in columns) + " |")
    baselines = sorted({(str(r.get("task")), r["reference"]["description"]) for r in records
                        if isinstance(r.get("reference"), dict)
                        and r["reference"].get("description")})
    if baselines:
        lines += ["", "No-LM baselines, scored on each cell's test examples: " + "; ".join(
            f"{_md_escape(format_value('task', task))}: {_md_escape(text)}"
            for task, text in baselines) + "."]
    spreads = seed_spread(records)
    if spreads:
        lines += ["", "Over seeds (test score: mean ± sample standard deviation, min–max; "
                  "mean paired gain over the unoptimized program):", "",
                  "| task | optimizer | model | seeds | test mean ± sd | min–max | gain mean |",
                  "|---|---|---|---:|---:|---:|---:|"]
        lines += [f"| {_md_escape(format_value('task', g['task']))} | {_md_escape(g['label'])} | "
                  f"{_md_escape(g['model'])} | {g['n']} | {g['mean']:.3f} ± {g['sd']:.3f} | "
                  f"{g['min']:.3f}–{g['max']:.3f} | {format_value('gain_mean', g['gain_mean'])} |"
                  for g in spreads]
    errors = [r for r in records if r.get("error")]
    if errors:
        lines += ["", "Errors:", ""]
        lines += [f"- `{r['cell']}`: {_md_escape(r['error'])}" for r in errors]
    return "\n".join(lines) + "\n"


def _md_cell(record: dict[str, Any], key: str) -> str:
    return _md_escape(format_value(key, record.get(key)))


def _md_escape(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")
