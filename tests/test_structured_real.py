"""Structured decoding with the real SmolLM2, through the embedded engine and through
llama.cpp's OpenAI-compatible server: on prompts where SmolLM2's free-text answer cannot be
read (each case first shows that), the JSON-schema-constrained answer always parses, with the
declared type, for str / int / float / bool / Literal / list / pydantic outputs and a chain
of thought."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel

import cotune
from cotune import AdapterParseError, ChainOfThought, InputField, OutputField, Predict, Signature
from cotune.lm import LlamaCppLM, OpenAILM, track_usage

pytestmark = pytest.mark.real_model


class Person(BaseModel):
    name: str
    age: int


class ExtractPerson(Signature):
    """Extract the person."""

    text: str = InputField()
    person: Person = OutputField()


# (case, predictor factory, inputs, check of the parsed answer); max_tokens kept small
CASES: list[tuple[str, Any, dict[str, str], Any]] = [
    ("str", lambda: Predict("question -> city, country", max_tokens=32),
     {"question": "Where is the Eiffel Tower? Describe the place in detail."},
     lambda a: isinstance(a.city, str) and isinstance(a.country, str)),
    ("int", lambda: Predict("text -> words: int", max_tokens=32),
     {"text": "Count the words: the quick brown fox"},
     lambda a: type(a.words) is int),
    # 16 tokens: the free-text answer runs out before its field (at 32 one llama.cpp build's
    # SmolLM2 wrote "Amount: 10,000" after one sentence, which parses)
    ("float", lambda: Predict("text -> amount: float", max_tokens=16),
     {"text": "Describe the price of gold in history, century by century, in detail."},
     lambda a: type(a.amount) is float),
    ("bool", lambda: Predict("statement -> is_true: bool", max_tokens=24),
     {"statement": "Cats can fly."},
     lambda a: type(a.is_true) is bool),
    ("Literal", lambda: Predict("review -> summary, sentiment: Literal['positive', 'negative']",
                                max_tokens=32),
     {"review": "I loved every minute of this film, wonderful acting, but the ending was sad "
                "and the music terrible."},
     lambda a: a.sentiment in ("positive", "negative")),
    ("list", lambda: Predict("sentence -> nouns: list[str], verbs: list[str]", max_tokens=32),
     {"sentence": "The dog chased the cat across the garden."},
     lambda a: all(isinstance(x, str) for x in [*a.nouns, *a.verbs])),
    ("pydantic", lambda: Predict(ExtractPerson, max_tokens=40),
     {"text": "Alice is a 30 year old engineer from Paris."},
     lambda a: isinstance(a.person, Person)),
    ("chain of thought", lambda: ChainOfThought("question -> answer: bool", max_tokens=32),
     {"question": "Is the sun a star? Explain the physics."},
     lambda a: type(a.answer) is bool and isinstance(a.reasoning, str) and a.reasoning),
]


@pytest.fixture(scope="module")
def embedded(smollm2_path):
    lm = LlamaCppLM(smollm2_path, n_ctx=2048, cache=None, seed=0)
    yield lm
    lm.close()


@pytest.fixture(scope="module")
def served(llama_server_url):
    return OpenAILM("smollm2", base_url=llama_server_url, cache=None, timeout=120.0)


def _free_text_fails(lm: Any, make: Any, inputs: dict[str, str]) -> None:
    predictor = make()
    predictor.adapter = "chat"
    with cotune.context(lm=lm), track_usage() as usage, pytest.raises(AdapterParseError):
        predictor(**inputs)
    assert usage.snapshot().repairs == 1  # it was asked once more, and that failed too


def _structured_parses(lm: Any, make: Any, inputs: dict[str, str], check: Any) -> None:
    predictor = make()
    predictor.adapter = "json"
    with cotune.context(lm=lm), track_usage() as usage:
        answer = predictor(**inputs)
    assert check(answer), answer
    assert usage.snapshot().repairs == 0  # parsed at the first answer


@pytest.mark.parametrize(("case", "make", "inputs", "check"), CASES, ids=[c[0] for c in CASES])
def test_embedded_engine_structured_output_parses_where_free_text_fails(
    embedded, case, make, inputs, check
):
    _free_text_fails(embedded, make, inputs)
    _structured_parses(embedded, make, inputs, check)


@pytest.mark.parametrize(("case", "make", "inputs", "check"), CASES, ids=[c[0] for c in CASES])
def test_llama_server_structured_output_parses_where_free_text_fails(
    served, case, make, inputs, check
):
    _free_text_fails(served, make, inputs)
    _structured_parses(served, make, inputs, check)
    # llama-cpp-python's server refuses OpenAI's json_schema form and takes json_object with
    # a schema: found out on the first structured request, and remembered for the endpoint
    assert served.structured_mode == "json_object"


def test_embedded_default_is_the_structured_adapter(embedded):
    assert ChainOfThought("question -> answer: int").effective_adapter(embedded).name == "json"


def test_chain_of_thought_reasoning_has_its_own_budget(embedded):
    """The reasoning is bounded in the schema, so the answer after it always gets room: the
    answer parses even with a budget a free-text chain of thought overruns."""
    think = ChainOfThought("question -> answer: Literal['yes', 'no']", max_tokens=16)
    think.adapter = "json"
    with cotune.context(lm=embedded):
        answer = think(question="Is a tomato a fruit? Explain the botany in detail.")
    assert answer.answer in ("yes", "no")
    assert 0 < len(answer.reasoning) <= 16 * 3

