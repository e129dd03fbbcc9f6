"""Each bad input a probe found (issue 9) is one clear error naming the file or setting: never
a traceback, never a silent wrong result (scripted LM)."""

from __future__ import annotations

import errno
import json
import shutil
import sys
from pathlib import Path

import pytest
import scripted_task as scripted  # tests/ is on pytest's path (pyproject)
from helpers import TASK_FILE, cotune, use_scripted_lms

from cotune.cli import _fail
from cotune.optimize.bootstrap import BootstrapFewShot, LabeledFewShot
from cotune.optimize.finetune import BootstrapFinetune
from cotune.optimize.gepa import GEPA
from cotune.optimize.mipro import MIPRO
from cotune.optimize.opro import OPRO
from cotune.optimize.random_search import BootstrapRandomSearch
from cotune.runs.bench import BenchSpec, resolve_spec
from cotune.runs.folder import RunFolder
from cotune.runs.optimize import RunSpec, load_data
from cotune.tasks import get_task
from cotune.tasks.data import DataError


@pytest.fixture(autouse=True)
def scripted_lm(monkeypatch, tmp_path):
    use_scripted_lms(monkeypatch, tmp_path)


def assert_one_line_error(result, *fragments: str) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, result.output
    text = " ".join(result.output[result.output.index("error:"):].split())  # wrapped lines
    for fragment in fragments:
        assert fragment in text, text
    return text


def optimize(run: Path, *extra: object):
    return cotune("optimize", "--task", TASK_FILE, "--optimizer", "random-search",
                  "--set", "num_candidates=1", "--threads", "2", "--run-dir", run, *extra)


# -- cotune evaluate ---------------------------------------------------------------------------


def evaluate(*extra: object):
    return cotune("evaluate", "--task", TASK_FILE, "--threads", 2, *extra)


def test_evaluate_runs_and_writes_its_results(tmp_path):
    result = evaluate("--split", "val", "--limit", 3, "--out", tmp_path / "e.json")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "e.json").read_text())["num_examples"] == 3


@pytest.mark.parametrize(("content", "fragment"), [
    ("{", "not valid JSON"),
    ('{"schema_version": 1}', "not a cotune program state"),
    ('{"cotune_state_version": 1, "predictors": {"nope": {}}}', "nope"),
    ('{"cotune_state_version": 1, "predictors": {"classify": {"demos": 3}}}', "classify"),
    ("[1, 2]", "bad.json"),
    (b"\xff\xfe{", "not a UTF-8 text file"),
])
def test_evaluate_names_a_bad_saved_program(tmp_path, content, fragment):
    path = tmp_path / "bad.json"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    assert_one_line_error(evaluate("--program", path), "bad.json", fragment)


def test_evaluate_names_a_missing_program_a_bad_split_and_a_bad_data_file(tmp_path, monkeypatch):
    assert_one_line_error(evaluate("--program", tmp_path / "missing.json"), "missing.json")
    assert_one_line_error(evaluate("--split", "bogus"), "unknown split 'bogus'")
    (tmp_path / "gsm8k").mkdir()
    (tmp_path / "gsm8k" / "train.jsonl").write_text('{"question": "q"}\n')
    monkeypatch.setenv("COTUNE_DATA_DIR", str(tmp_path))
    assert_one_line_error(cotune("evaluate", "--task", "gsm8k"), "train.jsonl, line 1",
                          "missing fields ['answer']")


@pytest.mark.parametrize(("option", "fragment"), [
    (("--threads", 0), "--threads must be >= 1"),
    (("--limit", 0), "--limit must be >= 1"),
    (("--limit", -1), "--limit must be >= 1"),
    (("--demos", -2), "--demos must be >= 0"),
])
def test_evaluate_refuses_counts_that_would_mean_something_else(option, fragment):
    assert_one_line_error(evaluate(*option), fragment)


# -- messages ------------------------------------------------------------------------------------


def test_square_brackets_in_an_error_survive(capsys):
    exit_ = _fail("output should be Literal['yes', 'no'] not list[str] [bold]")
    assert exit_.exit_code == 1
    assert "Literal['yes', 'no'] not list[str] [bold]" in " ".join(capsys.readouterr().err.split())
    result = cotune("optimize", "--task", "no[such]task", "--optimizer", "vanilla")
    assert_one_line_error(result, "unknown task 'no[such]task'")


# -- optimizer options -------------------------------------------------------------------------


@pytest.mark.parametrize(("setting", "fragment"), [
    ("num_candidates=-5", "num_candidates must be an integer >= 0, got -5"),
    ("num_candidates=abc", "num_candidates must be an integer >= 0, got 'abc' (a string)"),
    ("num_candidates=2.5", "num_candidates must be an integer >= 0, got 2.5"),
    ("max_labeled_demos=true", "max_labeled_demos must be an integer >= 0, got True"),
    ("metric_threshold=high", "metric_threshold must be a number"),
    ("no_such_option=1", "unexpected keyword argument 'no_such_option'"),
])
def test_optimizer_options_are_checked_before_anything_runs(tmp_path, setting, fragment):
    result = cotune("optimize", "--task", TASK_FILE, "--optimizer", "random-search",
                    "--set", setting, "--run-dir", tmp_path / "run")
    text = assert_one_line_error(result, "optimizer 'random-search'", fragment)
    assert "TypeError" not in text or "unexpected keyword" in text
    assert "projected" not in result.output  # no "at most -104 LM calls"
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("make", "fragment"), [
    (lambda: LabeledFewShot(scripted.metric, k=-1), "k must be an integer >= 0"),
    (lambda: BootstrapFewShot(scripted.metric, max_bootstrapped_demos="4"),
     "max_bootstrapped_demos must be an integer"),
    (lambda: BootstrapRandomSearch(scripted.metric, num_threads=0), "num_threads"),
    (lambda: BootstrapRandomSearch(scripted.metric, seed="1"), "seed must be an integer"),
    (lambda: MIPRO(scripted.metric, num_trials=0), "num_trials must be an integer >= 1"),
    (lambda: MIPRO(scripted.metric, minibatch_size="big"), "minibatch_size"),
    (lambda: MIPRO(scripted.metric, proposer_settings={"use_tip": "yes"}),
     "use_tip must be true or false"),
    (lambda: MIPRO(scripted.metric, preset="huge"), "preset must be one of"),
    (lambda: MIPRO(scripted.metric, proposer_settings={"temperature": -1}),
     "proposer_temperature"),
    (lambda: BootstrapFinetune(scripted.metric, lora={"rank": 0}), "lora: rank"),
    (lambda: BootstrapFinetune(scripted.metric, lora={"rnak": 8}), "known settings: rank"),
    (lambda: BootstrapFinetune(scripted.metric, per_predictor=1), "per_predictor"),
    (lambda: GEPA(scripted.metric, minibatch_size="big"),
     "minibatch_size must be an integer >= 1, got 'big'"),
    (lambda: GEPA(scripted.metric, max_demos=2.5), "max_demos must be an integer >= 0"),
    (lambda: OPRO(scripted.metric, max_history=0), "max_history must be an integer >= 1"),
])
def test_optimizer_constructors_check_their_options(make, fragment):
    with pytest.raises(ValueError, match=None) as caught:
        make()
    assert fragment in str(caught.value)


# -- run settings, data files, splits ----------------------------------------------------------


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"threads": 0}, "threads must be an integer >= 1"),
    ({"max_calls": -1}, "max_calls must be an integer >= 0"),
    ({"max_seconds": "soon"}, "max_seconds must be a number"),
    ({"train_size": -2}, "train_size must be an integer >= 0"),
    ({"seed": 1.5}, "seed must be an integer"),
])
def test_run_settings_are_checked(changes, fragment):
    with pytest.raises(ValueError) as caught:
        RunSpec(task=str(TASK_FILE), **changes)
    assert fragment in str(caught.value)


def _gsm8k_rows(folder: Path, rows: int) -> Path:
    (folder / "gsm8k").mkdir(exist_ok=True)
    path = folder / "gsm8k" / "train.jsonl"
    path.write_text("".join(json.dumps({"question": f"{i} + 1?", "answer": f"#### {i + 1}"})
                            + "\n" for i in range(rows)))
    return path


def test_a_small_data_file_gives_the_sizes_asked_for(tmp_path, monkeypatch):
    path = _gsm8k_rows(tmp_path, 100)
    monkeypatch.setenv("COTUNE_DATA_DIR", str(tmp_path))
    task = get_task("gsm8k")
    splits = load_data(task, RunSpec(task="gsm8k", train_size=2, val_size=2, test_size=2))
    assert [len(s) for s in (splits.train, splits.val, splits.test)] == [2, 2, 2]
    with pytest.raises(ValueError) as caught:  # only some sizes: the defaults do not fit
        load_data(task, RunSpec(task="gsm8k", train_size=2))
    assert "need 500 examples, the data has 100 in " + str(path) in str(caught.value)
    with pytest.raises(ValueError) as caught:  # sizes that do not fit either
        load_data(task, RunSpec(task="gsm8k", train_size=60, val_size=30, test_size=30))
    assert "need 120 examples, the data has 100 in " + str(path) in str(caught.value)


def test_the_default_split_is_unchanged_where_the_data_is_large_enough(tmp_path, monkeypatch):
    _gsm8k_rows(tmp_path, 600)
    monkeypatch.setenv("COTUNE_DATA_DIR", str(tmp_path))
    task = get_task("gsm8k")
    full = task.load_splits(seed=3)
    cut = load_data(task, RunSpec(task="gsm8k", seed=3, train_size=2, val_size=2, test_size=2))
    assert (cut.train, cut.val, cut.test) == (full.train[:2], full.val[:2], full.test[:2])


@pytest.mark.parametrize(("content", "fragment"), [
    (b"", "no rows (the file is empty"),
    (b"\n\n  \n", "no rows (the file is empty"),
    ('{"question": "caf\xe9?", "answer": "#### 1"}\n'.encode("latin-1"),
     "line 1: not UTF-8 text (byte 0xe9"),
    (b'{"question": "a", "answer": "#### 1"}\n\xff\n', "line 2: not UTF-8 text"),
])
def test_an_empty_or_non_utf8_data_file_is_named(tmp_path, monkeypatch, content, fragment):
    path = _gsm8k_rows(tmp_path, 0)
    path.write_bytes(content)
    monkeypatch.setenv("COTUNE_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError) as caught:
        get_task("gsm8k").load_splits()
    assert str(path) in str(caught.value) and fragment in str(caught.value)
    result = cotune("optimize", "--task", "gsm8k", "--run-dir", tmp_path / "run")
    assert_one_line_error(result, str(path), fragment)


# -- bench specs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"seeds": "abc"}, "seeds[] must be an integer, got 'abc' (a string)"),
    ({"seeds": [0, True]}, "seeds[] must be an integer, got True"),
    ({"models": 5}, "models must be a list, not 5"),
    ({"models": [""]}, "models[] must be a non-empty string"),
    ({"max_calls": "ten"}, "max_calls must be an integer >= 0, got 'ten'"),
    ({"max_seconds": [1]}, "max_seconds must be a number >= 0"),
    ({"threads": 0}, "threads must be an integer >= 1, got 0"),
    ({"cache": 5}, "cache must be one of 'cell', 'shared', 'off', got 5"),
    ({"base_url": 8000}, "base_url must be a non-empty string"),
    ({"train_size": "big"}, "train_size must be an integer >= 0, got 'big'"),
    ({"tasks": [{"name": "iris", "val_size": -1}]}, "task 'iris': val_size must be an integer"),
    ({"tasks": [{"name": 3}]}, "a task's name must be a non-empty string"),
    ({"optimizers": [{"name": "mipro", "options": [1, 2]}]},
     "optimizer 'mipro': options must be a table"),
    ({"optimizers": [{"name": "mipro", "preset": 2}]}, "optimizer 'mipro': preset must be"),
    ({"optimizers": [{"name": "bettertogether", "strategy": 7}]},
     "optimizer 'bettertogether': strategy must be"),
])
def test_bench_spec_values_of_the_wrong_type_are_named(tmp_path, changes, fragment):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"tasks": ["iris"], "optimizers": ["vanilla"], **changes}))
    with pytest.raises(ValueError) as caught:
        resolve_spec(spec, tmp_path / "bench", {})
    assert str(caught.value).startswith(f"{spec}: ") and fragment in str(caught.value)
    result = cotune("bench", "--spec", spec, "--out", tmp_path / "bench")
    assert_one_line_error(result, str(spec), fragment)


def test_a_good_bench_spec_still_reads(tmp_path):
    spec = BenchSpec.from_dict({"tasks": ["iris"], "optimizers": ["vanilla"], "seeds": 3,
                                "models": "smollm2-135m", "max_seconds": 2.5})
    assert spec.seeds == [3] and spec.models == ["smollm2-135m"] and spec.max_seconds == 2.5


def test_a_bench_spec_that_is_not_utf8_or_missing_is_named(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_bytes(b'{"tasks": ["\xff"]}')
    assert_one_line_error(cotune("bench", "--spec", spec, "--out", tmp_path / "b"),
                          str(spec), "not UTF-8")
    assert_one_line_error(cotune("bench", "--spec", tmp_path / "none.json", "--out",
                                 tmp_path / "b"), "bench spec not found", "none.json")


# -- run folders ---------------------------------------------------------------------------------


def test_force_clears_a_corrupt_config(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{not json")
    (run / "status.json").write_text("[]")
    assert_one_line_error(optimize(run), "config.json is corrupt")
    result = optimize(run, "--force")
    assert result.exit_code == 0, result.output
    assert RunFolder(run).status()["state"] == "finished"
    assert RunFolder(run).status()["attempt"] == 1


def test_a_failed_rerun_of_a_finished_run_leaves_it_finished(tmp_path, monkeypatch):
    run = tmp_path / "run"
    assert optimize(run).exit_code == 0
    before = RunFolder(run).read_json("result.json")

    def unreachable(*args, **kwargs):
        raise ConnectionError("the LM server at http://127.0.0.1:9/v1 is not reachable")

    monkeypatch.setattr("cotune.lm.factory.make_lm", unreachable)
    assert_one_line_error(optimize(run), "not reachable")
    status = RunFolder(run).status()
    assert status["state"] == "finished" and status["error"] is None
    assert "not reachable" in status["rerun_error"] and status["attempt"] == 2
    assert RunFolder(run).read_json("result.json") == before
    shown = cotune("show", run)
    assert "status finished" in shown.output and "last rerun did not complete" in shown.output

    monkeypatch.setattr("cotune.lm.factory.make_lm", scripted.make_scripted_lm)
    assert optimize(run).exit_code == 0  # a rerun that works clears the note
    assert "rerun_error" not in RunFolder(run).status()


def test_a_full_disk_fails_the_run_cleanly(tmp_path, monkeypatch):
    """ENOSPC from the moment candidates.json is written: the run ends "failed" (status.json
    is rewritten in its own blocks), the error names the file, no temp file is left."""
    import cotune._files as folder_module

    real = folder_module._write_and_sync
    full = {"since": None}

    def write_and_sync(handle, text, sync=True):
        if ".candidates.json." in handle.name:
            full["since"] = handle.name
        if full["since"]:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(handle, text, sync)

    monkeypatch.setattr(folder_module, "_write_and_sync", write_and_sync)
    run = tmp_path / "run"
    text = assert_one_line_error(optimize(run), "candidates.json", "No space left on device")
    assert "Traceback" not in text
    assert full["since"]
    assert [p.name for p in run.iterdir() if p.name.startswith(".") and p.name != ".lock"] == []
    status = json.loads((run / "status.json").read_text())
    assert status["state"] == "failed" and "No space left" in status["error"]

    monkeypatch.setattr(folder_module, "_write_and_sync", real)  # space again: it resumes
    assert optimize(run).exit_code == 0
    assert RunFolder(run).status()["state"] == "finished"


def test_report_names_a_corrupt_candidates_file(tmp_path):
    run = tmp_path / "run"
    assert optimize(run).exit_code == 0
    (run / "candidates.json").write_text('{"candidates": [')
    result = cotune("report", run)
    assert_one_line_error(result, "candidates.json is corrupt (not valid JSON")
    page = (run / "report.html").read_text()
    assert "candidates.json is corrupt" in page and "No candidate was recorded" not in page
    (run / "candidates.json").write_text("[]")
    assert_one_line_error(cotune("report", run), "candidates.json is corrupt (expected a JSON "
                                                 "object, found list)")
    (run / "candidates.json").write_text('{"best_index": 0, "candidates": 5}')
    for command in ("show", "report"):  # valid JSON, but no list of candidates in it
        assert_one_line_error(cotune(command, run), "candidates.json is malformed")


# -- bench cells and their fingerprint ---------------------------------------------------------


DATA_TASK = '''"""Parity again, with its data in a file beside the task."""
import json
from pathlib import Path

from scripted_task import Parity, _example, metric

program = Parity()
_numbers = json.loads(Path(__file__).with_name("numbers.json").read_text())
trainset = [_example(n) for n in _numbers["train"]]
valset = [_example(n) for n in _numbers["val"]]
testset = [_example(n) for n in _numbers["test"]]
'''


def test_a_bench_refuses_a_finished_cell_whose_task_file_or_data_changed(tmp_path):
    task = tmp_path / "parity_task.py"
    task.write_text(DATA_TASK)
    data = tmp_path / "numbers.json"
    data.write_text(json.dumps({"train": list(range(8)), "val": [101, 102], "test": [201]}))
    bench = tmp_path / "bench"
    args = ["bench", "--task", task, "--optimizer", "vanilla", "--threads", 2, "--out", bench]
    assert cotune(*args).exit_code == 0
    assert "already finished" in cotune(*args).output

    data.write_text(json.dumps({"train": list(range(8)), "val": [101, 103], "test": [201]}))
    changed = cotune(*args)
    assert changed.exit_code == 1
    text = " ".join(changed.output.split())
    assert "splits.digest" in text and "remove that folder to rerun the cell" in text
    record = json.loads((bench / "results.json").read_text())[0]
    assert record["status"] == "failed" and "splits.digest" in record["error"]
    assert RunFolder(bench / record["run_dir"]).status()["state"] == "finished"  # untouched

    data.write_text(json.dumps({"train": list(range(8)), "val": [101, 102], "test": [201]}))
    assert "already finished" in cotune(*args).output  # the data it was run with: reused
    task.write_text(DATA_TASK + "\n# an edit\n")
    edited = cotune(*args)
    assert edited.exit_code == 1 and "task.sha256" in " ".join(edited.output.split())

    shutil.rmtree(bench / record["run_dir"])  # as the message says
    rerun = cotune(*args)
    assert rerun.exit_code == 0 and "already finished" not in rerun.output


def test_the_bad_inputs_probe_runs_its_cases(tmp_path):
    """benchmarks/bad_inputs_probe.py, on a few of its cases (the whole probe takes minutes)."""
    import importlib.util

    path = Path(__file__).parents[1] / "benchmarks" / "bad_inputs_probe.py"
    spec = importlib.util.spec_from_file_location("bad_inputs_probe", path)
    probe = importlib.util.module_from_spec(spec)
    sys.modules["bad_inputs_probe"] = probe  # dataclasses look their module up by name
    spec.loader.exec_module(probe)
    assert len([c for c in probe.all_cases() if not c.control]) >= 100
    out = tmp_path / "probe.json"
    assert probe.main(["-k", "evaluate --limit", "--out", str(out)]) == 0
    outcomes = json.loads(out.read_text())
    kinds = sorted(o["kind"] for o in outcomes)
    assert kinds == ["accepted", "clear", "clear", "clear"]  # --limit 0, -1, abc; the control


# -- a task file's no-LM baseline ------------------------------------------------------------

BROKEN_REFERENCES = {
    "raises": ("def reference(program):\n    raise RuntimeError('no index built')\n",
               "RuntimeError: no index built"),
    "wrong type": ("def reference(program):\n    return 'always even'\n",
                   "it returned str, not a cotune.tasks.Reference"),
    "unknown metric": ("from cotune.tasks import Reference\nfrom cotune import Prediction\n"
                       "def reference(program):\n    return Reference('even', lambda e: "
                       "Prediction(parity='even'), ('recall',))\n",
                       "it scores ['recall'], which are not among the task's metrics"),
}


@pytest.mark.parametrize("case", sorted(BROKEN_REFERENCES))
def test_a_broken_no_lm_baseline_is_recorded_and_the_run_finishes(tmp_path, case):
    code, message = BROKEN_REFERENCES[case]
    task = tmp_path / "parity_task.py"
    task.write_text("from scripted_task import metric, program, testset, trainset, valset\n"
                    + code)
    run = tmp_path / "run"
    result = cotune("optimize", "--task", task, "--optimizer", "vanilla", "--threads", 2,
                    "--run-dir", run)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.output
    assert message in " ".join(result.output.split())
    saved = json.loads((run / "result.json").read_text())
    assert saved["test_score"] is not None and message in saved["reference"]["error"]
    assert RunFolder(run).status()["state"] == "finished"
    shown = cotune("show", run)
    assert shown.exit_code == 0 and "Traceback" not in shown.output
    assert message in " ".join(shown.output.split())


def test_a_task_file_whose_reference_is_not_a_function_is_refused(tmp_path):
    task = tmp_path / "parity_task.py"
    task.write_text("from scripted_task import metric, program, testset, trainset, valset\n"
                    "reference = 'always even'\n")
    assert_one_line_error(cotune("optimize", "--task", task, "--optimizer", "vanilla"),
                          "parity_task.py: `reference` must be a function of the program")
