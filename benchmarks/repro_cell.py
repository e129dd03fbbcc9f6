"""Did two runs of one configuration make the same program?

Compares two finished run folders (e.g. the same bench cell run twice, each on a fresh LM
cache) part by part: the saved programs with file paths left out (instructions, demos, the
model's and the LoRA adapter's SHA-256), each LoRA training's losses, the candidates' validation
scores, and the per-example test scores.  Prints one line per part and exits 1 when the
programs differ.

    python benchmarks/repro_cell.py RUN_A RUN_B
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

PATH_KEYS = {"path", "lora_path", "adapter_dir", "checkpoint", "run_dir"}


def without_paths(value: Any) -> Any:
    """``value`` with every file path left out: two folders never share them."""
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items() if k not in PATH_KEYS}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    return value


def read(run: Path, name: str) -> Any:
    path = run / name
    if not path.is_file():
        sys.exit(f"{path} is missing: {run} is not a finished run folder")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        sys.exit(f"{path} is corrupt ({exc})")


def trainings(run: Path) -> list[list[float]]:
    """The losses of every LoRA training of the run, in the order of its work folders."""
    files = sorted((run / "work").rglob("lora.json"))
    return [json.loads(f.read_text(encoding="utf-8")).get("losses", []) for f in files]


def first_difference(a: list[Any], b: list[Any]) -> str:
    if len(a) != len(b):
        return f"{len(a)} against {len(b)} entries"
    diffs = [i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y]
    return f"{len(diffs)} of {len(a)} differ (first at {diffs[0]})" if diffs else "identical"


def compare(run_a: Path, run_b: Path) -> bool:
    program_a, program_b = (without_paths(read(r, "program.json")) for r in (run_a, run_b))
    result_a, result_b = (read(r, "result.json") for r in (run_a, run_b))
    cands_a, cands_b = (read(r, "candidates.json") for r in (run_a, run_b))

    same_program = program_a == program_b
    predictors = sorted(set(program_a.get("predictors", {})) | set(program_b.get("predictors",
                                                                                    {})))
    print(f"program: {'identical' if same_program else 'DIFFERENT'}")
    for name in predictors:
        one = program_a.get("predictors", {}).get(name)
        two = program_b.get("predictors", {}).get(name)
        if one != two:
            parts = [k for k in sorted(set(one or {}) | set(two or {}))
                     if (one or {}).get(k) != (two or {}).get(k)]
            print(f"  {name}: differs in {', '.join(parts)}")

    losses_a, losses_b = trainings(run_a), trainings(run_b)
    print(f"LoRA trainings: {len(losses_a)} and {len(losses_b)}")
    for i, (one, two) in enumerate(zip(losses_a, losses_b, strict=False)):
        worst = max((abs(x - y) for x, y in zip(one, two, strict=False)), default=0.0)
        print(f"  training {i}: {len(one)} / {len(two)} steps, largest loss difference "
              f"{worst:.2e}")

    val_a = [c.get("score") for c in cands_a.get("candidates", [])]
    val_b = [c.get("score") for c in cands_b.get("candidates", [])]
    print(f"candidates' validation scores: {val_a} / {val_b} ({first_difference(val_a, val_b)})")
    test_a = result_a.get("test", {}).get("scores", [])
    test_b = result_b.get("test", {}).get("scores", [])
    print(f"test: {result_a.get('test_score')} / {result_b.get('test_score')}, per example "
          f"{first_difference(test_a, test_b)}")
    return same_program


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    args = parser.parse_args()
    sys.exit(0 if compare(args.run_a, args.run_b) else 1)


if __name__ == "__main__":
    main()
