"""Ray: bench cells as Ray tasks and Evaluate fanned out to Ray actors, on a real two-node
local cluster (head + one more node, 1 CPU each, dashboard off) started and stopped here."""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import time
from pathlib import Path

import pytest
import scripted_task as scripted
from conftest import free_port
from ray_cluster import counting_scripted_lm, ray_cluster, wait_for_nodes

from cotune import Example, InputField, Module, OutputField, Predict, Signature, budget, context
from cotune.evaluate import Evaluate
from cotune.lm import BudgetExceeded, track_usage
from cotune.optimize import BootstrapFewShot, collect_successful_traces
from cotune.optimize.bootstrap import demo_sets_from_traces
from cotune.runs.bench import BenchSpec, run_bench

ray = pytest.importorskip("ray")
from cotune.evaluate.ray_executor import RayExecutor  # noqa: E402
from cotune.runs.distributed import run_bench_on_ray  # noqa: E402

TESTS = Path(__file__).parent
TASK_FILE = TESTS / "scripted_task.py"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    env = {"PYTHONPATH": os.pathsep.join([str(TESTS.parent / "src"), str(TESTS)]),
           "COTUNE_LLAMA_THREADS": "1", "COTUNE_CACHE_DIR": str(root / "cache")}
    temp_dir = Path("/tmp") / f"cotune-ray-{os.getpid()}"  # short: Ray's socket paths
    temp_dir.mkdir(exist_ok=True)
    with ray_cluster(temp_dir, free_port(), env, node_gpus=1) as address:
        ray.init(address=address, log_to_driver=False,
                 runtime_env={"worker_process_setup_hook": "ray_cluster.use_scripted_lm"})
        try:
            wait_for_nodes(ray, 2)
            yield address
        finally:
            ray.shutdown()
    for _ in range(10):  # the last processes may still write their logs while exiting
        shutil.rmtree(temp_dir, ignore_errors=True)
        if not temp_dir.exists():
            break
        time.sleep(0.5)


def _evaluate(metric=scripted.metric, **options) -> Evaluate:
    return Evaluate(scripted.valset + scripted.testset, metric, num_threads=2,
                    display_progress=False, **options)


def raising_metric(example, prediction, trace=None):
    if example["text"] == "number 103":
        raise ValueError("metric broke on 103")
    return scripted.metric(example, prediction)


def _same(a, b) -> None:
    assert [(dict(r.example), dict(r.prediction) if r.prediction is not None else None,
             r.score, r.error, r.lm_error) for r in a.results] == \
        [(dict(r.example), dict(r.prediction) if r.prediction is not None else None,
          r.score, r.error, r.lm_error) for r in b.results]
    assert a.score == b.score and a.num_errors == b.num_errors


def test_evaluate_on_ray_actors_gives_the_threads_results_and_usage(cluster):
    executor = RayExecutor(scripted.make_scripted_lm, num_actors=2, num_cpus=1)
    try:
        with context(lm=scripted.make_scripted_lm()), track_usage() as local:
            threads = _evaluate(raising_metric)(scripted.Parity())
        with track_usage() as remote:
            fanned = _evaluate(raising_metric, executor=executor)(scripted.Parity())
        _same(fanned, threads)
        assert fanned.num_errors == 1
        assert "metric broke on 103" in next(r.error for r in fanned.results if r.failed)
        assert fanned.usage.calls == threads.usage.calls == len(_evaluate().devset)
        assert remote.snapshot().calls == local.snapshot().calls
        assert len(set(executor.nodes())) == 2  # one actor per node: 1 CPU each

        # a budget applies across the actors: the evaluation stops with BudgetExceeded
        with budget(max_calls=5) as b, pytest.raises(BudgetExceeded) as info:
            _evaluate(executor=executor)(scripted.Parity())
        assert 5 <= b.calls <= 5 + 2  # at most the examples in flight past the cap
        assert len(info.value.partial_result.results) < len(scripted.valset + scripted.testset)
    finally:
        executor.close()


def test_bootstrapped_traces_and_demos_on_ray_actors_are_the_threads_ones(cluster):
    executor = RayExecutor(scripted.make_scripted_lm, num_actors=2, num_cpus=1)
    try:
        with context(lm=scripted.make_scripted_lm()), track_usage() as local:
            threads = collect_successful_traces(scripted.Parity(), scripted.trainset,
                                                scripted.metric, num_threads=2)
        with track_usage() as remote:
            fanned = collect_successful_traces(scripted.Parity(), scripted.trainset,
                                               scripted.metric, executor=executor)
        assert fanned == threads
        assert 0 < len(fanned) < len(scripted.trainset)  # the metric kept some, not all
        assert remote.snapshot().calls == local.snapshot().calls == len(scripted.trainset)

        def bootstrap(executor):
            optimizer = BootstrapFewShot(scripted.metric, max_bootstrapped_demos=3,
                                         max_labeled_demos=1, num_threads=2)
            optimizer.executor = executor
            with context(lm=scripted.make_scripted_lm()):
                return optimizer.optimize(scripted.Parity(), scripted.trainset,
                                          scripted.valset)

        here, there = bootstrap(None), bootstrap(executor)
        demos = here.program.classify.demos
        assert len(demos) == 4 and demos == there.program.classify.demos
        assert there.program.dump_state() == here.program.dump_state()
        assert there.usage.calls == here.usage.calls
    finally:
        executor.close()


class TwoCalls(Module):
    """Two LM calls per example: an example can be cut off by the budget halfway."""

    def __init__(self) -> None:
        self.first = Predict(scripted.ParitySignature, max_tokens=16)
        self.second = Predict(scripted.ParitySignature, max_tokens=16)

    def forward(self, text: str):
        self.first(text=text)
        return self.second(text=text)


def test_budgets_hold_across_actors_within_the_examples_in_flight(cluster, tmp_path):
    """Per-example accounting: the driver sends no example once a budget is spent, every
    call an actor made (counted by the LM itself) is in the driver's meter and budget, and
    the calls pass the cap by at most (in flight - 1) x calls per example."""
    log = tmp_path / "calls.log"
    executor = RayExecutor(functools.partial(counting_scripted_lm, str(log)), num_actors=2,
                           num_cpus=1, threads_per_actor=2)
    slots, per_example, cap = executor.slots, 2, 7

    def made() -> int:
        return len(log.read_text().splitlines()) if log.exists() else 0

    try:
        for run in (
            lambda: collect_successful_traces(TwoCalls(), scripted.trainset, scripted.metric,
                                              executor=executor),
            lambda: _evaluate(executor=executor)(TwoCalls()),
        ):
            before = made()
            with budget(max_calls=cap) as b, track_usage() as meter, \
                    pytest.raises(BudgetExceeded, match=f"budget of {cap} calls"):
                run()
            spent = made() - before
            assert cap <= spent <= cap + (slots - 1) * per_example
            assert b.calls == meter.snapshot().calls == spent

        before = made()
        with budget(max_tokens=1) as b, pytest.raises(BudgetExceeded, match="token budget"):
            collect_successful_traces(TwoCalls(), scripted.trainset, scripted.metric,
                                      executor=executor)
        assert made() - before <= slots  # the first call of each example in flight
        assert b.tokens > 0
    finally:
        executor.close()


def _parity_answer(body):
    """The fake endpoint's answer: the scripted task's LM, in the form the request asks."""
    from types import SimpleNamespace

    if not body.get("response_format"):
        return scripted.scripted_answer(SimpleNamespace(messages=body["messages"]))
    number = int(re.findall(r"\d+", body["messages"][-1]["content"])[-1])
    return json.dumps({"parity": "odd" if number % 2 or number % 5 == 0 else "even"})


def test_actors_building_an_openai_endpoint_lm_give_the_threads_results(
        cluster, fake_openai_server):
    from cotune.lm import OpenAILM

    fake_openai_server.answer = _parity_answer
    lm = OpenAILM("fake", base_url=fake_openai_server.url, cache=None)
    with context(lm=lm):
        threads = _evaluate(raising_metric)(scripted.Parity())
    sent = fake_openai_server.attempts
    executor = RayExecutor(lm.describe(), num_actors=2, threads_per_actor=2,
                           lm_options={"cache": None})
    try:
        fanned = _evaluate(raising_metric, executor=executor)(scripted.Parity())
    finally:
        executor.close()
    _same(fanned, threads)
    assert sent == fake_openai_server.attempts - sent == len(fanned.results)
    assert fanned.usage.total_tokens == threads.usage.total_tokens > 0
    assert fanned.num_errors == 1 and 0 < fanned.score < 1


def test_a_program_with_its_own_lm_bound_is_refused_clearly(cluster):
    program = scripted.Parity()
    program.classify.lm = scripted.make_scripted_lm()
    executor = RayExecutor(scripted.make_scripted_lm, num_actors=1)
    try:
        with pytest.raises(ValueError, match="'classify' has its own LM bound"):
            _evaluate(executor=executor)(program)
    finally:
        executor.close()


class Capital(Signature):
    """Name the capital city of the country."""

    country: str = InputField()
    capital: str = OutputField()


@pytest.mark.real_model
def test_smollm2_replicas_in_ray_actors_give_the_in_process_results(cluster, smollm2_path):
    from cotune.lm import LlamaCppLM

    devset = [Example(country=c, capital="?").with_inputs("country")
              for c in ("France", "Japan", "Peru", "Kenya", "Norway", "Chile")]

    def metric(example, prediction, trace=None):
        return float(bool(prediction.get("capital")))

    lm = LlamaCppLM(smollm2_path, cache=None, n_threads=1)
    evaluate = Evaluate(devset, metric, num_threads=1, display_progress=False)

    def bootstrap(**where):  # the first 3 passing traces, then their demos
        traces = collect_successful_traces(Predict(Capital, max_tokens=12), devset, metric,
                                           wanted=3, **where)
        return traces, demo_sets_from_traces(Predict(Capital), traces, 3)

    with context(lm=lm):
        local = evaluate(Predict(Capital, max_tokens=12))
        local_traces, local_demos = bootstrap(num_threads=2)
    executor = RayExecutor(lm.describe(), num_actors=2, num_cpus=1,
                           lm_options={"cache": None, "n_threads": 1})
    try:
        evaluate.executor = executor
        fanned = evaluate(Predict(Capital, max_tokens=12))
        fanned_traces, fanned_demos = bootstrap(executor=executor)
    finally:
        executor.close()
    _same(fanned, local)
    assert len(local_traces) == 3 and fanned_traces == local_traces
    assert fanned_demos == local_demos and len(local_demos["self"]) == 3
    assert fanned.usage.prompt_tokens == local.usage.prompt_tokens
    assert fanned.usage.completion_tokens == local.usage.completion_tokens


def _bench_spec(**changes) -> BenchSpec:
    settings = {"tasks": [str(TASK_FILE)], "models": ["scripted"], "threads": 1,
                "seeds": [0, 1], "train_size": 6, "val_size": 4, "test_size": 4, "cache": "cell",
                "optimizers": ["vanilla", {"name": "random-search",
                                           "options": {"num_candidates": 2}}]}
    return BenchSpec.from_dict({**settings, **changes})


def test_a_bench_on_ray_gives_the_sequential_results_reports_a_failed_cell_and_resumes(
        cluster, tmp_path, monkeypatch):
    monkeypatch.setattr("cotune.lm.factory.make_lm", scripted.make_scripted_lm)
    sequential = run_bench(_bench_spec(), tmp_path / "seq")
    on_ray = run_bench_on_ray(_bench_spec(), tmp_path / "ray", cpus_per_cell=1)
    key = ("cell", "status", "val_score", "test_score", "lm_calls")
    assert [{k: r[k] for k in key} for r in on_ray] == \
        [{k: r[k] for k in key} for r in sequential]
    assert all(r["status"] == "finished" for r in on_ray)
    assert (tmp_path / "ray" / "results.md").is_file()

    # a failing cell is reported; the others still run
    broken = _bench_spec(optimizers=["vanilla", {"name": "random-search", "label": "broken",
                                                 "options": {"no_such_option": 1}}])
    records = run_bench_on_ray(broken, tmp_path / "ray", cpus_per_cell=1)
    by_cell = {r["cell"]: r for r in records}
    failed = [r for r in records if r["status"] == "failed"]
    assert len(failed) == 2 and all("no_such_option" in r["error"] for r in failed)
    finished = [r for r in records if r["status"] == "finished"]
    assert len(finished) == 2 and all(r["skipped"] for r in finished)  # resumed: read back
    assert all(by_cell[r["cell"]]["test_score"] == r["test_score"]
               for r in on_ray if r["cell"] in by_cell)


def test_cotune_bench_ray_runs_the_grid_on_the_connected_cluster(cluster, tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from cotune.cli import app

    monkeypatch.setattr("cotune.lm.factory.make_lm", scripted.make_scripted_lm)
    out = tmp_path / "bench"
    result = CliRunner().invoke(app, [
        "bench", "--task", str(TASK_FILE), "--optimizer", "vanilla", "--model", "scripted",
        "--seed", "0", "--seed", "1", "--test-size", "4", "--threads", "1", "--out", str(out),
        "--ray", cluster, "--ray-cpus", "1"])
    assert result.exit_code == 0, result.output
    assert "2 cells submitted to Ray" in result.output
    records = json.loads((out / "results.json").read_text())
    records = records["cells"] if isinstance(records, dict) else records
    assert sorted(r["status"] for r in records) == ["finished", "finished"]


def test_two_evaluations_at_once_share_the_actors(cluster):
    from concurrent.futures import ThreadPoolExecutor

    executor = RayExecutor(scripted.make_scripted_lm, num_actors=2, num_cpus=1)
    try:
        with context(lm=scripted.make_scripted_lm()):
            expected = _evaluate()(scripted.Parity())
        with ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda _: _evaluate(executor=executor)(scripted.Parity()),
                                    range(2)))
        for result in results:
            _same(result, expected)
    finally:
        executor.close()


def test_a_cell_whose_worker_dies_is_reported_and_the_others_finish(cluster, tmp_path):
    dying = tmp_path / "dying_task.py"
    dying.write_text("import os\nos._exit(3)  # the worker process dies loading the task\n")
    spec = _bench_spec(tasks=[str(TASK_FILE), str(dying)], seeds=[0],
                       optimizers=["vanilla"])
    records = {r["cell"]: r for r in run_bench_on_ray(spec, tmp_path / "bench",
                                                      cpus_per_cell=1)}
    assert records["scripted_task-vanilla-scripted-seed0"]["status"] == "finished"
    died = records["dying_task-vanilla-scripted-seed0"]
    assert died["status"] == "failed" and "the Ray task failed" in died["error"]


def test_an_optimizers_evaluations_on_ray_give_the_threads_result(cluster):
    from cotune.optimize.random_search import BootstrapRandomSearch

    def optimize(executor):
        optimizer = BootstrapRandomSearch(scripted.metric, num_candidates=3, num_threads=2)
        optimizer.executor = executor
        with context(lm=scripted.make_scripted_lm()):
            return optimizer.optimize(scripted.Parity(), scripted.trainset[:8],
                                      scripted.valset)

    local = optimize(None)
    executor = RayExecutor(scripted.make_scripted_lm, num_actors=2, num_cpus=1)
    try:
        fanned = optimize(executor)
    finally:
        executor.close()
    assert [(c.score, c.state) for c in fanned.candidates] == \
        [(c.score, c.state) for c in local.candidates]
    assert fanned.best_index == local.best_index
    assert fanned.usage.calls == local.usage.calls


def test_an_optimizer_on_ray_stops_at_its_budget_with_the_calls_counted(cluster):
    """An optimizer's budget, with its bootstraps and evaluations on the actors: the run stops
    cleanly, its usage past the cap by no more than the examples in flight."""
    from cotune import Budget
    from cotune.optimize.random_search import BootstrapRandomSearch

    executor = RayExecutor(scripted.make_scripted_lm, num_actors=2, num_cpus=1)
    cap = 25
    try:
        optimizer = BootstrapRandomSearch(scripted.metric, num_candidates=4, num_threads=2)
        optimizer.executor = executor
        with context(lm=scripted.make_scripted_lm()):
            result = optimizer.optimize(scripted.Parity(), scripted.trainset,
                                        scripted.valset, budget=(b := Budget(max_calls=cap)))
    finally:
        executor.close()
    assert result.stopped_by_budget and result.candidates
    assert cap <= result.usage.calls == b.calls <= cap + executor.slots - 1


def test_actors_the_cluster_cannot_place_are_a_clear_error_not_a_hang(cluster):
    executor = RayExecutor(scripted.make_scripted_lm, num_actors=1, num_cpus=8,
                           start_timeout=3)
    try:
        with pytest.raises(RuntimeError, match="did not start within 3 s: each declares 8 CPUs"):
            _evaluate(executor=executor)(scripted.Parity())
    finally:
        executor.close()


def test_fine_tuning_cells_declare_gpus_and_every_cell_on_ray_is_logged_to_mlflow(
        cluster, tmp_path, monkeypatch):
    """The cluster's second node declares one (logical) GPU: a fine-tuning cell asks for it
    and is placed there, the others ask for none; cells finished in the workers are logged
    to one SQLite MLflow store, two at a time."""
    mlflow = pytest.importorskip("mlflow")
    declared: dict[str, tuple[float, float]] = {}
    real_remote = ray.remote

    class Spy:
        def __init__(self, remote):
            self.remote = remote

        def options(self, **options):
            declared[options["name"]] = (options["num_cpus"], options["num_gpus"])
            return self.remote.options(**options)

    monkeypatch.setattr(ray, "remote", lambda fn: Spy(real_remote(fn)))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    spec = _bench_spec(optimizers=["vanilla", "finetune"], mlflow=uri,
                       mlflow_experiment="on-ray")
    records = run_bench_on_ray(spec, tmp_path / "bench", cpus_per_cell=1, gpus_per_cell=1)
    assert {name.removeprefix("cotune-cell-"): gpus for name, (_, gpus) in declared.items()} \
        == {r["cell"]: (1 if "finetune" in r["cell"] else 0) for r in records}
    assert len(records) == 4  # the fine-tuning cells were placed (on the GPU node) and ended
    finished = [r["cell"] for r in records if r["status"] == "finished"]
    assert len(finished) >= 2, [(r["cell"], r["error"]) for r in records]
    mlflow.set_tracking_uri(uri)
    try:
        logged = mlflow.search_runs(experiment_names=["on-ray"], output_format="list")
    finally:
        mlflow.set_tracking_uri(None)
    assert sorted(r.info.run_name for r in logged) == sorted(finished)
