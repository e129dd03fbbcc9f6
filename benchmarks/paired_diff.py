"""Paired bootstrap interval of the score difference of two programs on the same examples.

Reads two per-example result files written by ``cotune evaluate ... --out FILE`` (the same
split and seed, so the same examples in the same order), or two run folders (the final
program's test scores, from the journal), and prints both scores, the difference (second minus
first) and its 95% paired bootstrap interval:

    .venv/bin/python benchmarks/paired_diff.py before.json after.json
    .venv/bin/python benchmarks/paired_diff.py runs/mipro runs/gepa

``--metric NAME`` compares a task's extra metric instead (e.g. ``retrieval_recall``), as
``cotune evaluate --out`` records it for each example.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
import sqlite3
import sys
from pathlib import Path


def load_run_scores(folder: Path) -> tuple[list[dict], list[float]]:
    """The final program's per-example test scores of a run folder; the examples are named by
    the split's digest (the same digest: the same examples in the same order)."""
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        state = json.loads((folder / "program.json").read_text(encoding="utf-8"))
        # the key cotune's run journals the final program's test evaluation under
        key = "test:" + hashlib.sha256(
            json.dumps(state, sort_keys=True, default=str).encode()).hexdigest()[:16]
        with sqlite3.connect(f"file:{folder / 'journal.sqlite'}?mode=ro", uri=True) as conn:
            row = conn.execute("SELECT value FROM entries WHERE key = ?", (key,)).fetchone()
        if row is None:
            sys.exit(f"error: {folder} has no test evaluation of its final program")
        scores = [float(x) for x in json.loads(row[0])["scores"]]
        split = {"task": config["task"]["name"], "seed": config["seed"], **config["splits"]}
        return [split] * len(scores), scores
    except (OSError, ValueError, KeyError, TypeError, sqlite3.Error) as exc:
        sys.exit(f"error: {folder} is not a finished cotune run folder ({exc})")


def load_scores(path: Path, metric: str | None = None) -> tuple[list[dict], list[float]]:
    if path.is_dir():
        if metric is not None:
            sys.exit(f"error: --metric reads `cotune evaluate --out` files, not a run folder "
                     f"({path})")
        return load_run_scores(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        results = data["results"]
        examples = [r["example"] for r in results]
        if metric is None:
            return examples, [float(r["score"]) for r in results]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        sys.exit(f"error: {path} is not a `cotune evaluate --out` file ({exc})")
    recorded = (data.get("metrics") or {}).get(metric)
    if not isinstance(recorded, dict) or len(recorded.get("values") or []) != len(results):
        sys.exit(f"error: {path} records no per-example {metric!r} (its metrics: "
                 f"{sorted(data.get('metrics') or {})}; files of an older cotune record none)")
    return examples, [float(v) for v in recorded["values"]]


def paired_interval(
    a: list[float], b: list[float], *, resamples: int = 10_000, seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile interval of mean(b - a) over resamples of the examples (pairs kept)."""
    diffs = [y - x for x, y in zip(a, b, strict=True)]
    rng = random.Random(seed)
    n = len(diffs)
    means = sorted(sum(diffs[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    tail = (1 - level) / 2
    return means[int(tail * resamples)], means[min(resamples - 1, int((1 - tail) * resamples))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--resamples", type=int, default=10_000)
    parser.add_argument("--metric", help="a task's extra metric instead of its score")
    args = parser.parse_args()
    ex_a, a = load_scores(args.before, args.metric)
    ex_b, b = load_scores(args.after, args.metric)
    if ex_a != ex_b:
        sys.exit("error: the two files hold different examples (use the same split and seed)")
    low, high = paired_interval(a, b, resamples=args.resamples)
    n = len(a)
    print(json.dumps({"metric": args.metric or "score", "examples": n, "before": sum(a) / n,
                      "after": sum(b) / n, "difference": (sum(b) - sum(a)) / n,
                      "ci95": [low, high]}))


if __name__ == "__main__":
    main()
