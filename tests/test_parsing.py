"""Field values from LM text: pydantic's TypeAdapter decides the type, cotune's lenient rules
find the value in what small models write around it; unreadable values name their field."""

from __future__ import annotations

from typing import Literal

import pytest
from import_check import modules_loaded_by
from pydantic import BaseModel

from cotune.adapters.parsing import (
    NUMBER,
    AdapterParseError,
    coerce,
    first_number,
    last_number,
    parse_number,
)
from cotune.core.signature import Field


def read(annotation, value, name: str = "answer"):
    return coerce(Field(name, False, annotation), value, str(value))


@pytest.mark.parametrize(
    ("annotation", "value", "expected"),
    [
        (int, "42", 42),
        (int, " 42 ", 42),
        (int, "12 apples", 12),
        (int, "$1,204.", 1204),
        (int, "about 1e3", 1000),
        (int, "3.0", 3),
        (int, 7, 7),
        (int, 7.0, 7),
        (int, "12345678901234567890", 12345678901234567890),  # exact, not through a float
        (float, "0.75", 0.75),
        (float, "Score: 1e-3", 0.001),
        (float, "-$2.50 each", -2.5),
        (float, 3, 3.0),
        (float, ".5", 0.5),
    ],
)
def test_numbers_are_read_out_of_text(annotation, value, expected):
    result = read(annotation, value)
    assert result == expected and type(result) is annotation


@pytest.mark.parametrize(
    ("annotation", "value", "reason"),
    [
        (int, "3.5", "fractional part"),
        (int, 3.5, "fractional part"),
        (int, "unknown", "no number found"),
        (int, True, "not a yes/no"),
        (float, "nan", "no number found"),
        (float, "inf", "no number found"),
        (float, "1e999", "finite number"),
        (float, "", "no number found"),
    ],
)
def test_an_unreadable_number_is_an_error_naming_the_field(annotation, value, reason):
    with pytest.raises(AdapterParseError, match=reason) as info:
        read(annotation, value, name="count")
    assert info.value.field == "count"
    assert str(info.value).startswith(f"field 'count': cannot read {str(value)!r}")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("Yes", True), ("yes.", True), ("No!", False), ("Yes, because it is red", True),
     ("Correct", True), ("incorrect.", False), ("TRUE", True), ("false", False), (" n ", False),
     (True, True), (0, False), ("1", True)],
)
def test_yes_no_answers(value, expected):
    assert read(bool, value) is expected


@pytest.mark.parametrize("value", ["perhaps", "", "maybe yes", 2])
def test_a_bool_that_is_neither_is_an_error(value):
    with pytest.raises(AdapterParseError, match="field 'ok'.*yes/no or true/false"):
        read(bool, value, name="ok")


def test_choices_exact_or_named_once():
    choice = Literal["setosa", "versicolor", "virginica"]
    assert read(choice, "virginica") == "virginica"
    assert read(choice, "Iris Versicolor.") == "versicolor"
    assert read(Literal[1, 2, 3], "2") == 2
    with pytest.raises(AdapterParseError, match="names several choices"):
        read(choice, "setosa or virginica")
    with pytest.raises(AdapterParseError, match="names none of the choices"):
        read(choice, "a rose")


def test_lists_in_json_lines_or_commas_with_lenient_items():
    assert read(list[int], "[1, 2]") == [1, 2]
    assert read(list[int], "1. 3 apples\n2. $4") == [3, 4]
    assert read(list[str], "- a\n* b\n• c") == ["a", "b", "c"]
    assert read(list[str], "x, y") == ["x", "y"]
    assert read(list, '["a", 1]') == ["a", 1]
    with pytest.raises(AdapterParseError, match="field 'ids'"):
        read(list[int], "[1, two]", name="ids")
    with pytest.raises(AdapterParseError, match="field 'ids'"):
        read(list[int], "1, two", name="ids")


class Person(BaseModel):
    name: str
    age: int


def test_pydantic_models_and_dicts_are_validated_by_pydantic():
    assert read(Person, '{"name": "Ada", "age": "36"}') == Person(name="Ada", age=36)
    assert read(Person, {"name": "Ada", "age": 36}) == Person(name="Ada", age=36)
    with pytest.raises(AdapterParseError, match=r"field 'person'.*age: Field required"):
        read(Person, '{"name": "Ada"}', name="person")
    with pytest.raises(AdapterParseError, match="field 'person'.*Invalid JSON"):
        read(Person, "Ada, 36", name="person")
    assert read(dict, '{"a": [1]}') == {"a": [1]}
    assert read(dict[str, int], '{"a": "1"}') == {"a": 1}  # the declared value type holds
    with pytest.raises(AdapterParseError, match=r"field 'scores'.*a: Input should be"):
        read(dict[str, int], {"a": "many"}, name="scores")


def test_text_fields_are_stripped_and_other_values_kept_as_json():
    assert read(str, "  Paris \n") == "Paris"
    assert read(str, {"a": 1}) == '{"a": 1}'


def test_an_unsupported_type_is_an_error_naming_the_field():
    with pytest.raises(AdapterParseError, match="field 'when': unsupported type"):
        read(tuple, "(1, 2)", name="when")


def test_the_number_pattern_is_public_for_other_readers():
    text = "It costs -$1,204.50, or 1e3 in total, then .5"
    assert [m.group() for m in NUMBER.finditer(text)] == ["-$1,204.50", "1e3", ".5"]
    assert first_number(text) == "-$1,204.50" and last_number(text) == ".5"
    assert first_number("none here") is None and last_number("") is None
    assert parse_number("-$1,204.50") == -1204.5
    assert parse_number("1,204") == 1204 and isinstance(parse_number("1,204"), int)
    assert parse_number("1e3") == 1000.0


def test_pydantic_is_imported_on_first_use_not_with_cotune():
    assert modules_loaded_by("import cotune, cotune.adapters.parsing", {"pydantic"}) == []
