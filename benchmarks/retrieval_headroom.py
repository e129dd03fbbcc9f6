"""How much a multi-hop program's written queries could add to BM25 on the claim or question
alone, measured without an LM: the hop structure of the task's program (HoVer 3 hops x 5,
HotPotQA 2 x 3 passages, documents deduplicated across hops) with the queries of

* ``input alone``: no hops, BM25 top ``hops x k`` on the claim/question (the runs' no-LM
  baseline);
* ``follow titles``: hop 1 the input, each later hop the input plus the titles the previous
  hop retrieved (pseudo-relevance feedback: what a query writer gets by copying what it read);
* ``oracle``: hop 1 the input, each later hop the title of a gold document not found yet (a
  query writer that names the missing document: the ceiling of this program shape);
* ``named in what was read``: the oracle restricted to titles the input or the passages
  retrieved so far name (a writer that copies the right name from what it read; the queries
  hindsight relabels to), else the input.

On the test split of a run's seed and sizes, with 95% bootstrap intervals and each row's
paired difference to ``input alone``.  ::

    python benchmarks/retrieval_headroom.py [--seed 0]
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from cotune.core.example import Example, Prediction
from cotune.evaluate.stats import bootstrap_ci, paired_bootstrap_ci
from cotune.runs.optimize import RunSpec, load_data
from cotune.tasks import hotpotqa, hover
from cotune.tasks.multihop import RetrievalHops, add_unseen, bm25_alone, names_title
from cotune.tasks.retrieval import Passage

# task: (its Task, the example's input field, its gold-titles field, its recall metric, the
# sizes of the grid)
TASKS = {
    "hover": (hover.TASK, "claim", "supporting_titles", hover.supporting_titles_recall,
              (20, 19, 50)),
    "hotpotqa": (hotpotqa.TASK, "question", "gold_titles", hotpotqa.gold_titles_recall,
                 (50, 50, 150)),
}
Recall = Callable[[Example, Prediction], float]
NextQuery = Callable[[str, list[str], list[Passage], list[Passage]], str]
"""(input, gold titles, the previous hop's passages, passages found so far) -> the next query."""


def follow_titles(text: str, gold: list[str], last: list[Passage], found: list[Passage]
                  ) -> str:
    return " ".join([text, *(p.title for p in last)])


def oracle(text: str, gold: list[str], last: list[Passage], found: list[Passage]) -> str:
    titles = {p.title for p in found}
    missing = [t for t in gold if t not in titles]
    return missing[0] if missing else text


def named_in_what_was_read(text: str, gold: list[str], last: list[Passage],
                           found: list[Passage]) -> str:
    titles = {p.title for p in found}
    read = "\n".join([text, *(f"{p.title}. {p.text}" for p in found)])
    named = [t for t in gold if t not in titles and names_title(read, t)]
    return named[0] if named else text


def hops(program: RetrievalHops, text: str, gold: list[str], next_query: NextQuery
         ) -> Prediction:
    """The program's hops with the input as the first query and ``next_query`` after."""
    found: list[Passage] = []
    query, last = text, []
    for hop in range(program.hops):
        if hop:
            query = next_query(text, gold, last, found)
        _, last = program.search(query, fallback=text)
        add_unseen(found, last)
    return Prediction(retrieved_titles=[p.title for p in found])


def scored(examples: list[Example], recall: Recall, predict: Callable[[Example], Prediction]
           ) -> tuple[list[float], list[float]]:
    """(every gold title found, fraction found) per example."""
    fractions = [recall(ex, predict(ex)) for ex in examples]
    return [float(f == 1.0) for f in fractions], fractions


def compare(name: str, seed: int) -> tuple[int, int, dict[str, tuple[list[float], list[float]]]]:
    """(test examples, passages, {queries: (all found, recall) per example}) of one task."""
    task, field, gold_field, recall, sizes = TASKS[name]
    program = task.make_program()
    assert isinstance(program, RetrievalHops)
    test = load_data(task, RunSpec(task=name, seed=seed, train_size=sizes[0],
                                   val_size=sizes[1], test_size=sizes[2])).test
    k = program.max_passages

    def with_hops(next_query: NextQuery) -> Callable[[Example], Prediction]:
        return lambda ex: hops(program, str(ex[field]), list(ex[gold_field]), next_query)

    predictors = {
        "input alone": lambda ex: bm25_alone(program.retriever, str(ex[field]), k),
        "follow titles": with_hops(follow_titles),
        "oracle": with_hops(oracle),
        "named in what was read": with_hops(named_in_what_was_read),
    }
    return len(test), k, {label: scored(test, recall, predict)
                          for label, predict in predictors.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seed", type=int, default=0)
    seed = parser.parse_args().seed
    print("| task (test examples) | queries | passages | all gold found [95% CI] | "
          "− input alone (paired) | recall [95% CI] | − input alone (paired) |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for name in TASKS:
        n, k, rows = compare(name, seed)
        base_found, base_recall = rows["input alone"]
        for label, (found, recall) in rows.items():
            versus = ("–", "–") if label == "input alone" else (
                paired_bootstrap_ci(found, base_found, seed=seed).format(signed=True),
                paired_bootstrap_ci(recall, base_recall, seed=seed).format(signed=True))
            print(f"| {name} ({n}, seed {seed}) | {label} | {k} | "
                  f"{bootstrap_ci(found, seed=seed)} | {versus[0]} | "
                  f"{bootstrap_ci(recall, seed=seed)} | {versus[1]} |")


if __name__ == "__main__":
    main()
