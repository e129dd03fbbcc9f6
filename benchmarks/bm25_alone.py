"""The no-LM baseline of the retrieval tasks: BM25 on the claim (HoVer) or the question
(HotPotQA) alone, top k passages, with 95% bootstrap intervals.  The multi-hop programs retrieve
at most ``hops x passages_per_hop`` distinct passages; compare them with this at the same count.

    python benchmarks/bm25_alone.py            # HoVer test split (seed 0) and HotPotQA's dev pool
    python benchmarks/bm25_alone.py --run RUN  # a HoVer run folder's test split against it, paired
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cotune.core.example import Example, Prediction
from cotune.evaluate.stats import bootstrap_ci, paired_bootstrap_ci
from cotune.runs.optimize import RunSpec, load_data
from cotune.tasks import hotpotqa, hover
from cotune.tasks.data import data_path
from cotune.tasks.retrieval import BM25Retriever, shared_retriever


def hotpotqa_alone(retriever: BM25Retriever, examples: list[Example], k: int
                   ) -> tuple[list[float], list[float]]:
    both, recall = [], []
    for ex in examples:
        prediction = Prediction(retrieved_titles=[p.title for p in
                                                  retriever.search(ex["question"], k=k)])
        r = hotpotqa.gold_titles_recall(ex, prediction)
        recall.append(r)
        both.append(float(r == 1.0))
    return both, recall


def against_run(run_dir: Path, retriever: BM25Retriever, k: int) -> None:
    """A HoVer run's test scores (all supporting found; retrieval recall) against BM25 on the
    claim alone at ``k`` passages, on the same test claims: both, and the paired difference."""
    config = json.loads((run_dir / "config.json").read_text())
    test = json.loads((run_dir / "result.json").read_text())["test"]
    if config["task"]["name"] != "hover":
        raise SystemExit(f"{run_dir}: a hover run is needed, not {config['task']['name']!r}")
    sizes = config["splits"]
    # the run's own examples, drawn and cut as the run drew them
    examples = load_data(hover.TASK, RunSpec(
        task="hover", seed=config["seed"], train_size=sizes["train"], val_size=sizes["val"],
        test_size=sizes["test"])).test
    found, recall = hover.claim_only_recall(retriever, examples, k)
    print(f"| {run_dir} ({len(examples)} test claims) | program [95% CI] | BM25 on the claim, "
          f"top {k} | program - BM25 [paired 95% CI] |")
    print("|---|---:|---:|---:|")
    rows = [("all supporting found", test["scores"], found),
            ("retrieval_recall", (test.get("metric_scores") or {}).get("retrieval_recall"),
             recall)]
    for name, ours, theirs in rows:
        if ours:
            print(f"| {name} | {bootstrap_ci(ours)} | {bootstrap_ci(theirs)} "
                  f"| {paired_bootstrap_ci(ours, theirs).format(signed=True)} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, nargs="+", default=[5, 10, 15])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--run", type=Path, help="a HoVer run folder to compare, paired "
                        "(at the largest --k: 15 by default, the three-hop program's count)")
    args = parser.parse_args()
    retriever = shared_retriever(data_path("hotpotqa", "corpus.jsonl"))
    if args.run:
        against_run(args.run, retriever, max(args.k))
        return
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
