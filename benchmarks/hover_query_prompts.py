"""Do HoVer's query writers name documents when told to, or when shown queries that did?

The retrieval-headroom benchmark shows that queries naming the missing document would lift
"all gold found" well above BM25 on the claim alone, and that Qwen2.5-0.5B's zero-shot queries
fall below it.  This probe tries, on the three-hop program and the test split of one seed, the
two cheapest ways to move the query writers (``generate_query[i]``) toward titles:

* ``zero-shot``: the program as it is;
* ``title instruction``: both query writers told to answer with the title of the article
  still needed (:data:`TITLE_INSTRUCTION`);
* ``+ hop-credited demos``: that instruction and, per query writer, the first ``--demos``
  queries of the zero-shot program on the training claims that *found a supporting document
  no earlier hop had found* (each hop credited by replaying its query through BM25, not by
  the claim's final score as bootstrapping does: a query that found one new document of a
  claim that still missed another is kept, one that found nothing new of a claim that passed
  anyway is not).

Each variant's score and recall with 95% intervals, and paired against zero-shot on the same
test claims.  The programs are saved under ``benchmarks/out/hover_query_prompts/seedN``
(``cotune evaluate --program`` loads them) with the scores and the LM cache, so a rerun costs
nothing.  ::

    COTUNE_LLAMA_THREADS=2 python benchmarks/hover_query_prompts.py --seed 0
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import cotune
from cotune.core.example import Example, Prediction
from cotune.evaluate import Evaluate
from cotune.evaluate.stats import bootstrap_ci, paired_bootstrap_ci
from cotune.lm import LMCache
from cotune.lm.factory import make_lm
from cotune.optimize.bootstrap import demo_sets_from_traces
from cotune.optimize.traces import SuccessfulTrace, collect_successful_traces
from cotune.runs.programs import save_program
from cotune.tasks import hover
from cotune.tasks.multihop import hop_reports

TITLE_INSTRUCTION = (
    "Name the Wikipedia article needed to verify the claim that the notes so far do not cover "
    "yet: answer with just its title, the name of the person, place, work or thing it is about."
)
OUT = Path("benchmarks/out/hover_query_prompts")


def every_trace(example: Example, prediction: Any, trace: object = None) -> float:
    """A metric that keeps every trace: the hops are credited afterwards, one by one."""
    return 1.0


def credited_queries(program: hover.HoverMultiHop, example: Example,
                     steps: list[tuple[str, dict[str, Any], dict[str, Any]]]
                     ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
    """The query-writer steps of one claim whose query found a supporting document that no
    earlier hop had found (the hops replayed through the program's BM25: a trace keeps the
    steps, not the prediction)."""
    claim = example["claim"]
    writers = [step for step in steps if step[0].startswith("generate_query")]
    queries = [claim, *(str(outputs.get("search_query", "")) for _, _, outputs in writers)]
    replayed = Prediction(hop_titles=[[p.title for p in program.search(q, fallback=claim)[1]]
                                      for q in queries])
    reports = hop_reports(example["supporting_titles"], replayed)
    return [step for step, report in zip(writers, reports[1:], strict=True) if report.new]


def hop_credited_demos(program: hover.HoverMultiHop, train: list[Example],
                       traces: list[SuccessfulTrace]) -> dict[str, list[Example]]:
    """Per predictor, every credited query of the training traces as a demo (none for the
    condensers)."""
    credited = [SuccessfulTrace(t.example_index,
                                credited_queries(program, train[t.example_index], t.steps))
                for t in traces]
    return demo_sets_from_traces(program, credited, max_demos=len(traces))


def finding_hops(example: Example, prediction: Any) -> int:
    """How many of the written queries (hops 2, 3, ...) found a supporting document that no
    earlier hop had found."""
    return sum(bool(r.new) for r in hop_reports(example["supporting_titles"], prediction)[1:])


def with_title_instruction(program: hover.HoverMultiHop) -> hover.HoverMultiHop:
    variant = program.deepcopy()
    for name, p in variant.named_predictors():
        if name.startswith("generate_query"):
            p.instruction = TITLE_INSTRUCTION
    return variant


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="server:qwen2.5-0.5b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--demos", type=int, default=3, help="demos per query writer")
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    out = OUT / f"seed{args.seed}"
    out.mkdir(parents=True, exist_ok=True)
    splits = hover.load_splits(seed=args.seed)
    lm = make_lm(args.model, cache=LMCache(out / "lm_cache.sqlite"))
    zero_shot = hover.TASK.make_program()
    rows: dict[str, Any] = {}
    try:
        with cotune.context(lm=lm):
            start = time.perf_counter()
            traces = collect_successful_traces(zero_shot, splits.train, every_trace,
                                               threshold=0.0, num_threads=args.threads)
            titled = with_title_instruction(zero_shot)
            demos = hop_credited_demos(zero_shot, splits.train, traces)
            with_demos = titled.deepcopy()
            for name, p in with_demos.named_predictors():
                p.demos = demos.get(name, [])[:args.demos]
            print(f"{len(traces)} training traces in {time.perf_counter() - start:.0f} s; "
                  f"queries that found a new supporting document (of {len(traces)} each): "
                  + ", ".join(f"{n} {len(d)}" for n, d in demos.items()
                              if n.startswith("generate_query")))
            variants = {"zero-shot": zero_shot, "title instruction": titled,
                        "+ hop-credited demos": with_demos}
            for label, program in variants.items():
                save_program(program, out / f"{label.strip('+ ').replace(' ', '-')}.json")
                result = Evaluate(splits.test, hover.TASK.metric, num_threads=args.threads,
                                  display_progress=True)(program)
                rows[label] = {"scores": result.scores,
                               "recall": result.values_of(hover.supporting_titles_recall),
                               "finding_hops": sum(finding_hops(r.example, r.prediction)
                                                   for r in result.results),
                               "calls": result.usage.calls, "wall_s": result.elapsed_s}
    finally:
        close = getattr(lm, "close", None)
        if callable(close):
            close()
    (out / "results.json").write_text(json.dumps(rows, indent=1))
    bm25_found, bm25_recall = hover.claim_only_recall(zero_shot.retriever, splits.test,
                                                      zero_shot.max_passages)
    report(rows, args.seed, len(splits.test), (bm25_found, bm25_recall),
           queries=(zero_shot.hops - 1) * len(splits.test))


def report(rows: dict[str, Any], seed: int, n: int,
           bm25: tuple[list[float], list[float]], queries: int) -> None:
    """The markdown table: each variant against zero-shot, and every row against BM25 on the
    claim alone at the same passage count (the task's no-LM reference)."""
    base = rows["zero-shot"]
    print(f"\n| HoVer test ({n} claims, seed {seed}) | all gold found [95% CI] | − zero-shot "
          "(paired) | − BM25 alone (paired) | recall [95% CI] | − zero-shot (paired) | "
          f"queries finding a new document (of {queries}) | LM calls | wall s |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(f"| BM25 on the claim alone | {bootstrap_ci(bm25[0], seed=seed)} | – | – | "
          f"{bootstrap_ci(bm25[1], seed=seed)} | – | – | 0 | – |")
    for label, row in rows.items():
        versus = ("–", "–") if row is base else (
            paired_bootstrap_ci(row["scores"], base["scores"], seed=seed).format(signed=True),
            paired_bootstrap_ci(row["recall"], base["recall"], seed=seed).format(signed=True))
        to_bm25 = paired_bootstrap_ci(row["scores"], bm25[0], seed=seed).format(signed=True)
        print(f"| {label} | {bootstrap_ci(row['scores'], seed=seed)} | {versus[0]} | {to_bm25} | "
              f"{bootstrap_ci(row['recall'], seed=seed)} | {versus[1]} | {row['finding_hops']} | "
              f"{row['calls']} | "
              f"{row['wall_s']:.0f} |")


if __name__ == "__main__":
    main()
