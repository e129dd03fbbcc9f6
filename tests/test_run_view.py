"""The typed trial record, the read model of a run folder (runs/view.py) and GEPA's lineage
drawn in `cotune report` (scripted LMs)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import scripted_task as scripted  # tests/ is on pytest's path (pyproject)
from test_gepa import GOOD, gepa, optimize, planted_rule, reflector, task_lm
from test_report import ARTIFACTS, CHROMIUM, _chromium
from typer.testing import CliRunner

from cotune.cli import app
from cotune.optimize import Candidate, Child, Trial
from cotune.runs.folder import RunFolder
from cotune.runs.optimize import RunSpec, run_optimization
from cotune.runs.plots import lineage_graph
from cotune.runs.report import write_report
from cotune.runs.view import RunView, lineage

TASK_FILE = Path(__file__).with_name("scripted_task.py")


@pytest.fixture(autouse=True)
def scripted_lm(monkeypatch, tmp_path):
    monkeypatch.setattr("cotune.lm.factory.make_lm", scripted.make_scripted_lm)
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path / "shared-cache"))


@pytest.fixture
def gepa_run(tmp_path) -> Path:
    """A scripted GEPA run that keeps four children, rejects others and ends with two
    candidates on the frontier (seed 0 of the parity task; checked below, not assumed)."""
    spec = RunSpec(task=str(TASK_FILE), optimizer="gepa", threads=2, seed=0, train_size=8,
                   val_size=12, test_size=2, options={"max_metric_calls": 120})
    run_optimization(spec, tmp_path / "gepa")
    return tmp_path / "gepa"


def _svg(page: str) -> str:
    section = page.split("<h2>Lineage</h2>")[1]
    return section.split("</svg>")[0]


def _nodes(svg: str) -> dict[str, str]:
    """node id -> its class list and text"""
    return {m.group(2): m.group(1) + " " + m.group(3)
            for m in re.finditer(r'<g class="([^"]*)" data-node="([^"]*)">(.*?)</g>', svg)}


def test_the_run_folder_records_the_lineage_and_the_report_draws_it(gepa_run):
    candidates = json.loads((gepa_run / "candidates.json").read_text())
    trials = json.loads((gepa_run / "trials.json").read_text())
    found, best = candidates["candidates"], candidates["best_index"]
    # recorded: parents, kept or not, scores, the child each candidate came from, the frontier
    assert all(set(t) >= {"number", "kind", "parents", "accepted", "candidate", "children",
                          "minibatch_score", "parent_minibatch_score", "score"} for t in trials)
    for t in trials:
        kept = [ch["candidate"] for ch in t["children"] if ch["candidate"] is not None]
        assert kept == ([t["candidate"]] if t["accepted"] else [])
        if t["accepted"]:
            assert found[t["candidate"]]["params"]["parents"] == t["parents"]
            assert t["score"] == found[t["candidate"]]["score"]
    frontier = {c["index"] for c in found if c["params"]["on_frontier"]}
    rejected = {f"t{t['number']}.{j}": t for t in trials
                for j, ch in enumerate(t["children"]) if ch["candidate"] is None}
    assert len(found) >= 3 and rejected and len(frontier) >= 2  # the run is worth drawing

    result = CliRunner().invoke(app, ["report", str(gepa_run)])
    assert result.exit_code == 0, result.output
    svg = _svg((gepa_run / "report.html").read_text())
    nodes = _nodes(svg)
    assert set(nodes) == {f"c{c['index']}" for c in found} | set(rejected)
    edges = set(re.findall(r'class="edge (\w+)" data-edge="([^"]+)"', svg))
    expected = {("accepted", f"c{p}-&gt;c{c['index']}") for c in found
                for p in c["params"]["parents"]}
    expected |= {("rejected", f"c{p}-&gt;{node}") for node, t in rejected.items()
                 for p in t["parents"]}
    assert edges == expected
    for c in found:
        text = nodes[f"c{c['index']}"]
        assert f"val {c['score']:.3f}" in text
        assert ("frontier" in text.split()) == (c["index"] in frontier)
        assert ("best" in text.split()) == (c["index"] == best)
    for node, t in rejected.items():
        child = t["children"][int(node.split(".")[1])]
        assert nodes[node].startswith("node rejected")
        assert f"mini-batch {child['minibatch_score']:.3f} (rejected)" in nodes[node]


def test_a_planted_instruction_is_drawn_as_the_kept_child_beside_the_rejected_ones():
    proposals = {0: "BAD: answer b.", 1: "BAD again.", 2: GOOD}
    refl = reflector(lambda r: proposals.get(r.rollout_id, "BAD."))
    result = optimize(gepa(refl, max_metric_calls=20 + 3 * 2 * 3 + 20), task_lm(planted_rule))
    tree = lineage(result.candidates, result.trials, result.best_index)
    assert [(n.id, n.accepted) for n in tree.nodes] == [
        ("c0", True), ("c1", True), ("t0.0", False), ("t1.0", False)]
    assert {(e.parent, e.child, e.accepted) for e in tree.edges} == {
        ("c0", "c1", True), ("c0", "t0.0", False), ("c0", "t1.0", False)}
    kept = tree.nodes[1]
    assert kept.score == 1.0 and kept.best and kept.iteration == 2 and kept.depth == 1
    assert tree.nodes[2].minibatch_score < 0.5  # worse than the parent on the mini-batch
    svg = lineage_graph(tree)
    assert svg.count('class="edge rejected"') == 2 and svg.count('class="edge accepted"') == 1
    assert 'data-node="c1"' in svg and "#1 instruction" in svg and "val 1.000" in svg


def test_merges_have_an_edge_from_each_parent():
    def candidate(index, parents, kind, score, frontier=False):
        return Candidate(index, f"candidate {index}", score,
                         {"parents": parents, "kind": kind, "on_frontier": frontier,
                          "iteration": index - 1 if parents else None})

    found = [candidate(0, [], "seed", 0.25), candidate(1, [0], "instruction", 0.5, True),
             candidate(2, [0], "instruction", 0.5, True), candidate(3, [1, 2], "merge", 1.0)]
    trials = [
        Trial(0, "reflect", 10, parents=[0], candidate=1, accepted=True,
              children=[Child("instruction", 1.0, 1), Child("demos", 0.5)]),
        Trial(1, "reflect", 20, parents=[0], candidate=2, accepted=True,
              children=[Child("instruction", 1.0, 2)]),
        Trial(2, "merge", 30, parents=[1, 2], accepted=False, children=[Child("merge", 0.0)]),
        Trial(3, "merge", 40, parents=[1, 2], candidate=3, accepted=True,
              children=[Child("merge", 1.0, 3)]),
    ]
    tree = lineage(found, trials, best=3)
    assert {(e.parent, e.child, e.accepted) for e in tree.edges} == {
        ("c0", "c1", True), ("c0", "c2", True), ("c1", "c3", True), ("c2", "c3", True),
        ("c0", "t0.1", False), ("c1", "t2.0", False), ("c2", "t2.0", False)}
    depth = {n.id: n.depth for n in tree.nodes}
    assert depth == {"c0": 0, "c1": 1, "c2": 1, "c3": 2, "t0.1": 1, "t2.0": 2}
    svg = lineage_graph(tree)
    assert re.search(r'class="node candidate best" data-node="c3"', svg)
    assert len(re.findall(r'class="node candidate frontier" data-node="c[12]"', svg)) == 2
    assert 'data-node="t2.0"' in svg and "it 2 merge" in svg and "mini-batch 0.000" in svg


# -- the trial record and old run folders ----------------------------------------------------


OLD_TRIALS = [  # what run folders held before the typed record
    {"trial": 0, "params": {"classify:instruction": 1}, "minibatch_score": 0.5, "lm_calls": 9},
    {"step": 1, "name": "w", "strategy_prefix": "p -> w", "score": 0.75, "error": None,
     "lm_calls": 30},
    {"trial": 2, "kind": "reflect", "parent": 0, "predictor": "classify", "minibatch": [1, 2],
     "parent_minibatch_score": 0.5, "children": [
         {"instruction_chars": 10, "truncated": False, "demos": 0, "kind": "instruction",
          "minibatch_score": 1.0}],
     "accepted": True, "candidate": 1, "outcome": "accepted child 0 as candidate 1",
     "minibatch_score": 1.0, "val_score": 0.9, "frontier": "1:3", "metric_calls": 20,
     "lm_calls": 40, "params": {"kind": "reflect"}},
]


def test_old_trial_dicts_read_as_trials():
    search, step, reflect = (Trial.from_json(t) for t in OLD_TRIALS)
    assert (search.kind, search.number, search.minibatch_score, search.lm_calls) == (
        "search", 0, 0.5, 9)
    assert (step.kind, step.number, step.params["name"], step.score) == ("step", 1, "w", 0.75)
    assert (reflect.kind, reflect.parents, reflect.accepted, reflect.score) == (
        "reflect", [0], True, 0.9)
    assert reflect.children[0].candidate == 1 and reflect.details["metric_calls"] == 20
    assert Trial.from_json(reflect.to_json()) == reflect  # the stable shape round-trips


def test_an_old_run_folder_shows_and_reports_its_trials(tmp_path):
    spec = RunSpec(task=str(TASK_FILE), optimizer="mipro", threads=2, train_size=8,
                   val_size=6, test_size=2,
                   options={"num_trials": 3, "num_instruction_candidates": 2,
                            "num_demo_candidates": 2, "minibatch_size": 3})
    run = tmp_path / "old"
    run_optimization(spec, run)
    new = json.loads((run / "trials.json").read_text())
    old = [{"trial": t["number"], "params": t["params"], "minibatch_score": t["minibatch_score"],
            "lm_calls": t["lm_calls"]} for t in new]
    RunFolder(run).write_json("trials.json", old)
    assert RunView.load(run).trials == [Trial.from_json(t) for t in new]
    shown = CliRunner().invoke(app, ["show", str(run)])
    assert shown.exit_code == 0 and f"search trials ({len(old)}" in shown.output
    reported = CliRunner().invoke(app, ["report", str(run)])
    assert reported.exit_code == 0, reported.output
    assert f"Search trials ({len(old)}, scored on mini-batches)" in \
        (run / "report.html").read_text()


def test_a_trial_that_is_no_trial_is_named(tmp_path):
    spec = RunSpec(task=str(TASK_FILE), optimizer="vanilla", threads=2, train_size=4,
                   val_size=4, test_size=2)
    run = tmp_path / "run"
    run_optimization(spec, run)
    RunFolder(run).write_json("trials.json", [{"what": "ever"}])
    shown = CliRunner().invoke(app, ["show", str(run)])
    assert shown.exit_code == 1 and "trials.json is corrupt (entry 0: not a trial record" in \
        " ".join(shown.output.split())
    reported = CliRunner().invoke(app, ["report", str(run)])
    assert reported.exit_code == 1 and "trials.json is corrupt" in reported.output
    assert "trials.json is corrupt" in (run / "report.html").read_text()


def test_the_view_reads_scores_with_intervals_and_usage(tmp_path):
    spec = RunSpec(task=str(TASK_FILE), optimizer="random-search", threads=2, train_size=8,
                   val_size=6, test_size=4, options={"num_candidates": 2})
    run = tmp_path / "rs"
    summary = run_optimization(spec, run)
    view = RunView.load(run)
    r = view.result
    assert r is not None and view.complete and view.problems == {}
    assert r.test_score == summary.test_score and r.val_score == summary.val_score
    assert r.test_interval is not None and r.test_interval.to_json() == summary.test_interval
    assert r.total.calls == summary.usage["total"]["calls"]
    assert [c.index for c in view.candidates] == list(range(summary.num_candidates))
    assert view.best is not None and view.best.index == summary.best_index
    assert view.lineage is None  # random search keeps no parents


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package "
                    "`chromium`; scripts/test installs it when run as root)")
def test_the_lineage_renders_in_headless_chromium(tmp_path, gepa_run):
    page = write_report(gepa_run)
    view = RunView.load(gepa_run)
    dom = _chromium(page, tmp_path, "--dump-dom")
    assert dom.count('<g class="node') == len(view.lineage.nodes)
    assert dom.count('class="edge') == len(view.lineage.edges)
    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "gepa-report.png"
    shot.unlink(missing_ok=True)
    _chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,2400")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
