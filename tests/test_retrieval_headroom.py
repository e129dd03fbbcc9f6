"""benchmarks/retrieval_headroom.py: the no-LM query strategies follow the program's hops
(a stub retriever that answers each query with the documents it names)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from cotune.core.example import Example
from cotune.tasks.hover import HoverMultiHop, supporting_titles_recall
from cotune.tasks.retrieval import Passage

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "retrieval_headroom.py"


def _script():
    spec = importlib.util.spec_from_file_location("retrieval_headroom", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class NamingRetriever:
    """Every query finds the titles it contains (``A`` .. ``F``), else ``X1`` .. ``Xk``."""

    def __init__(self) -> None:
        self.queries: list[str] = []

    def search(self, query: str, k: int = 3) -> list[Passage]:
        self.queries.append(query)
        named = [t for t in "ABCDEF" if t in query.split()]
        titles = named or [f"X{i}" for i in range(1, k + 1)]
        return [Passage(t, f"text of {t}", 1.0) for t in titles[:k]]


def test_the_oracle_names_a_missing_document_and_following_copies_the_titles():
    script = _script()
    retriever = NamingRetriever()
    program = HoverMultiHop(retriever, hops=3, passages_per_hop=2)
    gold = ["B", "C", "X1"]

    oracle = script.hops(program, "claim A", gold, script.oracle)
    # hop 1 the claim (finds A), then each hop names the first gold title not found yet
    assert retriever.queries == ["claim A", "B", "C"]
    assert oracle.retrieved_titles == ["A", "B", "C"]

    retriever.queries.clear()
    followed = script.hops(program, "claim A", gold, script.follow_titles)
    assert retriever.queries == ["claim A", "claim A A", "claim A A"]
    assert followed.retrieved_titles == ["A"]  # the same document three times, kept once

    examples = [Example(claim="claim A", supporting_titles=gold).with_inputs("claim")]
    found, recall = script.scored(examples, supporting_titles_recall,
                                  lambda ex: script.hops(program, "claim A", gold, script.oracle))
    assert (found, recall) == ([0.0], [2 / 3])  # X1 was never retrieved: oracle hops ran out


def test_the_named_writer_copies_only_titles_it_has_read():
    """«B» is named in the claim, «C» only in a passage hop 2 retrieves, «D» nowhere: the writer
    names B, then C, then falls back to the claim."""

    class Linked(NamingRetriever):
        def search(self, query: str, k: int = 3) -> list[Passage]:
            passages = super().search(query, k)
            return [Passage(p.title, "see C" if p.title == "B" else p.text, 1.0)
                    for p in passages]

    script = _script()
    retriever = Linked()
    program = HoverMultiHop(retriever, hops=4, passages_per_hop=1)
    named = script.hops(program, "claim A B", ["A", "B", "C", "D"],
                        script.named_in_what_was_read)
    assert retriever.queries == ["claim A B", "B", "C", "claim A B"]
    assert named.retrieved_titles == ["A", "B", "C"]
