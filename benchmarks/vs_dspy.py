"""cotune and DSPy side by side: the same task, split, model and server, LM calls counted alike.

Both frameworks optimize the one-predictor Iris program (seeded 50/50/50 split, seed 0,
temperature 0; or with ``--task gsm8k`` the chain-of-thought GSM8K program, the same seeded
split as cotune's for the sizes given) against one llama.cpp server on 127.0.0.1 (``python -m
llama_cpp.server``, started here), through ``benchmarks/counting_proxy.py``, which counts every
request and its tokens per run and renames DSPy's ``max_completion_tokens`` to
``max_tokens``.  Counterparts:

* ``zero-shot``: cotune ``vanilla`` / DSPy's program as it comes;
* ``random-search``: cotune ``random-search`` / DSPy ``BootstrapFewShotWithRandomSearch``;
* ``mipro-light``: cotune ``mipro`` preset light / DSPy ``MIPROv2(auto="light")``;
* ``gepa-light``: cotune ``gepa`` preset light (or ``--gepa-metric-calls N``: that budget, e.g.
  the one DSPy's ``auto="light"`` computes) / DSPy ``GEPA(auto="light")``, both with the same
  model as reflection LM at temperature 1.0 and the feedback "Correct." / "Expected X, got Y."
  (cotune's Iris feedback metric; on GSM8K "Expected the number X; the answer gave Y.", also
  cotune's); each side's reflection requests are counted apart (``reflection_requests``) and
  included in its LM calls; ``--dspy-gepa-metric-calls N`` gives ``dspy.GEPA`` that budget
  instead of ``auto="light"``;
* ``bettertogether``: not applicable here (see ``NOT_APPLICABLE``).

Each side uses its own defaults otherwise, except that DSPy's LM gets ``max_tokens=512``
(``--dspy-max-tokens``; cotune's LM default cap: its Iris predictor asks for 32, its instruction
proposer 256): DSPy sends no cap by default, and llama.cpp then generates until the model stops
or the context is full.  Every run scores on val and test; its LM calls are everything it sent
(optimization and both evaluations).  Caches are off on both sides.  Wall time is the run's own
(cotune: ``run_optimization``; DSPy: optimize + evaluate, without the interpreter's start-up).

DSPy (``dspy[optuna]==3.4.1``) runs in its own venv, ``benchmarks/.dspy-venv`` (created on first
use), through ``benchmarks/dspy_driver.py``; the split travels to it as JSON.  The
framework-overhead part times ``Evaluate`` of a one-predictor program against
``benchmarks/stub_server.py`` (an instant server) at 1 and 8 threads: cotune's rows come from
``benchmarks/eval_overhead.py``.

    python benchmarks/vs_dspy.py                          # everything (~2 h with Qwen on 2 cores)
    python benchmarks/vs_dspy.py --limit 5 --optimizers zero-shot --model smollm2-135m
    python benchmarks/vs_dspy.py --only dspy --no-overhead --out vs.json
    python benchmarks/vs_dspy.py --task gsm8k --train-size 40 --val-size 25 --test-size 50 \
        --only dspy --optimizers gepa-light --dspy-gepa-metric-calls 215 --no-overhead
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import eval_overhead
from counting_proxy import CountingProxy

from cotune.lm import OpenAILM
from cotune.lm.models import resolve_model_path
from cotune.runs.optimize import RunSpec, load_data, run_optimization
from cotune.tasks.registry import get_task

HERE = Path(__file__).resolve().parent
DSPY_VENV = HERE / ".dspy-venv"
DSPY_VERSION = "3.4.1"
DSPY_REQUIREMENT = f"dspy[optuna]=={DSPY_VERSION}"  # MIPROv2 needs optuna
DRIVER = HERE / "dspy_driver.py"
SYSTEMS = ("cotune", "dspy")
DSPY_STUB_ANSWER = "[[ ## answer ## ]]\n42\n\n[[ ## completed ## ]]"
"""What the stub answers DSPy: its ChatAdapter's format, so every example parses."""


@dataclass(frozen=True)
class Counterpart:
    cotune: str
    cotune_preset: str | None
    dspy: str
    """The driver's optimizer name."""
    dspy_label: str


COUNTERPARTS = {
    "zero-shot": Counterpart("vanilla", None, "zero-shot", "zero-shot"),
    "random-search": Counterpart("random-search", None, "random-search",
                                 "BootstrapFewShotWithRandomSearch"),
    "mipro-light": Counterpart("mipro", "light", "mipro-light", 'MIPROv2(auto="light")'),
    "gepa-light": Counterpart("gepa", "light", "gepa-light", 'GEPA(auto="light")'),
}
TASKS = ("iris", "gsm8k")
"""Tasks with a DSPy counterpart program in ``dspy_driver.py``."""
REFLECTING = {"gepa-light"}
"""Counterparts with a reflection LM, whose requests go to their own proxy phase."""
NOT_APPLICABLE = {
    "bettertogether": (
        "fine-tunes the model's weights (LoRA), which a llama.cpp server cannot do: cotune's "
        "BetterTogether trains in-process on the GGUF's torch twin, and DSPy's calls the "
        "provider's fine-tuning API, which the server lacks"
    ),
}
OPTIMIZER_CHOICES = (*COUNTERPARTS, *NOT_APPLICABLE)

log = logging.getLogger("vs_dspy")


# -- the DSPy environment ------------------------------------------------------------------------


def dspy_python() -> Path:
    """The DSPy venv's interpreter, creating the venv and installing DSPy on first use."""
    python = DSPY_VENV / "bin" / "python"
    check = f"import dspy, optuna, sys; sys.exit(dspy.__version__ != {DSPY_VERSION!r})"
    if python.exists() and subprocess.run([python, "-c", check],
                                          capture_output=True).returncode == 0:
        return python
    log.info("installing %s into %s (a few minutes)", DSPY_REQUIREMENT, DSPY_VENV)
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", DSPY_VENV], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", DSPY_REQUIREMENT], check=True)
    return python


def dspy_env() -> dict[str, str]:
    return {**os.environ, "LITELLM_LOCAL_MODEL_COST_MAP": "True", "PYTHONUNBUFFERED": "1"}


# -- the served model ---------------------------------------------------------------------------


def wait_until_up(url: str, process: subprocess.Popen, log_file: Path, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"server exited; see {log_file}:\n{log_file.read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/models", timeout=2):
                return
        except OSError:
            if time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"server not up after {seconds:.0f} s; see {log_file}") from None
            time.sleep(0.5)


def start_llama_server(
    model_path: Path, alias: str, threads: int, log_file: Path
) -> tuple[str, subprocess.Popen]:
    """``python -m llama_cpp.server`` on a free port of 127.0.0.1; returns its ``.../v1`` URL."""
    port = eval_overhead.free_port()
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path),
               "--model_alias", alias, "--host", "127.0.0.1", "--port", str(port),
               "--n_ctx", "4096", "--n_threads", str(threads)]
    with log_file.open("w") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    wait_until_up(url, process, log_file, seconds=180)
    return url, process


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()


# -- the two sides ------------------------------------------------------------------------------


def run_spec(optimizer: str, preset: str | None, args: argparse.Namespace,
             options: dict[str, Any] | None = None) -> RunSpec:
    limit = args.limit
    return RunSpec(task=args.task, optimizer=optimizer, preset=preset, model=args.model,
                   seed=args.seed, train_size=args.train_size or limit,
                   val_size=args.val_size or limit, test_size=args.test_size or limit,
                   threads=args.threads, use_cache=False, options=options or {})


def with_reflection(row: dict[str, Any], proxy: CountingProxy, phase: str) -> dict[str, Any]:
    """The task phase's counts plus the reflection phase's (also given apart)."""
    reflection = proxy.stats(f"{phase}-reflection")
    out = {**row, "reflection_requests": reflection["requests"]}
    for key, value in reflection.items():
        out[key] = out.get(key, 0) + value
    return out


def write_split(args: argparse.Namespace, path: Path) -> dict[str, int]:
    """The exact examples cotune uses (``load_data`` of its run), as JSON for the driver."""
    splits = load_data(get_task(args.task), run_spec("vanilla", None, args))
    first = splits.train[0]
    data = {"input_keys": sorted(first.input_keys),
            **{name: [ex.to_dict() for ex in splits.get(name)]
               for name in ("train", "val", "test")}}
    path.write_text(json.dumps(data, indent=1))
    return {name: len(data[name]) for name in ("train", "val", "test")}


def run_cotune(name: str, proxy: CountingProxy, args: argparse.Namespace) -> dict[str, Any]:
    part = COUNTERPARTS[name]
    phase = f"cotune-{name}"
    run_dir = args.workdir / "cotune" / name
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run: nothing replayed from a journal
    lm = OpenAILM(args.model, base_url=proxy.base_url(phase), cache=None, temperature=0.0)
    options: dict[str, Any] = {}
    if name in REFLECTING:
        # the reflection LM: the same model and server, its requests in a phase of their own
        os.environ["COTUNE_CACHE"] = "off"  # the LM GEPA builds from a name: no cache either
        options = {"reflection_lm": args.model,
                   "reflection_base_url": proxy.base_url(f"{phase}-reflection")}
        if args.gepa_metric_calls:
            options["max_metric_calls"] = args.gepa_metric_calls
    spec = run_spec(part.cotune, part.cotune_preset, args, options)
    summary = run_optimization(spec, run_dir, lm=lm)
    row = {"val_accuracy": summary.val_score, "test_accuracy": summary.test_score,
           "wall_s": summary.wall_s, "own_usage": summary.usage["total"],
           "run_dir": str(run_dir), **proxy.stats(phase)}
    return with_reflection(row, proxy, phase) if name in REFLECTING else row


def run_dspy(
    name: str, proxy: CountingProxy, python: Path, split: Path, args: argparse.Namespace
) -> dict[str, Any]:
    phase = f"dspy-{name}"
    out = args.workdir / "dspy" / f"{name}.json"
    log_file = out.with_suffix(".log")
    out.parent.mkdir(parents=True, exist_ok=True)
    command = [python, DRIVER, "optimize", "--task", args.task, "--split", split,
               "--api-base", proxy.base_url(phase),
               "--model", f"openai/{args.model}", "--optimizer", COUNTERPARTS[name].dspy,
               "--threads", str(args.threads), "--seed", str(args.seed), "--out", out]
    if args.dspy_max_tokens:
        command += ["--max-tokens", str(args.dspy_max_tokens)]
    if name in REFLECTING:
        command += ["--reflection-api-base", proxy.base_url(f"{phase}-reflection")]
        if args.dspy_gepa_metric_calls:
            command += ["--gepa-metric-calls", str(args.dspy_gepa_metric_calls)]
    started = time.perf_counter()
    with log_file.open("w") as log_out:
        done = subprocess.run(command, stdout=log_out, stderr=subprocess.STDOUT, env=dspy_env())
    if done.returncode != 0:
        raise RuntimeError(f"the DSPy driver failed; see {log_file}:\n"
                           f"{log_file.read_text()[-3000:]}")
    result = json.loads(out.read_text())
    row = {**result, "process_wall_s": round(time.perf_counter() - started, 3),
           "log": str(log_file), **proxy.stats(phase)}
    return with_reflection(row, proxy, phase) if name in REFLECTING else row


# -- framework overhead ------------------------------------------------------------------------


def overhead_cotune(args: argparse.Namespace) -> list[dict[str, Any]]:
    """``eval_overhead.run_all``'s ``Evaluate + OpenAILM`` rows."""
    url, server = eval_overhead.start_stub_process(eval_overhead.ANSWER)
    try:
        rows = eval_overhead.run_all(url, args.overhead_examples, [1, 8],
                                     args.overhead_repeats, None)
    finally:
        stop(server)
    return [r for r in rows if r["case"] == "**Evaluate + OpenAILM**"]


def overhead_dspy(python: Path, args: argparse.Namespace) -> list[dict[str, Any]]:
    out = args.workdir / "dspy" / "overhead.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    url, server = eval_overhead.start_stub_process(DSPY_STUB_ANSWER)
    try:
        command = [python, DRIVER, "overhead", "--api-base", url,
                   "-n", str(args.overhead_examples), "--threads", "1", "8",
                   "--repeats", str(args.overhead_repeats), "--out", out]
        subprocess.run(command, check=True, env=dspy_env(), stderr=subprocess.DEVNULL)
    finally:
        stop(server)
    return json.loads(out.read_text())["rows"]


# -- output -------------------------------------------------------------------------------------


def _fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def results_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| optimizer | system | method | val acc | test acc | LM calls | errors "
             "| prompt tok | completion tok | wall s |",
             "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if r.get("not_applicable"):
            lines.append(f"| {r['optimizer']} | {r['system']} | n/a (see below) | | | | | | | |")
            continue
        if r.get("error"):
            lines.append(f"| {r['optimizer']} | {r['system']} | {r['method']} | failed: "
                         f"{r['error'][:80]} | | | | | | |")
            continue
        lines.append(
            f"| {r['optimizer']} | {r['system']} | {r['method']} "
            f"| {_fmt(r['val_accuracy'], '.2f')} | {_fmt(r['test_accuracy'], '.2f')} "
            f"| {r['requests']:,} | {r['errors']:,} | {r['prompt_tokens']:,} "
            f"| {r['completion_tokens']:,} | {r['wall_s']:,.1f} |")
    reasons = {r["optimizer"]: r["not_applicable"] for r in rows if r.get("not_applicable")}
    lines += [f"\n{name} is not applicable: it {reason}." for name, reason in reasons.items()]
    return "\n".join(lines)


def overhead_table(rows: list[dict[str, Any]]) -> str:
    lines = ["| system | case | threads | examples/s | CPU ms / example |",
             "|---|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['system']} | {r['case'].strip('*')} | {r['threads']} "
                     f"| {r['examples_per_s']:,.0f} | {r['cpu_ms_per_example']:.2f} |")
    return "\n".join(lines)


# -- main ---------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="qwen2.5-0.5b",
                        help="a packaged model name (cotune models) or a GGUF path")
    parser.add_argument("--task", choices=TASKS, default="iris",
                        help="the task both sides optimize (default: iris)")
    for split_name in ("train", "val", "test"):
        parser.add_argument(f"--{split_name}-size", type=int,
                            help=f"{split_name} examples (default: the task's, or --limit)")
    parser.add_argument("--only", choices=SYSTEMS, help="run one side only")
    parser.add_argument("--optimizers", nargs="+", choices=OPTIMIZER_CHOICES,
                        default=list(OPTIMIZER_CHOICES))
    parser.add_argument("--limit", type=int,
                        help="cut each split to its first N examples (a smoke run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="client threads, both sides")
    parser.add_argument("--server-threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--gepa-metric-calls", type=int,
                        help="cotune GEPA's max_metric_calls (default: its light preset's)")
    parser.add_argument("--dspy-gepa-metric-calls", type=int,
                        help="dspy.GEPA's max_metric_calls instead of auto='light' (e.g. the "
                        "budget cotune's run printed, for a run at the same budget)")
    parser.add_argument("--dspy-max-tokens", type=int, default=512,
                        help="DSPy LM's max_tokens (0: DSPy's default, no cap)")
    parser.add_argument("--no-overhead", dest="overhead", action="store_false",
                        help="skip the framework-overhead comparison")
    parser.add_argument("--overhead-only", action="store_true",
                        help="only the framework-overhead comparison (no model, no server)")
    parser.add_argument("--overhead-examples", type=int, default=2000)
    parser.add_argument("--overhead-repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=HERE / "out" / "vs-dspy",
                        help="run folders, driver logs and the server log")
    parser.add_argument("--out", type=Path, help="also write everything as JSON here")
    return parser.parse_args(argv)


def compare(args: argparse.Namespace, python: Path | None) -> list[dict[str, Any]]:
    """Start the server and the proxy; run every (optimizer, system) pair."""
    systems = [args.only] if args.only else list(SYSTEMS)
    model_path = resolve_model_path(args.model)
    alias = Path(args.model).stem if Path(args.model).suffix == ".gguf" else args.model
    args.model = alias
    split = args.workdir / "split.json"
    sizes = write_split(args, split)
    log.info("split %s; model %s", sizes, model_path.name)
    server_url, server = start_llama_server(model_path, alias, args.server_threads,
                                            args.workdir / "llama_server.log")
    proxy = CountingProxy(server_url.removesuffix("/v1"))
    rows = []
    try:
        for name in args.optimizers:
            for system in systems:
                row: dict[str, Any] = {"optimizer": name, "system": system}
                if name in NOT_APPLICABLE:
                    rows.append({**row, "not_applicable": NOT_APPLICABLE[name]})
                    continue
                part = COUNTERPARTS[name]
                row["method"] = (part.dspy_label if system == "dspy" else
                                 f"{part.cotune}" + (f" {part.cotune_preset}"
                                                     if part.cotune_preset else ""))
                if system == "cotune" and name in REFLECTING and args.gepa_metric_calls:
                    row["method"] = f"{part.cotune} (max_metric_calls {args.gepa_metric_calls})"
                if system == "dspy" and name in REFLECTING and args.dspy_gepa_metric_calls:
                    row["method"] = f"GEPA(max_metric_calls={args.dspy_gepa_metric_calls})"
                log.info("running %s %s", system, name)
                try:
                    if system == "cotune":
                        row.update(run_cotune(name, proxy, args))
                    else:
                        assert python is not None
                        row.update(run_dspy(name, proxy, python, split, args))
                except Exception as exc:  # one failed run must not lose the others
                    log.exception("%s %s failed", system, name)
                    row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
    finally:
        proxy.stop()
        stop(server)
    return [{**r, "split": sizes, "model": alias} for r in rows]


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    args = parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    python = dspy_python() if args.only != "cotune" else None
    results: dict[str, Any] = {"rows": [], "overhead": []}
    if not args.overhead_only:
        results["rows"] = compare(args, python)
    if args.overhead or args.overhead_only:
        if args.only != "dspy":
            results["overhead"] += [{"system": "cotune", **r} for r in overhead_cotune(args)]
        if python is not None:
            results["overhead"] += [{"system": "dspy", **r} for r in overhead_dspy(python, args)]
    if results["rows"]:
        first = results["rows"][0]
        print(f"\n## {args.task}, {first['model']}, split {first['split']}, "
              f"seed {args.seed}, temperature 0; LM calls and tokens counted by the proxy\n")
        print(results_table(results["rows"]))
    if results["overhead"]:
        print(f"\n## Framework overhead: Evaluate against an instant stub server, "
              f"{args.overhead_examples} examples, best of {args.overhead_repeats}\n")
        print(overhead_table(results["overhead"]))
    if args.out:
        args.out.write_text(json.dumps(results, indent=2, default=str))
    return 1 if any(r.get("error") for r in results["rows"]) else 0


if __name__ == "__main__":
    sys.exit(main())
