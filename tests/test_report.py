"""Run and bench reports (`cotune report`): one self-contained HTML page, escaped, and rendered
by a real headless Chromium (scripted LM, stub trainer)."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import scripted_task as scripted  # tests/ is on pytest's path (pyproject)
from typer.testing import CliRunner

from cotune.cli import app
from cotune.optimize.finetune import BootstrapFinetune
from cotune.runs.bench import BenchSpec, run_bench
from cotune.runs.folder import RunFolder
from cotune.runs.optimize import RunSpec, run_optimization
from cotune.runs.report import format_gain, format_score, nice_ticks, write_report

TASK_FILE = Path(__file__).with_name("scripted_task.py")
ARTIFACTS = Path(__file__).parents[1] / "test-artifacts"
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium")
                 if p and Path(p).is_file()), None)
MALICIOUS = "<script>alert(1)</script>"



class TunedLM(scripted.SlowScriptedLM):
    """Stands for the scripted LM with a LoRA adapter."""

    def __init__(self, adapter: Path) -> None:
        super().__init__(scripted.scripted_answer, model="scripted+lora")
        self.adapter = adapter

    def describe(self) -> dict[str, str]:
        return {"backend": "stub", "lora_path": str(self.adapter)}


class StubTrainer:
    """Writes what LoraTrainer writes for a report (training_log.jsonl, lora.json), no torch."""

    def fine_tune(self, lm, records, out_dir) -> TunedLM:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        losses = [2.4 * math.exp(-step / 4) + 0.3 for step in range(1, 13)]
        log = [json.dumps({"step": i, "epoch": 0, "loss": loss, "lr": 1e-4})
               for i, loss in enumerate(losses, 1)]
        (out / "training_log.jsonl").write_text("\n".join(log) + "\n")
        (out / "lora.json").write_text(json.dumps({"seconds": 12.5, "steps": len(losses)}))
        return TunedLM(out / "adapter.gguf")


@pytest.fixture(autouse=True)
def scripted_lm(monkeypatch, tmp_path):
    monkeypatch.setattr("cotune.lm.factory.make_lm", scripted.make_scripted_lm)
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path / "shared-cache"))
    monkeypatch.setattr(BootstrapFinetune, "trainer", property(lambda self: StubTrainer()))


def _run(tmp_path: Path, name: str, optimizer: str, **options) -> Path:
    spec = RunSpec(task=str(TASK_FILE), optimizer=optimizer, threads=2, train_size=8,
                   val_size=6, test_size=4, options=options)
    run_optimization(spec, tmp_path / name)
    return tmp_path / name


@pytest.fixture
def bt_run(tmp_path) -> Path:
    return _run(tmp_path, "bt", "bettertogether", strategy="p -> w -> p",
                prompt_options={"num_candidates": 3})


@pytest.fixture
def mipro_run(tmp_path) -> Path:
    return _run(tmp_path, "mipro", "mipro", num_trials=6, num_instruction_candidates=3,
                num_demo_candidates=3, minibatch_size=3)


def _winner(run: Path) -> dict:
    candidates = RunFolder(run).read_json("candidates.json")
    return candidates["candidates"][candidates["best_index"]]["state"]["predictors"]["classify"]


def _set_winner(run: Path, **changes) -> None:
    folder = RunFolder(run)
    candidates = folder.read_json("candidates.json")
    best = candidates["candidates"][candidates["best_index"]]
    best["state"]["predictors"]["classify"].update(changes)
    best["description"] = "</table><b>bold</b>"
    folder.write_json("candidates.json", candidates)


# -- a run's page ------------------------------------------------------------------------------


def test_a_run_report_shows_the_score_path_steps_winner_and_loss(bt_run):
    page = write_report(bt_run).read_text()
    assert page.startswith("<!DOCTYPE html>") and page.count("<svg") == 2
    for heading in ("Score vs LM calls", "Winning program", "BetterTogether steps",
                    "Candidates (full evaluations)", "Fine-tuning loss", "LM usage and cost"):
        assert f"<h2>{heading}</h2>" in page
    assert "LM calls so far" in page and "best so far" in page and "training loss" in page
    assert "work/step1-w/finetune-0" in page  # the loss curve's legend
    winner = _winner(bt_run)
    assert html.escape(winner["instruction"]) in page
    assert "Say whether the number is even or odd." in page  # the original, beside it
    assert all(html.escape(d["fields"]["text"]) in page for d in winner["demos"])
    steps = _rows(page, "BetterTogether steps")
    assert [row[:3] for row in steps] == [["0", "p", "p"], ["1", "w", "p -&gt; w"],
                                          ["2", "p", "p -&gt; w -&gt; p"]]
    assert [row[7] for row in steps] == ["-", "12.5", "-"]  # training seconds of the w step

    result = RunFolder(bt_run).read_json("result.json")  # scores with their intervals
    assert html.escape(format_score(result["test_score"], result["test_interval"])) in page
    assert html.escape(format_score(result["val_score"], result["val_interval"])) in page
    assert "test vs unoptimized (paired)" in page
    assert html.escape(format_gain(result["test_gain"])) in page
    assert f"Why this program: {html.escape(result['selection']['reason'])}" in page
    candidates = RunFolder(bt_run).read_json("candidates.json")["candidates"]
    gains = [row[4] for row in _rows(page, "Candidates (full evaluations)")]
    assert gains == [html.escape(format_gain((c["vs_baseline"] or {}).get("interval")))
                     for c in candidates]
    assert gains[0] == "-" and gains[1] != "-"  # the baseline, then a paired comparison


def _rows(page: str, section: str) -> list[list[str]]:
    """The body cells of the first table after the heading ``section``."""
    table = page.split(f"<h2>{section}</h2>")[1].split("</table>")[0].split("<tbody>")[1]
    return [re.findall(r"<td[^>]*>(.*?)</td>", row) for row in re.findall(r"<tr.*?</tr>", table)]


def test_a_mipro_report_plots_every_trial_and_full_evaluation(mipro_run):
    page = write_report(mipro_run).read_text()
    trials = RunFolder(mipro_run).read_json("trials.json")
    scored = [c for c in RunFolder(mipro_run).read_json("candidates.json")["candidates"]
              if c["score"] is not None]
    assert page.count("<title>trial (mini-batch score):") == len(trials) > 0
    assert page.count("<title>full evaluation (validation score):") == len(scored)
    assert f"Search trials ({len(trials)}, scored on mini-batches)" in page


def test_data_is_escaped(bt_run):
    _set_winner(bt_run, instruction=MALICIOUS,
                demos=[{"fields": {"text": "<img src=x onerror=alert(2)>", "parity": "odd"},
                        "inputs": ["text"]}])
    page = write_report(bt_run).read_text()
    assert "<script" not in page and "<img" not in page and "<b>bold" not in page
    assert html.escape(MALICIOUS) in page
    assert "&lt;img src=x onerror=alert(2)&gt;" in page


def test_the_page_is_self_contained(bt_run):
    page = write_report(bt_run).read_text()
    assert "<style>" in page
    for external in ("<script", "<link", "src=", "url(", "@import"):
        assert external not in page
    assert set(re.findall(r"https?://[^\s\"'<]+", page)) == {"http://www.w3.org/2000/svg"}


def test_an_unfinished_run_says_so(tmp_path, bt_run):
    folder = RunFolder(bt_run)
    for name in ("result.json", "candidates.json", "trials.json"):
        folder.file(name).unlink()
    folder.set_status("running")
    page = write_report(bt_run, tmp_path / "page.html").read_text()
    assert "No result yet" in page and "No process is running it" in page


# -- a bench's page ----------------------------------------------------------------------------


def _bench(tmp_path: Path) -> Path:
    spec = BenchSpec.from_dict({
        "tasks": [str(TASK_FILE), "no-such-task"], "threads": 2,
        "optimizers": ["vanilla", {"name": "random-search", "options": {"num_candidates": 2}}],
        "train_size": 6, "val_size": 4, "test_size": 4,
    })
    run_bench(spec, tmp_path / "bench")
    return tmp_path / "bench"


def test_a_bench_report_compares_cells_and_links_their_reports(tmp_path):
    bench = _bench(tmp_path)
    page = write_report(bench).read_text()
    assert "<svg" in page and "Test score per cell" in page and "<table>" in page
    links = re.findall(r'<a href="([^"]+)">report</a>', page)
    assert len(links) == 2
    for link in links:
        assert (bench / link).is_file() and "<h2>Score vs LM calls</h2>" in (
            bench / link).read_text()
    assert page.count("no test score") == 2  # the failing cells, drawn without a bar
    assert "test 95% CI" in page and "no example differs" in page  # vanilla vs itself
    assert "unknown task &#x27;no-such-task&#x27;" in page


def test_cotune_report(tmp_path, bt_run):
    out = tmp_path / "elsewhere" / "page.html"
    result = CliRunner().invoke(app, ["report", str(bt_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == str(out) and "<svg" in out.read_text()
    missing = CliRunner().invoke(app, ["report", str(tmp_path / "nothing")])
    assert missing.exit_code == 1 and "neither a run folder" in missing.output


def test_nice_ticks():
    assert nice_ticks(0, 1) == [0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(0, 136) == [0, 50, 100, 150]
    assert nice_ticks(0.31, 2.2) == [0, 0.5, 1.0, 1.5, 2.0, 2.5]
    assert nice_ticks(0, 12, integer=True) == [0, 5, 10, 15]
    assert nice_ticks(0, 3, integer=True) == [0, 1, 2, 3]
    flat = nice_ticks(3, 3)  # one value: a range around it
    assert flat[0] < 3 < flat[-1] and len(flat) >= 3


# -- a real browser ----------------------------------------------------------------------------


def _chromium(page: Path, tmp_path: Path, *args: str) -> str:
    profile = tmp_path / f"chromium-profile-{len(list(tmp_path.glob('chromium-profile-*')))}"
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
               "--disable-background-networking", "--disable-component-update",
               "--disable-sync", "--no-first-run", "--hide-scrollbars",
               f"--user-data-dir={profile}", *args, page.resolve().as_uri()]
    done = subprocess.run(command, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (Debian package "
                    "`chromium`; scripts/test installs it when run as root)")
def test_the_report_renders_in_headless_chromium(tmp_path, bt_run):
    page = write_report(bt_run)
    dom = _chromium(page, tmp_path, "--dump-dom")
    # steps, candidates and usage, plus a demos table when the winner has demos
    tables = 3 + bool(_winner(bt_run)["demos"])
    assert dom.count("<svg") == 2 and dom.count("<table>") == tables
    assert "<circle" in dom and "<polyline" in dom
    assert html.escape(_winner(bt_run)["instruction"]) in dom

    ARTIFACTS.mkdir(exist_ok=True)
    for name, target in (("report.png", page), ("bench-report.png",
                                                write_report(_bench(tmp_path)))):
        shot = ARTIFACTS / name
        shot.unlink(missing_ok=True)
        _chromium(target, tmp_path, f"--screenshot={shot}", "--window-size=1280,2000")
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000
