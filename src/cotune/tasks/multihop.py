"""The building block of the multi-hop retrieval programs (HotPotQA, HoVer): each hop
searches with a query, retrieves passages with BM25 and keeps the documents it has not seen yet."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from cotune.core import Module
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
