from typing import Literal

import pytest
from pydantic import BaseModel

from cotune import AdapterParseError, ChatAdapter, Example, InputField, OutputField, Signature

adapter = ChatAdapter()
IRIS = Signature.parse(
    "sepal_length, petal_width -> species: Literal['setosa', 'versicolor', 'virginica']",
    "Classify the iris.",
)
COT_NUM = Signature.parse("question -> reasoning, answer: int")


def test_format_puts_instruction_fields_demos_and_inputs_in_order():
    demos = [Example(sepal_length=5.1, petal_width=0.2, species="setosa")]
    messages = adapter.format(IRIS, demos, {"sepal_length": 6.0, "petal_width": 1.8})
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user"]
    system = messages[0]["content"]
    assert system.startswith("Classify the iris.")
    assert "Species (one of: setosa, versicolor, virginica)" in system
    assert messages[1]["content"] == "Sepal Length: 5.1\nPetal Width: 0.2"
    assert messages[2]["content"] == "Species: setosa"
    assert messages[3]["content"] == "Sepal Length: 6.0\nPetal Width: 1.8"


def test_demo_missing_an_output_renders_only_what_it_has():
    demos = [{"question": "1+1", "answer": 2}]  # a labelled demo: no reasoning
    messages = adapter.format(COT_NUM, demos, {"question": "2+2"})
    assert messages[2]["content"] == "Answer: 2"


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Reasoning: 2 and 2\nAnswer: 4", 4),
        ("**Reasoning:** 2 and 2\n**Answer:** 4", 4),
        ("## Reasoning: multi\nline\n## Answer: $1,204", 1204),
        ("reasoning: x\nanswer: 12 apples", 12),
        ('```json\n{"reasoning": "x", "answer": "7"}\n```', 7),
        ("I add 3 and 4, which gives 7", 7),  # no markers: reasoning = text, answer = last number
    ],
)
def test_parse_chain_of_thought_number(text, expected):
    out = adapter.parse(COT_NUM, text)
    assert out["answer"] == expected
    assert isinstance(out["answer"], int)
    assert out["reasoning"]


def test_multiline_field_values_are_kept_whole():
    out = adapter.parse(COT_NUM, "Reasoning: first line\nsecond line\nAnswer: 3")
    assert out["reasoning"] == "first line\nsecond line"


def test_echoed_inputs_are_not_mistaken_for_outputs():
    out = adapter.parse(COT_NUM, "Question: what is 2+2?\nReasoning: easy\nAnswer: 4")
    assert out == {"reasoning": "easy", "answer": 4}


@pytest.mark.parametrize(
    "text, expected",
    [
        ("Species: virginica", "virginica"),
        ("Species: Iris versicolor.", "versicolor"),
        ("SETOSA", "setosa"),
        ("The flower is a virginica", "virginica"),
    ],
)
def test_parse_literal_choices_leniently(text, expected):
    assert adapter.parse(IRIS, text)["species"] == expected


@pytest.mark.parametrize(
    "text",
    [
        "It is either setosa or virginica",  # ambiguous: never guess
        "a rose",  # no choice named
        "",
    ],
)
def test_unparsable_choice_raises_with_raw_text(text):
    with pytest.raises(AdapterParseError) as info:
        adapter.parse(IRIS, text)
    assert info.value.raw_text == text
    assert info.value.field == "species"


def test_missing_number_raises_instead_of_guessing():
    with pytest.raises(AdapterParseError) as info:
        adapter.parse(COT_NUM, "Reasoning: I am not sure\nAnswer: unknown")
    assert "unknown" in info.value.raw_text
    with pytest.raises(AdapterParseError):
        adapter.parse(Signature.parse("q -> answer: int"), "Answer: 3.5")


def test_missing_field_in_multi_output_signature_raises():
    sig = Signature.parse("q -> title, summary")
    with pytest.raises(AdapterParseError, match="summary"):
        adapter.parse(sig, "Title: hello")


def test_single_free_text_output_without_marker_is_the_whole_answer():
    sig = Signature.parse("question -> answer")
    assert adapter.parse(sig, "  Paris  ")["answer"] == "Paris"


def test_bool_list_and_float():
    sig = Signature.parse("q -> ok: bool, items: list[str], score: float, ids: list[int]")
    out = adapter.parse(sig, "Ok: Yes\nItems: - a\n- b\nScore: 0.75\nIds: [1, 2]")
    assert out == {"ok": True, "items": ["a", "b"], "score": 0.75, "ids": [1, 2]}
    out = adapter.parse(sig, "Ok: false\nItems: x, y\nScore: 1e-3\nIds: 4")
    assert out == {"ok": False, "items": ["x", "y"], "score": 0.001, "ids": [4]}
    with pytest.raises(AdapterParseError, match="ok"):
        adapter.parse(sig, "Ok: perhaps\nItems: a\nScore: 1\nIds: 1")


class Person(BaseModel):
    name: str
    age: int


def test_pydantic_output_field():
    class Extract(Signature):
        """Extract the person."""

        text: str = InputField()
        person: Person = OutputField()

    out = adapter.parse(Extract(), 'Person: {"name": "Ada", "age": 36}')
    assert out["person"] == Person(name="Ada", age=36)
    with pytest.raises(AdapterParseError, match="person"):
        adapter.parse(Extract(), 'Person: {"name": "Ada"}')


def test_literal_in_class_signature():
    class Sentiment(Signature):
        text: str = InputField()
        label: Literal["positive", "negative"] = OutputField()

    assert adapter.parse(Sentiment(), "Label: Negative!")["label"] == "negative"


def test_training_example_is_the_inference_prompt_plus_the_answer():
    demos = [Example(sepal_length=5.1, petal_width=0.2, species="setosa")]
    inputs = {"sepal_length": 6.0, "petal_width": 1.8}
    record = adapter.format_training_example(IRIS, demos, inputs, {"species": "virginica"})
    assert record["messages"][:-1] == adapter.format(IRIS, demos, inputs)
    assert record["messages"][-1] == {"role": "assistant", "content": "Species: virginica"}
    # what the model is trained to say parses back to the same outputs
    assert adapter.parse(IRIS, record["messages"][-1]["content"]) == {"species": "virginica"}
