"""Every benchmark task's program on 3 test examples with the real SmolLM2-135M (embedded
llama.cpp), scored by its metric.  SmolLM2 is weak: the point is that the whole pipeline runs
(prompting, parsing, retrieval, metric), not that it scores well.  Answers that fail to parse are
recorded by ``Evaluate`` as failures, which is fine here."""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import pytest

from cotune import Example, context
from cotune.evaluate import Evaluate
from cotune.lm import LlamaCppLM, LMCache
from cotune.tasks import get_task
from cotune.tasks.data import DataError, data_dir
from cotune.tasks.hotpotqa import NO_PASSAGES, MultiHopQA
from cotune.tasks.hover import NO_NOTES, HoverMultiHop

BENCHMARKS = ["gsm8k", "hotpotqa", "hotpotqa-conditional", "scone", "heart", "hover"]

pytestmark = pytest.mark.real_model


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private ``COTUNE_CACHE_DIR`` (LM answers, the model's hash marker, the BM25 index)."""
    root = tmp_path_factory.mktemp("tasks_real_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("COTUNE_CACHE_DIR", str(root))
        yield root


@pytest.fixture(scope="module")
def smol(smollm2_path: Path, cache_root: Path) -> Iterator[LlamaCppLM]:
    """SmolLM2 loaded once for the module.  A 4k context leaves room for HotPotQA's passages."""
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed")
    try:
        data_dir()
    except DataError:
        pytest.skip("the shared benchmark data is not available")
    lm = LlamaCppLM("smollm2-135m", n_ctx=4096, cache=LMCache(cache_root / "lm.sqlite"))
    yield lm
    lm.close()


def add_format_demos(program: MultiHopQA) -> None:
    """One hand-written demo per HotPotQA predictor.  Zero-shot, SmolLM2 rarely writes the
    ``Reasoning: ... / Search Query: ...`` form, so every example would fail at its first call
    and retrieval and the later steps would never run."""
    paris = "[1] «Eiffel Tower» The Eiffel Tower is a wrought-iron tower in Paris, France."
    first_hop = Example(
        context=NO_PASSAGES,
        question="Which river flows through the city where the Eiffel Tower stands?",
        reasoning="I should first find where the Eiffel Tower is.",
        search_query="Eiffel Tower location",
    ).with_inputs("context", "question")
    second_hop = first_hop.with_fields(
        context=paris,
        reasoning="Passage [1] says the tower is in Paris; now I need the river of Paris.",
        search_query="Paris river",
    )
    for predictor in program.generate_query:
        predictor.demos = [first_hop, second_hop]
    program.generate_answer.demos = [
        Example(
            context=paris,
            question="In which city is the Eiffel Tower?",
            reasoning="Passage [1] says the tower is in Paris.",
            answer="Paris",
        ).with_inputs("context", "question")
    ]


def add_hover_format_demos(program: HoverMultiHop) -> None:
    """One hand-written demo per HoVer predictor, for the same reason as above."""
    claim = "The Eiffel Tower stands in the city the Seine flows through."
    query = Example(claim=claim, notes=NO_NOTES, reasoning="First find the tower's city.",
                    search_query="Eiffel Tower city").with_inputs("claim", "notes")
    condense = Example(
        claim=claim, notes=NO_NOTES,
        passages="[1] «Eiffel Tower» The Eiffel Tower is a wrought-iron tower in Paris, France.",
        reasoning="Passage [1] places the tower in Paris.",
        new_notes="The Eiffel Tower is in Paris; next, check which river flows through Paris.",
    ).with_inputs("claim", "notes", "passages")
    for predictor in program.generate_query:
        predictor.demos = [query]
    for predictor in program.condense:
        predictor.demos = [condense]


@pytest.mark.parametrize("name", BENCHMARKS)
def test_program_runs_and_is_scored(name: str, smol: LlamaCppLM, cache_root: Path) -> None:
    task = get_task(name)
    devset = task.load_splits(seed=0, sizes=(0, 0, 3)).test
    program = task.make_program()
    if isinstance(program, MultiHopQA):
        add_format_demos(program)
    if isinstance(program, HoverMultiHop):
        add_hover_format_demos(program)
    with context(lm=smol):
        result = Evaluate(devset, task.metric, num_threads=1, display_progress=False)(program)

    errors = [f"{r.error_type}: {(r.error or '')[:80]!r}" for r in result.results if r.failed]
    print(f"{name}: scores {result.scores}, {result.num_errors} failed {errors}")
    assert result.complete and len(result.results) == 3
    for r in result.results:
        assert isinstance(r.score, float) and 0.0 <= r.score <= 1.0
        if r.error is None:
            assert r.prediction is not None
    assert result.usage.calls > 0

    if name.startswith("hotpotqa") or name == "hover":
        gold_titles_recall = task.extra_metrics["retrieval_recall"]

        assert set(task.extra_metrics) == {"retrieval_recall"}
        recalls = []
        for r in result.results:
            recall = 0.0
            if r.prediction is not None:
                assert r.prediction["retrieved_titles"]
                recall = gold_titles_recall(r.example, r.prediction)
                assert 0.0 <= recall <= 1.0
            recalls.append(recall)
        assert result.mean_of(task.extra_metrics["retrieval_recall"]) == sum(recalls) / 3


def test_hover_hindsight_demos_name_documents_the_writers_read(
    smol: LlamaCppLM, tmp_path: Path
) -> None:
    """Bootstrapping with hindsight on SmolLM2's traces of a two-hop HoVer program, on the two
    seed-0 training claims whose first hop (BM25 on the claim) misses a supporting document
    that the claim names: each claim's query writer gets a demo, either its own query (when it
    found that document) or relabeled to the document's title."""
    from cotune.optimize import BootstrapFewShot
    from cotune.tasks.multihop import names_title

    task = get_task("hover")
    program = HoverMultiHop(hops=2, max_tokens=96, max_passage_chars=300)
    add_hover_format_demos(program)
    train = []
    for example in task.load_splits(seed=0).train:
        first_hop = {p.title for p in program.retriever.search(example["claim"], k=5)}
        if any(t not in first_hop and names_title(example["claim"], t)
               for t in example["supporting_titles"]):
            train.append(example)
    assert len(train) == 2  # «Andrew Johnson» and «Bob Day»
    with context(lm=smol):
        result = BootstrapFewShot(task.metric, hindsight=True, max_bootstrapped_demos=2,
                                  max_labeled_demos=0, num_threads=1
                                  ).optimize(program, train, workdir=tmp_path)
    demos = result.program.generate_query[0].demos
    assert sorted(d["claim"] for d in demos) == sorted(ex["claim"] for ex in train)
    for demo, example in zip(demos, train, strict=True):
        query = demo["search_query"]
        found = {p.title for p in program.retriever.search(query, k=5)}
        if query in example["supporting_titles"]:  # relabeled, or SmolLM2 named it itself
            assert names_title(f"{demo['claim']}\n{demo['notes']}", query)
        else:  # kept as written: it found a supporting document hop 1 had not
            assert found & set(example["supporting_titles"]), query
