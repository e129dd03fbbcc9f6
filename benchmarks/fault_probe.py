"""The fault probe: whole optimizations through a fault-injecting proxy, per kind of fault.

A deterministic fake OpenAI-compatible server answers the parity task of
``tests/scripted_task.py`` (the answer is a function of the prompt alone), behind the fault
proxy of ``tests/fault_proxy.py``.  First a clean run (no faults) gives the reference; then, for
every kind of fault and both HTTP transports, the same optimization runs with that fault
injected into ``--rate`` of the requests, with cotune's default retry policy and the given
request timeout.  A row says how many faults were injected, whether the run finished, whether
its ``program.json`` is byte for byte the clean one, and how many journaled steps differ from
the clean run's (a fault turned into a score would show there: a "silent zero").

Then three scenarios run through the ``cotune`` command itself (a subprocess, so the exit
status is the real one): an outage half way through a run (it must exit non-zero naming the
endpoint; the rerun after recovery must give the clean program), a dead endpoint (how fast it
fails), and a server that never answers.

    python benchmarks/fault_probe.py                    # table on stdout
    python benchmarks/fault_probe.py --out probe.json   # also write JSON
"""

from __future__ import annotations

import argparse
import json
import os
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
sys.path.insert(0, str(TESTS))

import scripted_task  # noqa: E402  (tests/ holds the task, the fake server and the proxy)
from conftest import FakeOpenAIServer, free_port  # noqa: E402
from fault_proxy import KINDS, FaultProxy  # noqa: E402

from cotune.lm import OpenAILM  # noqa: E402
from cotune.optimize.reporting import LogReporter  # noqa: E402
from cotune.runs.optimize import RunSpec, run_optimization  # noqa: E402

TASK = str(TESTS / "scripted_task.py")
MODEL = "fake-model"


def options(args: argparse.Namespace) -> dict[str, Any]:
    """``--set KEY=VALUE`` pairs (values read as JSON where they parse)."""
    parsed: dict[str, Any] = {}
    for pair in args.set or []:
        key, _, value = pair.partition("=")
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed


def spec(args: argparse.Namespace, run: Path) -> RunSpec:
    return RunSpec(task=TASK, optimizer=args.optimizer, model=MODEL, threads=args.threads,
                   options=options(args), cache_dir=str(run), timeout=args.timeout)


def journal(run: Path) -> dict[str, str]:
    path = run / "journal.sqlite"
    if not path.exists():
        return {}
    with sqlite3.connect(path) as conn:
        return dict(conn.execute("SELECT key, value FROM entries"))


def one_run(args: argparse.Namespace, run: Path, url: str, transport: str) -> dict[str, Any]:
    lm = OpenAILM(MODEL, base_url=url, timeout=args.timeout, transport=transport,
                  cache=None if args.no_cache else _cache(run))
    start = time.monotonic()
    try:
        summary = run_optimization(spec(args, run), run, lm=lm, reporter=LogReporter())
        finished, error = True, None
    except Exception as exc:  # noqa: BLE001 - the probe records whatever happened
        summary, finished, error = None, False, f"{type(exc).__name__}: {exc}"
    return {"finished": finished, "error": error, "wall_s": round(time.monotonic() - start, 2),
            "val": summary.val_score if summary else None,
            "test": summary.test_score if summary else None,
            "calls": summary.usage["total"]["calls"] if summary else None}


def _cache(run: Path):
    from cotune.lm import LMCache

    return LMCache(run / "lm_cache.sqlite")


def compare(run: Path, clean: Path) -> dict[str, Any]:
    mine, theirs = journal(run), journal(clean)
    program = run / "program.json"
    return {
        "identical": program.exists()
        and program.read_bytes() == (clean / "program.json").read_bytes(),
        "differing_steps": sum(1 for k, v in mine.items() if theirs.get(k) != v),
        "steps": len(mine),
    }


def per_kind(args: argparse.Namespace, server: FakeOpenAIServer, work: Path) -> list[dict]:
    rows = []
    for transport in args.transports:
        with FaultProxy(server.url) as clean_proxy:
            clean = work / f"clean-{transport}"
            reference = one_run(args, clean, clean_proxy.url, transport)
        assert reference["finished"], reference
        rows.append({"kind": "none (clean)", "transport": transport, "injected": 0,
                     **reference, **compare(clean, clean)})
        for kind in [*args.kinds, "all kinds"]:
            kinds = KINDS if kind == "all kinds" else [kind]
            with FaultProxy(server.url, rate=args.rate, kinds=kinds, seed=args.seed,
                            hang_s=args.timeout + 0.5, retry_after="1") as proxy:
                run = work / f"{kind.replace(' ', '-')}-{transport}"
                outcome = one_run(args, run, proxy.url, transport)
                stats = proxy.stats()
            rows.append({"kind": kind, "transport": transport,
                         "injected": sum(stats["faults"].values()),
                         "requests": stats["requests"], **outcome, **compare(run, clean)})
            print(_row(rows[-1]), flush=True)
    return rows


DRIVER = """
import sys
from cotune.cli import app
app(sys.argv[1:], prog_name="cotune")
"""


def cli(args: argparse.Namespace, run: Path, url: str) -> tuple[int, str, float]:
    settings = [part for pair in args.set or [] for part in ("--set", pair)]
    command = [sys.executable, "-c", DRIVER, "optimize", "--task", TASK, "--optimizer",
               args.optimizer, *settings, "--model", MODEL, "--base-url", url,
               "--timeout", str(args.timeout), "--threads", str(args.threads),
               "--run-dir", str(run), "--cache-dir", str(run)]
    env = {**os.environ, "COTUNE_CACHE_DIR": str(run.parent / "shared-cache"),
           "COLUMNS": "200"}
    start = time.monotonic()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    error = [line for line in (done.stdout + done.stderr).splitlines()
             if line.startswith("error:")]
    return done.returncode, error[0] if error else "", round(time.monotonic() - start, 2)


def scenarios(args: argparse.Namespace, server: FakeOpenAIServer, work: Path) -> list[dict]:
    start = time.monotonic()
    subprocess.run([sys.executable, "-c", DRIVER, "--help"], capture_output=True, check=True)
    rows = [{"scenario": "start-up alone (cotune --help)", "exit": 0,
             "wall_s": round(time.monotonic() - start, 2)}]
    with FaultProxy(server.url) as proxy:
        clean = work / "cli-clean"
        code, _, wall = cli(args, clean, proxy.url)
        requests = proxy.stats()["requests"]
    rows.append({"scenario": "clean run (reference)", "exit": code, "wall_s": wall})

    with FaultProxy(server.url, outage_after=requests // 2,
                    outage_kinds=["503", "reset", "empty-choices"]) as proxy:
        run = work / "cli-outage"
        code, error, wall = cli(args, run, proxy.url)
        kept = journal(run)
        clean_steps = journal(clean)
        rows.append({"scenario": "outage half way", "exit": code, "wall_s": wall,
                     "error": error, "names_endpoint": proxy.url in error,
                     "steps_kept": len(kept),
                     "kept_steps_differing": sum(clean_steps.get(k) != v
                                                 for k, v in kept.items())})
        proxy.recover()
        code, _, wall = cli(args, run, proxy.url)
        rows.append({"scenario": "rerun after recovery", "exit": code, "wall_s": wall,
                     **compare(run, clean)})

    dead = f"http://127.0.0.1:{free_port()}/v1"
    code, error, wall = cli(args, work / "cli-dead", dead)
    rows.append({"scenario": "dead endpoint", "exit": code, "wall_s": wall, "error": error,
                 "names_endpoint": dead in error})
    with FaultProxy(server.url, rate=1.0, kinds=["hang"], hang_s=args.timeout + 5) as proxy:
        code, error, wall = cli(args, work / "cli-hang", proxy.url)
        rows.append({"scenario": f"server never answers (--timeout {args.timeout:g})",
                     "exit": code, "wall_s": wall, "error": error,
                     "names_endpoint": proxy.url in error})
    for row in rows:
        print(json.dumps(row), flush=True)
    return rows


def _row(r: dict[str, Any]) -> str:
    return (f"| {r['kind']} | {r['transport']} | {r['injected']} | "
            f"{'yes' if r['finished'] else 'no: ' + str(r['error'])[:80]} | "
            f"{'yes' if r['identical'] else 'NO'} | {r['differing_steps']} | {r['wall_s']} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=0.1, help="fault rate per request")
    parser.add_argument("--seed", type=int, default=0, help="seed of the fault draws")
    parser.add_argument("--timeout", type=float, default=1.0, help="request timeout (s)")
    parser.add_argument("--optimizer", default="random-search")
    parser.add_argument("--set", action="append", metavar="KEY=VALUE",
                        help="an optimizer option (repeatable), as for cotune optimize")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--transports", nargs="+", default=["http", "sdk"])
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--no-cache", action="store_true", help="runs without an LM cache")
    parser.add_argument("--out", type=Path, help="write the figures as JSON")
    args = parser.parse_args()

    server = FakeOpenAIServer(lambda body: scripted_task.scripted_answer(
        SimpleNamespace(messages=body["messages"])))
    try:
        with tempfile.TemporaryDirectory(prefix="cotune-fault-probe-") as tmp:
            work = Path(tmp)
            print("| fault | transport | injected | run finished | program identical | "
                  "steps differing | wall s |\n|---|---|---:|---|---|---:|---:|", flush=True)
            kinds = per_kind(args, server, work)
            cases = scenarios(args, server, work)
    finally:
        server.close()
    faulty = [r for r in kinds if r["injected"]]
    summary = {
        "runs_with_faults": len(faulty),
        "faults_injected": sum(r["injected"] for r in faulty),
        "runs_finished": sum(r["finished"] for r in faulty),
        "programs_identical": sum(r["identical"] for r in faulty),
        "silent_wrong_steps": sum(r["differing_steps"] for r in faulty),
    }
    print(json.dumps(summary))
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)},
                                        "per_kind": kinds, "scenarios": cases,
                                        "summary": summary}, indent=2, default=str))


if __name__ == "__main__":
    main()
