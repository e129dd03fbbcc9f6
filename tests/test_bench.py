"""The benchmark runner (`cotune bench`): grids, records, failing cells, resume (scripted LM)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
import scripted_task as scripted  # tests/ is on pytest's path (pyproject)
from typer.testing import CliRunner

from cotune.cli import app
from cotune.runs.bench import (
    RESULTS_JSON,
    RESULTS_MD,
    SPEC_FILE,
    BenchSpec,
    load_spec_file,
    parse_optimizer,
    resolve_spec,
    run_bench,
)
from cotune.runs.folder import RunFolder
from cotune.runs.formatting import format_gain, seed_spread

TASK_FILE = Path(__file__).with_name("scripted_task.py")
SIZES = {"train_size": 6, "val_size": 4, "test_size": 4}
RANDOM_SEARCH = {"name": "random-search", "options": {"num_candidates": 3}}


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module




class InterruptingLM(scripted.SlowScriptedLM):
    """The scripted LM; after ``interrupt_after`` backend calls it raises KeyboardInterrupt
    (Ctrl-C in the middle of a cell)."""

    interrupt_after: int | None = None

    def _complete(self, request):
        self.backend_calls = getattr(self, "backend_calls", 0) + 1
        if self.interrupt_after is not None and self.backend_calls > self.interrupt_after:
            raise KeyboardInterrupt
        return super()._complete(request)


@pytest.fixture
def made(monkeypatch, tmp_path) -> list[InterruptingLM]:
    """Every LM a cell makes is the scripted LM; returns the LMs made, in order."""
    lms: list[InterruptingLM] = []

    def make_lm(model: str = "scripted", base_url: str | None = None, **options):
        lm = InterruptingLM(scripted.scripted_answer, model=model, cache=options.get("cache"))
        lms.append(lm)
        return lm

    monkeypatch.setattr("cotune.lm.factory.make_lm", make_lm)
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path / "shared-cache"))
    return lms


def _spec(**changes) -> BenchSpec:
    settings = {"tasks": [str(TASK_FILE)], "optimizers": ["vanilla", RANDOM_SEARCH],
                "threads": 2, **SIZES}
    return BenchSpec.from_dict({**settings, **changes})


# -- the grid ----------------------------------------------------------------------------------


def test_optimizer_names_carry_a_strategy_or_a_preset():
    bt = parse_optimizer("bettertogether:p->w")
    assert (bt.name, bt.strategy, bt.label) == ("bettertogether", "p -> w", "bettertogether:p->w")
    assert bt.run_options() == {"strategy": "p -> w"}
    mipro = parse_optimizer("mipro:light")
    assert (mipro.preset, mipro.strategy, mipro.label) == ("light", None, "mipro:light")
    assert parse_optimizer("vanilla").label == "vanilla"
    with pytest.raises(ValueError, match="unknown optimizer"):
        parse_optimizer("nope")
    with pytest.raises(ValueError, match="takes no"):
        parse_optimizer("bootstrap:light")


def test_a_spec_is_a_grid_of_uniquely_named_cells(tmp_path):
    spec = BenchSpec.from_dict({
        "tasks": ["iris", {"name": "gsm8k", "train_size": 9}],
        "optimizers": ["vanilla", "bettertogether:p -> w -> p"],
        "models": ["a", "b"], "seeds": [0, 1], "train_size": 5, "max_calls": 100,
    })
    cells = spec.cells()
    assert len(cells) == 2 * 2 * 2 * 2
    assert len({c.name for c in cells}) == len(cells)
    assert "gsm8k-bettertogether-p-w-p-b-seed1" in {c.name for c in cells}
    assert {c.task.name: c.task.train_size for c in cells} == {"iris": 5, "gsm8k": 9}
    run = spec.run_spec(cells[0], tmp_path / "cell")
    assert (run.max_calls, run.cache_dir) == (100, str(tmp_path / "cell"))
    assert run.rescore_size is None
    rescoring = BenchSpec.from_dict({"tasks": [{"name": "gsm8k", "val_size": 50,
                                                "rescore_size": 50}], "optimizers": ["vanilla"]})
    assert rescoring.run_spec(rescoring.cells()[0], tmp_path / "c").rescore_size == 50
    with pytest.raises(ValueError, match="rescore_size"):
        BenchSpec.from_dict({"tasks": [{"name": "gsm8k", "rescore_size": -1}],
                             "optimizers": ["vanilla"]})
    with pytest.raises(ValueError, match="unknown bench setting"):
        BenchSpec.from_dict({"tasks": ["iris"], "optimizers": ["vanilla"], "seed": 1})
    with pytest.raises(ValueError, match="at least one task"):
        BenchSpec.from_dict({"optimizers": ["vanilla"]})
    with pytest.raises(ValueError, match="names two cells alike"):
        BenchSpec.from_dict({"tasks": ["iris"], "optimizers": ["mipro", "mipro"]}).cells()


def test_a_label_tells_apart_two_entries_of_the_same_optimizer(tmp_path):
    spec = BenchSpec.from_dict({"tasks": ["iris"], "optimizers": [
        {"name": "labeled", "options": {"k": 4}, "label": "4 demos"},
        {"name": "labeled", "options": {"k": 16}, "label": "16 demos"},
    ]})
    assert [c.name for c in spec.cells()] == ["iris-4-demos-smollm2-135m-seed0",
                                              "iris-16-demos-smollm2-135m-seed0"]
    assert [o.run_options() for o in spec.optimizers] == [{"k": 4}, {"k": 16}]
    as_json = tmp_path / "bench.json"
    as_json.write_text(json.dumps(spec.to_json()))
    assert BenchSpec.from_dict(load_spec_file(as_json)) == spec
    for bad in ({"name": "labeled", "label": ""}, {"name": "labeled", "label": 3}):
        with pytest.raises(ValueError, match="label must be a non-empty string"):
            BenchSpec.from_dict({"tasks": ["iris"], "optimizers": [bad]})
    with pytest.raises(ValueError, match="unknown optimizer setting"):
        BenchSpec.from_dict({"tasks": ["iris"], "optimizers": [{"name": "mipro", "k": 4}]})


def test_spec_files_in_json_and_toml(tmp_path):
    toml = tmp_path / "bench.toml"
    toml.write_text('optimizers = ["vanilla", "bettertogether:p->w"]\nseeds = [3]\n'
                    'max_seconds = 60\n\n[[tasks]]\nname = "iris"\ntest_size = 7\n')
    spec = BenchSpec.from_dict(load_spec_file(toml))
    assert [o.label for o in spec.optimizers] == ["vanilla", "bettertogether:p->w"]
    assert (spec.seeds, spec.max_seconds, spec.tasks[0].test_size) == ([3], 60, 7)
    as_json = tmp_path / "bench.json"
    as_json.write_text(json.dumps(spec.to_json()))
    assert BenchSpec.from_dict(load_spec_file(as_json)) == spec
    # CLI options override the file; an earlier bench's bench.json is reused without one
    assert resolve_spec(toml, tmp_path / "none", {"seeds": [4], "threads": None}).seeds == [4]
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / SPEC_FILE).write_text(json.dumps(spec.to_json()))
    assert resolve_spec(None, tmp_path / "old", {"max_calls": 5}).max_calls == 5
    (tmp_path / "bad.toml").write_text("tasks = [")
    with pytest.raises(ValueError, match="not a valid bench spec"):
        load_spec_file(tmp_path / "bad.toml")


# -- running -----------------------------------------------------------------------------------


def test_a_bench_writes_one_record_per_cell_and_survives_a_failing_cell(tmp_path, made):
    bench = tmp_path / "bench"
    spec = _spec(tasks=[str(TASK_FILE), "no-such-task"],
                 optimizers=["vanilla", RANDOM_SEARCH,
                             {"name": "bettertogether:p",
                              "options": {"prompt_options": {"num_candidates": 2}}}])
    records = run_bench(spec, bench)

    assert json.loads((bench / RESULTS_JSON).read_text()) == records
    assert [(r["task"], r["label"]) for r in records] == [
        ("no-such-task", "vanilla"), ("no-such-task", "bettertogether:p"),
        ("no-such-task", "random-search"),
        (str(TASK_FILE), "vanilla"), (str(TASK_FILE), "bettertogether:p"),
        (str(TASK_FILE), "random-search"),
    ]
    failed, finished = records[:3], records[3:]
    for r in failed:
        assert r["status"] == "failed" and "unknown task 'no-such-task'" in r["error"]
        assert r["test_score"] is None
    for r in finished:
        assert r["status"] == "finished" and r["error"] is None, r
        assert 0 <= r["test_score"] <= 1 and 0 <= r["val_score"] <= 1
        assert r["lm_calls"] >= r["backend_calls"] > 0 and r["tokens"] > 0
        assert r["wall_s"] >= 0 and r["train_s"] is None and r["skipped"] is False
        assert (bench / r["run_dir"] / "program.json").is_file()
    vanilla, bt = finished[0], finished[1]
    assert (bt["optimizer"], bt["strategy"]) == ("bettertogether", "p")
    state = RunFolder(bench / vanilla["run_dir"]).read_json("candidates.json")
    assert [c["description"] for c in state["candidates"]] == ["the unoptimized program"]
    assert state["candidates"][0]["state"] == state["original"]  # nothing was optimized
    assert vanilla["lm_calls"] == SIZES["val_size"] + SIZES["test_size"]

    table = (bench / RESULTS_MD).read_text()
    lines = table.splitlines()
    assert lines[0].startswith("| task | optimizer | model | seed | test | test 95% CI | "
                               "vs vanilla (paired 95% CI) | other test metrics | no-LM "
                               "baseline, and program - baseline (paired 95% CI) | val | LM calls")
    rows = [line for line in lines[2:] if line.startswith("| scripted_task |")]
    assert [row.split(" | ")[1] for row in rows] == ["vanilla", "bettertogether:p",
                                                     "random-search"]
    said_odd = vanilla["test_metrics"]["said_odd"]  # the task file's extra metric
    ci = vanilla["test_interval"]
    assert f"| {vanilla['test_score']:.3f} | [{ci['low']:.3f}, {ci['high']:.3f}] | " \
           f"+0.000 (no example differs) | said_odd {said_odd:.3f} | " in rows[0]
    assert f" | {vanilla['val_score']:.3f} |" in rows[0]  # vanilla vs itself: no difference
    search = finished[2]
    gain = search["test_gain"]
    assert gain["estimate"] == pytest.approx(search["test_score"] - vanilla["test_score"])
    assert format_gain(gain) in rows[2]
    assert ("within noise" in rows[2] or "no example differs" in rows[2]) == gain["within_noise"]
    assert all(r["test_metrics"] is None for r in failed)
    # the task file's no-LM baseline, "even" for every number: right on the even half
    evens = sum(int(r["text"].split()[1]) % 2 == 0 for r in scripted.testset) / len(
        scripted.testset)
    assert vanilla["reference"]["description"] == "always 'even'"
    base = vanilla["reference"]["metrics"]["score"]
    assert base["reference"] == evens and base["gain"]["estimate"] == pytest.approx(
        vanilla["test_score"] - evens)
    assert f"score {evens:.3f}: {format_gain(base['gain'])}" in rows[0]
    assert "No-LM baselines, scored on each cell's test examples: scripted_task: always " \
           "'even'." in table
    assert "Errors:" in table and "no-such-task-vanilla-smollm2-135m-seed0" in table


def test_a_cell_repeated_over_seeds_reports_the_spread(tmp_path, made):
    bench = tmp_path / "bench"
    records = run_bench(_spec(optimizers=[RANDOM_SEARCH], seeds=[0, 1, 2]), bench)
    scores = [r["test_score"] for r in records]
    assert [r["seed"] for r in records] == [0, 1, 2] and None not in scores
    (group,) = seed_spread(records)
    assert (group["n"], group["seeds"], group["label"]) == (3, [0, 1, 2], "random-search")
    assert group["mean"] == pytest.approx(sum(scores) / 3)
    assert (group["min"], group["max"]) == (min(scores), max(scores))
    table = (bench / RESULTS_MD).read_text()
    assert "Over seeds" in table
    assert f"| 3 | {group['mean']:.3f} ± {group['sd']:.3f} | " \
           f"{min(scores):.3f}–{max(scores):.3f} |" in table


def test_a_cell_budget_stops_the_cell_cleanly(tmp_path, made):
    records = run_bench(_spec(optimizers=[RANDOM_SEARCH], max_calls=12), tmp_path / "bench")
    assert records[0]["status"] == "finished" and records[0]["stopped_by_budget"] is True


def test_training_time_is_read_from_the_run_folder(tmp_path, made):
    from cotune.finetune.trainer import RESULT_FILE
    from cotune.runs.report import LORA_RESULT

    assert LORA_RESULT == RESULT_FILE
    bench = tmp_path / "bench"
    record = run_bench(_spec(optimizers=["vanilla"]), bench)[0]
    adapter = bench / record["run_dir"] / "work" / "step1-w" / "finetune-0"
    adapter.mkdir(parents=True)
    (adapter / LORA_RESULT).write_text(json.dumps({"seconds": 12.25, "steps": 3}))
    assert run_bench(_spec(optimizers=["vanilla"]), bench)[0]["train_s"] == 12.25


def test_a_rerun_skips_finished_cells_and_resumes_an_interrupted_one(tmp_path, made):
    spec = _spec()
    reference = run_bench(spec, tmp_path / "reference")  # uninterrupted, for comparison
    rs_calls = made[-1].backend_calls
    made.clear()

    bench = tmp_path / "bench"

    def arm(record) -> None:  # vanilla is done: the next cell's LM is interrupted midway
        InterruptingLM.interrupt_after = rs_calls // 2

    try:
        with pytest.raises(KeyboardInterrupt):
            run_bench(spec, bench, on_cell=arm)
    finally:
        InterruptingLM.interrupt_after = None
    records = json.loads((bench / RESULTS_JSON).read_text())
    assert [r["status"] for r in records] == ["finished", "interrupted"]
    vanilla_dir, rs_dir = (bench / r["run_dir"] for r in records)
    assert RunFolder(rs_dir).status()["state"] == "interrupted"
    finished_mtime = (vanilla_dir / "result.json").stat().st_mtime_ns

    made.clear()
    again = run_bench(spec, bench)
    assert [r["status"] for r in again] == ["finished", "finished"]
    assert len(made) == 1  # only the interrupted cell made an LM: vanilla was not rerun
    assert again[0]["skipped"] and not again[1]["skipped"]
    assert (vanilla_dir / "result.json").stat().st_mtime_ns == finished_mtime
    result = RunFolder(rs_dir).read_json("result.json")
    assert result["attempt"] == 2 and result["replayed"]["steps"] > 0
    assert made[0].backend_calls < rs_calls  # the finished LM work came back, not redone
    for got, want in zip(again, reference, strict=True):
        assert (got["test_score"], got["val_score"]) == (want["test_score"], want["val_score"])
    assert ((rs_dir / "program.json").read_text()
            == (tmp_path / "reference" / records[1]["run_dir"] / "program.json").read_text())


def test_a_bench_with_rescore_examples_skips_its_finished_cells(tmp_path, made):
    """A rescore set turns on re-scoring (rescore_top 1); the fingerprint a rerun compares
    must say so too, or the finished cell would be refused as made with other settings."""
    spec = _spec(tasks=[{"name": str(TASK_FILE), "rescore_size": 4}], optimizers=[RANDOM_SEARCH])
    first = run_bench(spec, tmp_path / "bench")[0]
    assert first["status"] == "finished", first["error"]
    made.clear()
    again = run_bench(spec, tmp_path / "bench")[0]
    assert again["status"] == "finished" and again["skipped"], again["error"]
    assert made == []


# -- the plan ----------------------------------------------------------------------------------


def test_a_plan_projects_every_cell_without_an_lm_and_reads_what_is_done(tmp_path, made):
    from cotune.runs.plan import BROKEN, FINISHED, NEW, REFUSED, STARTED, plan_bench

    spec = _spec(tasks=[str(TASK_FILE), "no-such-task"],
                 optimizers=["vanilla", RANDOM_SEARCH])
    bench = tmp_path / "bench"
    before = plan_bench(spec, bench)
    assert made == [] and not bench.exists()  # nothing ran, nothing was written
    by_name = {c.cell: c for c in before.cells}
    vanilla = by_name["scripted_task-vanilla-smollm2-135m-seed0"]
    search = by_name["scripted_task-random-search-smollm2-135m-seed0"]
    assert vanilla.state == search.state == NEW
    # one predictor: the validation pass and one test pass (the final program is the given one)
    assert vanilla.breakdown == {"evaluation": SIZES["val_size"], "test": SIZES["test_size"]}
    assert search.breakdown["test"] == 2 * SIZES["test_size"]  # the final and the unoptimized
    assert search.calls == sum(search.breakdown.values())
    broken = [c for c in before.cells if c.cell.startswith("no-such-task")]
    assert [c.state for c in broken] == [BROKEN, BROKEN]
    assert "unknown task 'no-such-task'" in broken[0].note
    assert before.calls_left == vanilla.calls + search.calls and before.seconds_per_call is None

    records = {r["cell"]: r for r in run_bench(spec, bench)}
    after = {c.cell: c for c in plan_bench(spec, bench).cells}
    for name in (vanilla.cell, search.cell):
        assert after[name].state == FINISHED
        assert after[name].calls_made == records[name]["lm_calls"] <= after[name].calls
        assert after[name].seconds is not None
    done = plan_bench(spec, bench)
    assert done.calls_left == 0 and done.seconds_per_call is not None
    assert "2 finished, 2 broken" in done.summary()

    # a cell interrupted midway is to resume; one run with other settings is refused
    RunFolder(bench / "cells" / search.cell).set_status("interrupted")
    other = _spec(tasks=[str(TASK_FILE)], optimizers=["vanilla", RANDOM_SEARCH],
                  test_size=3)
    states = {c.cell: c for c in plan_bench(other, bench).cells}
    assert states[vanilla.cell].state == REFUSED and "test" in states[vanilla.cell].note
    # a finished cell under another budget is run again by the bench (resumed): not done
    budgeted = _spec(tasks=[str(TASK_FILE)], optimizers=["vanilla"], max_calls=500)
    assert plan_bench(budgeted, bench).cells[0].state == STARTED
    resumed = plan_bench(spec, bench)
    assert {c.cell: c.state for c in resumed.cells}[search.cell] == STARTED
    assert resumed.calls_left == search.calls
    assert f"at most {search.calls:,}" in resumed.summary() and " h at the finished" in \
        resumed.summary()


def test_a_plan_counts_the_rescoring_of_the_finalists(tmp_path, made):
    from cotune.runs.plan import plan_bench

    spec = _spec(tasks=[{"name": str(TASK_FILE), "rescore_size": 4}], optimizers=[RANDOM_SEARCH])
    (cell,) = plan_bench(spec, tmp_path / "bench").cells
    assert cell.breakdown["rescore (at most)"] == 2 * 4  # the baseline and the best finalist
    assert cell.bound == "at most"


# -- the command line and the script -----------------------------------------------------------


def _cotune(*args) -> object:
    return CliRunner().invoke(app, [str(a) for a in args])


def test_cotune_bench_runs_resumes_and_fails_loudly(tmp_path, made):
    bench = tmp_path / "bench"
    args = ["--task", TASK_FILE, "--optimizer", "vanilla", "--optimizer", "bettertogether:p",
            "--train-size", 6, "--val-size", 4, "--test-size", 4, "--threads", 2]
    result = _cotune("bench", *args, "--out", bench)
    assert result.exit_code == 0, result.output
    assert "finished scripted_task-vanilla-smollm2-135m-seed0" in result.output
    assert "| scripted_task | vanilla |" in result.output
    assert len(json.loads((bench / RESULTS_JSON).read_text())) == 2

    again = _cotune("bench", "--out", bench)  # the same bench, from its bench.json
    assert again.exit_code == 0, again.output
    assert again.output.count("already finished") == 2

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"tasks": ["no-such-task"], "optimizers": ["vanilla"]}))
    failing = _cotune("bench", "--spec", spec, "--out", tmp_path / "other")
    assert failing.exit_code == 1
    assert "unknown task 'no-such-task'" in failing.output
    assert "some cells did not finish" in failing.output
    bad = _cotune("bench", "--task", "iris", "--optimizer", "nope", "--out", tmp_path / "x")
    assert bad.exit_code == 1 and "unknown optimizer 'nope'" in bad.output


def test_cotune_bench_plan_runs_nothing(tmp_path, made):
    bench = tmp_path / "bench"
    result = _cotune("bench", "--task", TASK_FILE, "--optimizer", "vanilla", "--optimizer",
                     "random-search", "--train-size", 6, "--val-size", 4, "--test-size", 4,
                     "--out", bench, "--plan")
    assert result.exit_code == 0, result.output
    assert made == [] and not bench.exists()
    assert "scripted_task-random-search-smollm2-135m-seed0" in result.output
    assert "2 cells (2 new); projected LM calls of the cells left: at most" in result.output
    bad = _cotune("bench", "--task", "iris", "--optimizer", "nope", "--out", bench, "--plan")
    assert bad.exit_code == 1 and "unknown optimizer 'nope'" in bad.output


def test_the_benchmark_script_runs_a_spec_and_writes_the_report(tmp_path, made):
    script = _load(Path(__file__).parents[1] / "benchmarks" / "run.py", "bench_script")
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"tasks": [str(TASK_FILE)], "optimizers": ["vanilla"],
                                "threads": 2, **SIZES}))
    assert script.main([str(spec), "--out", str(tmp_path / "bench")]) == 0
    assert (tmp_path / "bench" / "report.html").is_file()
