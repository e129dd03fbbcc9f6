"""Run a benchmark grid from a spec file; the same as ``cotune bench --spec SPEC --out DIR``,
plus the HTML report at the end.

    python benchmarks/run.py bench.toml --out runs/paper   # rerun it to resume

A spec (TOML, or the same keys in JSON)::

    models = ["qwen2.5-coder-0.5b"]
    seeds = [0, 1]
    optimizers = ["vanilla", "mipro:light", "bettertogether:p->w", "bettertogether:p->w->p"]
    max_calls = 3000          # budget per cell (also max_tokens, max_seconds)
    threads = 2
    train_size = 50           # default sizes; a task table may set its own
    val_size = 20
    test_size = 100

    [[tasks]]
    name = "iris"

    [[tasks]]
    name = "gsm8k"
    train_size = 100
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cotune.runs.bench import RESULTS_MD, resolve_spec, run_bench
from cotune.runs.report import write_report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("spec", type=Path, help="the bench spec (JSON or TOML)")
    parser.add_argument("--out", type=Path, default=Path("runs/bench"), help="the bench folder")
    args = parser.parse_args(argv)

    records = run_bench(resolve_spec(args.spec, args.out, {}), args.out)
    print((args.out / RESULTS_MD).read_text(encoding="utf-8"))
    print(f"report: {write_report(args.out)}")
    return 0 if all(r["status"] == "finished" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
