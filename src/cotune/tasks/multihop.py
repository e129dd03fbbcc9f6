"""The building block of the multi-hop retrieval programs (HotPotQA, HoVer): each hop
searches with a query, retrieves passages with BM25 and keeps the documents it has not seen yet."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cotune.core import Module
from cotune.core.example import Example, Prediction
from cotune.evaluate.metrics import get_field
from cotune.tasks.base import Reference
from cotune.tasks.data import data_path
from cotune.tasks.retrieval import BM25Retriever, Passage, shared_retriever


class RetrievalHops(Module):
    """What a multi-hop program's hops share: the retriever (by default the HotPotQA corpus;
    shared, never copied, by ``deepcopy``), ``hops`` searches of ``passages_per_hop`` passages,
    and passages cut to ``max_passage_chars`` in prompts.  Subclasses add the predictors and the
    hop logic."""

    def __init__(
        self,
        retriever: BM25Retriever | None,
        *,
        hops: int,
        passages_per_hop: int,
        max_passage_chars: int,
    ) -> None:
        self.retriever = retriever or shared_retriever(data_path("hotpotqa", "corpus.jsonl"))
        self.hops = hops
        self.passages_per_hop = passages_per_hop
        self.max_passage_chars = max_passage_chars

    @property
    def max_passages(self) -> int:
        """The most distinct passages the program retrieves (fewer when hops repeat one)."""
        return self.hops * self.passages_per_hop

    def search(self, query: Any, fallback: str) -> tuple[str, list[Passage]]:
        """The query as written (``fallback`` when empty: an empty query would retrieve
        nothing) and the top ``passages_per_hop`` passages it retrieves."""
        query = str(query).strip() or fallback
        return query, self.retriever.search(query, k=self.passages_per_hop)

    def passages_text(self, passages: list[Passage], *, empty: str) -> str:
        """``[1] «Title» text ...`` a line per passage, each cut at a word boundary; ``empty``
        when there are none."""
        if not passages:
            return empty
        lines = []
        for i, p in enumerate(passages, start=1):
            text = p.text
            if len(text) > self.max_passage_chars:
                text = text[: self.max_passage_chars].rsplit(" ", 1)[0] + " ..."
            lines.append(f"[{i}] «{p.title}» {text}")
        return "\n".join(lines)


def add_unseen(found: list[Passage], passages: Iterable[Passage]) -> None:
    """Append to ``found`` the passages whose document (title) it does not hold yet."""
    seen = {p.title for p in found}
    for passage in passages:
        if passage.title not in seen:
            found.append(passage)
            seen.add(passage.title)


@dataclass(frozen=True)
class HopReport:
    """What one hop's search found of the gold documents (for a metric's feedback)."""

    hop: int
    """0 for the first hop."""
    query: str
    hits: list[str]
    """The gold titles among this hop's passages, in retrieval order."""
    new: list[str]
    """Those of ``hits`` no earlier hop had found."""
    missing: list[str]
    """The gold titles no hop up to this one has found, in the example's order."""


def hop_reports(gold: Sequence[str], prediction: Any) -> list[HopReport]:
    """One :class:`HopReport` per hop of ``prediction`` (its ``hop_titles`` and
    ``search_queries``), against the ``gold`` titles."""
    queries = get_field(prediction, "search_queries") or []
    found: set[str] = set()
    reports = []
    for hop, titles in enumerate(get_field(prediction, "hop_titles") or []):
        hits = [t for t in titles if t in gold]
        new = [t for t in hits if t not in found]
        found |= set(hits)
        reports.append(HopReport(hop, queries[hop] if hop < len(queries) else "", hits, new,
                                 [t for t in gold if t not in found]))
    return reports


def hindsight_queries(reports: Sequence[HopReport], gold: Sequence[str], read: Sequence[str],
                      *, first_written: int) -> list[dict[str, str] | None]:
    """The credit of each written query of a multi-hop prediction, for ``predictor_targets``
    (one per hop from ``first_written``, whose writer read ``read[hop]``: its claim or
    question and notes or passages):

    * right as written (``{}``) when the hop's query found a gold document no earlier hop had;
    * else a query that is the title of a gold document still missing *and named in what the
      writer read*, with a reasoning that says so;
    * None (the step earned nothing) when nothing was missing or no missing document is named
      there: a title the writer could not have seen would teach it to guess.

    Relabeled queries are taken to have found their document: a later writer is never told to
    search for a title an earlier writer's target named, which would teach both writers the
    same query (the trace of an unrelabeled first query is what makes it look missing)."""
    credits: list[dict[str, str] | None] = []
    targeted: set[str] = set()
    for report in reports[first_written:]:
        missing = reports[report.hop - 1].missing if report.hop else list(gold)
        if report.new:
            credits.append({})
            targeted.update(report.new)
            continue
        title = next((t for t in missing if t not in targeted
                      and names_title(read[report.hop], t)), None)
        if title is None:
            credits.append(None)
            continue
        targeted.add(title)
        credits.append({"reasoning": f"No search so far has found the article on {title}, "
                                     "which is named in what I have read; searching for its "
                                     "title finds it.",
                        "search_query": title})
    return credits


def names_title(text: str, title: str) -> bool:
    """Whether ``text`` mentions ``title`` as whole words, case aside, without a trailing
    disambiguation (``"Mercury (planet)"`` is named by "mercury")."""
    name = re.sub(r"\s*\([^)]*\)\s*$", "", title).strip()
    return bool(name) and re.search(rf"(?<!\w){re.escape(name)}(?!\w)", text,
                                    flags=re.IGNORECASE) is not None


def input_alone(field: str, metrics: tuple[str, ...]) -> Any:
    """A task's ``reference``: BM25 on the example's ``field`` (the claim, the question) alone,
    top k passages with k the program's most distinct passages, scored on ``metrics``."""

    def reference(program: Module) -> Reference:
        if not isinstance(program, RetrievalHops):
            raise TypeError(f"BM25 on the {field} alone needs a multi-hop retrieval program, "
                            f"not {type(program).__name__}")
        retriever, k = program.retriever, program.max_passages

        def predict(example: Example) -> Prediction:
            return bm25_alone(retriever, str(example[field]), k)

        return Reference(f"BM25 on the {field} alone, top {k}", predict, metrics)

    return reference


def bm25_alone(retriever: BM25Retriever, text: str, k: int) -> Prediction:
    """What BM25 alone retrieves for ``text`` (a claim, a question): its top ``k`` titles, as
    a prediction the retrieval metrics score."""
    return Prediction(retrieved_titles=[p.title for p in retriever.search(text, k=k)])
