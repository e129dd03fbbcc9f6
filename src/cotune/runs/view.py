"""One read model of a run folder (and of a bench folder): what ``cotune show``,
``cotune report`` and ``cotune bench`` read, so that none of them parses JSON itself.

:meth:`RunView.load` reads every file of a run folder leniently: a missing file is empty (not
written yet), a corrupt one is empty too and named in :attr:`RunView.problems` (the report
shows the rest and says what it left out; ``cotune show`` refuses with the first problem).
Candidates and trials come back as the optimizer's own records
(:class:`~cotune.optimize.base.Candidate`, :class:`~cotune.optimize.trials.Trial`), the
scores with their intervals as :class:`RunResult`, and GEPA's search tree as :class:`Lineage`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotune.evaluate.stats import Interval
from cotune.optimize.base import Candidate
from cotune.optimize.trials import Trial
from cotune.runs.folder import CANDIDATES, CONFIG, RESULT, STATUS, TRIALS, RunFolder
from cotune.runs.formatting import as_interval, format_gain, is_number

TRAINING_LOG = "training_log.jsonl"
LORA_RESULT = "lora.json"
BENCH_RESULTS = "results.json"
BENCH_SPEC = "bench.json"

_SHAPES = {CONFIG: dict, STATUS: dict, CANDIDATES: dict, TRIALS: list, RESULT: dict,
           BENCH_RESULTS: list, BENCH_SPEC: dict}


# -- the records -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Usage:
    """One row of a run's LM usage (``optimization``, ``test``, ``preflight``, ``total``)."""

    calls: int | None = None
    cache_hits: int | None = None
    backend_calls: int | None = None
    total_tokens: int | None = None
    cost: float | None = None

    @classmethod
    def from_json(cls, data: Any) -> Usage:
        data = data if isinstance(data, Mapping) else {}
        return cls(*(_number(data.get(k)) for k in ("calls", "cache_hits", "backend_calls",
                                                     "total_tokens", "cost")))


@dataclass(frozen=True)
class ReferenceGain:
    """One metric of the no-LM baseline: its score, and the program's paired gain over it."""

    metric: str
    reference: float
    gain: Interval | None


@dataclass(frozen=True)
class ReferenceComparison:
    """The task's no-LM baseline on the run's test examples (e.g. BM25 on the claim alone)."""

    description: str
    metrics: list[ReferenceGain]

    @classmethod
    def from_json(cls, data: Any) -> ReferenceComparison | None:
        if not isinstance(data, Mapping) or not isinstance(data.get("metrics"), Mapping):
            return None
        gains = [ReferenceGain(str(name), float(m["reference"]), as_interval(m.get("gain")))
                 for name, m in data["metrics"].items()
                 if isinstance(m, Mapping) and is_number(m.get("reference"))]
        return cls(str(data.get("description") or "the no-LM baseline"), gains) if gains \
            else None

    def sentence(self, split: str = "test") -> str:
        """How ``cotune optimize``, ``show`` and ``evaluate`` state it: ``BM25 on the claim
        alone (no LM) on the same test examples: retrieval_recall 0.908, the program minus it
        -0.030 [-0.080, +0.020] (within noise)``."""
        gains = "; ".join(f"{g.metric} {g.reference:.3f}, the program minus it "
                          f"{format_gain(g.gain)}" for g in self.metrics)
        return f"{self.description} (no LM) on the same {split} examples: {gains}"


@dataclass
class RunResult:
    """``result.json``: the scores with their 95% intervals, the cost, why this program."""

    val_score: float | None = None
    val_interval: Interval | None = None
    test_score: float | None = None
    test_interval: Interval | None = None
    test_metrics: dict[str, float] = field(default_factory=dict)
    test_metric_intervals: dict[str, Interval | None] = field(default_factory=dict)
    baseline_test_score: float | None = None
    """The unoptimized program on the same test examples."""
    test_gain: Interval | None = None
    """Test score minus the baseline's, with its paired interval."""
    reference: ReferenceComparison | None = None
    """The task's no-LM baseline on the same test examples, when the task has one."""
    reference_error: str | None = None
    """Why that baseline could not be scored (a task file's ``reference`` failed)."""
    usage: dict[str, Usage] = field(default_factory=dict)
    wall_s: float | None = None
    stopped_by_budget: bool = False
    selection: dict[str, Any] = field(default_factory=dict)
    replayed: dict[str, Any] = field(default_factory=dict)
    """Steps and LM calls replayed from the journal on resume."""

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> RunResult:
        metrics = data.get("test_metrics") if isinstance(data.get("test_metrics"), Mapping) \
            else {}
        intervals = data.get("test_metric_intervals")
        intervals = intervals if isinstance(intervals, Mapping) else {}
        usage = data.get("usage") if isinstance(data.get("usage"), Mapping) else {}
        return cls(
            val_score=_number(data.get("val_score")),
            val_interval=as_interval(data.get("val_interval")),
            test_score=_number(data.get("test_score")),
            test_interval=as_interval(data.get("test_interval")),
            test_metrics={k: v for k, v in metrics.items() if is_number(v)},
            test_metric_intervals={k: as_interval(v) for k, v in intervals.items()},
            baseline_test_score=_number(data.get("baseline_test_score")),
            test_gain=as_interval(data.get("test_gain")),
            reference=ReferenceComparison.from_json(data.get("reference")),
            reference_error=_reference_error(data.get("reference")),
            usage={str(k): Usage.from_json(v) for k, v in usage.items()
                   if isinstance(v, Mapping)},
            wall_s=_number(data.get("wall_s")),
            stopped_by_budget=bool(data.get("stopped_by_budget")),
            selection=_dict(data.get("selection")),
            replayed=_dict(data.get("replayed")),
        )

    @property
    def total(self) -> Usage:
        return self.usage.get("total", Usage())


# -- the lineage of an evolutionary search -------------------------------------------------------


@dataclass(frozen=True)
class LineageNode:
    """A candidate (``id`` ``c3``) or a child a trial tried and did not keep (``t5.1``)."""

    id: str
    kind: str
    """``seed``, ``instruction``, ``demos``, ``instruction+demos``, ``merge``."""
    candidate: int | None
    """The candidate's index; None for a child that was not kept."""
    accepted: bool
    score: float | None
    """Validation score (candidates)."""
    minibatch_score: float | None
    """Mini-batch score (the children that were tried there)."""
    on_frontier: bool = False
    best: bool = False
    iteration: int | None = None
    depth: int = 0
    """Generations from the seed."""
    note: str = ""


@dataclass(frozen=True)
class LineageEdge:
    parent: str
    child: str
    accepted: bool


@dataclass
class Lineage:
    """Parent -> child over every program a search tried: kept candidates with their
    validation scores and frontier membership, rejected children with their mini-batch
    scores."""

    nodes: list[LineageNode]
    edges: list[LineageEdge]

    @property
    def rejected(self) -> list[LineageNode]:
        return [n for n in self.nodes if not n.accepted]


def lineage(candidates: list[Candidate], trials: list[Trial], best: int | None) -> Lineage | None:
    """The lineage of a run whose candidates name their parents (GEPA); None otherwise."""
    if not candidates or not all("parents" in c.params for c in candidates):
        return None
    depth: dict[int, int] = {}
    nodes, edges = [], []
    for c in candidates:
        parents = [p for p in c.params.get("parents") or [] if isinstance(p, int) and p in depth]
        depth[c.index] = 1 + max((depth[p] for p in parents), default=-1)
        nodes.append(LineageNode(
            f"c{c.index}", str(c.params.get("kind", "candidate")), c.index, True, c.score, None,
            on_frontier=bool(c.params.get("on_frontier")), best=c.index == best,
            iteration=c.params.get("iteration"), depth=depth[c.index], note=c.description))
        edges += [LineageEdge(f"c{p}", f"c{c.index}", True) for p in parents]
    for t in trials:
        parents = [p for p in t.parents if p in depth]
        if t.kind not in ("reflect", "merge") or not parents:
            continue
        for j, child in enumerate(t.children):
            if child.candidate is not None:
                continue
            against = t.parent_minibatch_score
            note = t.outcome + ("" if against is None else
                                f" (the parent's mini-batch score: {against:.3f})")
            node = LineageNode(f"t{t.number}.{j}", child.kind, None, False, None,
                               child.minibatch_score, iteration=t.number,
                               depth=1 + max(depth[p] for p in parents), note=note)
            nodes.append(node)
            edges += [LineageEdge(f"c{p}", node.id, False) for p in parents]
    return Lineage(nodes, edges)


# -- a run folder ------------------------------------------------------------------------------


@dataclass
class RunView:
    """What a run folder holds (see the module docstring)."""

    path: Path
    config: dict[str, Any] = field(default_factory=dict)
    status: dict[str, Any] = field(default_factory=dict)
    original: dict[str, Any] = field(default_factory=dict)
    """The program's state before optimization."""
    candidates: list[Candidate] = field(default_factory=list)
    best_index: int | None = None
    trials: list[Trial] = field(default_factory=list)
    result: RunResult | None = None
    """None until the run has finished."""
    problems: dict[str, str] = field(default_factory=dict)
    """File name -> why (some of) it could not be read."""

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunView:
        path = Path(path)
        view = cls(path)
        data: dict[str, Any] = {}
        for name in (CONFIG, STATUS, CANDIDATES, TRIALS, RESULT):  # each file read once
            data[name], problem = read_file(path / name)
            if problem:
                view.problems[name] = problem
        view.config = _dict(data[CONFIG])
        view.status = _dict(data[STATUS])
        found = _dict(data[CANDIDATES])
        view.original = _dict(found.get("original"))
        view.candidates = view._records(CANDIDATES, found.get("candidates"), _candidate)
        best = found.get("best_index")
        if isinstance(best, int) and any(c.index == best for c in view.candidates):
            view.best_index = best
        view.trials = view._records(TRIALS, data[TRIALS], Trial.from_json)
        result = data[RESULT]
        view.result = RunResult.from_json(result) if result is not None else None
        return view

    def _records(self, name: str, entries: Any, read: Any) -> list[Any]:
        if not isinstance(entries, list):
            if entries is not None or (self.path / name).is_file():
                self.problems.setdefault(
                    name, f"{self.path / name} is malformed (its entries are not a JSON list)")
            return []
        out = []
        for i, entry in enumerate(entries):
            try:
                out.append(read(entry))
            except ValueError as exc:
                self.problems.setdefault(
                    name, f"{self.path / name} is corrupt (entry {i}: {exc})")
        return out

    @property
    def exists(self) -> bool:
        return (self.path / CONFIG).is_file()

    @property
    def complete(self) -> bool:
        """Whether the run has finished writing its results (candidates and result)."""
        return self.result is not None and (self.path / CANDIDATES).is_file()

    @property
    def best(self) -> Candidate | None:
        return next((c for c in self.candidates if c.index == self.best_index), None)

    @property
    def search_trials(self) -> list[Trial]:
        """The trials scored on mini-batches (not BetterTogether's steps)."""
        return [t for t in self.trials if t.kind != "step"]

    @property
    def steps(self) -> list[Trial]:
        return [t for t in self.trials if t.kind == "step"]

    @property
    def lineage(self) -> Lineage | None:
        return lineage(self.candidates, self.trials, self.best_index)

    @property
    def in_use(self) -> bool:
        """Whether a process is running in the folder now."""
        return RunFolder(self.path).in_use()

    def training_seconds(self, under: str | None = None) -> float | None:
        return training_seconds(self.path / under if under else self.path)

    def loss_curves(self) -> list[tuple[str, list[dict[str, Any]]]]:
        """``(folder relative to the run, rows)`` per ``training_log.jsonl`` under the run."""
        return [(p.parent.relative_to(self.path).as_posix(), _read_jsonl(p))
                for p in sorted(self.path.rglob(TRAINING_LOG))]


def _candidate(data: Any) -> Candidate:
    if not isinstance(data, Mapping):
        raise ValueError(f"a candidate is a JSON object, not {type(data).__name__}")
    index, score = data.get("index"), data.get("score")
    if isinstance(index, bool) or not isinstance(index, int):
        raise ValueError(f"a candidate's index is a whole number, not {index!r}")
    if score is not None and not is_number(score):
        raise ValueError(f"candidate {index}'s score is not a number: {score!r}")
    scores = data.get("scores")
    return Candidate(
        index=index, description=str(data.get("description", "")), score=score,
        params=_dict(data.get("params")),
        state=data.get("state") if isinstance(data.get("state"), dict) else None,
        lm_calls=int(_number(data.get("lm_calls")) or 0),
        elapsed_s=float(_number(data.get("elapsed_s")) or 0.0),
        scores=list(scores) if isinstance(scores, list) else None,
        examples=data.get("examples") if isinstance(data.get("examples"), str) else None,
        vs_baseline=data.get("vs_baseline") if isinstance(data.get("vs_baseline"), dict)
        else None,
    )


# -- a bench folder ----------------------------------------------------------------------------


@dataclass
class BenchView:
    """A bench folder: its spec, one record per cell (``results.json``), their run folders."""

    path: Path
    spec: dict[str, Any]
    records: list[dict[str, Any]]
    problems: list[str]

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> BenchView:
        path = Path(path)
        (results, results_problem), (spec, spec_problem) = (
            read_file(path / name) for name in (BENCH_RESULTS, BENCH_SPEC))
        problems = [p for p in (results_problem, spec_problem) if p]
        records = [r for r in results or [] if isinstance(r, dict)]
        return cls(path, _dict(spec), records, problems)

    @staticmethod
    def is_bench(path: str | os.PathLike[str]) -> bool:
        return (Path(path) / BENCH_RESULTS).is_file()

    def cell_dirs(self) -> dict[str, Path]:
        """Cell name -> its run folder, for the cells whose folder holds a run."""
        out = {}
        for r in self.records:
            cell_dir = self.path / str(r.get("run_dir", ""))
            if r.get("run_dir") and (cell_dir / CONFIG).is_file():
                out[str(r.get("cell"))] = cell_dir
        return out

    def all_problems(self) -> list[str]:
        """The bench's own unusable files, then its cells'."""
        problems = list(self.problems)
        for r in self.records:
            cell_dir = self.path / str(r.get("run_dir", ""))
            if r.get("run_dir") and cell_dir.is_dir():
                problems += RunView.load(cell_dir).problems.values()
        return problems


# -- reading files -----------------------------------------------------------------------------


def read_file(path: Path) -> tuple[Any, str | None]:
    """A run or bench file's JSON and why it cannot be used (unreadable, not UTF-8, not JSON,
    JSON of the wrong shape): ``(data, None)`` when it is fine, ``(None, problem)`` when not,
    ``(None, None)`` when it is missing."""
    if not path.exists():
        return None, None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"{path} is corrupt (not UTF-8 text: {exc.reason} at byte {exc.start})"
    except ValueError as exc:
        return None, f"{path} is corrupt (not valid JSON: {exc})"
    except OSError as exc:
        return None, f"{path} cannot be read ({exc.strerror or exc})"
    shape = _SHAPES.get(path.name)
    if shape is not None and not isinstance(data, shape):
        kind = "object" if shape is dict else "list"
        return None, f"{path} is corrupt (expected a JSON {kind}, found {type(data).__name__})"
    return data, None


def training_seconds(folder: Path) -> float | None:
    """Seconds spent training LoRA adapters under ``folder`` (None: none was trained there),
    from the ``lora.json`` that ``cotune.finetune.LoraTrainer`` writes beside each adapter."""
    if not folder.is_dir():
        return None
    seconds = [_read_dict(p).get("seconds") for p in sorted(folder.rglob(LORA_RESULT))]
    seconds = [s for s in seconds if is_number(s)]
    return round(sum(seconds), 3) if seconds else None


def _read_any(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _read_dict(path: Path) -> dict[str, Any]:
    return _dict(_read_any(path))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(row, dict):
            rows.append(row)
    return rows


def _reference_error(value: Any) -> str | None:
    return str(value["error"]) if isinstance(value, Mapping) and value.get("error") else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _number(value: Any) -> Any:
    return value if is_number(value) else None
