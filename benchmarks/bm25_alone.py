"""The no-LM baseline of the retrieval tasks: BM25 on the claim (HoVer) or the question
(HotPotQA) alone, top k passages, with 95% bootstrap intervals.  The multi-hop programs retrieve
at most ``hops x passages_per_hop`` distinct passages; compare them with this at the same count.

    python benchmarks/bm25_alone.py            # HoVer test split (seed 0) and HotPotQA's dev pool
    python benchmarks/bm25_alone.py --run RUN  # a HoVer or HotPotQA run's test split, paired
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cotune.core.example import Example
from cotune.evaluate.stats import bootstrap_ci, paired_bootstrap_ci
from cotune.runs.optimize import RunSpec, load_data
from cotune.tasks import hotpotqa, hover
from cotune.tasks.data import data_path
from cotune.tasks.multihop import bm25_alone
from cotune.tasks.retrieval import BM25Retriever, shared_retriever


def hotpotqa_alone(retriever: BM25Retriever, examples: list[Example], k: int
                   ) -> tuple[list[float], list[float]]:
    both, recall = [], []
    for ex in examples:
        r = hotpotqa.gold_titles_recall(ex, bm25_alone(retriever, ex["question"], k))
        recall.append(r)
        both.append(float(r == 1.0))
    return both, recall


# per task a run can be compared on: the task, BM25 on its input alone, and the input's name
RUN_TASKS = {
    "hover": (hover.TASK, hover.claim_only_recall, "claim"),
    "hotpotqa": (hotpotqa.TASK, hotpotqa_alone, "question"),
}


def against_run(run_dir: Path, retriever: BM25Retriever, k: int | None) -> None:
    """A HoVer or HotPotQA run's test retrieval (every gold document found; retrieval recall)
    against BM25 on the claim or question alone at ``k`` passages (default: as many as the
    program retrieves), on the same test examples: both, and the paired difference."""
    config = json.loads((run_dir / "config.json").read_text())
    test = json.loads((run_dir / "result.json").read_text())["test"]
    name = config["task"]["name"]
    if name not in RUN_TASKS:
        raise SystemExit(f"{run_dir}: a {' or '.join(RUN_TASKS)} run is needed, not {name!r}")
    task, alone, what = RUN_TASKS[name]
    k = k or task.make_program(retriever).max_passages
    sizes = config["splits"]
    # the run's own examples, drawn and cut as the run drew them
    examples = load_data(task, RunSpec(
        task=name, seed=config["seed"], train_size=sizes["train"], val_size=sizes["val"],
        test_size=sizes["test"])).test
    found, recall = alone(retriever, examples, k)
    ours_recall = (test.get("metric_scores") or {}).get("retrieval_recall")
    # HoVer's score is "all found"; HotPotQA's is the answer, so "all found" is recall == 1
    ours_found = test["scores"] if name == "hover" else (
        [float(r == 1.0) for r in ours_recall] if ours_recall else None)
    print(f"| {run_dir} ({len(examples)} test examples) | program [95% CI] | BM25 on the {what}, "
          f"top {k} | program - BM25 [paired 95% CI] |")
    print("|---|---:|---:|---:|")
    rows = [("all gold found", ours_found, found), ("retrieval_recall", ours_recall, recall)]
    for label, ours, theirs in rows:
        if ours:
            print(f"| {label} | {bootstrap_ci(ours)} | {bootstrap_ci(theirs)} "
                  f"| {paired_bootstrap_ci(ours, theirs).format(signed=True)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=None,
                        help="passage counts (default 5 10 15; with --run, as many as the "
                        "run's program retrieves: 15 for HoVer, 6 for HotPotQA)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", type=Path, help="a HoVer or HotPotQA run folder to compare, "
                        "paired (at the largest --k)")
    args = parser.parse_args()
    retriever = shared_retriever(data_path("hotpotqa", "corpus.jsonl"))
    if args.run:
        against_run(args.run, retriever, max(args.k) if args.k else None)
        return
    args.k = args.k or [5, 10, 15]
    rows = []
    hover_test = hover.load_splits(seed=args.seed).test
    dev = [hotpotqa.to_example(r) for r in hotpotqa.load_rows("dev")]
    for k in args.k:
        found, recall = hover.claim_only_recall(retriever, hover_test, k)
        rows.append((f"hover test ({len(hover_test)} claims, seed {args.seed})", k, found, recall))
        both, recall = hotpotqa_alone(retriever, dev, k)
        rows.append((f"hotpotqa dev pool ({len(dev)} questions)", k, both, recall))
    print("| data | passages | all gold found [95% CI] | retrieval_recall [95% CI] |")
    print("|---|---:|---:|---:|")
    for name, k, found, recall in sorted(rows, key=lambda r: (r[0], r[1])):
        print(f"| {name} | {k} | {bootstrap_ci(found)} | {bootstrap_ci(recall)} |")


if __name__ == "__main__":
    main()
