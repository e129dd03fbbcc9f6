"""What HoVer programs' query writers write: saved programs (a bench cell's ``program.json``,
fine-tuned LMs included) on the test split of one seed, each scored with its 95% interval and
paired against the first program given, with counts of their written queries (hops 2 and 3):

* ``find a new document``: the query retrieved a supporting document no earlier hop had found;
* ``a title``: the query is a document's title (BM25's first hit for it has that title), as
  hindsight's relabeled queries are;
* ``repeat``: the query is the one an earlier hop of the same claim wrote.

Answers come from ``--cache-dir``'s LM cache when the programs were run there (a bench with
``"cache": "shared"`` and that ``COTUNE_CACHE_DIR``), so rereading a finished bench costs no
LM call.  ::

    python benchmarks/hover_written_queries.py --seed 0 --cache-dir CACHE \\
        BENCH/cells/hover-vanilla-*/program.json BENCH/cells/hover-finetune-*/program.json
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import cotune
from cotune.core.state import state_from_json
from cotune.evaluate import Evaluate
from cotune.evaluate.stats import bootstrap_ci, paired_bootstrap_ci
from cotune.lm import LMCache
from cotune.lm.factory import make_lm
from cotune.runs.programs import load_program, restore_saved_lms
from cotune.tasks import hover
from cotune.tasks.multihop import hop_reports
from cotune.tasks.retrieval import BM25Retriever


def query_counts(example: Any, prediction: Any, retriever: BM25Retriever) -> dict[str, int]:
    """Of one claim's written queries: how many found a new supporting document, are a
    document's title, repeat an earlier written query."""
    written = list(prediction["search_queries"])[1:]
    reports = hop_reports(example["supporting_titles"], prediction)[1:]
    titles = 0
    for query in written:
        hits = retriever.search(query, k=1)
        titles += bool(hits) and hits[0].title.casefold() == query.strip().casefold()
    repeats = sum(q.casefold() in {p.casefold() for p in written[:i]}
                  for i, q in enumerate(written))
    return {"new": sum(bool(r.new) for r in reports), "titles": titles, "repeats": repeats}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("programs", nargs="+", type=Path)
    parser.add_argument("--model", default="server:qwen2.5-0.5b")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--threads", type=int, default=4)
    args = parser.parse_args()
    test = hover.load_splits(seed=args.seed).test
    base = make_lm(args.model, cache=LMCache(args.cache_dir / "lm_cache.sqlite"))
    rows = []
    try:
        for path in args.programs:
            program = load_program(hover.TASK.make_program(), path)
            restore_saved_lms(program, state_from_json(path.read_text(), source=str(path)),
                              like=base)
            with cotune.context(lm=base):
                result = Evaluate(test, hover.TASK.metric, num_threads=args.threads,
                                  display_progress=False)(program)
            counts = {"new": 0, "titles": 0, "repeats": 0}
            for r in result.results:
                if r.prediction is not None:
                    for key, n in query_counts(r.example, r.prediction, program.retriever
                                               ).items():
                        counts[key] += n
            rows.append((path, result.scores, counts, result.usage.backend_calls))
    finally:
        base.close()
    first = rows[0][1]
    queries = (hover.TASK.make_program().hops - 1) * len(test)
    print(f"| program (HoVer test, {len(test)} claims, seed {args.seed}) | all gold found "
          f"[95% CI] | − {rows[0][0].parent.name} (paired) | of {queries} written queries: "
          "find a new document | a title | repeat | LM calls not in the cache |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for path, scores, counts, calls in rows:
        versus = "–" if scores is first else paired_bootstrap_ci(
            scores, first, seed=args.seed).format(signed=True)
        print(f"| {path.parent.name} | {bootstrap_ci(scores, seed=args.seed)} | {versus} | "
              f"{counts['new']} | {counts['titles']} | {counts['repeats']} | {calls} |")


if __name__ == "__main__":
    main()
