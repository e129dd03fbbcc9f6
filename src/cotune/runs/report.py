"""Run reports: one self-contained HTML page per run folder (or per bench folder).

The page needs nothing but a browser (:mod:`cotune.runs.html`: CSS inline, nothing fetched;
:mod:`cotune.runs.plots`: SVG drawn here).  What it shows comes from the read model of the
folder (:mod:`cotune.runs.view`).

A run's page shows the score of every search trial (mini-batch) and full evaluation against LM
calls with the best-so-far curve, the winning instruction and demos of each predictor beside the
original, GEPA's lineage (parent -> child, kept or rejected, scores, the Pareto frontier),
BetterTogether's steps with their score and cost, the fine-tuning loss (``training_log.jsonl``
files in the run folder), and the LM usage.  A bench's page compares its cells (table and bar
chart of test scores) and links to each cell's page.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cotune.runs.folder import CANDIDATES, CONFIG, write_atomic
from cotune.runs.formatting import (
    BENCH_COLUMNS,
    TEXT_COLUMNS,
    clip,
    columns_in_use,
    format_gain,
    format_interval,
    format_metrics,
    format_score,
    format_value,
    num,
    score,
    seconds,
    seed_spread,
)
from cotune.runs.html import Html, esc, facts, page, section, table
from cotune.runs.plots import (
    BEST_COLOR,
    EVAL_COLOR,
    PALETTE,
    TRIAL_COLOR,
    Series,
    bar_chart,
    best_so_far,
    line_plot,
    lineage_graph,
    nice_ticks,
    points,
)
from cotune.runs.view import (
    BENCH_RESULTS,
    LORA_RESULT,
    BenchView,
    RunView,
    training_seconds,
)

__all__ = [  # the formatters and constants other modules (and older callers) take from here
    "BENCH_COLUMNS", "BENCH_RESULTS", "LORA_RESULT", "REPORT_FILE", "TEXT_COLUMNS",
    "bench_report_html", "columns_in_use", "format_gain", "format_interval", "format_metrics",
    "format_score", "format_value", "nice_ticks", "report_problems", "run_report_html",
    "seed_spread", "training_seconds", "write_report",
]

REPORT_FILE = "report.html"


# -- entry point -------------------------------------------------------------------------------


def write_report(folder: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Write the report of a run folder, or of a bench folder (one holding ``results.json``)
    together with a report per cell; return the page's path (default ``FOLDER/report.html``)."""
    folder = Path(folder)
    out_path = Path(out) if out is not None else folder / REPORT_FILE
    if BenchView.is_bench(folder):
        bench = BenchView.load(folder)
        links = _write_cell_reports(bench, out_path.parent)
        text = _bench_page(bench, links)
    elif (folder / CONFIG).is_file():
        text = run_report_html(folder)
    else:
        raise FileNotFoundError(f"{folder} is neither a run folder (no {CONFIG}) nor a bench "
                                f"folder (no {BENCH_RESULTS})")
    return write_atomic(out_path, text)


def report_problems(folder: str | os.PathLike[str]) -> list[str]:
    """What :func:`write_report` had to leave out of the report of ``folder`` (a run, or a
    bench and its cells): one line per unusable file."""
    if BenchView.is_bench(folder):
        return BenchView.load(folder).all_problems()
    return list(RunView.load(folder).problems.values())


def _write_cell_reports(bench: BenchView, page_dir: Path) -> dict[str, str]:
    """Each cell's report, beside its run folder; cell name -> link relative to the page."""
    links: dict[str, str] = {}
    for cell, cell_dir in bench.cell_dirs().items():
        path = write_atomic(cell_dir / REPORT_FILE, run_report_html(cell_dir))
        links[cell] = Path(os.path.relpath(path, page_dir)).as_posix()
    return links


# -- a run -------------------------------------------------------------------------------------


def run_report_html(run_dir: str | os.PathLike[str]) -> str:
    view = RunView.load(run_dir)
    title = f"cotune run: {task_label(view.config)} / {optimizer_label(view.config)}"
    sections = [
        _run_header(view),
        _summary_cards(view),
        _score_section(view),
        _predictors_section(view),
        _lineage_section(view),
        _steps_section(view),
        _candidates_section(view),
        _trials_section(view),
        _loss_section(view),
        _usage_section(view),
    ]
    return page(title, sections)


def _run_header(view: RunView) -> str:
    c, status = view.config, view.status
    model = c.get("model") or {}
    splits = c.get("splits") or {}
    budget = {k: v for k, v in (c.get("budget") or {}).items() if v is not None}
    pairs = [
        ("task", task_label(c)), ("optimizer", optimizer_label(c)),
        ("model", model.get("name") or model.get("identity") or "?"), ("seed", c.get("seed")),
        ("splits (train/val/test)", "/".join(str(splits.get(k, "?"))
                                             for k in ("train", "val", "test"))),
        ("budget", ", ".join(f"{k} {v}" for k, v in budget.items()) or "none"),
        ("status", f"{status.get('state', 'unknown')} (attempt {status.get('attempt', '?')})"),
    ]
    error = f'<p class="error">{esc(status["error"])}</p>' if status.get("error") else ""
    error += "".join(f'<p class="error">{esc(problem)}</p>' for problem in view.problems.values())
    if status.get("rerun_error"):
        error += (f'<p class="error">Its last rerun did not complete: '
                  f'{esc(status["rerun_error"])}</p>')
    if status.get("state") == "running" and not view.in_use:
        error += ('<p class="error">No process is running it (killed?): rerun its command to '
                  "resume.</p>")
    return (f"<header><h1>{esc(task_label(c))} · {esc(optimizer_label(c))}</h1>"
            f'<p class="path">{esc(view.path)}</p>{facts(pairs)}{error}</header>')


def _summary_cards(view: RunView) -> str:
    r = view.result
    if r is None:
        return '<p class="note">No result yet: the run has not finished (rerun its command ' \
               "to resume it).</p>"
    total = r.total
    cards = [
        ("validation score [95% CI]", format_score(r.val_score, r.val_interval)),
        ("held-out test score [95% CI]", format_score(r.test_score, r.test_interval)),
        *((f"test {name}", format_score(value, r.test_metric_intervals.get(name)))
          for name, value in r.test_metrics.items()),
        *((("test vs unoptimized (paired)", format_gain(r.test_gain)),)
          if r.test_gain else ()),
        *((f"{g.metric}: {r.reference.description} (no LM) {g.reference:.3f}; the program "
           f"minus it", format_gain(g.gain)) for g in (r.reference.metrics if r.reference else ())),
        ("LM calls", num(total.calls)),
        ("backend calls", num(total.backend_calls)),
        ("tokens", num(total.total_tokens)),
        ("training s", seconds(view.training_seconds())),
        ("wall s", seconds(r.wall_s)),
    ]
    items = "".join(f'<div class="card"><div class="value">{esc(v)}</div>'
                    f'<div class="label">{esc(k)}</div></div>' for k, v in cards)
    notes = ('<p class="note">Stopped by the budget: the program is the best found before it '
             "ran out.</p>" if r.stopped_by_budget else "")
    if r.baseline_test_score is not None:
        notes += (f'<p class="note">The unoptimized program scores '
                  f'{esc(score(r.baseline_test_score))} on the same test examples.</p>')
    reason = r.selection.get("reason")
    if reason:
        notes += f'<p class="note">Why this program: {esc(reason)}</p>'
    return f'<section class="cards">{items}</section>{notes}'


def _score_section(view: RunView) -> str:
    trial_points = points((t.lm_calls, t.minibatch_score) for t in view.trials)
    eval_points = points((c.lm_calls, c.score) for c in view.candidates)
    best = view.best
    winner = points([(best.lm_calls, best.score)] if best is not None else [])
    series = [
        Series("trial (mini-batch score)", trial_points, TRIAL_COLOR, "points"),
        Series("full evaluation (validation score)", eval_points, EVAL_COLOR, "points"),
        Series("best so far", best_so_far(eval_points, trial_points), BEST_COLOR, "step"),
        Series("winner", winner, BEST_COLOR, "ring"),
    ]
    if not trial_points and not eval_points:
        body = '<p class="note">No scored trial or candidate to plot (no validation set?).</p>'
    else:
        body = line_plot([s for s in series if s.points], x_label="LM calls so far",
                         y_label="score", title="Score vs LM calls")
    return section("Score vs LM calls", body,
                   "Each point is one trial scored on a mini-batch or one candidate scored on "
                   "the whole validation set, placed at the LM calls the run had made by then.")


def _predictors_section(view: RunView) -> str:
    best = view.best
    if CANDIDATES in view.problems and best is None:
        return section("Winning program",
                       f'<p class="error">{esc(view.problems[CANDIDATES])}</p>')
    if best is None or best.state is None:
        return section("Winning program", '<p class="note">No candidate was recorded.</p>')
    winner = best.state.get("predictors") or {}
    original = view.original.get("predictors") or {}
    blocks = [_predictor_block(name, original.get(name) or {}, entry or {})
              for name, entry in winner.items()]
    lead = (f"<p>Candidate #{best.index}: {esc(best.description)}, "
            f"validation score {esc(score(best.score))}.</p>")
    return section("Winning program", lead + "".join(blocks))


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
    rows = [[str(i), *[clip(d["fields"].get(k, "")) for k in keys]]
            for i, d in enumerate(demos, 1)]
    return table(head, rows, numeric={0})


def _lineage_section(view: RunView) -> str:
    tree = view.lineage
    if tree is None:
        return ""
    kept = sum(n.accepted for n in tree.nodes)
    frontier = [n.candidate for n in tree.nodes if n.on_frontier]
    note = (f"{kept} kept candidates and {len(tree.rejected)} rejected children; the Pareto "
            f"frontier: {', '.join(f'#{c}' for c in frontier) or 'not recorded'}. A child is "
            "kept when it beats its parent on the mini-batch; kept ones are scored on the "
            "whole validation set.")
    return section("Lineage", lineage_graph(tree, title="Lineage of the candidates"), note)


def _steps_section(view: RunView) -> str:
    steps = view.steps
    if not steps:
        return ""
    rows, previous_calls, previous_s = [], 0, 0.0
    elapsed = {c.params.get("step"): c.elapsed_s for c in view.candidates}
    for t in steps:
        name = t.params.get("name", "")
        calls = t.lm_calls
        step_s = elapsed.get(t.number, previous_s)
        trained = view.training_seconds(f"work/step{t.number}-{name}")
        rows.append([str(t.number), str(name), str(t.params.get("strategy_prefix", "")),
                     score(t.score), num(calls - previous_calls), num(calls),
                     seconds(step_s - previous_s), seconds(trained), t.error or ""])
        previous_calls, previous_s = calls, step_s
    head = ["step", "kind", "strategy so far", "val score", "LM calls (step)",
            "LM calls (total)", "time s (step)", "training s", "note"]
    return section("BetterTogether steps",
                   table(head, rows, numeric={0, 3, 4, 5, 6, 7}),
                   "p: prompt optimization, w: LoRA weight optimization; each step starts "
                   "from the previous step's program.")


def _candidates_section(view: RunView) -> str:
    if not view.candidates:
        return ""
    rows, running, highlight = [], None, None
    for n, c in enumerate(view.candidates):
        if c.score is not None and (running is None or c.score > running):
            running = c.score
        is_best = c.index == view.best_index
        highlight = n if is_best else highlight
        verdict = c.vs_baseline or {}
        rows.append([f"{c.index}{' ★' if is_best else ''}", num(c.lm_calls), score(c.score),
                     score(running), format_gain(verdict.get("interval")),
                     seconds(c.elapsed_s), c.description])
    head = ["#", "LM calls", "val score", "best so far", "gain vs baseline (95% CI)", "time s",
            "candidate"]
    return section("Candidates (full evaluations)", table(head, rows, numeric={0, 1, 2, 3, 4},
                                                          highlight=highlight))


def _trials_section(view: RunView) -> str:
    trials = view.search_trials
    if not trials:
        return ""
    rows = [[num(t.number), num(t.lm_calls), score(t.minibatch_score),
             ", ".join(f"{k}={v}" for k, v in t.params.items())]
            for t in trials]
    return section(f"Search trials ({len(trials)}, scored on mini-batches)",
                   table(["trial", "LM calls", "mini-batch score", "choice"], rows,
                         numeric={0, 1, 2}))


def _loss_section(view: RunView) -> str:
    series = []
    for i, (label, rows) in enumerate(view.loss_curves()):
        curve = points((row.get("step"), row.get("loss")) for row in rows)
        series.append(Series(label, curve, PALETTE[i % len(PALETTE)], "line"))
    series = [s for s in series if s.points]
    if not series:
        return ""
    plot = line_plot(series, x_label="optimizer step", y_label="training loss",
                     title="Fine-tuning loss", y_from_zero=False)
    return section("Fine-tuning loss", plot,
                   "One line per trained adapter (its training_log.jsonl).")


def _usage_section(view: RunView) -> str:
    r = view.result
    if r is None or not r.usage:
        return ""
    rows = [[part, num(u.calls), num(u.cache_hits), num(u.backend_calls), num(u.total_tokens),
             f"{u.cost or 0:.4f}"] for part, u in r.usage.items()]
    head = ["", "LM calls", "cache hits", "backend calls", "tokens", "cost"]
    replayed = r.replayed
    note = (f"Replayed from the journal on resume: {replayed.get('steps', 0)} steps, "
            f"{replayed.get('calls', 0)} LM calls." if replayed.get("steps") else "")
    return section("LM usage and cost", table(head, rows, numeric={1, 2, 3, 4, 5}), note)


# -- a bench -----------------------------------------------------------------------------------


def bench_report_html(bench_dir: str | os.PathLike[str], links: Mapping[str, str]) -> str:
    return _bench_page(BenchView.load(bench_dir), links)


def _bench_page(bench: BenchView, links: Mapping[str, str]) -> str:
    records = bench.records
    bars = [(_bar_label(r), r.get("test_score"), r.get("label", "?")) for r in records]
    chart = (bar_chart(bars, x_label="held-out test score", title="Test score per cell")
             if records else '<p class="note">No cell has run yet.</p>')
    columns = columns_in_use(BENCH_COLUMNS, records)
    head = [title for title, _ in columns] + ["report"]
    rows = []
    for r in records:
        row = [format_value(key, r.get(key)) for _, key in columns]
        link = links.get(str(r.get("cell")))
        rows.append([*row, Html(f'<a href="{esc(link)}">report</a>') if link else "-"])
    errors = [f"<li><code>{esc(r.get('cell'))}</code>: {esc(r['error'])}</li>"
              for r in records if r.get("error")]
    error_list = f'<ul class="error">{"".join(errors)}</ul>' if errors else ""
    sections = [
        _bench_header(bench)
        + "".join(f'<p class="error">{esc(problem)}</p>' for problem in bench.problems),
        section("Test scores", chart, "Bars share a colour per optimizer."),
        section("Cells", table(head, rows, numeric={
            i for i, (_, key) in enumerate(columns) if key not in TEXT_COLUMNS
        }) + error_list, "Test scores with their 95% bootstrap intervals; 'vs vanilla': the "
                         "paired difference to the unoptimized program on the same test "
                         "examples, 'within noise' when its interval includes 0."),
        _spread_section(records),
    ]
    return page("cotune bench", sections)


def _spread_section(records: Sequence[Mapping[str, Any]]) -> str:
    spreads = seed_spread(records)
    if not spreads:
        return ""
    rows = [[format_value("task", g["task"]), g["label"], g["model"],
             ", ".join(map(str, g["seeds"])), f"{g['mean']:.3f} ± {g['sd']:.3f}",
             f"{g['min']:.3f}–{g['max']:.3f}", format_value("gain_mean", g["gain_mean"])]
            for g in spreads]
    head = ["task", "optimizer", "model", "seeds", "test mean ± sd", "min–max", "gain mean"]
    return section("Over seeds", table(head, rows, numeric={4, 5, 6}),
                   "The spread of each grid entry's test score over its seeds.")


def _bench_header(bench: BenchView) -> str:
    spec, records = bench.spec, bench.records
    budget = ", ".join(f"{k} {spec[k]}" for k in ("max_calls", "max_tokens", "max_seconds")
                       if spec.get(k) is not None)
    finished = sum(r.get("status") == "finished" for r in records)
    pairs = [("cells", f"{len(records)} ({finished} finished)"),
             ("budget per cell", budget or "none"),
             ("models", ", ".join(map(str, spec.get("models") or [])) or "?"),
             ("seeds", ", ".join(map(str, spec.get("seeds") or [])) or "?")]
    return (f'<header><h1>cotune bench</h1><p class="path">{esc(bench.path)}</p>'
            f"{facts(pairs)}</header>")


def _bar_label(record: Mapping[str, Any]) -> str:
    return (f"{format_value('task', record.get('task'))} · {record.get('label', '?')} · "
            f"{record.get('model', '?')} · seed {record.get('seed', '?')}")


# -- labels ------------------------------------------------------------------------------------


def task_label(config: Mapping[str, Any]) -> str:
    name = str((config.get("task") or {}).get("name", "?"))
    return Path(name).stem if name.endswith(".py") else name


def optimizer_label(config: Mapping[str, Any]) -> str:
    optimizer = config.get("optimizer") or {}
    extra = optimizer.get("strategy") or optimizer.get("preset")
    return f"{optimizer.get('name', '?')}" + (f" ({extra})" if extra else "")
