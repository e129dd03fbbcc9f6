"""The benchmark tasks: data loading and validation, seeded splits, metrics, BM25 retrieval, and
each program run end to end with a scripted LM."""

from __future__ import annotations

import copy
import json
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cotune import Example, Prediction, ScriptedLM, context
from cotune.tasks import data as data_module
from cotune.tasks import get_task, task_names
from cotune.tasks.data import DataError, data_dir, read_jsonl

BENCHMARKS = ["gsm8k", "hotpotqa", "hotpotqa-conditional", "scone", "heart", "hover"]
DEFAULT_SIZES = {"hover": [20, 19, 50]}  # 89 claims; the others: 200/100/200

# task -> (input fields, fields every example has)
EXPECTED_FIELDS = {
    "gsm8k": ({"question"}, {"question", "answer", "solution"}),
    "hotpotqa": ({"question"}, {"id", "question", "answer", "type", "gold_titles"}),
    "hotpotqa-conditional": (
        {"question"},
        {"id", "question", "answer", "type", "gold_titles", "format_rule"},
    ),
    "scone": ({"premise", "hypothesis"}, {"premise", "hypothesis", "label"}),
    "heart": ({"patient"}, {"patient", "heart_disease"}),
    "hover": ({"claim"}, {"uid", "claim", "label", "num_hops", "supporting_titles"}),
}


def shared_data_available() -> bool:
    try:
        return (data_dir() / "gsm8k" / "train.jsonl").is_file()
    except DataError:
        return False


needs_data = pytest.mark.skipif(
    not shared_data_available(), reason="the shared benchmark data is not available"
)


def content_key(example: Example) -> str:
    return json.dumps(example.inputs(), sort_keys=True)


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# -- locating and reading data -------------------------------------------------------------------


def test_every_benchmark_is_registered() -> None:
    assert set(BENCHMARKS) <= set(task_names())
    for name in BENCHMARKS:
        task = get_task(name)
        assert task.name == name
        assert task.description and "\n" not in task.description


def test_data_dir_honours_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COTUNE_DATA_DIR", str(tmp_path))
    assert data_dir() == tmp_path
    monkeypatch.setenv("COTUNE_DATA_DIR", str(tmp_path / "absent"))
    with pytest.raises(DataError, match="COTUNE_DATA_DIR"):
        data_dir()


def test_data_dir_is_found_by_walking_up(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("COTUNE_DATA_DIR", raising=False)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    project = tmp_path / "project" / "sub"
    project.mkdir(parents=True)
    monkeypatch.chdir(project)
    monkeypatch.setattr(data_module, "__file__", str(tmp_path / "elsewhere" / "data.py"))
    assert data_dir() == tmp_path / "shared" / "data"


def test_data_dir_not_found_names_the_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("COTUNE_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(data_module, "__file__", str(tmp_path / "pkg" / "data.py"))
    if any((folder / "shared" / "data").is_dir() for folder in tmp_path.parents):
        pytest.skip("a shared/data folder sits above the temporary folder")  # pragma: no cover
    with pytest.raises(DataError, match="COTUNE_DATA_DIR"):
        data_dir()


def test_read_jsonl_validates_rows(tmp_path: Path) -> None:
    required = {"question": str, "tags": list[str]}
    good = write_lines(tmp_path / "good.jsonl", ['{"question": "q", "tags": ["a"]}', "", "  "])
    assert read_jsonl(good, required) == [{"question": "q", "tags": ["a"]}]

    cases = {
        '{"question": "q", "tags": [] ': r"bad\.jsonl, line 2: not valid JSON",
        '["question"]': r"bad\.jsonl, line 2: expected a JSON object",
        '{"tags": []}': r"bad\.jsonl, line 2: missing fields \['question'\]",
        '{"question": 3, "tags": []}': r"line 2: field 'question' should be str, got int",
        '{"question": "q", "tags": [1]}': r"line 2: field 'tags' should be list\[str\]",
    }
    for bad_line, message in cases.items():
        bad = write_lines(tmp_path / "bad.jsonl", ['{"question": "q", "tags": []}', bad_line])
        with pytest.raises(DataError, match=message):
            read_jsonl(bad, required)


def test_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"absent\.jsonl.*COTUNE_DATA_DIR"):
        read_jsonl(tmp_path / "absent.jsonl", {})


HOVER_ROW = ('{"uid": "u1", "claim": "A met B.", "label": "SUPPORTED", "num_hops": 2, '
             '"supporting_titles": ["A", "B"]}')


@pytest.mark.parametrize(
    ("task", "path", "lines", "message"),
    [
        ("gsm8k", "gsm8k/train.jsonl", ['{"question": "q", "answer": "#### 3"}', "{oops"],
         r"gsm8k/train\.jsonl, line 2: not valid JSON"),
        ("gsm8k", "gsm8k/train.jsonl", ['{"question": "q"}'],
         r"line 1: missing fields \['answer'\]"),
        ("gsm8k", "gsm8k/train.jsonl", ['{"question": "q", "answer": "it is 3"}'],
         r"line 1: no '####' final answer"),
        ("scone", "scone/train.jsonl",
         ['{"premise": "p", "hypothesis": "h", "label": "contradiction"}'],
         r"scone/train\.jsonl, line 1: label 'contradiction'"),
        ("heart", "heart/train.jsonl", ['{"age": "54"}'], r"heart/train\.jsonl, line 1: missing"),
        ("hotpotqa", "hotpotqa/train.jsonl", ['{"id": "x", "question": "q"}'],
         r"hotpotqa/train\.jsonl, line 1: missing fields \['answer', 'type', 'gold_titles'\]"),
        ("hover", "hover/claims.jsonl", [HOVER_ROW, '{"uid": "u", "claim": "c"}'],
         r"hover/claims\.jsonl, line 2: missing fields \['label', 'num_hops', "
         r"'supporting_titles'\]"),
        ("hover", "hover/claims.jsonl", [HOVER_ROW.replace('"SUPPORTED"', '"MAYBE"')],
         r"hover/claims\.jsonl, line 1: label 'MAYBE' is not one of"),
        ("hover", "hover/claims.jsonl", [HOVER_ROW.replace('"num_hops": 2', '"num_hops": "2"')],
         r"line 1: field 'num_hops' should be int, got str"),
        ("hover", "hover/claims.jsonl", [HOVER_ROW.replace('["A", "B"]', '[]')],
         r"line 1: supporting_titles must be a non-empty list"),
        ("hover", "hover/claims.jsonl", [HOVER_ROW, HOVER_ROW.replace('["A", "B"]', '["A", 3]')],
         r"line 2: field 'supporting_titles' should be list\[str\]"),
    ],
)  # fmt: skip
def test_loaders_report_malformed_rows(
    task: str,
    path: str,
    lines: list[str],
    message: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COTUNE_DATA_DIR", str(tmp_path))
    write_lines(tmp_path / path, lines)
    with pytest.raises(DataError, match=message):
        get_task(task).load_splits(seed=0, sizes=(1, 0, 0))


@pytest.mark.parametrize("task", BENCHMARKS)
def test_loaders_report_a_missing_file(
    task: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COTUNE_DATA_DIR", str(tmp_path))
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        get_task(task).load_splits(seed=0)


# -- the real data -------------------------------------------------------------------------------


@needs_data
def test_pool_sizes_of_the_real_files() -> None:
    from cotune.tasks import gsm8k, heart, hotpotqa, hover, scone

    assert len(gsm8k.load_examples()) == 7473
    assert len(hover.load_examples()) == 89
    assert len(scone.load_examples()) == 994  # 6,012 rows: each pair once per category
    assert len(heart.load_examples()) == 644
    assert len(hotpotqa.load_rows("train")) == 300
    assert len(hotpotqa.load_rows("dev")) == 300


@needs_data
@pytest.mark.parametrize("name", BENCHMARKS)
def test_real_splits_are_seeded_and_disjoint(name: str) -> None:
    task = get_task(name)
    splits = task.load_splits(seed=0)
    sizes = DEFAULT_SIZES.get(name, [200, 100, 200])
    assert [len(splits.train), len(splits.val), len(splits.test)] == sizes
    inputs, fields = EXPECTED_FIELDS[name]
    for example in splits.train + splits.val + splits.test:
        assert example.input_keys == inputs
        assert set(example) == fields

    again = task.load_splits(seed=0)
    assert (again.train, again.val, again.test) == (splits.train, splits.val, splits.test)
    other = task.load_splits(seed=1)
    assert other.train != splits.train

    # disjoint, up to records that occur twice in the pool itself (two in heart)
    pool = Counter(content_key(ex) for ex in splits.train + splits.val + splits.test)
    duplicated = {key for key, count in pool.items() if count > 1}
    parts = [{content_key(ex) for ex in part} for part in (splits.train, splits.val, splits.test)]
    for i in range(3):
        for j in range(i + 1, 3):
            assert parts[i] & parts[j] <= duplicated
    assert len(duplicated) <= 2

    small = task.load_splits(seed=3, sizes=(5, 4, 3))
    assert [len(small.train), len(small.val), len(small.test)] == [5, 4, 3]
    with pytest.raises(ValueError, match="split sizes"):
        task.load_splits(seed=0, sizes=(100_000, 1, 1))


@needs_data
def test_hotpotqa_val_and_test_come_from_dev() -> None:
    from cotune.tasks import hotpotqa

    splits = hotpotqa.load_splits(seed=0)
    train_ids = {r["id"] for r in hotpotqa.load_rows("train")}
    dev_ids = {r["id"] for r in hotpotqa.load_rows("dev")}
    assert {ex["id"] for ex in splits.train} <= train_ids
    assert {ex["id"] for ex in splits.val + splits.test} <= dev_ids
    assert not {ex["id"] for ex in splits.val} & {ex["id"] for ex in splits.test}


# -- gsm8k -------------------------------------------------------------------------------------


def test_gsm8k_gold_number() -> None:
    from cotune.tasks.gsm8k import answer_match, gold_number

    assert gold_number("48/2 = <<48/2=24>>24\n#### 72") == 72
    assert isinstance(gold_number("#### 72"), int)
    assert gold_number("a #### b\n#### 1,080") == 1080
    assert gold_number("#### -3") == -3
    assert gold_number("#### 2.5") == 2.5
    with pytest.raises(ValueError, match="####"):
        gold_number("the answer is 4")
    with pytest.raises(ValueError, match="no number"):
        gold_number("#### none")

    gold = Example(question="q", answer=1080).with_inputs("question")
    assert answer_match(gold, Prediction(answer=1080.0)) == 1.0
    assert answer_match(gold, Prediction(answer=1081.0)) == 0.0
    assert answer_match(gold, Prediction()) == 0.0


@needs_data
def test_gsm8k_examples_keep_the_solution() -> None:
    from cotune.tasks.gsm8k import load_examples

    first = load_examples()[0]
    assert first["answer"] == 72
    assert first["solution"].endswith("#### 72")


# -- hotpotqa-conditional ------------------------------------------------------------------------


def test_iso_dates_and_format_rules() -> None:
    from cotune.tasks.hotpotqa_conditional import FORMAT_RULES, format_rule, iso_date

    assert iso_date("August 2, 1948") == "1948-08-02"
    assert iso_date("31 October 1783") == "1783-10-31"
    assert iso_date("June 1975") == "1975-06"
    assert iso_date("Sept. 3rd, 2001") == "2001-09-03"
    assert iso_date("1975") is None
    assert iso_date("in June 1975 or so") is None
    assert iso_date("June 45, 1975") is None

    cases = {
        ("Yes", "comparison"): "yes_no",
        ("no", "bridge"): "yes_no",
        ("March 19, 2017", "bridge"): "date",
        ("1961", "bridge"): "year",
        ("1988", "comparison"): "year",
        ("15,023", "bridge"): "number",
        ("1.7 billion", "bridge"): "bridge_entity",
        ("2006 season", "bridge"): "bridge_entity",
        ("Kanichee Mine", "comparison"): "comparison_entity",
        ("Tulsa", "bridge"): "bridge_entity",
    }
    for (answer, kind), rule in cases.items():
        assert format_rule(answer, kind) == rule, answer
        assert rule in FORMAT_RULES


@pytest.mark.parametrize(
    ("gold", "kind", "predicted", "score"),
    [
        ("yes", "comparison", "yes", 1.0),
        ("yes", "comparison", "Yes", 0.0),
        ("yes", "comparison", "yes.", 0.0),
        ("no", "comparison", "yes", 0.0),
        ("August 2, 1948", "bridge", "1948-08-02", 1.0),
        ("August 2, 1948", "bridge", "August 2, 1948", 0.0),
        ("October 1922", "bridge", "1922-10", 1.0),
        ("October 1922", "bridge", "1922-10-01", 0.0),
        ("1961", "bridge", "1961", 1.0),
        ("1961", "bridge", "in 1961", 0.0),
        ("15,023", "bridge", "15023", 1.0),
        ("15,023", "bridge", "15,023", 0.0),
        ("15", "bridge", "15 animals", 0.0),
        ("Kanichee Mine", "comparison", "Kanichee Mine", 1.0),
        ("Kanichee Mine", "comparison", " Kanichee  Mine ", 1.0),
        ("Kanichee Mine", "comparison", "kanichee mine", 0.0),
        ("Kanichee Mine", "comparison", "The Kanichee Mine", 0.0),
        ("Tulsa", "bridge", "tulsa", 1.0),
        ("Tulsa", "bridge", "Tulsa", 0.0),
        ("Tulsa", "bridge", "tulsa.", 0.0),
        ("the heaviest album of all", "bridge", "heaviest album of all", 1.0),
        ("the heaviest album of all", "bridge", "the heaviest album of all", 0.0),
        ("Tulsa", "bridge", "boston", 0.0),
    ],
)
def test_conditional_metric_needs_right_and_formatted(
    gold: str, kind: str, predicted: str, score: float
) -> None:
    from cotune.tasks.hotpotqa_conditional import conditional_answer_match

    example = Example(question="q", answer=gold, type=kind).with_inputs("question")
    assert conditional_answer_match(example, Prediction(answer=predicted)) == score


def test_conditional_metric_never_raises_on_sloppy_predictions() -> None:
    from cotune.tasks.hotpotqa_conditional import conditional_answer_match

    example = Example(question="q", answer="15", type="bridge").with_inputs("question")
    assert conditional_answer_match(example, None) == 0.0
    assert conditional_answer_match(example, Prediction()) == 0.0
    assert conditional_answer_match(example, Prediction(answer="")) == 0.0
    assert conditional_answer_match(example, Prediction(answer=15)) == 0.0  # not a string


# -- heart ------------------------------------------------------------------------------------


def test_heart_rendering_of_missing_values() -> None:
    from cotune.tasks.heart import render_record

    row = {
        "id": "1", "age": "54", "sex": "Female", "dataset": "VA Long Beach", "cp": "asymptomatic",
        "trestbps": "", "chol": "0", "fbs": "TRUE", "restecg": "normal", "thalch": "154",
        "exang": "FALSE", "oldpeak": "0", "slope": "", "ca": "", "thal": "", "num": "1",
    }  # fmt: skip
    text = render_record(row)
    assert text.startswith("Age: 54 years; Sex: female; Hospital: VA Long Beach;")
    assert "Resting blood pressure: unknown" in text
    assert "Serum cholesterol: unknown" in text  # 0 means "not measured"
    assert "Fasting blood sugar above 120 mg/dl: yes" in text
    assert "Exercise-induced angina: no" in text
    assert "ST depression induced by exercise: 0 mm" in text  # a real zero stays
    assert "Thallium stress test: unknown" in text
    assert "num" not in text and "id" not in text.lower().split(";")[0]


@needs_data
def test_heart_labels_follow_num() -> None:
    from cotune.tasks.heart import load_examples

    examples = load_examples()
    rows = read_jsonl(data_dir() / "heart" / "train.jsonl", {"num": str})
    assert [ex["heart_disease"] for ex in examples] == [
        "yes" if row["num"] != "0" else "no" for row in rows
    ]
    assert any("unknown" in ex["patient"] for ex in examples)


# -- BM25 retrieval ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A private ``COTUNE_CACHE_DIR`` for this module's BM25 indexes."""
    return tmp_path_factory.mktemp("cotune_cache")


@pytest.fixture(scope="module")
def bm25_cache(cache_root: Path) -> Path:
    return cache_root / "bm25"  # where shared_retriever() looks under COTUNE_CACHE_DIR


@pytest.fixture(scope="module")
def retriever(bm25_cache: Path):
    if not shared_data_available():
        pytest.skip("the shared benchmark data is not available")
    pytest.importorskip("bm25s")
    from cotune.tasks.retrieval import BM25Retriever

    return BM25Retriever(data_dir() / "hotpotqa" / "corpus.jsonl", cache_dir=bm25_cache)


def test_retriever_finds_the_gold_paragraph(retriever) -> None:
    rows = read_jsonl(data_dir() / "hotpotqa" / "train.jsonl", {"id": str, "question": str})
    row = next(r for r in rows if r["id"] == "5a7555215542996c70cfaee1")
    assert row["question"].startswith("Which came to market first")
    top5 = retriever.search(row["question"], k=5)
    assert len(top5) == 5
    assert "Hey Pa! There's a Goat on the Roof" in [p.title for p in top5]
    assert "Poleconomy" in [p.title for p in retriever.search("Poleconomy board game", k=5)]
    scores = [p.score for p in top5]
    assert scores == sorted(scores, reverse=True)

    # over many real questions, the question alone finds a gold paragraph most of the time
    rows = read_jsonl(data_dir() / "hotpotqa" / "train.jsonl", {"gold_titles": list[str]})[:50]
    hits = sum(
        bool({p.title for p in retriever.search(r["question"], k=5)} & set(r["gold_titles"]))
        for r in rows
    )
    assert hits >= 40


def test_retriever_edge_cases(retriever) -> None:
    assert len(retriever) == 10785
    assert retriever.search("the of and", k=3) == []  # only stopwords
    assert retriever.search("", k=3) == []
    assert retriever.search("zzqxjv unknownword", k=3) == []
    assert retriever.search("goat roof", k=0) == []


def test_retriever_index_is_cached_on_disk(retriever, tmp_path: Path) -> None:
    from cotune.tasks.retrieval import BM25Retriever

    corpus = data_dir() / "hotpotqa" / "corpus.jsonl"
    first = BM25Retriever(corpus, cache_dir=tmp_path)
    assert first.built_index
    index_dir = first.index_dir
    assert index_dir.parent == tmp_path and index_dir.is_dir()
    assert [p.name for p in tmp_path.iterdir()] == [index_dir.name]  # no temporary leftovers
    stamp = {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()}

    again = BM25Retriever(corpus, cache_dir=tmp_path)
    assert not again.built_index
    assert again.index_dir == index_dir
    assert {p.name: p.stat().st_mtime_ns for p in index_dir.iterdir()} == stamp
    query = "Which retired Argentine footballer played for Valencia CF?"
    assert again.search(query) == first.search(query) == retriever.search(query)


def test_building_an_index_prints_no_bm25s_debug_lines(tmp_path: Path, capsys) -> None:
    pytest.importorskip("bm25s")
    import logging

    from cotune.tasks.retrieval import BM25Retriever

    corpus = write_lines(tmp_path / "corpus.jsonl",
                         [json.dumps({"title": "Goat", "text": "A goat is an animal."})])
    root = logging.getLogger()
    handler = logging.StreamHandler()  # what the CLI's logging.basicConfig installs
    root.addHandler(handler)
    try:
        assert BM25Retriever(corpus, cache_dir=tmp_path / "cache").built_index
    finally:
        root.removeHandler(handler)
    # bm25s sets its logger to DEBUG on import; the retriever hands it back to the root's level
    assert logging.getLogger("bm25s").getEffectiveLevel() == root.getEffectiveLevel()
    assert "Building index" not in capsys.readouterr().err


def test_retriever_cache_is_keyed_by_content(tmp_path: Path) -> None:
    pytest.importorskip("bm25s")
    from cotune.tasks.retrieval import BM25Retriever

    rows = [
        {"title": "Goat", "text": "A goat is an animal kept on farms."},
        {"title": "Roof", "text": "A roof covers the top of a building."},
        {"title": "Tulsa", "text": "Tulsa is a city in Oklahoma."},
    ]
    corpus = write_lines(tmp_path / "corpus.jsonl", [json.dumps(r) for r in rows])
    first = BM25Retriever(corpus, cache_dir=tmp_path / "cache")
    assert first.built_index
    assert [p.title for p in first.search("city in oklahoma", k=2)] == ["Tulsa"]
    assert not BM25Retriever(corpus, cache_dir=tmp_path / "cache").built_index

    rows.append({"title": "Oklahoma", "text": "Oklahoma is a state; its cities include Tulsa."})
    write_lines(corpus, [json.dumps(r) for r in rows])
    changed = BM25Retriever(corpus, cache_dir=tmp_path / "cache")
    assert changed.built_index and changed.index_dir != first.index_dir
    assert "Oklahoma" in [p.title for p in changed.search("oklahoma", k=3)]


def test_retriever_searches_safely_from_threads(retriever) -> None:
    rows = read_jsonl(data_dir() / "hotpotqa" / "dev.jsonl", {"question": str})[:40]
    queries = [r["question"] for r in rows]
    expected = [retriever.search(q, k=3) for q in queries]
    with ThreadPoolExecutor(max_workers=8) as pool:
        assert list(pool.map(lambda q: retriever.search(q, k=3), queries)) == expected


def test_program_copies_share_the_retriever(retriever) -> None:
    from cotune.tasks.hotpotqa import MultiHopQA

    program = MultiHopQA(retriever)
    assert copy.deepcopy(retriever) is retriever
    clone = program.deepcopy()
    assert clone.retriever is retriever
    assert [name for name, _ in clone.named_predictors()] == [
        "generate_query[0]", "generate_query[1]", "generate_answer",
    ]  # fmt: skip
    clone.generate_answer.instruction = "changed"
    assert program.generate_answer.instruction != "changed"
    assert program.reset_copy().retriever is retriever


# -- every program end to end, with a scripted LM ------------------------------------------------


def scripted_answers(answers: dict[str, str]) -> Callable:
    """Answer with the text for the first output title that the system prompt asks for."""

    def answer(request) -> str:
        system = request.messages[0]["content"]
        form = system.split("Answer in exactly this form", 1)[1]
        for title, text in answers.items():
            if f"{title}:" in form:
                return f"Reasoning: step by step.\n{title}: {text}"
        raise AssertionError(f"unexpected prompt: {form}")

    return answer


@needs_data
@pytest.mark.parametrize(
    ("name", "answers"),
    [
        ("gsm8k", {"Answer": "72"}),
        ("scone", {"Label": "neutral"}),
        ("heart", {"Heart Disease": "yes"}),
        ("hotpotqa", {"Search Query": "Hey Pa goat roof", "Answer": "Hey Pa!"}),
        ("hotpotqa-conditional", {"Search Query": "Poleconomy", "Answer": "Poleconomy"}),
    ],
)
def test_programs_run_with_a_scripted_lm(
    name: str, answers: dict[str, str], cache_root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cotune.evaluate import Evaluate

    monkeypatch.setenv("COTUNE_CACHE_DIR", str(cache_root))  # hotpotqa's BM25 index goes here
    task = get_task(name)
    devset = task.load_splits(seed=0, sizes=(3, 0, 3)).test
    lm = ScriptedLM(scripted_answers(answers))
    with context(lm=lm):
        result = Evaluate(devset, task.metric, num_threads=2, display_progress=False)(
            task.make_program()
        )
    assert len(result.results) == 3 and result.num_errors == 0, result.results
    assert all(0.0 <= r.score <= 1.0 for r in result.results)
    for r in result.results:
        assert r.prediction is not None and "reasoning" in r.prediction


@needs_data
def test_hotpotqa_program_records_retrieval(retriever) -> None:
    from cotune.tasks.hotpotqa import MultiHopQA, answer_exact_match, gold_titles_recall
    from cotune.tasks.hotpotqa_conditional import conditional_answer_match

    queries = iter(["Hey Pa! There's a Goat on the Roof", "Poleconomy board game"])

    def answer(request) -> str:
        if "Search Query:" in request.messages[0]["content"]:
            return f"Reasoning: look it up.\nSearch Query: {next(queries)}"
        context_text = request.messages[-1]["content"]
        assert "«Hey Pa! There's a Goat on the Roof»" in context_text
        return "Reasoning: it came first.\nAnswer: Hey Pa! There's a Goat on the Roof"

    example = Example(
        question='Which came to market first, "Hey Pa! There\'s a Goat on the Roof" or '
        '"Poleconomy"',
        answer="Hey Pa! There's a Goat on the Roof",
        type="comparison",
        gold_titles=["Hey Pa! There's a Goat on the Roof", "Poleconomy"],
    ).with_inputs("question")
    program = MultiHopQA(retriever)
    with context(lm=ScriptedLM(answer)):
        prediction = program(**example.inputs())
    assert prediction["search_queries"] == [
        "Hey Pa! There's a Goat on the Roof", "Poleconomy board game",
    ]  # fmt: skip
    titles = prediction["retrieved_titles"]
    assert len(titles) == len(set(titles)) <= program.max_passages == 6
    assert gold_titles_recall(example, prediction) == 1.0
    assert answer_exact_match(example, prediction) == 1.0
    assert conditional_answer_match(example, prediction) == 1.0
    assert gold_titles_recall(example, Prediction(answer="x")) == 0.0


@needs_data
def test_hotpotqa_hindsight_relabels_a_query_with_a_gold_title_the_writer_read(retriever) -> None:
    """A first query that finds nothing is relabeled with the first gold title the question
    names; a second that found a new gold passage is kept as written; the wrong answer's
    step, which the metric does not credit, is dropped from the failing trace."""
    from cotune.optimize.traces import collect_successful_traces
    from cotune.tasks.hotpotqa import MultiHopQA, answer_exact_match

    queries = iter(["zebra quantum lighthouse", "Poleconomy board game"])

    def answer(request) -> str:
        if "Search Query:" in request.messages[0]["content"]:
            return f"Reasoning: look it up.\nSearch Query: {next(queries)}"
        return "Reasoning: a guess.\nAnswer: Monopoly"

    example = Example(
        question='Which came to market first, "Hey Pa! There\'s a Goat on the Roof" or '
        '"Poleconomy"', answer="Hey Pa! There's a Goat on the Roof",
        gold_titles=["Hey Pa! There's a Goat on the Roof", "Poleconomy"],
    ).with_inputs("question")
    program = MultiHopQA(retriever)
    with context(lm=ScriptedLM(answer)):
        [relabeled] = collect_successful_traces(program, [example], answer_exact_match,
                                                num_threads=1, hindsight=True)
    assert relabeled.relabeled
    (first, inputs, outputs), (second, _, kept) = relabeled.steps
    assert (first, second) == ("generate_query[0]", "generate_query[1]")
    assert inputs["question"] == example["question"]
    assert outputs["search_query"] == "Hey Pa! There's a Goat on the Roof"
    assert kept["search_query"] == "Poleconomy board game"
    # without the trace, the metric reads the titles the earlier hops retrieved
    prediction = Prediction(answer="x", hop_titles=[["Z"], ["Poleconomy"]],
                            search_queries=["q1", "q2"])
    targets = answer_exact_match(example, prediction).predictor_targets
    assert targets["generate_query[0]"]["search_query"] == example["gold_titles"][0]
    assert targets["generate_query[1]"] == {}


@needs_data
def test_hotpotqa_hindsight_relabels_a_wrong_answer_the_passages_name(retriever) -> None:
    """Both queries find their gold passage (kept as written); the answer is wrong but a
    passage the answer step read names the gold answer: its step is relabeled with that
    answer and a reasoning that quotes the passage's sentence naming it."""
    from cotune.optimize.traces import collect_successful_traces
    from cotune.tasks.hotpotqa import MultiHopQA, answer_exact_match

    queries = iter(["Hey Pa! There's a Goat on the Roof", "Poleconomy"])

    def answer(request) -> str:
        if "Search Query:" in request.messages[0]["content"]:
            return f"Reasoning: look it up.\nSearch Query: {next(queries)}"
        return "Reasoning: a guess.\nAnswer: Monopoly"

    gold = "Hey Pa! There's a Goat on the Roof"
    example = Example(question=f'Which came to market first, "{gold}" or "Poleconomy"',
                      answer=gold, gold_titles=[gold, "Poleconomy"]).with_inputs("question")
    with context(lm=ScriptedLM(answer)):
        [trace] = collect_successful_traces(MultiHopQA(retriever), [example], answer_exact_match,
                                            num_threads=1, hindsight=True)
    assert [name for name, _, _ in trace.steps] == [
        "generate_query[0]", "generate_query[1]", "generate_answer"]
    _, inputs, outputs = trace.steps[2]
    assert outputs["answer"] == gold
    assert outputs["reasoning"].startswith(f"The passage «{gold}» says: ")
    quoted = outputs["reasoning"].split(" says: ", 1)[1]
    assert gold in quoted and quoted in inputs["context"]


def test_hotpotqa_answer_targets_come_only_from_what_the_step_read() -> None:
    from cotune.tasks.hotpotqa import hindsight_answer

    context = ("[1] «Blue Harbor» Blue Harbor is a 1990 film. It was shot in Lisbon.\n"
               "[2] «Tom Reese» Tom Reese served in the U.S. Army before directing films.")
    assert hindsight_answer(context, "Lisbon") == {
        "reasoning": "The passage «Blue Harbor» says: It was shot in Lisbon.",
        "answer": "Lisbon"}
    assert hindsight_answer(context, "lisbon")["answer"] == "lisbon"  # case aside
    assert hindsight_answer(context, "Lisb") is None  # whole words only
    assert hindsight_answer(context, "Porto") is None
    assert hindsight_answer("(no passages yet)", "Lisbon") is None
    # an answer across a sentence cut: the passage whole
    assert hindsight_answer(context, "U.S. Army")["reasoning"].endswith(
        "Tom Reese served in the U.S. Army before directing films.")


# -- hover -------------------------------------------------------------------------------------


def test_hover_metric_needs_every_supporting_title() -> None:
    from cotune.tasks.hover import all_supporting_retrieved, supporting_titles_recall

    example = Example(claim="c", supporting_titles=["A", "B", "C"]).with_inputs("claim")
    cases = [(["A", "B", "C", "X"], 1.0, 1.0), (["C", "A"], 0.0, 2 / 3), (["X"], 0.0, 0.0),
             ([], 0.0, 0.0)]
    for titles, found, recall in cases:
        prediction = Prediction(retrieved_titles=titles)
        assert all_supporting_retrieved(example, prediction) == found
        assert supporting_titles_recall(example, prediction) == pytest.approx(recall)
    assert all_supporting_retrieved(example, None) == 0.0
    assert supporting_titles_recall(example, Prediction(notes=["n"])) == 0.0


def test_hover_metric_tells_each_predictor_what_its_hop_found() -> None:
    from cotune.tasks.hover import all_supporting_retrieved

    example = Example(claim="c", supporting_titles=["A", "B", "C"]).with_inputs("claim")
    prediction = Prediction(search_queries=["c", "q2", "q3"], retrieved_titles=["A", "X", "B"],
                            hop_titles=[["A", "X"], ["A"], ["B"]])
    score = all_supporting_retrieved(example, prediction)
    assert score == 0.0 and "missed the supporting documents titled «C»" in score.feedback
    per = score.predictor_feedback
    assert set(per) == {"generate_query[0]", "generate_query[1]", "condense[0]", "condense[1]"}
    assert "Hop 2 searched 'q2' and found no new supporting document" in per["generate_query[0]"]
    assert "Hop 3 searched 'q3' and found «B»; still missing «C»" in per["generate_query[1]"]
    assert per["condense[0]"].startswith("Hop 1 searched 'c' and found «A»; still missing «B»")
    assert "should name what leads to the missing documents" in per["condense[1]"]

    everything = Prediction(search_queries=["c", "q2", "q3"], retrieved_titles=["A", "B", "C"],
                            hop_titles=[["A", "B"], ["C"], []])
    score = all_supporting_retrieved(example, everything)
    assert score == 1.0 and score.feedback == "Every supporting document was retrieved."
    assert "nothing is missing now" in score.predictor_feedback["generate_query[0]"]
    assert "should name" not in score.predictor_feedback["condense[1]"]


@needs_data
def test_hover_claims_are_validated_and_their_documents_are_in_the_corpus(retriever) -> None:
    from cotune.tasks.hover import load_examples

    examples = load_examples()
    titles = set(retriever.titles)
    assert all(set(ex["supporting_titles"]) <= titles for ex in examples)
    assert {ex["label"] for ex in examples} == {"SUPPORTED", "NOT_SUPPORTED"}
    assert all(len(ex["supporting_titles"]) >= 2 for ex in examples)


def test_grouped_split_keeps_families_together_and_cuts_exact_sizes() -> None:
    from cotune.tasks import grouped_split

    # 12 examples: a family of 3 linked through a chain (a-b, b-c), a pair, 7 alone
    docs = [["a", "x1"], ["b", "x2"], ["a", "b"], ["p"], ["p"], *[[f"s{i}"] for i in range(7)]]
    examples = [Example({"id": i, "docs": d}, input_keys=["id"]) for i, d in enumerate(docs)]
    for seed in range(20):
        splits = grouped_split(examples, (4, 3, 5), seed, keys=lambda ex: ex["docs"])
        parts = [splits.train, splits.val, splits.test]
        assert [len(p) for p in parts] == [4, 3, 5]
        where = {ex["id"]: n for n, part in enumerate(parts) for ex in part}
        assert len(where) == 12  # every example used once
        assert where[0] == where[1] == where[2] and where[3] == where[4]
    again = grouped_split(examples, (4, 3, 5), 7, keys=lambda ex: ex["docs"])
    assert again == grouped_split(examples, (4, 3, 5), 7, keys=lambda ex: ex["docs"])


def test_grouped_split_refuses_sizes_only_a_split_family_could_fill() -> None:
    from cotune.tasks import grouped_split
    from cotune.tasks.base import SplitSizeError

    examples = [Example({"id": i, "docs": ["same"]}, input_keys=["id"]) for i in range(4)]
    with pytest.raises(ValueError, match=r"split sizes 2/0/2 .* \(they filled 0/0/0\)"):
        grouped_split(examples, (2, 0, 2), 0, keys=lambda ex: ex["docs"], source="f.jsonl")
    with pytest.raises(SplitSizeError, match="need 5 examples, the data has 4"):
        grouped_split(examples, (2, 1, 2), 0, keys=lambda ex: ex["docs"])


@needs_data
def test_hover_splits_share_no_supporting_document_between_train_val_and_test() -> None:
    from cotune.tasks.hover import load_examples, load_splits

    by_uid = {ex["uid"]: ex for ex in load_examples()}
    for seed in range(5):
        splits = load_splits(seed=seed)
        assert [len(splits.train), len(splits.val), len(splits.test)] == [20, 19, 50]
        docs = [{t for ex in part for t in ex["supporting_titles"]}
                for part in (splits.train, splits.val, splits.test)]
        assert not docs[0] & docs[1] and not docs[0] & docs[2] and not docs[1] & docs[2]
        uids = [ex["uid"] for part in (splits.train, splits.val, splits.test) for ex in part]
        assert sorted(uids) == sorted(by_uid)  # the 89 claims, each once
    assert load_splits(seed=1).test != load_splits(seed=0).test


@needs_data
def test_hover_program_runs_three_hops_and_records_what_it_retrieved(retriever) -> None:
    from cotune.tasks.hover import (
        NO_NOTES,
        HoverMultiHop,
        all_supporting_retrieved,
        load_examples,
        supporting_titles_recall,
    )

    example = next(ex for ex in load_examples()
                   if ex["supporting_titles"] == ["Kasper Schmeichel", "Peter Schmeichel"])
    queries = iter(["Peter Schmeichel goalkeeper 1992", "IFFHS World's Best Goalkeeper"])
    calls = []  # (which signature, the notes it was shown)

    def answer(request) -> str:
        system, query = request.messages[0]["content"], request.messages[-1]["content"]
        shown = query.split("Notes:", 1)[1].split("Passages:", 1)[0]
        if "Search Query:" in system:
            calls.append(("query", shown))
            return f"Reasoning: find the next document.\nSearch Query: {next(queries)}"
        assert "«" in query  # the passages this hop retrieved
        calls.append(("condense", shown))
        return f"Reasoning: condense.\nNew Notes: note {len(calls) // 2 + 1}"

    program = HoverMultiHop(retriever)
    assert [name for name, _ in program.named_predictors()] == [
        "generate_query[0]", "generate_query[1]", "condense[0]", "condense[1]",
    ]  # fmt: skip
    with context(lm=ScriptedLM(answer)):
        prediction = program(**example.inputs())
    # hop 1 searches with the claim; hops 2 and 3 with the written queries; no notes after hop 3
    assert prediction["search_queries"] == [
        example["claim"], "Peter Schmeichel goalkeeper 1992", "IFFHS World's Best Goalkeeper"]
    assert [kind for kind, _ in calls] == ["condense", "query", "condense", "query"]
    assert prediction["notes"] == ["note 1", "note 2"]
    assert NO_NOTES in calls[0][1]  # each call reads the notes of the hops before it
    assert "hop 1: note 1" in calls[1][1] and "hop 2" not in calls[1][1]
    assert "hop 1: note 1\nhop 2: note 2" in calls[3][1]
    titles = prediction["retrieved_titles"]
    assert len(titles) == len(set(titles)) <= program.max_passages == 15
    assert all_supporting_retrieved(example, prediction) == 1.0
    assert supporting_titles_recall(example, prediction) == 1.0
    assert [len(t) for t in prediction["hop_titles"]] == [5, 5, 5]
    assert program.deepcopy().retriever is retriever


@needs_data
def test_hover_evaluates_with_a_scripted_lm(cache_root: Path, monkeypatch) -> None:
    from cotune.evaluate import Evaluate

    monkeypatch.setenv("COTUNE_CACHE_DIR", str(cache_root))
    task = get_task("hover")
    devset = task.load_splits(seed=0, sizes=(0, 0, 4)).test

    def answer(request) -> str:  # the claim itself as every query: BM25 on the claim alone
        if "Search Query:" in request.messages[0]["content"]:
            claim = request.messages[-1]["content"].split("Claim:", 1)[1].split("\n")[0]
            return f"Reasoning: search the claim.\nSearch Query: {claim.strip()}"
        return "Reasoning: condense.\nNew Notes: nothing new"

    with context(lm=ScriptedLM(answer)):
        result = Evaluate(devset, task.metric, num_threads=2, display_progress=False)(
            task.make_program())
    assert result.num_errors == 0 and len(result.results) == 4
    assert set(task.extra_metrics) == {"retrieval_recall"}
    recall = result.values_of(task.extra_metrics["retrieval_recall"])
    from cotune.tasks.hover import claim_only_recall

    found, expected = claim_only_recall(task.make_program().retriever, devset, k=5)
    assert recall == expected and result.scores == found  # the same passages, hop after hop


def claim_as_every_query(request) -> str:
    """A scripted HoVer LM whose every query is the claim: the program sees only BM25's top 5."""
    if "Search Query:" in request.messages[0]["content"]:
        claim = request.messages[-1]["content"].split("Claim:", 1)[1].split("\n")[0]
        return f"Reasoning: search the claim.\nSearch Query: {claim.strip()}"
    return "Reasoning: condense.\nNew Notes: nothing new"


@needs_data
def test_every_hover_run_is_compared_with_bm25_on_the_claim_alone(
    cache_root: Path, tmp_path: Path, monkeypatch
) -> None:
    """The run scores the no-LM baseline at the program's 15 passages on the same test claims,
    and the program's paired difference to it, into result.json, the view and the bench row."""
    from cotune.evaluate.stats import paired_bootstrap_ci
    from cotune.runs.bench import _reference_json, markdown_table
    from cotune.runs.formatting import format_reference
    from cotune.runs.optimize import RunSpec, load_data, run_optimization
    from cotune.runs.view import RunView
    from cotune.tasks.hover import claim_only_recall

    monkeypatch.setenv("COTUNE_CACHE_DIR", str(cache_root))
    spec = RunSpec(task="hover", optimizer="vanilla", train_size=1, val_size=0, test_size=6,
                   threads=2)
    summary = run_optimization(spec, tmp_path / "run", lm=ScriptedLM(claim_as_every_query))
    task = get_task("hover")
    test = load_data(task, spec).test  # the run's own test claims
    found, recall = claim_only_recall(task.make_program().retriever, test, k=15)
    ours_found, ours_recall = claim_only_recall(task.make_program().retriever, test, k=5)

    reference = summary.reference
    assert reference is not None and reference["description"] == "BM25 on the claim alone, top 15"
    metrics = reference["metrics"]
    assert set(metrics) == {"score", "retrieval_recall"}
    assert metrics["score"]["reference"] == pytest.approx(sum(found) / 6)
    assert metrics["retrieval_recall"]["reference"] == pytest.approx(sum(recall) / 6)
    expected = paired_bootstrap_ci(ours_recall, recall, seed=0)
    assert metrics["retrieval_recall"]["gain"]["estimate"] == pytest.approx(expected.estimate)
    assert metrics["retrieval_recall"]["gain"]["low"] == pytest.approx(expected.low)
    assert expected.estimate < 0  # 5 passages against 15: the claim's own ranks 6-15 help

    view = RunView.load(tmp_path / "run")
    assert view.result is not None and view.result.reference is not None
    assert [g.metric for g in view.result.reference.metrics] == ["score", "retrieval_recall"]
    text = format_reference(summary.reference)
    assert text.startswith(f"score {sum(found) / 6:.3f}: ") and "; retrieval_recall " in text

    # the bench row holds what the view read; its table shows it and names the baseline
    row = {"task": "hover", "label": "vanilla", "status": "finished",
           "reference": _reference_json(view.result.reference)}
    old_row = {"task": "hover", "label": "mipro", "status": "finished"}  # an older cell
    table = markdown_table([row, old_row])
    header, _, first, second = table.splitlines()[:4]
    assert "no-LM baseline, and program - baseline (paired 95% CI)" in header
    assert text in first and "| - |" in second
    assert "No-LM baselines, scored on each cell's test examples: hover: BM25 on the claim " \
           "alone, top 15." in table


@needs_data
def test_hotpotqa_is_compared_with_bm25_on_the_question_alone_on_recall_only(
    cache_root: Path, monkeypatch
) -> None:
    from cotune.tasks.hotpotqa import gold_titles_recall

    monkeypatch.setenv("COTUNE_CACHE_DIR", str(cache_root))
    task = get_task("hotpotqa")
    program = task.make_program()
    reference = task.reference(program)
    assert reference.description == "BM25 on the question alone, top 6"
    assert reference.metrics == ("retrieval_recall",)  # no answer to score
    assert get_task("hotpotqa-conditional").reference is task.reference  # the same program
    example = task.load_splits(seed=0).test[0]
    titles = reference.predict(example)["retrieved_titles"]
    assert titles == [p.title for p in program.retriever.search(example["question"], k=6)]
    assert 0.0 <= gold_titles_recall(example, reference.predict(example)) <= 1.0
    with pytest.raises(TypeError, match="multi-hop retrieval program"):
        task.reference(get_task("gsm8k").make_program())
