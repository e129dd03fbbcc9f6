"""Ray scale-out on a local two-node cluster (head + one node, 1 CPU each), against sequential.

1. The same bench grid run sequentially (in this process) and as Ray tasks: 4 cells of the
   scripted parity task (tests/scripted_task.py) with a per-call delay, then 2 small SmolLM2
   cells (iris, vanilla).  Results must be identical; reported: wall time of each way and the
   scheduling overhead per cell, ``(nodes x Ray wall - sum of the cells' own wall times) /
   cells`` (idle slots from an uneven split included).
2. ``Evaluate`` of a one-predictor program against the instant stub server
   (benchmarks/stub_server.py): 8 threads in this process vs ``RayExecutor`` (2 actors x 4
   threads); wall time per example.
   The same for bootstrapping (``collect_successful_traces``, every example a passing trace):
   all traces (one pass), and the first half of them (``wanted``: chunks of twice the slots,
   each drained before the next); the traces must be identical; wall time per example run.
3. The optimizer's own loop: ``cotune optimize``'s ``run_optimization`` of MIPRO (light preset,
   60 trials) on the scripted task with an instant scripted LM, journal on, cache off: wall
   time per trial and per LM call when the LM costs nothing (proposals, TPE, journal writes,
   Evaluate's bookkeeping), the basis of docs/scale-out.md's projection.

    python benchmarks/scale_out.py --out scale_out.json
    python benchmarks/scale_out.py --only-fanout --out fanout.json   # part 2 alone

Needs cotune[ray] and the packaged SmolLM2 (``--no-smollm2`` skips those cells).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "benchmarks")]

import ray  # noqa: E402
from eval_overhead import ANSWER, free_port, start_stub_process  # noqa: E402
from ray_cluster import ray_cluster, use_scripted_lm, wait_for_nodes  # noqa: E402

from cotune import Example, Predict  # noqa: E402
from cotune.evaluate import Evaluate, exact_match  # noqa: E402
from cotune.evaluate.ray_executor import RayExecutor  # noqa: E402
from cotune.lm import OpenAILM  # noqa: E402
from cotune.optimize import collect_successful_traces  # noqa: E402
from cotune.runs.bench import BenchSpec, run_bench  # noqa: E402
from cotune.runs.distributed import run_bench_on_ray  # noqa: E402

CALL_DELAY_S = "0.05"
NODES = 2
TRIALS = 60
KEYS = ("cell", "status", "val_score", "test_score", "lm_calls")


def grids(smollm2: bool) -> list[tuple[str, BenchSpec]]:
    scripted = BenchSpec.from_dict({
        "tasks": [str(ROOT / "tests" / "scripted_task.py")], "models": ["scripted"],
        "optimizers": ["vanilla", {"name": "random-search", "options": {"num_candidates": 2}}],
        "seeds": [0, 1], "threads": 1, "train_size": 6, "val_size": 4, "test_size": 4})
    delay_ms = round(1000 * float(os.environ.get("COTUNE_TEST_SLEEP", CALL_DELAY_S)))
    out = [(f"scripted x4 ({delay_ms} ms/call)", scripted)]
    if smollm2:
        out.append(("SmolLM2 iris x2", BenchSpec.from_dict({
            "tasks": [{"name": "iris", "train_size": 4, "val_size": 4, "test_size": 6}],
            "optimizers": ["vanilla"], "models": ["smollm2-135m"], "seeds": [0, 1],
            "threads": 1})))
    return out


def bench_rows(work: Path, smollm2: bool) -> list[dict[str, Any]]:
    rows = []
    for name, spec in grids(smollm2):
        slug = name.split()[0].lower()
        start = time.perf_counter()
        sequential = run_bench(spec, work / f"seq-{slug}")
        seq_wall = time.perf_counter() - start
        start = time.perf_counter()
        on_ray = run_bench_on_ray(spec, work / f"ray-{slug}", cpus_per_cell=1)
        ray_wall = time.perf_counter() - start
        same = [{k: r[k] for k in KEYS} for r in on_ray] == \
            [{k: r[k] for k in KEYS} for r in sequential]
        cell_walls = sum(float(r.get("wall_s") or 0) for r in on_ray)
        rows.append({
            "grid": name, "cells": len(on_ray), "identical": same,
            "sequential_s": round(seq_wall, 2), "ray_s": round(ray_wall, 2),
            "cells_own_s": round(cell_walls, 2),
            "overhead_per_cell_s": round((NODES * ray_wall - cell_walls) / len(on_ray), 2),
        })
        print(rows[-1], flush=True)
    return rows


def evaluate_rows(n: int, repeats: int) -> list[dict[str, Any]]:
    url, server = start_stub_process(ANSWER)
    try:
        lm = OpenAILM("stub", base_url=url, api_key="EMPTY", cache=None)
        devset = [Example(question=f"q{i}", answer="42").with_inputs("question")
                  for i in range(n)]
        program = Predict("question -> answer")
        rows = []
        threads = Evaluate(devset, exact_match(), num_threads=8, display_progress=False)
        executor = RayExecutor(lm.describe(), num_actors=2, num_cpus=1, threads_per_actor=4,
                               lm_options={"cache": None, "api_key": "EMPTY"})
        fanned = Evaluate(devset, exact_match(), display_progress=False, executor=executor)
        from cotune import context

        half = n // 2

        def bootstrap(where: dict[str, Any]) -> Any:
            return collect_successful_traces(program, devset, exact_match(), **where)

        try:
            fanned(program)  # warm-up: the actors start and import cotune
            runs = [("evaluate", "threads (8)", lambda: threads(program)),
                    ("evaluate", "Ray actors (2 x 4)", lambda: fanned(program)),
                    ("bootstrap", "threads (8)", lambda: bootstrap({"num_threads": 8})),
                    ("bootstrap", "Ray actors (2 x 4)",
                     lambda: bootstrap({"executor": executor})),
                    ("bootstrap, wanted", "threads (8)",
                     lambda: bootstrap({"num_threads": 8, "wanted": half})),
                    ("bootstrap, wanted", "Ray actors (2 x 4)",
                     lambda: bootstrap({"executor": executor, "wanted": half}))]
            outputs: dict[str, set[str]] = {}
            for what, label, run in runs:
                walls, seen = [], set()
                for _ in range(repeats):
                    start = time.perf_counter()
                    with context(lm=lm):
                        result = run()
                    walls.append(time.perf_counter() - start)
                    seen.add(repr(result.score) if what == "evaluate" else
                             json.dumps([t.to_json() for t in result], sort_keys=True))
                outputs.setdefault(what, set()).update(seen)
                wall = statistics.median(walls)
                ran = n if what != "bootstrap, wanted" else -(-half // 16) * 16  # whole chunks
                rows.append({"what": what, "executor": label, "examples": ran,
                             "median_s": round(wall, 3),
                             "ms_per_example": round(1000 * wall / ran, 3),
                             "identical_to_threads": len(outputs[what]) == 1})
                print(rows[-1], flush=True)
        finally:
            executor.close()
        return rows
    finally:
        server.terminate()
        server.wait()


def loop_rows(work: Path) -> list[dict[str, Any]]:
    """MIPRO's loop with an LM that answers instantly: what one driver process costs."""
    import scripted_task

    from cotune.runs.optimize import RunSpec, run_optimization

    rows = []
    for run, threads in enumerate((1, 1, 4)):  # the first: a warm-up (imports, optuna)
        spec = RunSpec(task=str(ROOT / "tests" / "scripted_task.py"), optimizer="mipro",
                       preset="light", threads=threads, use_cache=False,
                       options={"num_trials": TRIALS, "minibatch_size": 6,
                                "full_eval_every": 5})
        lm = scripted_task.SlowScriptedLM(scripted_task.scripted_answer, model="scripted",
                                          cache=None)
        saved = os.environ.pop("COTUNE_TEST_SLEEP", None)
        try:
            start = time.perf_counter()
            summary = run_optimization(spec, work / f"loop-{run}", lm=lm)
            wall = time.perf_counter() - start
        finally:
            if saved is not None:
                os.environ["COTUNE_TEST_SLEEP"] = saved
        if run == 0:
            continue
        trials = json.loads((work / f"loop-{run}" / "trials.json").read_text())
        calls = summary.usage["total"]["calls"]
        rows.append({"optimizer": f"mipro light, {TRIALS} trials", "threads": threads,
                     "trials": len(trials), "lm_calls": calls, "wall_s": round(wall, 2),
                     "ms_per_trial": round(1000 * wall / max(1, len(trials)), 1),
                     "ms_per_call": round(1000 * wall / max(1, calls), 3)})
        print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--examples", type=int, default=400)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-smollm2", action="store_true")
    parser.add_argument("--delay", default=CALL_DELAY_S,
                        help="seconds per scripted LM call in the grid (default 0.05)")
    parser.add_argument("--only-loop", action="store_true", help="only part 3 (no Ray)")
    parser.add_argument("--only-fanout", action="store_true",
                        help="only part 2 (Evaluate and bootstrapping on actors vs threads)")
    args = parser.parse_args()
    os.environ["COTUNE_TEST_SLEEP"] = args.delay
    os.environ.setdefault("COTUNE_LLAMA_THREADS", "1")
    with tempfile.TemporaryDirectory(prefix="scale-out-") as tmp:
        work = Path(tmp)
        os.environ["COTUNE_CACHE_DIR"] = str(work / "cache")
        env = {"PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests")]),
               "COTUNE_TEST_SLEEP": args.delay, "COTUNE_CACHE_DIR": str(work / "cache"),
               "COTUNE_LLAMA_THREADS": os.environ["COTUNE_LLAMA_THREADS"]}
        temp_dir = Path("/tmp") / f"cotune-ray-bench-{os.getpid()}"
        temp_dir.mkdir(exist_ok=True)
        if args.only_loop:
            report = {"loop": loop_rows(work)}
            print(json.dumps(report, indent=2))
            if args.out:
                args.out.write_text(json.dumps(report, indent=2) + "\n")
            return
        use_scripted_lm()  # the sequential cells: the model "scripted" is the scripted LM
        with ray_cluster(temp_dir, free_port(), env) as address:
            ray.init(address=address, log_to_driver=False,
                     runtime_env={"worker_process_setup_hook": "ray_cluster.use_scripted_lm"})
            try:
                wait_for_nodes(ray, NODES)
                fanout = evaluate_rows(args.examples, args.repeats)
                report = ({"fanout": fanout} if args.only_fanout else
                          {"bench": bench_rows(work, not args.no_smollm2), "fanout": fanout,
                           "loop": loop_rows(work)})
            finally:
                ray.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
