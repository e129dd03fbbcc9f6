"""HoVer: multi-hop claim retrieval, the MIPRO paper's three-hop program.

A HoVer claim needs two to four Wikipedia documents to be proven or refuted; the task is to
*find* them.  The program is the one the MIPRO and GEPA papers optimize (DSPy's
``HoverMultiHop``): the first hop searches with the claim itself; each later hop writes a search
query from the claim and the notes so far; every hop but the last condenses what it retrieved
into notes that the next hop reads (the last hop's notes would have no reader).  Four LM calls a
claim.  The metric is 1 when every supporting document's title is among the retrieved ones (all
hops together), else 0; :func:`supporting_titles_recall` (the fraction of them found) is
reported beside it.

Data: ``hover/claims.jsonl`` (89 claims of the HoVer dev release whose supporting documents are
all in ``hotpotqa/corpus.jsonl``, which is the retrieval corpus).  Splits are drawn with the seed
from those 89 claims; the default 20/19/50 keeps as many as possible for the test split.
"""

from __future__ import annotations

from cotune.core.example import Example, Prediction
from cotune.core.predict import ChainOfThought
from cotune.core.signature import InputField, OutputField, Signature
from cotune.evaluate.metrics import Score, get_field
from cotune.tasks.base import Splits, Task, grouped_split
from cotune.tasks.data import DataError, data_path, iter_jsonl
from cotune.tasks.multihop import (
    RetrievalHops,
    add_unseen,
    bm25_alone,
    hindsight_queries,
    hop_reports,
    input_alone,
)
from cotune.tasks.retrieval import BM25Retriever, Passage

DEFAULT_SIZES = (20, 19, 50)
LABELS = ("SUPPORTED", "NOT_SUPPORTED")
NO_NOTES = "(nothing found yet)"
NO_RESULTS = "(the search found nothing)"
_ROW_FIELDS = {"uid": str, "claim": str, "label": str, "num_hops": int,
               "supporting_titles": list[str]}


class GenerateClaimQuery(Signature):
    """Write a search query that finds a Wikipedia document needed to verify the claim, one
    that the notes so far do not cover yet."""

    claim: str = InputField()
    notes: str = InputField(desc="what the earlier searches found")
    search_query: str = OutputField()


class CondensePassages(Signature):
    """Condense the passages into short notes of the facts that bear on the claim, naming the
    people, places and works they mention, so that the next search can follow them."""

    claim: str = InputField()
    notes: str = InputField(desc="what the earlier searches found")
    passages: str = InputField(desc="the passages this search retrieved")
    new_notes: str = OutputField(desc="a few sentences")


class HoverMultiHop(RetrievalHops):
    """``hops`` rounds of (query -> BM25 top ``passages_per_hop`` -> condensed notes), the first
    query being the claim and the last round writing no notes.

    The retrieved documents are kept, deduplicated by title, across hops: they are what the
    metric scores.  Passages are cut to ``max_passage_chars`` in the prompt.  The retriever is
    shared, never copied, by ``deepcopy``.  Predictors: ``generate_query[i]`` writes hop
    ``i + 2``'s query, ``condense[i]`` condenses hop ``i + 1``'s passages.
    """

    def __init__(
        self,
        retriever: BM25Retriever | None = None,
        *,
        hops: int = 3,
        passages_per_hop: int = 5,
        max_tokens: int = 256,
        max_passage_chars: int = 600,
    ) -> None:
        if hops < 1 or passages_per_hop < 1:
            raise ValueError("hops and passages_per_hop must be >= 1")
        super().__init__(retriever, hops=hops, passages_per_hop=passages_per_hop,
                         max_passage_chars=max_passage_chars)
        self.generate_query = [
            ChainOfThought(GenerateClaimQuery, max_tokens=max_tokens) for _ in range(hops - 1)
        ]
        self.condense = [
            ChainOfThought(CondensePassages, max_tokens=max_tokens) for _ in range(hops - 1)
        ]

    def forward(self, claim: str) -> Prediction:
        notes: list[str] = []
        queries: list[str] = []
        hop_titles: list[list[str]] = []
        found: list[Passage] = []
        for hop in range(self.hops):
            so_far = self.format_notes(notes)
            if hop == 0:
                written = claim
            else:
                written = self.generate_query[hop - 1](claim=claim, notes=so_far).search_query
            query, passages = self.search(written, fallback=claim)
            queries.append(query)
            hop_titles.append([p.title for p in passages])
            add_unseen(found, passages)
            if hop < self.hops - 1:  # the last hop's notes would have no reader
                condensed = self.condense[hop](claim=claim, notes=so_far,
                                               passages=self.format_passages(passages))
                notes.append(str(condensed.new_notes).strip())
        return Prediction(
            search_queries=queries,
            notes=notes,
            retrieved_titles=[p.title for p in found],
            hop_titles=hop_titles,
        )

    def format_notes(self, notes: list[str]) -> str:
        kept = [n for n in notes if n]
        if not kept:
            return NO_NOTES
        return "\n".join(f"hop {i}: {n}" for i, n in enumerate(kept, start=1))

    def format_passages(self, passages: list[Passage]) -> str:
        return self.passages_text(passages, empty=NO_RESULTS)


def load_examples() -> list[Example]:
    """Every claim of ``hover/claims.jsonl``, validated (a bad row names its file and line)."""
    path = data_path("hover", "claims.jsonl")
    examples = []
    for lineno, row in iter_jsonl(path, _ROW_FIELDS):
        where = f"{path}, line {lineno}"
        if row["label"] not in LABELS:
            raise DataError(f"{where}: label {row['label']!r} is not one of {list(LABELS)}")
        if row["num_hops"] < 1:
            raise DataError(f"{where}: num_hops must be >= 1, got {row['num_hops']}")
        titles = row["supporting_titles"]
        if not titles or any(not t.strip() for t in titles):
            raise DataError(f"{where}: supporting_titles must be a non-empty list of titles")
        fields = {"uid": row["uid"], "claim": row["claim"], "label": row["label"],
                  "num_hops": row["num_hops"], "supporting_titles": list(dict.fromkeys(titles))}
        examples.append(Example(fields, input_keys=["claim"]))
    return examples


def load_splits(seed: int = 0, sizes: tuple[int, int, int] | None = None) -> Splits:
    """Seeded train/val/test (default 20/19/50) from the 89 claims, claims that share a
    supporting document in one split: HoVer writes several claims from the same documents
    (69 families here), and a demo of one would name the documents of another."""
    return grouped_split(load_examples(), sizes or DEFAULT_SIZES, seed,
                         keys=lambda claim: claim["supporting_titles"],
                         source=str(data_path("hover", "claims.jsonl")))


def supporting_titles_recall(
    example: Example, prediction: Prediction | None, trace: object = None
) -> float:
    """The fraction of the claim's supporting titles among the retrieved titles."""
    gold = set(get_field(example, "supporting_titles") or [])
    retrieved = set(get_field(prediction, "retrieved_titles") or [])
    return len(gold & retrieved) / len(gold) if gold else 0.0


def all_supporting_retrieved(
    example: Example, prediction: Prediction | None, trace: object = None
) -> Score:
    """1.0 when every supporting title was retrieved (the MIPRO paper's HoVer metric), with
    feedback for the reflective optimizer: which supporting documents were found and missed,
    and per predictor what its hop found (``generate_query[i]`` wrote hop ``i + 2``'s query,
    ``condense[i]`` read hop ``i + 1``'s passages); and, for hindsight, the query each writer
    should have written (:func:`~cotune.tasks.multihop.hindsight_queries`: a missing document
    named in the claim or its notes)."""
    value = float(supporting_titles_recall(example, prediction) == 1.0)
    gold = list(get_field(example, "supporting_titles") or [])
    retrieved = set(get_field(prediction, "retrieved_titles") or [])
    missed = [t for t in gold if t not in retrieved]
    text = ("Every supporting document was retrieved." if not missed else
            f"The retrieval missed the supporting documents titled {_titles(missed)}"
            f" (found: {_titles([t for t in gold if t in retrieved]) or 'none'}).")
    per_predictor: dict[str, str] = {}
    reports = hop_reports(gold, prediction)
    claim = str(get_field(example, "claim") or "")
    notes = [str(n) for n in get_field(prediction, "notes") or []]
    read = ["\n".join([claim, *notes[:hop]]) for hop in range(len(reports))]
    targets = {f"generate_query[{hop - 1}]": credit for hop, credit in
               enumerate(hindsight_queries(reports, gold, read, first_written=1), start=1)}
    for r in reports:
        said = (f"Hop {r.hop + 1} searched {r.query!r} and found "
                f"{_titles(r.new) or 'no new supporting document'}"
                + (f"; still missing {_titles(r.missing)}." if r.missing
                   else "; nothing is missing now."))
        if r.hop > 0:
            per_predictor[f"generate_query[{r.hop - 1}]"] = f"{said} ({text})"
        if r.hop < len(reports) - 1:  # the last hop's passages are condensed by nobody
            advice = (" The notes should name what leads to the missing documents."
                      if r.missing else "")
            per_predictor[f"condense[{r.hop}]"] = f"{said}{advice} ({text})"
    return Score(value, text, per_predictor, targets)


def _titles(titles: list[str]) -> str:
    return ", ".join(f"«{t}»" for t in titles)


def claim_only_recall(
    retriever: BM25Retriever, examples: list[Example], k: int
) -> tuple[list[float], list[float]]:
    """The baseline without an LM: BM25 on the claim alone, top ``k`` passages.  Per example,
    (all supporting titles found, fraction found)."""
    found, recall = [], []
    for example in examples:
        prediction = bm25_alone(retriever, example["claim"], k)
        recall.append(supporting_titles_recall(example, prediction))
        found.append(float(all_supporting_retrieved(example, prediction)))
    return found, recall


TASK = Task(
    name="hover",
    description="HoVer claim retrieval: 3 hops of BM25 (the claim, then written queries) + "
    "condensed notes; all supporting documents found",
    load_splits=load_splits,
    make_program=HoverMultiHop,
    metric=all_supporting_retrieved,
    extra_metrics={"retrieval_recall": supporting_titles_recall},
    reference=input_alone("claim", ("score", "retrieval_recall")),
)
