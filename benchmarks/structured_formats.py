"""Free-text (field markers, ``ChatAdapter``) vs structured (``JSONAdapter``: JSON schema ->
llama.cpp grammar) answers of the built-in programs, on the embedded engine.

For every task and adapter, the unoptimized program (no demos) runs over the first N test
examples, one at a time.  Per module (predictor) it counts the answers that did not parse at
first (each then gets one repair request) and those still unparsable after the repair (the
example fails); per example it keeps the score, tokens and wall time.  Each finished example is
appended to a JSON-lines file, so a killed run resumes where it stopped; the LM cache lives in
its own folder.

    COTUNE_LLAMA_THREADS=1 nohup nice python benchmarks/structured_formats.py \\
        --model qwen2.5-0.5b --n 50 &
    python benchmarks/structured_formats.py --report      # the markdown table from the file
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import cotune
from cotune.core.runtime import adapter_named
from cotune.lm import LlamaCppLM, LMCache, track_usage
from cotune.tasks import get_task

TASKS = ("iris", "scone", "gsm8k", "hotpotqa")
ADAPTERS = ("chat", "json")
OUT = Path("benchmarks/out/structured_formats")


class CountingAdapter:
    """Wraps an adapter for one predictor and counts its parse failures and repairs."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.counts = {"answers": 0, "parse_failures": 0, "repairs": 0}

    def format(self, signature: Any, demos: Sequence[Mapping[str, Any]],
               inputs: Mapping[str, Any]) -> list[dict[str, str]]:
        return self.inner.format(signature, demos, inputs)

    def request_options(self, signature: Any, budget: int) -> dict[str, Any]:
        options = getattr(self.inner, "request_options", None)
        return options(signature, budget) if callable(options) else {}

    def parse(self, signature: Any, text: str) -> dict[str, Any]:
        self.counts["answers"] += 1
        try:
            return self.inner.parse(signature, text)
        except ValueError:
            self.counts["parse_failures"] += 1
            raise

    def repair_messages(self, *args: Any) -> list[dict[str, str]]:
        self.counts["repairs"] += 1
        return self.inner.repair_messages(*args)


def run_example(task: Any, example: Any, adapter: str, lm: Any) -> dict[str, Any]:
    program = task.make_program()
    counters = {}
    for name, p in program.named_predictors():
        counters[name] = CountingAdapter(adapter_named(adapter))
        p.adapter = counters[name]
    started = time.monotonic()
    error = None
    prediction = None
    with cotune.context(lm=lm), track_usage() as meter:
        try:
            prediction = program(**example.inputs())
        except Exception as exc:  # noqa: BLE001 - recorded as the example's failure
            error = f"{type(exc).__name__}: {str(exc)[:300]}"
    score = 0.0 if prediction is None else float(task.metric(example, prediction))
    usage = meter.snapshot()
    modules = {}
    for name, c in counters.items():
        # a first answer that failed to parse got one repair; what failed after it is final
        first_fail = c.counts["repairs"]
        modules[name] = {"calls": c.counts["answers"] - c.counts["repairs"],
                         "first_fail": first_fail,
                         "final_fail": c.counts["parse_failures"] - first_fail}
    return {"score": score, "error": error, "modules": modules,
            "tokens": usage.total_tokens, "completion_tokens": usage.completion_tokens,
            "calls": usage.calls, "cache_hits": usage.cache_hits, "repairs": usage.repairs,
            "wall_s": round(time.monotonic() - started, 2)}


def load_done(path: Path) -> dict[tuple[str, str, int], dict[str, Any]]:
    done = {}
    if path.exists():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                done[(row["task"], row["adapter"], row["index"])] = row
    return done


def schedule(tasks: Sequence[str], n: int) -> list[tuple[str, int]]:
    """Iris first (cheap), then the others round-robin, so that a stopped run has about as many
    examples of each."""
    order = [(t, i) for t in tasks if t == "iris" for i in range(n)]
    rest = [t for t in tasks if t != "iris"]
    order += [(t, i) for i in range(n) for t in rest]
    return order


def run(args: argparse.Namespace) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    done = load_done(results)
    lm = LlamaCppLM(args.model, n_ctx=args.n_ctx, cache=LMCache(out / "lm_cache.sqlite"))
    testsets: dict[str, list[Any]] = {}
    for task_name, index in schedule(args.tasks, args.n):
        task = get_task(task_name)
        if task_name not in testsets:
            testsets[task_name] = task.load_splits(seed=0).test
        example = testsets[task_name][index]
        for adapter in args.adapters:
            if (task_name, adapter, index) in done:
                continue
            row = {"task": task_name, "adapter": adapter, "index": index, "model": args.model,
                   **run_example(task, example, adapter, lm)}
            with results.open("a") as f:
                f.write(json.dumps(row) + "\n")
            print(json.dumps(row), flush=True)


# -- the report --------------------------------------------------------------------------------


def wilson(k: float, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def paired_interval(diffs: list[float], seed: int = 0, rounds: int = 2000) -> tuple[float, float]:
    """95% bootstrap interval of the mean paired difference."""
    if not diffs:
        return (0.0, 0.0)
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(diffs, k=len(diffs))) / len(diffs) for _ in range(rounds))
    return (means[int(0.025 * rounds)], means[int(0.975 * rounds) - 1])


def report(path: Path) -> str:
    rows = list(load_done(path).values())
    by = defaultdict(list)
    for r in rows:
        by[(r["task"], r["adapter"])].append(r)
    lines = ["| task | adapter | n | score [95% CI] | parse failures first answer, per module "
             "| after one repair | examples failed | tokens/example | s/example (not cached) |",
             "|---|---|---|---|---|---|---|---|---|"]
    paired = []
    for task in TASKS:
        both = {a: {r["index"]: r for r in by.get((task, a), [])} for a in ADAPTERS}
        common = sorted(set(both["chat"]) & set(both["json"]))
        for adapter in ADAPTERS:
            rs = [both[adapter][i] for i in common]
            if not rs:
                continue
            n = len(rs)
            score = sum(r["score"] for r in rs)
            lo, hi = wilson(score, n)
            first, final = [], []
            for module in rs[0]["modules"]:
                calls = sum(r["modules"][module]["calls"] for r in rs)
                f1 = sum(r["modules"][module]["first_fail"] for r in rs)
                f2 = sum(r["modules"][module]["final_fail"] for r in rs)
                first.append(f"{module} {f1}/{calls}")
                final.append(f"{module} {f2}/{calls}")
            failed = sum(1 for r in rs if r["error"])
            fresh = [r["wall_s"] for r in rs if not r["cache_hits"]]  # replays took no time
            wall = f"{sum(fresh) / len(fresh):.1f}" if fresh else "-"
            lines.append(
                f"| {task} | {adapter} | {n} | {score / n:.3f} [{lo:.2f}, {hi:.2f}] | "
                f"{'; '.join(first)} | {'; '.join(final)} | {failed} | "
                f"{sum(r['tokens'] for r in rs) / n:.0f} | {wall} |")
        if common:
            diffs = [both["json"][i]["score"] - both["chat"][i]["score"] for i in common]
            lo, hi = paired_interval(diffs)
            paired.append(f"| {task} | {len(common)} | {sum(diffs) / len(diffs):+.3f} "
                          f"[{lo:+.2f}, {hi:+.2f}] |")
    lines += ["", "| task | n | score json - chat, paired [95% bootstrap CI] |", "|---|---|---|",
              *paired]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--n", type=int, default=50, help="test examples per task")
    parser.add_argument("--n-ctx", type=int, default=None)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    parser.add_argument("--adapters", nargs="+", default=list(ADAPTERS), choices=ADAPTERS)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--report", action="store_true", help="print the table and exit")
    args = parser.parse_args()
    if args.report:
        print(report(Path(args.out) / "results.jsonl"))
    else:
        run(args)


if __name__ == "__main__":
    main()
