import pytest

from cotune import Example, Prediction
from cotune.evaluate import (
    exact_match,
    normalize_text,
    numeric_match,
    parse_number,
    token_f1,
    token_f1_score,
)

GSM8K_GOLD = (
    "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n"
    "Natalia sold 48+24 = <<48+24=72>>72 clips altogether in April and May.\n#### 72"
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower"),
        ("  an   apple\tA DAY ", "apple day"),
        ("Theory of the mind", "theory of mind"),  # "the" inside words stays
        ("“Quoted,” she said.", "quoted she said"),
        ("", ""),
        (None, ""),
        (42, "42"),
    ],
)
def test_normalize_text(text, expected):
    assert normalize_text(text) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("$1,234.50", 1234.5),
        ("#### 72", 72.0),
        (GSM8K_GOLD, 72.0),
        ("72 apples", 72.0),
        ("The answer is -5.", -5.0),
        ("It costs -$5", -5.0),
        ("5-3", 3.0),  # a hyphen between numbers is not a sign
        ("0.5", 0.5),
        (".25", 0.25),
        ("1.5e3", 1500.0),
        ("50%", 50.0),
        ("72.", 72.0),
        ("I had 3 apples and ate 2, so 1 is left", 1.0),
        (7, 7.0),
        (2.5, 2.5),
        ("no number here", None),
        ("", None),
        (None, None),
        (True, None),
        (float("nan"), None),
    ],
)
def test_parse_number(value, expected):
    assert parse_number(value) == expected


def test_exact_match_normalizes_and_accepts_aliases():
    em = exact_match("answer")
    assert em(Example(answer="The Eiffel Tower"), Prediction(answer="eiffel tower.")) == 1.0
    assert em(Example(answer="Paris"), Prediction(answer="London")) == 0.0
    assert em(Example(answer=["NYC", "New York City"]), Prediction(answer="new york city")) == 1.0
    assert em(Example(answer=4), Prediction(answer="4")) == 1.0
    assert exact_match("label")(Example(label="b"), Prediction(label="B")) == 1.0
    assert em.__name__ == "exact_match('answer')"


def test_token_f1():
    assert token_f1_score("the cat sat", "cat sat down") == pytest.approx(0.8)
    assert token_f1_score("", "") == 1.0
    assert token_f1_score("x", "") == 0.0
    f1 = token_f1()
    score = f1(Example(answer="cat sat down"), Prediction(answer="The cat sat"))
    assert score == pytest.approx(0.8)
    assert f1(Example(answer=["dog", "cat sat"]), Prediction(answer="cat sat")) == 1.0
    assert f1(Example(answer="a b"), Prediction(answer="c d")) == 0.0


def test_numeric_match_gsm8k_and_tolerance():
    nm = numeric_match()
    assert nm(Example(answer=GSM8K_GOLD), Prediction(answer="72")) == 1.0
    assert nm(Example(answer=GSM8K_GOLD), Prediction(answer="$72.00")) == 1.0
    assert nm(Example(answer=GSM8K_GOLD), Prediction(answer=72)) == 1.0
    assert nm(Example(answer=GSM8K_GOLD), Prediction(answer="71")) == 0.0
    assert nm(Example(answer="1,000,000"), Prediction(answer="1000000.0000001")) == 1.0
    assert numeric_match(tolerance=0.01)(Example(answer="3.14"), Prediction(answer="3.141")) == 1.0
    assert nm(Example(answer="3.14"), Prediction(answer="3.141")) == 0.0
    with pytest.raises(ValueError):
        numeric_match(tolerance=-1)


@pytest.mark.parametrize("metric", [exact_match(), token_f1(), numeric_match()])
@pytest.mark.parametrize(
    ("example", "prediction"),
    [
        (Example(answer="4"), None),  # the program failed
        (Example(answer="4"), Prediction(other="4")),  # the field is missing
        (Example(answer="4"), Prediction(answer=None)),
        (Example(answer="4"), Prediction(answer="no idea")),
        (Example(question="x"), Prediction(answer="4")),  # no gold
        (Example(answer=None), Prediction(answer="4")),
        (Example(answer="4"), {"answer": "5"}),  # plain dicts work too
    ],
)
def test_metrics_score_zero_instead_of_crashing(metric, example, prediction):
    assert metric(example, prediction) == 0.0
    assert metric(example, prediction, trace=None) == 0.0



@pytest.mark.parametrize("text, value, a_number", [
    ("-5", -5.0, True), ("\u22127", -7.0, True), ("$1,234.50", 1234.5, True), (".5", 0.5, True),
    ("2.5e3", 2500.0, True), ("about 72 apples", 72.0, False), ("pages 10-12", 12.0, False),
])
def test_field_coercion_the_metric_and_the_format_rules_read_a_number_alike(text, value, a_number):
    """One reading of numbers: a float field, the numeric metric and HotPotQA Conditional's
    format rule all follow ``cotune.adapters.numbers.NUMBER``."""
    from cotune.adapters.parsing import coerce, last_number
    from cotune.core.signature import Field
    from cotune.tasks.hotpotqa_conditional import format_rule

    field = Field("answer", is_input=False, annotation=float)
    assert parse_number(text) == value
    assert coerce(field, last_number(text), text) == value
    assert (format_rule(text, "bridge") == "number") is a_number
