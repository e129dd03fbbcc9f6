"""Run folders, the SQLite journal, user task files and resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import scripted_task as scripted  # tests/ is on pytest's path (pyproject)

from cotune import Budget, LMCache, load_program
from cotune.core.runtime import context
from cotune.evaluate.stats import bootstrap_ci, paired_bootstrap_ci
from cotune.lm.budget import use_budget
from cotune.lm.types import BudgetExceeded
from cotune.lm.usage import track_usage
from cotune.runs.folder import RunFolder, RunFolderError
from cotune.runs.journal import JournalError, SQLiteJournal
from cotune.runs.optimize import RunSpec, build_optimizer, run_optimization
from cotune.tasks import get_task
from cotune.tasks.user import UserTaskError, load_user_task

TASK_FILE = Path(__file__).with_name("scripted_task.py")



def _spec(**changes) -> RunSpec:
    settings = {"task": str(TASK_FILE), "optimizer": "random-search", "threads": 2,
                "options": {"num_candidates": 3}}
    return RunSpec(**{**settings, **changes})


def _lm(cache_path: Path | None = None):
    return scripted.make_scripted_lm(cache=LMCache(cache_path) if cache_path else None)


# -- the journal -------------------------------------------------------------------------------


def test_journal_persists_each_put(tmp_path):
    path = tmp_path / "journal.sqlite"
    with SQLiteJournal(path) as journal:
        journal.put("eval:a", {"score": 0.5, "scores": [1, 0]})
        journal.put("demos:a", [1, 2, 3])
        assert journal.get("missing", "default") == "default"
    reopened = SQLiteJournal(path)
    assert reopened.get("eval:a") == {"score": 0.5, "scores": [1, 0]}
    assert reopened.keys("eval:") == ["eval:a"]
    assert reopened.keys() == ["demos:a", "eval:a"]
    assert reopened.memo("eval:a", lambda: pytest.fail("recomputed")) == {"score": 0.5,
                                                                         "scores": [1, 0]}
    assert len(reopened.keys()) == 2


def test_journal_is_thread_safe(tmp_path):
    journal = SQLiteJournal(tmp_path / "journal.sqlite")

    def write(worker: int) -> None:
        for i in range(20):
            journal.put(f"w{worker}:{i}", {"worker": worker, "i": i})

    threads = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(journal.keys()) == 80
    assert journal.get("w3:19") == {"worker": 3, "i": 19}


def test_journal_rejects_a_corrupt_file(tmp_path):
    path = tmp_path / "journal.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(JournalError, match="not a usable journal"):
        SQLiteJournal(path)


def test_journal_rejects_values_that_are_not_json(tmp_path):
    journal = SQLiteJournal(tmp_path / "journal.sqlite")
    with pytest.raises(TypeError):
        journal.put("bad", object())
    assert journal.keys() == []


def test_replayed_steps_are_charged_to_budgets_and_meters(tmp_path):
    """A step replayed from the journal costs what it cost the first time (as cache hits), so
    a call budget stops a resumed run where the uninterrupted run stopped."""
    path, lm = tmp_path / "journal.sqlite", _lm()

    def step() -> str:
        return "|".join(lm.chat([{"role": "user", "content": f"q{i}"}]).text for i in range(3))

    first = SQLiteJournal(path).memo("step", step)
    replay = SQLiteJournal(path)
    with track_usage() as meter, use_budget(Budget(max_calls=4)) as b:
        assert replay.memo("step", step) == first
        assert (b.calls, meter.snapshot().calls, meter.snapshot().cache_hits) == (3, 3, 3)
        assert meter.snapshot().backend_calls == 0
    assert len(lm.requests) == 3  # the replay made no call
    with use_budget(Budget(max_calls=2)), pytest.raises(BudgetExceeded):
        SQLiteJournal(path).memo("step", step)


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_a_step_computed_while_the_lm_failed_is_never_journaled(tmp_path, kind):
    """Even a step that caught the LM's error and returned: its result is not the one the LM
    gives when it works, so the rerun must compute it again."""
    from cotune import ScriptedLM
    from cotune.lm import LMTransientError
    from cotune.optimize import MemoryJournal

    class Down(ScriptedLM):
        def _complete(self, request):
            raise LMTransientError("connection refused")

    down, up = Down("x", max_retries=0), ScriptedLM("fine")

    def step(lm) -> str:
        try:
            return lm.chat([{"role": "user", "content": "q"}]).text
        except LMTransientError:
            return "no answer"

    journal = SQLiteJournal(tmp_path / "j.sqlite") if kind == "sqlite" else MemoryJournal()
    assert journal.memo("step", lambda: step(down)) == "no answer"
    assert journal.keys() == []
    assert journal.memo("step", lambda: step(up)) == "fine"
    assert journal.get("step") == "fine"


# -- user task files ---------------------------------------------------------------------------


def test_get_task_loads_a_task_file():
    task = get_task(str(TASK_FILE))
    splits = task.load_splits(seed=0)
    assert (len(splits.train), len(splits.val), len(splits.test)) == (20, 12, 8)
    assert task.description.startswith("Parity of a number")
    assert task.make_program() is not task.make_program()  # a fresh copy each time


@pytest.mark.parametrize(
    ("source", "error"),
    [
        ("program = None\n", r"defines neither `program` nor `make_program\(\)`"),
        ("from cotune import Predict, Example\nprogram = Predict('a -> b')\n"
         "trainset = [Example(a=1, b=2).with_inputs('a')]\n", "defines no `metric"),
        ("from cotune import Predict\nprogram = Predict('a -> b')\nmetric = len\n",
         r"defines neither `trainset` nor `load_splits\(seed\)`"),
        ("from cotune import Predict\nprogram = Predict('a -> b')\nmetric = len\n"
         "trainset = [{'a': 1, 'b': 2}]\n", r"trainset\[0\] is a dict, expected an Example"),
        ("from cotune import Predict, Example\nprogram = Predict('a -> b')\nmetric = len\n"
         "trainset = [Example(a=1, b=2)]\n", "no inputs marked"),
        ("program = 42\nmetric = len\ntrainset = []\n", "`program` is a int"),
        ("raise RuntimeError('boom')\n", "failed to import .*boom"),
        ("from cotune import Predict, Example\nprogram = Predict('a -> b')\nmetric = len\n"
         "trainset = [Example(a=1, b=2).with_inputs('a')]\nextra_metrics = [len]\n",
         "`extra_metrics` must be a dict"),
    ],
)
def test_task_file_errors_are_clear(tmp_path, source, error):
    path = tmp_path / "task.py"
    path.write_text(source)
    with pytest.raises(UserTaskError, match=error):
        load_user_task(path).load_splits(seed=0)


def test_unknown_task_names_the_known_ones():
    with pytest.raises(KeyError, match="known tasks: .*iris.*or a path to a task file"):
        get_task("no-such-task")


def test_unknown_optimizer_and_bad_options_are_clear():
    with pytest.raises(ValueError, match="unknown optimizer 'nope'"):
        build_optimizer("nope", scripted.metric)
    with pytest.raises(ValueError, match="bad option"):
        build_optimizer("random-search", scripted.metric, options={"no_such_option": 1})
    with pytest.raises(ValueError, match="--preset applies to the MIPRO optimizers"):
        build_optimizer("bootstrap", scripted.metric, preset="light")


# -- run folders -------------------------------------------------------------------------------


def test_run_folder_is_complete_after_a_run(tmp_path):
    run = tmp_path / "run"
    summary = run_optimization(_spec(), run, lm=_lm(run / "lm_cache.sqlite"))

    folder = RunFolder(run)
    config = folder.config()
    assert config["task"]["name"] == str(TASK_FILE.resolve())
    assert config["optimizer"]["name"] == "random-search"
    assert config["optimizer"]["num_candidates"] == 3
    assert config["splits"]["train"] == 20 and config["seed"] == 0
    assert folder.status()["state"] == "finished"
    assert SQLiteJournal(folder.journal_path).keys("eval:")

    candidates = folder.read_json("candidates.json")
    assert len(candidates["candidates"]) == 6
    assert all(c["score"] is not None and c["state"] for c in candidates["candidates"])
    best = candidates["candidates"][candidates["best_index"]]
    program = load_program(scripted.Parity(), folder.program_path)
    assert program.dump_state() == best["state"]

    result = folder.read_json("result.json")
    assert result["val_score"] == best["score"] == summary.val_score
    assert result["test"]["examples"] == 8 and result["test_score"] == summary.test_score
    # the final program and the unoptimized one (once when they are the same), on 8 examples
    unchanged = best["state"] == candidates["original"]
    assert result["usage"]["test"]["calls"] == (8 if unchanged else 16)
    total = result["usage"]["total"]
    assert total["calls"] == total["cache_hits"] + total["backend_calls"] > 0
    assert result["stopped_by_budget"] is False and result["wall_s"] > 0
    with context(lm=_lm()):  # the saved program scores what the run says it scored
        from cotune.evaluate import Evaluate

        test = Evaluate(scripted.testset, scripted.metric, display_progress=False)(program)
    assert test.score == result["test_score"]
    # the task's extra metric is scored on the same test predictions, not optimized
    said_odd = sum(r.prediction["parity"] == "odd" for r in test.results) / len(test.results)
    assert result["test"]["metrics"] == {"said_odd": said_odd}
    assert result["test_metrics"] == summary.test_metrics == {"said_odd": said_odd}

    # every score with its 95% bootstrap interval; the gain over the unoptimized program
    assert result["test"]["scores"] == test.scores
    assert result["test_interval"] == bootstrap_ci(test.scores).to_json()
    assert result["val_interval"] == bootstrap_ci(best["scores"]).to_json()
    assert result["test_metric_intervals"]["said_odd"]["estimate"] == said_odd
    with context(lm=_lm()):
        unoptimized = Evaluate(scripted.testset, scripted.metric,
                               display_progress=False)(scripted.Parity())
    assert result["baseline_test_score"] == unoptimized.score
    assert result["baseline_test"]["scores"] == unoptimized.scores
    gain = paired_bootstrap_ci(test.scores, unoptimized.scores)
    assert result["test_gain"] == {**gain.to_json(), "within_noise": not gain.excludes_zero}
    assert summary.test_gain == result["test_gain"]
    # why this program: recorded with the candidates and the result
    assert candidates["selection"] == result["selection"]
    assert result["selection"]["chosen_index"] == candidates["best_index"]
    assert result["selection"]["reason"]


def test_rerunning_a_finished_run_replays_it_without_lm_calls(tmp_path):
    run = tmp_path / "run"
    first = run_optimization(_spec(), run, lm=_lm())
    program = RunFolder(run).program_path.read_text()
    lm = _lm()  # no cache at all: everything must come from the journal
    again = run_optimization(_spec(), run, lm=lm)
    assert lm.requests == []
    assert again.attempt == 2
    assert (again.val_score, again.test_score) == (first.val_score, first.test_score)
    assert again.usage["total"]["calls"] == first.usage["total"]["calls"]
    assert RunFolder(run).program_path.read_text() == program


def test_a_different_config_is_refused_unless_forced(tmp_path):
    run = tmp_path / "run"
    run_optimization(_spec(), run, lm=_lm())
    with pytest.raises(RunFolderError, match=r"different configuration \(optimizer\.num_cand"):
        run_optimization(_spec(options={"num_candidates": 2}), run, lm=_lm())
    assert RunFolder(run).status()["state"] == "finished"  # the refused attempt changed nothing

    # threads and the budget may change on resume
    run_optimization(_spec(threads=1, max_calls=10_000), run, lm=_lm())

    summary = run_optimization(_spec(options={"num_candidates": 2}), run, lm=_lm(), force=True)
    assert summary.attempt == 1 and summary.num_candidates == 5
    assert RunFolder(run).config()["optimizer"]["num_candidates"] == 2


def test_a_foreign_folder_is_not_used(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match="not empty and not a cotune run folder"):
        run_optimization(_spec(), tmp_path, lm=_lm())
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert not (tmp_path / "config.json").exists()


def test_a_folder_in_use_is_refused(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with (folder.session({"a": 1}), pytest.raises(RunFolderError, match="in use"),
          RunFolder(tmp_path / "run").session({"a": 1})):
        pass


def test_a_failed_run_records_its_error(tmp_path):
    folder = RunFolder(tmp_path / "run")
    with pytest.raises(ZeroDivisionError), folder.session({"x": 1}):
        raise ZeroDivisionError("division by zero")
    status = folder.status()
    assert status["state"] == "failed"
    assert status["error"] == "ZeroDivisionError: division by zero"


def test_a_running_attempt_keeps_its_seconds_in_the_status_file(tmp_path, monkeypatch):
    """What a kill -9 leaves behind: the seconds the attempt had run, to within a heartbeat."""
    from cotune.runs import folder as folder_module

    monkeypatch.setattr(folder_module, "HEARTBEAT_S", 0.05)
    folder = RunFolder(tmp_path / "run")
    with folder.session({"x": 1}):
        time.sleep(0.5)
        on_disk = json.loads((tmp_path / "run" / "status.json").read_text())
        assert on_disk["state"] == "running"
        assert 0.25 <= on_disk["attempt_s"] <= 0.6
    folder.set_status("finished")
    assert folder.status()["state"] == "finished"  # a late beat never turns it back to running


def test_a_resumed_run_counts_the_seconds_of_the_attempts_before_it(tmp_path):
    run = tmp_path / "run"
    first = run_optimization(_spec(), run, lm=_lm())
    assert first.wall_s == pytest.approx(first.attempt_wall_s, abs=0.5)
    killed = {**RunFolder(run).status(), "state": "running", "attempt": 2, "pid": 1,
              "attempt_s": 500.0, "earlier_s": 100.0}
    (run / "status.json").write_text(json.dumps(killed))

    resumed = run_optimization(_spec(), run, lm=_lm())
    assert resumed.attempt == 3
    assert resumed.attempt_wall_s < 60
    assert 600 <= resumed.wall_s <= 600 + resumed.attempt_wall_s + 1
    result = json.loads((run / "result.json").read_text())
    assert result["wall_s"] == resumed.wall_s
    assert RunFolder(run).status()["earlier_s"] == 600.0


def test_corrupt_files_are_reported(tmp_path):
    run = tmp_path / "run"
    run_optimization(_spec(), run, lm=_lm())
    (run / "config.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="config.json is corrupt"):
        RunFolder(run).config()
    with pytest.raises(RunFolderError, match="config.json is corrupt"):
        run_optimization(_spec(), run, lm=_lm())


def test_a_call_budget_stops_cleanly_and_resumes_to_the_same_point(tmp_path):
    run = tmp_path / "run"
    summary = run_optimization(_spec(max_calls=40), run, lm=_lm())
    assert summary.stopped_by_budget
    assert summary.usage["optimization"]["calls"] <= 40
    assert RunFolder(run).status()["state"] == "finished"
    program = RunFolder(run).program_path.read_text()
    result = RunFolder(run).read_json("result.json")
    assert result["stopped_by_budget"] is True and result["test_score"] is not None

    lm = _lm()
    again = run_optimization(_spec(max_calls=40), run, lm=lm)
    assert again.stopped_by_budget and again.num_candidates == summary.num_candidates
    assert RunFolder(run).program_path.read_text() == program


# -- kill -9 and resume ------------------------------------------------------------------------

DRIVER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("scripted_task", sys.argv[1])
task = importlib.util.module_from_spec(spec)
spec.loader.exec_module(task)
import cotune.lm.factory
cotune.lm.factory.make_lm = task.make_scripted_lm
from cotune.cli import app
app(sys.argv[2:], prog_name="cotune")
"""


def _cotune(args: list[str], run: Path, log: Path, sleep: float) -> subprocess.Popen:
    env = {**os.environ, "COTUNE_TEST_SLEEP": str(sleep), "COTUNE_TEST_LOG": str(log),
           "COTUNE_CACHE_DIR": str(run.parent / "shared-cache")}
    command = [sys.executable, "-c", DRIVER, str(TASK_FILE), "optimize", "--task",
               str(TASK_FILE), "--run-dir", str(run), "--cache-dir", str(run), *args]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _finish(process: subprocess.Popen, timeout: float = 240) -> None:
    out, _ = process.communicate(timeout=timeout)
    assert process.returncode == 0, out.decode(errors="replace")[-3000:]


def _journal_size(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as conn:
            return conn.execute("SELECT COUNT(*) FROM entries").fetchone()[0]
    except sqlite3.Error:
        return 0  # not created yet, or busy


def _lines(path: Path) -> set[str]:
    if not path.exists():
        return set()
    return {line for line in path.read_text().splitlines() if len(line) == 64}


def _cached_keys(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        return {row[0] for row in conn.execute("SELECT key FROM answers")}


def _mipro_available() -> bool:
    try:
        from cotune.optimize.mipro import MIPRO  # noqa: F401
    except ImportError:
        return False
    return True


RESUMABLE = [
    pytest.param(["--optimizer", "random-search", "--set", "num_candidates=4"], 3,
                 id="random-search"),
    pytest.param(["--optimizer", "mipro", "--preset", "light", "--set", "num_trials=6",
                  "--set", "num_instruction_candidates=3", "--set", "num_demo_candidates=3",
                  "--set", "minibatch_size=6", "--set", "full_eval_every=3"], 6, id="mipro",
                 marks=pytest.mark.skipif(not _mipro_available(), reason="no MIPRO yet")),
    pytest.param(["--optimizer", "gepa", "--preset", "light", "--set", "max_metric_calls=90",
                  "--set", "minibatch_size=4", "--set", "num_proposals=2"], 5, id="gepa"),
    pytest.param(["--optimizer", "opro", "--set", "num_iterations=4", "--set",
                  "minibatch_size=6"], 4, id="opro"),
]


@pytest.mark.parametrize(("optimizer_args", "kill_after"), RESUMABLE)
def test_kill_9_then_resume_gives_the_uninterrupted_result(tmp_path, optimizer_args, kill_after):
    args = ["--threads", "2", *optimizer_args]
    reference = tmp_path / "reference"
    _finish(_cotune(args, reference, tmp_path / "reference.log", sleep=0))

    run = tmp_path / "run"
    killed_log, resumed_log = tmp_path / "killed.log", tmp_path / "resumed.log"
    process = _cotune(args, run, killed_log, sleep=0.03)
    deadline = time.monotonic() + 120
    while _journal_size(run / "journal.sqlite") < kill_after:
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline, "the journal never filled"
        time.sleep(0.01)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (run / "program.json").exists()
    assert json.loads((run / "status.json").read_text())["state"] == "running"
    completed = _cached_keys(run / "lm_cache.sqlite")
    assert completed and _lines(killed_log)

    _finish(_cotune(args, run, resumed_log, sleep=0))

    assert not _lines(resumed_log) & completed, "a finished LM call was made again"
    assert json.loads((run / "program.json").read_text()) == json.loads(
        (reference / "program.json").read_text()
    )
    resumed, uninterrupted = (json.loads((d / "result.json").read_text()) for d in (run, reference))
    assert resumed["attempt"] == 2 and resumed["replayed"]["steps"] >= kill_after
    assert resumed["val_score"] == uninterrupted["val_score"]
    assert resumed["test_score"] == uninterrupted["test_score"]
    assert resumed["usage"]["total"]["backend_calls"] < uninterrupted["usage"]["total"]["calls"]
    assert json.loads((run / "status.json").read_text())["state"] == "finished"


def test_rescore_size_takes_the_next_validation_examples(tmp_path):
    spec = _spec(val_size=6, rescore_size=6,
                 options={"num_candidates": 2, "rescore_top": 2, "min_gain": 0})
    run_optimization(spec, tmp_path / "run", lm=_lm())
    folder = RunFolder(tmp_path / "run")
    assert folder.config()["splits"]["rescore"] == 6
    assert folder.config()["optimizer"]["rescore_top"] == 2
    selection = folder.read_json("result.json")["selection"]
    rescored = selection["rescored"]
    assert len(rescored) == 3 and {r["examples"] for r in rescored} == {12}  # 6 + the next 6
    assert rescored[0]["index"] == selection["baseline_index"] == 0
    assert selection["chosen_index"] in {r["index"] for r in rescored}

    # --rescore-size alone re-scores the best finalist: the setting never goes unused
    alone = _spec(val_size=6, rescore_size=6, options={"num_candidates": 2, "min_gain": 0})
    run_optimization(alone, tmp_path / "alone", lm=_lm())
    assert RunFolder(tmp_path / "alone").config()["optimizer"]["rescore_top"] == 1
    rescored = RunFolder(tmp_path / "alone").read_json("result.json")["selection"]["rescored"]
    assert [r["index"] for r in rescored][0] == 0 and len(rescored) == 2

    with pytest.raises(ValueError, match=r"--rescore-size 7: the task's val split has 12 "
                                         r"examples, 6 of them already used"):
        run_optimization(_spec(val_size=6, rescore_size=7), tmp_path / "other", lm=_lm())
