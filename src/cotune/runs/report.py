"""Run reports: one self-contained HTML page per run folder (or per bench folder).

The page needs nothing but a browser: CSS is inline, plots are SVG drawn here, nothing is
fetched.  Everything that comes from data (instructions, demos, errors, names) is HTML-escaped,
since instructions are written by an LM and demos come from datasets.

A run's page shows the score of every search trial (mini-batch) and full evaluation against LM
calls with the best-so-far curve, the winning instruction and demos of each predictor beside the
original, BetterTogether's steps with their score and cost, the fine-tuning loss
(``training_log.jsonl`` files in the run folder), and the LM usage.  A bench's page compares its
cells (table and bar chart of test scores) and links to each cell's page.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cotune._version import __version__
from cotune.runs.folder import (
    CANDIDATES,
    CONFIG,
    RESULT,
    STATUS,
    TRIALS,
    RunFolder,
    write_atomic,
)

REPORT_FILE = "report.html"
TRAINING_LOG = "training_log.jsonl"
LORA_RESULT = "lora.json"
BENCH_RESULTS = "results.json"

TRIAL_COLOR = "#8c959f"
EVAL_COLOR = "#0969da"
BEST_COLOR = "#cf222e"
PALETTE = ("#0969da", "#cf222e", "#1a7f37", "#8250df", "#bc4c00", "#1b7c83", "#bf3989",
           "#6e7781")


def esc(value: Any) -> str:
    """Text from data, safe inside HTML elements and attribute values."""
    return html.escape(str(value), quote=True)


# -- entry point -------------------------------------------------------------------------------


def write_report(folder: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the report of a run folder, or of a bench folder (one holding ``results.json``)
    together with a report per cell; return the page's path (default ``FOLDER/report.html``)."""
    folder = Path(folder)
    out_path = Path(out) if out is not None else folder / REPORT_FILE
    if (folder / BENCH_RESULTS).is_file():
        links = _write_cell_reports(folder, out_path.parent)
        page = bench_report_html(folder, links)
    elif (folder / CONFIG).is_file():
        page = run_report_html(folder)
    else:
        raise FileNotFoundError(f"{folder} is neither a run folder (no {CONFIG}) nor a bench "
                                f"folder (no {BENCH_RESULTS})")
    return write_atomic(out_path, page)


def _write_cell_reports(bench_dir: Path, page_dir: Path) -> dict[str, str]:
    """Each cell's report, beside its run folder; cell name -> link relative to the page."""
    links: dict[str, str] = {}
    for record in _records(bench_dir):
        cell_dir = bench_dir / str(record.get("run_dir", ""))
        if record.get("run_dir") and (cell_dir / CONFIG).is_file():
            path = write_atomic(cell_dir / REPORT_FILE, run_report_html(cell_dir))
            links[str(record.get("cell"))] = Path(os.path.relpath(path, page_dir)).as_posix()
    return links


# -- a run -------------------------------------------------------------------------------------


@dataclass
class RunData:
    """What a run folder holds, read leniently: a missing or corrupt file is empty."""

    path: Path
    config: dict[str, Any]
    status: dict[str, Any]
    candidates: dict[str, Any]
    trials: list[Any]
    result: dict[str, Any]

    problems: dict[str, str] = field(default_factory=dict)
    """File name -> why it could not be read (a missing file is no problem: not written yet)."""

    @classmethod
    def load(cls, path: Path) -> RunData:
        return cls(path, _read_dict(path / CONFIG), _read_dict(path / STATUS),
                   _read_dict(path / CANDIDATES), _read_list(path / TRIALS),
                   _read_dict(path / RESULT), problems=run_problems(path))

    @property
    def found(self) -> list[dict[str, Any]]:
        found = self.candidates.get("candidates")
        return [c for c in found if isinstance(c, dict)] if isinstance(found, list) else []

    @property
    def best_index(self) -> int | None:
        best = self.candidates.get("best_index")
        return best if isinstance(best, int) and 0 <= best < len(self.found) else None


def run_report_html(run_dir: str | os.PathLike[str]) -> str:
    data = RunData.load(Path(run_dir))
    title = f"cotune run: {_task_label(data.config)} / {_optimizer_label(data.config)}"
    sections = [
        _run_header(data),
        _summary_cards(data),
        _score_section(data),
        _predictors_section(data),
        _steps_section(data),
        _candidates_section(data),
        _trials_section(data),
        _loss_section(data.path),
        _usage_section(data.result),
    ]
    return _page(title, sections)


def _run_header(data: RunData) -> str:
    c, status = data.config, data.status
    model = c.get("model") or {}
    splits = c.get("splits") or {}
    budget = {k: v for k, v in (c.get("budget") or {}).items() if v is not None}
    facts = [
        ("task", _task_label(c)), ("optimizer", _optimizer_label(c)),
        ("model", model.get("name") or model.get("identity") or "?"), ("seed", c.get("seed")),
        ("splits (train/val/test)", "/".join(str(splits.get(k, "?"))
                                             for k in ("train", "val", "test"))),
        ("budget", ", ".join(f"{k} {v}" for k, v in budget.items()) or "none"),
        ("status", f"{status.get('state', 'unknown')} (attempt {status.get('attempt', '?')})"),
    ]
    error = f'<p class="error">{esc(status["error"])}</p>' if status.get("error") else ""
    error += "".join(f'<p class="error">{esc(problem)}</p>' for problem in data.problems.values())
    if status.get("rerun_error"):
        error += (f'<p class="error">Its last rerun did not complete: '
                  f'{esc(status["rerun_error"])}</p>')
    if status.get("state") == "running" and not _in_use(data.path):
        error += ('<p class="error">No process is running it (killed?): rerun its command to '
                  "resume.</p>")
    return (f"<header><h1>{esc(_task_label(c))} · {esc(_optimizer_label(c))}</h1>"
            f'<p class="path">{esc(data.path)}</p>{_facts(facts)}{error}</header>')


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
    from cotune.evaluate.stats import Interval

    if not _is_number(value):
        return "-"
    ci = Interval.from_json(interval)
    return f"{value:.3f}" + (f" [{ci.low:.3f}, {ci.high:.3f}]" if ci is not None else "")


def format_interval(interval: Any) -> str:
    """``[0.420, 0.660]``; ``-`` when there is none."""
    from cotune.evaluate.stats import Interval

    ci = Interval.from_json(interval)
    return "-" if ci is None else f"[{ci.low:.3f}, {ci.high:.3f}]"


def format_gain(gain: Any) -> str:
    """A paired difference: ``+0.120 [+0.040, +0.200]``, or ``... (within noise)`` when its
    interval includes 0; ``-`` when there is none."""
    from cotune.evaluate.stats import Interval

    ci = Interval.from_json(gain)
    if ci is None:
        return "-"
    return ci.format(signed=True) + (" (within noise)" if not ci.excludes_zero else "")


def _summary_cards(data: RunData) -> str:
    r = data.result
    total = (r.get("usage") or {}).get("total") or {}
    intervals = r.get("test_metric_intervals") or {}
    cards = [
        ("validation score [95% CI]", format_score(r.get("val_score"), r.get("val_interval"))),
        ("held-out test score [95% CI]",
         format_score(r.get("test_score"), r.get("test_interval"))),
        *((f"test {name}", format_score(value, intervals.get(name)))
          for name, value in (r.get("test_metrics") or {}).items()),
        *((("test vs unoptimized (paired)", format_gain(r.get("test_gain"))),)
          if r.get("test_gain") else ()),
        ("LM calls", _num(total.get("calls"))),
        ("backend calls", _num(total.get("backend_calls"))),
        ("tokens", _num(total.get("total_tokens"))),
        ("training s", _seconds(training_seconds(data.path))),
        ("wall s", _seconds(r.get("wall_s"))),
    ]
    if not r:
        return '<p class="note">No result yet: the run has not finished (rerun its command ' \
               "to resume it).</p>"
    items = "".join(f'<div class="card"><div class="value">{esc(v)}</div>'
                    f'<div class="label">{esc(k)}</div></div>' for k, v in cards)
    budget = ('<p class="note">Stopped by the budget: the program is the best found before it '
              "ran out.</p>" if r.get("stopped_by_budget") else "")
    if _is_number(r.get("baseline_test_score")):
        budget += (f'<p class="note">The unoptimized program scores '
                   f'{esc(_score(r["baseline_test_score"]))} on the same test examples.</p>')
    reason = (r.get("selection") or {}).get("reason")
    if reason:
        budget += f'<p class="note">Why this program: {esc(reason)}</p>'
    return f'<section class="cards">{items}</section>{budget}'


def _score_section(data: RunData) -> str:
    trials = [(t.get("lm_calls"), t.get("minibatch_score")) for t in data.trials
              if isinstance(t, dict)]
    evals = [(c.get("lm_calls"), c.get("score")) for c in data.found]
    trial_points, eval_points = _points(trials), _points(evals)
    best = data.best_index
    winner = _points([(data.found[best].get("lm_calls"), data.found[best].get("score"))]
                     if best is not None else [])
    series = [
        Series("trial (mini-batch score)", trial_points, TRIAL_COLOR, "points"),
        Series("full evaluation (validation score)", eval_points, EVAL_COLOR, "points"),
        Series("best so far", _best_so_far(eval_points, trial_points), BEST_COLOR, "step"),
        Series("winner", winner, BEST_COLOR, "ring"),
    ]
    if not trial_points and not eval_points:
        body = '<p class="note">No scored trial or candidate to plot (no validation set?).</p>'
    else:
        body = line_plot([s for s in series if s.points], x_label="LM calls so far",
                         y_label="score", title="Score vs LM calls")
    return _section("Score vs LM calls", body,
                    "Each point is one trial scored on a mini-batch or one candidate scored on "
                    "the whole validation set, placed at the LM calls the run had made by then.")


def _predictors_section(data: RunData) -> str:
    best = data.best_index
    if CANDIDATES in data.problems:
        return _section("Winning program",
                        f'<p class="error">{esc(data.problems[CANDIDATES])}</p>')
    if best is None or not isinstance(data.found[best].get("state"), dict):
        return _section("Winning program", '<p class="note">No candidate was recorded.</p>')
    winner = data.found[best]["state"].get("predictors") or {}
    original = (data.candidates.get("original") or {}).get("predictors") or {}
    blocks = [_predictor_block(name, original.get(name) or {}, entry or {})
              for name, entry in winner.items()]
    lead = (f"<p>Candidate #{best}: {esc(data.found[best].get('description', ''))}, "
            f"validation score {esc(_score(data.found[best].get('score')))}.</p>")
    return _section("Winning program", lead + "".join(blocks))


def _predictor_block(name: str, original: Mapping[str, Any], winner: Mapping[str, Any]) -> str:
    before, after = original.get("instruction"), winner.get("instruction")
    changed = before is not None and before != after
    tag = "changed" if changed else "unchanged"
    columns = (f'<div class="instr"><h4>original instruction</h4>'
               f'<pre>{esc(before if before is not None else "-")}</pre></div>'
               f'<div class="instr winner"><h4>winning instruction ({tag})</h4>'
               f'<pre>{esc(after if after is not None else "-")}</pre></div>')
    demos = winner.get("demos") if isinstance(winner.get("demos"), list) else []
    lm = winner.get("lm")
    lm_line = (f'<p class="lm">LM: <code>{esc(json.dumps(lm, ensure_ascii=False))}</code></p>'
               if lm else "")
    return (f'<div class="predictor"><h3>predictor <code>{esc(name)}</code></h3>'
            f'<div class="compare">{columns}</div>{lm_line}'
            f"<h4>demos ({len(demos)})</h4>{_demos_table(demos)}</div>")


def _demos_table(demos: Sequence[Any]) -> str:
    demos = [d for d in demos if isinstance(d, dict) and isinstance(d.get("fields"), dict)]
    if not demos:
        return '<p class="note">none</p>'
    keys = list(dict.fromkeys(k for d in demos for k in d["fields"]))
    inputs = {k for d in demos for k in d.get("inputs") or []}
    head = ["#", *[f"{k} (input)" if k in inputs else k for k in keys]]
    rows = [[str(i), *[_clip(d["fields"].get(k, "")) for k in keys]]
            for i, d in enumerate(demos, 1)]
    return _table(head, rows, numeric={0})


def _steps_section(data: RunData) -> str:
    steps = [t for t in data.trials if isinstance(t, dict) and "step" in t and "name" in t]
    if not steps:
        return ""
    rows, previous_calls, previous_s = [], 0, 0.0
    elapsed = {c.get("params", {}).get("step"): c.get("elapsed_s") for c in data.found}
    for t in steps:
        calls = t.get("lm_calls") if isinstance(t.get("lm_calls"), int) else previous_calls
        seconds = elapsed.get(t["step"])
        seconds = seconds if isinstance(seconds, (int, float)) else previous_s
        trained = training_seconds(data.path / "work" / f"step{t['step']}-{t['name']}")
        rows.append([str(t["step"]), str(t["name"]), str(t.get("strategy_prefix", "")),
                     _score(t.get("score")), _num(calls - previous_calls), _num(calls),
                     _seconds(seconds - previous_s), _seconds(trained), t.get("error") or ""])
        previous_calls, previous_s = calls, seconds
    head = ["step", "kind", "strategy so far", "val score", "LM calls (step)",
            "LM calls (total)", "time s (step)", "training s", "note"]
    return _section("BetterTogether steps",
                    _table(head, rows, numeric={0, 3, 4, 5, 6, 7}),
                    "p: prompt optimization, w: LoRA weight optimization; each step starts "
                    "from the previous step's program.")


def _candidates_section(data: RunData) -> str:
    if not data.found:
        return ""
    rows, running = [], None
    for c in data.found:
        score = c.get("score")
        if isinstance(score, (int, float)) and (running is None or score > running):
            running = score
        mark = " ★" if c.get("index") == data.best_index else ""
        verdict = c.get("vs_baseline") if isinstance(c.get("vs_baseline"), dict) else {}
        rows.append([f"{c.get('index', '?')}{mark}", _num(c.get("lm_calls")), _score(score),
                     _score(running), format_gain(verdict.get("interval")),
                     _seconds(c.get("elapsed_s")), c.get("description", "")])
    head = ["#", "LM calls", "val score", "best so far", "gain vs baseline (95% CI)", "time s",
            "candidate"]
    return _section("Candidates (full evaluations)", _table(head, rows, numeric={0, 1, 2, 3, 4},
                                                           highlight=data.best_index))


def _trials_section(data: RunData) -> str:
    trials = [t for t in data.trials if isinstance(t, dict) and "minibatch_score" in t]
    if not trials:
        return ""
    rows = [[_num(t.get("trial")), _num(t.get("lm_calls")), _score(t.get("minibatch_score")),
             ", ".join(f"{k}={v}" for k, v in (t.get("params") or {}).items())]
            for t in trials]
    return _section(f"Search trials ({len(trials)}, scored on mini-batches)",
                    _table(["trial", "LM calls", "mini-batch score", "choice"], rows,
                           numeric={0, 1, 2}))


def _loss_section(run_dir: Path) -> str:
    series = []
    for i, path in enumerate(sorted(run_dir.rglob(TRAINING_LOG))):
        points = _points((row.get("step"), row.get("loss")) for row in _read_jsonl(path))
        label = path.parent.relative_to(run_dir).as_posix()
        series.append(Series(label, points, PALETTE[i % len(PALETTE)], "line"))
    series = [s for s in series if s.points]
    if not series:
        return ""
    plot = line_plot(series, x_label="optimizer step", y_label="training loss",
                     title="Fine-tuning loss", y_from_zero=False)
    return _section("Fine-tuning loss", plot,
                    "One line per trained adapter (its training_log.jsonl).")


def _usage_section(result: Mapping[str, Any]) -> str:
    usage = result.get("usage")
    if not isinstance(usage, dict) or not usage:
        return ""
    rows = [[part, _num(u.get("calls")), _num(u.get("cache_hits")), _num(u.get("backend_calls")),
             _num(u.get("total_tokens")), f"{u.get('cost') or 0:.4f}"]
            for part, u in usage.items() if isinstance(u, dict)]
    head = ["", "LM calls", "cache hits", "backend calls", "tokens", "cost"]
    replayed = result.get("replayed") or {}
    note = (f"Replayed from the journal on resume: {replayed.get('steps', 0)} steps, "
            f"{replayed.get('calls', 0)} LM calls." if replayed.get("steps") else "")
    return _section("LM usage and cost", _table(head, rows, numeric={1, 2, 3, 4, 5}), note)


# -- a bench -----------------------------------------------------------------------------------

BENCH_COLUMNS = (  # a bench's table, in results.md and on its report page
    ("task", "task"), ("optimizer", "label"), ("model", "model"), ("seed", "seed"),
    ("test", "test_score"), ("test 95% CI", "test_interval"),
    ("vs vanilla (paired 95% CI)", "test_gain"), ("other test metrics", "test_metrics"),
    ("val", "val_score"),
    ("LM calls", "lm_calls"), ("backend calls", "backend_calls"), ("tokens", "tokens"),
    ("train s", "train_s"), ("wall s", "wall_s"), ("status", "status"),
)


TEXT_COLUMNS = frozenset({"task", "label", "model", "status", "test_metrics", "test_gain"})
"""Bench columns that are left-aligned."""


_OPTIONAL_COLUMNS = frozenset({"test_metrics", "test_interval", "test_gain"})


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
        if _is_number(r.get("test_score")):
            key = (str(r.get("task")), str(r.get("label")), str(r.get("model")))
            groups.setdefault(key, []).append(r)
    out = []
    for (task, label, model), rows in groups.items():
        if len({r.get("seed") for r in rows}) < 2:
            continue
        gains = [g["estimate"] for r in rows if isinstance(g := r.get("test_gain"), Mapping)
                 and _is_number(g.get("estimate"))]
        out.append({"task": task, "label": label, "model": model,
                    "seeds": sorted(r.get("seed") for r in rows),
                    **spread([r["test_score"] for r in rows]),
                    "gain_mean": sum(gains) / len(gains) if gains else None})
    return out


def bench_report_html(bench_dir: str | os.PathLike[str], links: Mapping[str, str]) -> str:
    bench_dir = Path(bench_dir)
    records = _records(bench_dir)
    bars = [(_bar_label(r), r.get("test_score"), r.get("label", "?")) for r in records]
    chart = (bar_chart(bars, x_label="held-out test score", title="Test score per cell")
             if records else '<p class="note">No cell has run yet.</p>')
    columns = columns_in_use(BENCH_COLUMNS, records)
    head = [title for title, _ in columns] + ["report"]
    rows = []
    for r in records:
        row = [format_value(key, r.get(key)) for _, key in columns]
        link = links.get(str(r.get("cell")))
        rows.append([*row, _Html(f'<a href="{esc(link)}">report</a>') if link else "-"])
    errors = [f"<li><code>{esc(r.get('cell'))}</code>: {esc(r['error'])}</li>"
              for r in records if r.get("error")]
    error_list = f'<ul class="error">{"".join(errors)}</ul>' if errors else ""
    problems = [p for name in (BENCH_RESULTS, "bench.json")
                if (p := file_problem(bench_dir / name))]
    sections = [
        _bench_header(bench_dir, records)
        + "".join(f'<p class="error">{esc(problem)}</p>' for problem in problems),
        _section("Test scores", chart, "Bars share a colour per optimizer."),
        _section("Cells", _table(head, rows, numeric={
            i for i, (_, key) in enumerate(columns) if key not in TEXT_COLUMNS
        }) + error_list, "Test scores with their 95% bootstrap intervals; 'vs vanilla': the "
                         "paired difference to the unoptimized program on the same test "
                         "examples, 'within noise' when its interval includes 0."),
        _spread_section(records),
    ]
    return _page("cotune bench", sections)


def _spread_section(records: Sequence[Mapping[str, Any]]) -> str:
    spreads = seed_spread(records)
    if not spreads:
        return ""
    rows = [[format_value("task", g["task"]), g["label"], g["model"],
             ", ".join(map(str, g["seeds"])), f"{g['mean']:.3f} ± {g['sd']:.3f}",
             f"{g['min']:.3f}–{g['max']:.3f}", format_value("gain_mean", g["gain_mean"])]
            for g in spreads]
    head = ["task", "optimizer", "model", "seeds", "test mean ± sd", "min–max", "gain mean"]
    return _section("Over seeds", _table(head, rows, numeric={4, 5, 6}),
                    "The spread of each grid entry's test score over its seeds.")


def _bench_header(bench_dir: Path, records: Sequence[Mapping[str, Any]]) -> str:
    spec = _read_dict(bench_dir / "bench.json")
    budget = ", ".join(f"{k} {spec[k]}" for k in ("max_calls", "max_tokens", "max_seconds")
                       if spec.get(k) is not None)
    finished = sum(r.get("status") == "finished" for r in records)
    facts = [("cells", f"{len(records)} ({finished} finished)"),
             ("budget per cell", budget or "none"),
             ("models", ", ".join(map(str, spec.get("models") or [])) or "?"),
             ("seeds", ", ".join(map(str, spec.get("seeds") or [])) or "?")]
    return (f'<header><h1>cotune bench</h1><p class="path">{esc(bench_dir)}</p>'
            f"{_facts(facts)}</header>")


def _bar_label(record: Mapping[str, Any]) -> str:
    return (f"{format_value('task', record.get('task'))} · {record.get('label', '?')} · "
            f"{record.get('model', '?')} · seed {record.get('seed', '?')}")


def _records(bench_dir: Path) -> list[dict[str, Any]]:
    return [r for r in _read_list(bench_dir / BENCH_RESULTS) if isinstance(r, dict)]


# -- SVG plots ---------------------------------------------------------------------------------


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
                     f"<title>{tip}: {_fmt(y)} at {_fmt(x)}</title></circle>")
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
                   f"{esc(_clip(label, 64))}</text>")
        if isinstance(value, (int, float)):
            color = PALETTE[groups.index(group) % len(PALETTE)]
            width = max(frame.x(value) - frame.left, 1.0)
            out.append(f'<rect x="{frame.left}" y="{y}" width="{width:.1f}" height="18" '
                       f'fill="{color}"><title>{esc(label)}: {_fmt(value)}</title></rect>'
                       f'<text class="tick" x="{frame.left + width + 6:.1f}" y="{y + 14}">'
                       f"{_fmt(value)}</text>")
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


def _points(pairs: Iterable[tuple[Any, Any]]) -> list[tuple[float, float]]:
    """The pairs that are both finite numbers (a missing score is not drawn)."""
    return [(float(x), float(y)) for x, y in pairs
            if _is_number(x) and _is_number(y) and math.isfinite(x) and math.isfinite(y)]


def _best_so_far(evals: Sequence[tuple[float, float]],
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


# -- HTML pieces -------------------------------------------------------------------------------


class _Html(str):
    """Markup made here (not data): tables put it in as it is."""


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], *,
           numeric: Collection[int] = (), highlight: int | None = None) -> str:
    def cell(tag: str, i: int, value: Any) -> str:
        cls = ' class="num"' if i in numeric else ""
        text = value if isinstance(value, _Html) else esc(value)
        return f"<{tag}{cls}>{text}</{tag}>"

    thead = "".join(cell("th", i, h) for i, h in enumerate(head))
    body = "".join(
        ('<tr class="best">' if n == highlight else "<tr>")
        + "".join(cell("td", i, v) for i, v in enumerate(row)) + "</tr>"
        for n, row in enumerate(rows)
    )
    return f'<div class="scroll"><table><thead><tr>{thead}</tr></thead><tbody>{body}</tbody>' \
           "</table></div>"


def _facts(facts: Sequence[tuple[str, Any]]) -> str:
    items = "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in facts)
    return f'<dl class="facts">{items}</dl>'


def _section(title: str, body: str, note: str = "") -> str:
    caption = f'<p class="note">{esc(note)}</p>' if note else ""
    return f"<section><h2>{esc(title)}</h2>{caption}{body}</section>"


def _page(title: str, sections: Sequence[str]) -> str:
    footer = (f"generated by cotune {esc(__version__)} on "
              f"{esc(time.strftime('%Y-%m-%d %H:%M:%S'))}")
    return ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            '<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{esc(title)}</title><style>{CSS}</style></head><body><main>"
            + "".join(s for s in sections if s)
            + f"<footer>{footer}</footer></main></body></html>\n")


CSS = """
:root { --fg: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #f6f8fa; --accent: #0969da; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.45;
  font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", sans-serif; }
main { max-width: 1240px; margin: 0 auto; padding: 24px 28px 48px; }
h1 { font-size: 26px; margin: 0 0 4px; }
h2 { font-size: 19px; margin: 0 0 8px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 0 0 8px; }
h4 { font-size: 12px; margin: 10px 0 4px; color: var(--muted); text-transform: uppercase;
  letter-spacing: .04em; }
section { margin-top: 28px; }
.path { color: var(--muted); font-family: ui-monospace, Menlo, Consolas, monospace;
  font-size: 12px; margin: 0 0 10px; word-break: break-all; }
.facts { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
.facts dt { color: var(--muted); }
.facts dd { margin: 0; }
.cards { display: grid; grid-template-columns: repeat(auto-fit, minmax(130px, 1fr)); gap: 10px; }
.card { background: var(--bg); border: 1px solid var(--line); border-radius: 8px;
  padding: 10px 12px; }
.card .value { font-size: 22px; font-weight: 600; font-variant-numeric: tabular-nums; }
.card .label { color: var(--muted); font-size: 12px; }
.note { color: var(--muted); font-size: 13px; margin: 4px 0 10px; }
.error { color: #cf222e; white-space: pre-wrap; font-size: 13px; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; width: 100%; font-size: 13px; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line);
  vertical-align: top; }
th { background: var(--bg); font-weight: 600; white-space: nowrap; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.num:first-child, th.num:first-child { width: 1%; }
tbody tr:nth-child(even) { background: #fbfcfd; }
tr.best { background: #fff8c5 !important; }
.predictor { border: 1px solid var(--line); border-radius: 8px; padding: 12px 14px;
  margin: 12px 0; }
.compare { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.instr pre { margin: 0; padding: 8px 10px; background: var(--bg); border: 1px solid var(--line);
  border-radius: 6px; white-space: pre-wrap; word-break: break-word; font-size: 13px; }
.instr.winner pre { border-color: #1a7f37; background: #f0fff4; }
.lm { font-size: 12px; color: var(--muted); word-break: break-all; }
code { font-family: ui-monospace, Menlo, Consolas, monospace; font-size: 12px; }
svg.plot { display: block; max-width: 100%; height: auto; margin: 6px 0; }
svg .grid { stroke: #eaeef2; stroke-width: 1; }
svg .axis { stroke: #59636e; stroke-width: 1; }
svg .tick { font-size: 12px; fill: #59636e; }
svg .tick.missing { font-style: italic; }
svg .label { font-size: 13px; fill: #1f2328; }
svg .legend { font-size: 12px; fill: #1f2328; }
a { color: var(--accent); }
footer { margin-top: 36px; color: var(--muted); font-size: 12px; }
@media (max-width: 720px) { .compare { grid-template-columns: 1fr; } }
"""


# -- reading and formatting --------------------------------------------------------------------


def _read_any(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


_SHAPES = {CONFIG: dict, STATUS: dict, CANDIDATES: dict, TRIALS: list, RESULT: dict,
           BENCH_RESULTS: list, "bench.json": dict}


def file_problem(path: Path) -> str | None:
    """Why the run or bench file ``path`` cannot be used: unreadable, not UTF-8, not JSON, or
    JSON of the wrong shape; None when it is fine or missing."""
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        return f"{path} is corrupt (not UTF-8 text: {exc.reason} at byte {exc.start})"
    except ValueError as exc:
        return f"{path} is corrupt (not valid JSON: {exc})"
    except OSError as exc:
        return f"{path} cannot be read ({exc.strerror or exc})"
    shape = _SHAPES.get(path.name)
    if shape is not None and not isinstance(data, shape):
        kind = "object" if shape is dict else "list"
        return f"{path} is corrupt (expected a JSON {kind}, found {type(data).__name__})"
    return None


def run_problems(folder: Path) -> dict[str, str]:
    """File name -> problem, for each file of the run folder that cannot be used."""
    found = {name: file_problem(folder / name)
             for name in (CONFIG, STATUS, CANDIDATES, TRIALS, RESULT)}
    return {name: problem for name, problem in found.items() if problem}


def report_problems(folder: str | os.PathLike[str]) -> list[str]:
    """What :func:`write_report` had to leave out of the report of ``folder`` (a run, or a
    bench and its cells): one line per unusable file."""
    folder = Path(folder)
    if not (folder / BENCH_RESULTS).is_file():
        return list(run_problems(folder).values())
    problems = [p for name in (BENCH_RESULTS, "bench.json") if (p := file_problem(folder / name))]
    for record in _records(folder):
        cell_dir = folder / str(record.get("run_dir", ""))
        if record.get("run_dir") and cell_dir.is_dir():
            problems += run_problems(cell_dir).values()
    return problems


def _read_dict(path: Path) -> dict[str, Any]:
    data = _read_any(path)
    return data if isinstance(data, dict) else {}


def _read_list(path: Path) -> list[Any]:
    data = _read_any(path)
    return data if isinstance(data, list) else []


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


def training_seconds(folder: Path) -> float | None:
    """Seconds spent training LoRA adapters under ``folder`` (None: none was trained there),
    from the ``lora.json`` that ``cotune.finetune.LoraTrainer`` writes beside each adapter."""
    if not folder.is_dir():
        return None
    seconds = [_read_dict(p).get("seconds") for p in sorted(folder.rglob(LORA_RESULT))]
    seconds = [s for s in seconds if _is_number(s)]
    return round(sum(seconds), 3) if seconds else None


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
    if key == "gain_mean" and _is_number(value):
        return f"{value:+.3f}"
    if key.endswith("_score") and _is_number(value):
        return f"{value:.3f}"
    if key.endswith("_s") and _is_number(value):
        return f"{value:.1f}"
    return str(value)


def _in_use(path: Path) -> bool:
    in_use = getattr(RunFolder(path), "in_use", None)
    return bool(in_use()) if callable(in_use) else True


def _task_label(config: Mapping[str, Any]) -> str:
    name = str((config.get("task") or {}).get("name", "?"))
    return Path(name).stem if name.endswith(".py") else name


def _optimizer_label(config: Mapping[str, Any]) -> str:
    optimizer = config.get("optimizer") or {}
    extra = optimizer.get("strategy") or optimizer.get("preset")
    return f"{optimizer.get('name', '?')}" + (f" ({extra})" if extra else "")


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _fmt(value: float) -> str:
    return f"{value:.0f}" if float(value).is_integer() and abs(value) >= 1 else f"{value:.3g}"


def _score(value: Any) -> str:
    return f"{value:.3f}" if _is_number(value) else "-"


def _num(value: Any) -> str:
    return str(value) if _is_number(value) else "-"


def _seconds(value: Any) -> str:
    return f"{value:.1f}" if _is_number(value) else "-"


def _clip(value: Any, limit: int = 300) -> str:
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"
