"""HotPotQA: the multi-hop retrieval program of the MIPRO and BetterTogether papers.

Two hops of (write a search query from the question and the passages found so far -> retrieve
the top-k passages with BM25), then answer with chain of thought.  Retrieval runs over
``hotpotqa/corpus.jsonl``, which holds every paragraph of the data's questions (gold ones and
distractors).  The metric is exact match of the answer; :func:`gold_titles_recall` also scores
the retrieval, from the ``retrieved_titles`` the program records on its prediction.

Splits: ``train`` is drawn with the seed from ``train.jsonl``; ``val`` and ``test`` are carved,
disjoint, from one seeded shuffle of ``dev.jsonl`` (so the three never share a question).
"""

from __future__ import annotations

import re

from cotune.core.example import Example, Prediction
from cotune.core.predict import ChainOfThought
from cotune.core.signature import InputField, OutputField, Signature
from cotune.evaluate.metrics import Score, exact_match, get_field
from cotune.tasks.base import Splits, Task, seeded_split
from cotune.tasks.data import data_path, read_jsonl
from cotune.tasks.multihop import (
    RetrievalHops,
    add_unseen,
    hindsight_queries,
    hop_reports,
    input_alone,
    names_title,
)
from cotune.tasks.retrieval import BM25Retriever, Passage

DEFAULT_SIZES = (200, 100, 200)
_ROW_FIELDS = {"id": str, "question": str, "answer": str, "type": str, "gold_titles": list[str]}
NO_PASSAGES = "(no passages yet)"


class GenerateSearchQuery(Signature):
    """Write a simple search query that will help answer a complex question."""

    context: str = InputField(desc="passages found so far; may contain relevant facts")
    question: str = InputField()
    search_query: str = OutputField()


class GenerateAnswer(Signature):
    """Answer the question with a short factoid answer."""

    context: str = InputField(desc="may contain relevant facts")
    question: str = InputField()
    answer: str = OutputField(desc="often between 1 and 5 words")


class MultiHopQA(RetrievalHops):
    """``hops`` rounds of query generation and BM25 retrieval, then a chain-of-thought answer.

    Passages are deduplicated by title across hops and cut to ``max_passage_chars`` in the
    prompt (the corpus' median paragraph is ~490 characters; the cut keeps prompts within a
    small model's context).  The retriever is shared, never copied, by ``deepcopy``.
    """

    def __init__(
        self,
        retriever: BM25Retriever | None = None,
        *,
        hops: int = 2,
        passages_per_hop: int = 3,
        max_tokens: int = 256,
        max_passage_chars: int = 1000,
    ) -> None:
        super().__init__(retriever, hops=hops, passages_per_hop=passages_per_hop,
                         max_passage_chars=max_passage_chars)
        self.generate_query = [
            ChainOfThought(GenerateSearchQuery, max_tokens=max_tokens) for _ in range(hops)
        ]
        self.generate_answer = ChainOfThought(GenerateAnswer, max_tokens=max_tokens)

    def forward(self, question: str) -> Prediction:
        passages: list[Passage] = []
        queries: list[str] = []
        hop_titles: list[list[str]] = []
        for generate_query in self.generate_query:
            context = self.format_context(passages)
            written = generate_query(context=context, question=question).search_query
            query, found = self.search(written, fallback=question)
            queries.append(query)
            hop_titles.append([p.title for p in found])
            add_unseen(passages, found)
        answer = self.generate_answer(context=self.format_context(passages), question=question)
        return Prediction(
            answer=answer.answer,
            reasoning=answer.get("reasoning"),
            search_queries=queries,
            retrieved_titles=[p.title for p in passages],
            hop_titles=hop_titles,
        )

    def format_context(self, passages: list[Passage]) -> str:
        return self.passages_text(passages, empty=NO_PASSAGES)


def load_rows(split: str) -> list[dict]:
    """The raw rows of ``hotpotqa/<split>.jsonl`` (``train`` or ``dev``)."""
    return read_jsonl(data_path("hotpotqa", f"{split}.jsonl"), _ROW_FIELDS)


def to_example(row: dict) -> Example:
    fields = {k: row[k] for k in ("id", "question", "answer", "type", "gold_titles")}
    return Example(fields, input_keys=["question"])


def load_splits(seed: int = 0, sizes: tuple[int, int, int] | None = None) -> Splits:
    """Seeded train (from train.jsonl) and val/test (from dev.jsonl); default 200/100/200."""
    n_train, n_val, n_test = sizes or DEFAULT_SIZES
    train = seeded_split([to_example(r) for r in load_rows("train")], (n_train, 0, 0), seed,
                         source=str(data_path("hotpotqa", "train.jsonl")))
    dev = seeded_split([to_example(r) for r in load_rows("dev")], (0, n_val, n_test), seed,
                       source=str(data_path("hotpotqa", "dev.jsonl")))
    return Splits(train.train, dev.val, dev.test)


def gold_titles_recall(
    example: Example, prediction: Prediction | None, trace: object = None
) -> float:
    """The fraction of the example's ``gold_titles`` among the prediction's
    ``retrieved_titles`` (0 when the program recorded none)."""
    gold = set(get_field(example, "gold_titles") or [])
    retrieved = set(get_field(prediction, "retrieved_titles") or [])
    if not gold:
        return 0.0
    return len(gold & retrieved) / len(gold)


_exact_answer = exact_match("answer")


def answer_exact_match(
    example: Example, prediction: Prediction | None, trace: object = None
) -> Score:
    """Exact match of the answer, with feedback: the expected answer, and per query hop which
    gold passages its query found and which it missed (``predictor_feedback`` for
    ``generate_query[i]``); and, for hindsight, the query each writer should have written
    (:func:`~cotune.tasks.multihop.hindsight_queries`: a missing gold passage named in the
    question or the passages it read, taken from ``trace`` when there is one, else from the
    titles of the earlier hops) and, with a trace, the answer the answer step should have
    given (:func:`hindsight_answer`: the gold answer when a passage it read names it)."""
    value = _exact_answer(example, prediction)
    gold = example.get("answer")
    answer = get_field(prediction, "answer")
    text = f"Correct: {gold}." if value else f"Expected the answer {gold!r}, got {answer!r}."
    gold_titles = list(get_field(example, "gold_titles") or [])
    per_hop: dict[str, str] = {}
    reports = hop_reports(gold_titles, prediction)
    credits = hindsight_queries(reports, gold_titles,
                                _what_the_writers_read(example, prediction, trace),
                                first_written=0)
    targets = {f"generate_query[{hop}]": credit for hop, credit in enumerate(credits)}
    answer_context = _what_the_answer_read(trace)
    if value:
        targets["generate_answer"] = {}
    elif answer_context is not None and gold is not None:
        targets["generate_answer"] = hindsight_answer(answer_context, str(gold))
    for r in reports:
        per_hop[f"generate_query[{r.hop}]"] = (
            f"The query {r.query!r} found {', '.join(r.hits) or 'no gold passage'}"
            + (f"; still missing the passages titled {', '.join(r.missing)}." if r.missing
               else "; all gold passages are found.")
            + f" ({text})")
    if reports:
        missed = reports[-1].missing
        text += (f" The retrieval missed the passages titled {', '.join(missed)}." if missed
                 else " The retrieval found every gold passage.")
    per_hop["generate_answer"] = text
    return Score(value, text, per_hop, targets)


def _what_the_answer_read(trace: object) -> str | None:
    """The context the traced answer step was shown (None without a trace)."""
    steps = [s for s in trace or [] if "answer" in getattr(s, "outputs", {})]
    return str(steps[-1].inputs.get("context", "")) if steps else None


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_PASSAGE_LINE = re.compile(r"^\[\d+\] «(?P<title>[^»]*)» (?P<text>.*)$")


def hindsight_answer(context: str, gold: str) -> dict[str, str] | None:
    """The answer step's target when it answered wrong: the gold answer, with a reasoning that
    quotes the first sentence of the passages it read naming that answer; None when no passage
    names it (an answer the step could not have read would teach it to guess)."""
    for line in context.splitlines():
        match = _PASSAGE_LINE.match(line)
        if match is None or not names_title(match["text"], gold):
            continue
        sentence = next((s for s in _SENTENCE_END.split(match["text"]) if names_title(s, gold)),
                        match["text"])  # an answer across a sentence cut ("U.S. Army")
        return {"reasoning": f"The passage «{match['title']}» says: {sentence.strip()}",
                "answer": gold}
    return None


def _what_the_writers_read(example: Example, prediction: Prediction | None, trace: object
                           ) -> list[str]:
    """Per hop, the question and the context its query writer was shown: the traced inputs of
    the program's query steps, or, without a trace, the titles the earlier hops retrieved."""
    question = str(get_field(example, "question") or "")
    hops = get_field(prediction, "hop_titles") or []
    steps = [s for s in trace or [] if "search_query" in getattr(s, "outputs", {})]
    if len(steps) >= len(hops):
        return [f"{question}\n{s.inputs.get('context', '')}" for s in steps]
    return [question + "".join(f"\n«{t}»" for titles in hops[:h] for t in titles)
            for h in range(len(hops))]

TASK = Task(
    name="hotpotqa",
    description="HotPotQA multi-hop QA: 2 hops of query + BM25 retrieval, then CoT; answer EM",
    load_splits=load_splits,
    make_program=MultiHopQA,
    metric=answer_exact_match,
    extra_metrics={"retrieval_recall": gold_titles_recall},
    reference=input_alone("question", ("retrieval_recall",)),
)
