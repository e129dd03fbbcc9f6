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


def first_number(text: str) -> str | None:
    """The first :data:`NUMBER` in ``text`` as written, or None."""
    match = NUMBER.search(text)
    return match.group() if match else None


def last_number(text: str) -> str | None:
    """The last :data:`NUMBER` in ``text`` as written, or None."""
    matches = [m.group() for m in NUMBER.finditer(text)]
    return matches[-1] if matches else None


def parse_number(token: str) -> int | float:
    """A number as written (``"$1,204"`` -> 1204, ``"1e3"`` -> 1000.0): whole numbers stay exact
    ints however large; a token that is not one :data:`NUMBER` is a ``ValueError``."""
    match = NUMBER.fullmatch(token.strip())
    if match is None:
        raise ValueError(f"not a number: {token!r}")
    body = match.group("body").replace(",", "")
    if "." in body or match.group("exp"):
        return number_value(match)
    return -int(body) if match.group("sign") else int(body)
