"""What a number looks like in an LM's text, for every reader of numbers (field coercion, the
numeric metrics, task format rules)."""

from __future__ import annotations

import re

NUMBER = re.compile(
    r"(?:(?<![\w)])(?P<sign>[-\u2212]))?\$?"
    r"(?P<body>\d{1,3}(?:,\d{3})+(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)"
    r"(?P<exp>[eE][-+]?\d+)?"
)
"""A number: thousands-grouped ("1,234.5") or plain ("1234.5", ".5"), with an optional exponent
and "$".  A minus sign (or "−") counts unless it joins two words or numbers ("5-3" ends in 3,
not -3)."""


def number_value(match: re.Match[str]) -> float:
    """The value of a :data:`NUMBER` match (possibly infinite: ``1e999``)."""
    number = float(match.group("body").replace(",", "") + (match.group("exp") or ""))
    return -number if match.group("sign") else number
