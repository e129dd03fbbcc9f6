from typing import Literal

import pytest
from pydantic import BaseModel

from cotune import InputField, OutputField, Signature, SignatureError


def test_parse_string_signature_with_types():
    sig = Signature.parse("context, question -> answer: int")
    assert [f.name for f in sig.input_fields] == ["context", "question"]
    assert [f.name for f in sig.output_fields] == ["answer"]
    assert sig.field("answer").annotation is int
    assert sig.field("context").annotation is str
    assert "`context`, `question`" in sig.instruction


def test_parse_literal_and_list_types():
    sig = Signature.parse("text -> label: Literal['pos', 'neg, maybe'], tags: list[str]")
    assert sig.field("label").choices == ("pos", "neg, maybe")
    assert sig.field("tags").annotation == list[str]
    assert sig.spec() == "text -> label: Literal['pos', 'neg, maybe'], tags: list[str]"


@pytest.mark.parametrize(
    "spec",
    [
        "question answer",
        "-> answer",
        "question ->",
        "a -> b -> c",
        "question -> 2answer",
        "q -> a: os.system",
        "q -> a: __import__('os')",
        "q, q -> a",
    ],
)
def test_bad_signature_strings_are_clear_errors(spec):
    with pytest.raises(SignatureError):
        Signature.parse(spec)


class Verdict(BaseModel):
    guilty: bool
    confidence: float


def test_class_signature_collects_fields_docstring_and_types():
    class Judge(Signature):
        """Decide the case."""

        facts: str = InputField(desc="what happened")
        verdict: Verdict = OutputField()
        label: Literal["a", "b"] = OutputField(desc="the class")

    sig = Judge()
    assert sig.instruction == "Decide the case."
    assert [f.name for f in sig.fields] == ["facts", "verdict", "label"]
    assert sig.field("facts").description == "what happened"
    assert sig.field("verdict").annotation is Verdict
    assert sig.field("label").choices == ("a", "b")


def test_class_signature_rejects_plain_annotations():
    with pytest.raises(SignatureError, match="InputField"):

        class Bad(Signature):
            question: str


def test_a_multiline_docstring_loses_the_class_bodys_indentation():
    class Query(Signature):
        """Write a search query that finds a document, one
        that the notes do not cover yet.

            An indented line keeps its extra indentation.
        """

        claim: str = InputField()
        query: str = OutputField()

    assert Query().instruction == (
        "Write a search query that finds a document, one\nthat the notes do not cover yet.\n\n"
        "    An indented line keeps its extra indentation.")  # the same on every Python version


def test_prepend_output_and_with_instruction_do_not_mutate():
    sig = Signature.parse("q -> a", "Do it.")
    cot = sig.prepend_output("reasoning")
    assert [f.name for f in cot.output_fields] == ["reasoning", "a"]
    assert [f.name for f in sig.output_fields] == ["a"]
    assert sig.with_instruction("Other.").instruction == "Other."
    assert sig.instruction == "Do it."
