"""Secrets never reach disk: redaction of API keys and URL credentials from written text.

Every writer of a file (run folders, bench results, reports, ``evaluate --out``, the journal)
and every error line the CLI prints passes its text through :func:`redact`.  Three kinds of
secret are replaced by ``***``:

* values known to be secret: the API key an LM was built with (:func:`register_secret`) and
  the value of any environment variable whose name says it holds one (``OPENAI_API_KEY``,
  ``HF_TOKEN``, ``*_SECRET``, ``*PASSWORD*``), also in their JSON- and HTML-escaped spellings;
* the credentials of a URL, ``scheme://user:password@host`` -> ``scheme://***@host``;
* what looks like a credential whatever its value: an ``Authorization`` header's value, an
  ``api_key``/``x-api-key`` field, a ``Bearer`` token, an ``sk-...`` key.

A redacted URL cannot be used to connect again: whoever resumes a run from what is on disk
gives the URL (with its credentials) once more (see :func:`is_redacted_url`).
"""

from __future__ import annotations

import html
import json
import logging
import os
import re
import threading
from collections.abc import Iterable
from typing import Any

MASK = "***"
_MIN_SECRET_LEN = 8
"""Shorter values are not redacted by value (``EMPTY``, ``none``, ``1``): they would hit words."""

_SECRET_ENV_NAME = re.compile(r"(?:^|_)(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASSWD)(?:$|_)",
                              re.IGNORECASE)
_Q = r"(?:\\?[\"']|&#x27;|&#39;|&quot;)"  # a quote, also JSON- or HTML-escaped
_PATTERNS: tuple[tuple[re.Pattern[str], str], ...] = (
    # scheme://userinfo@host: everything before the @ of the authority
    (re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@\"'<>\\?#]+@"), rf"\1{MASK}@"),
    # a Host header that carries credentials: Host: user:password@host
    (re.compile(rf"(?i)(\bhost{_Q}?\s*[:=]\s*{_Q}?)[^\s@\"'\\/]+@"), rf"\1{MASK}@"),
    # Authorization: Bearer X / "authorization": "Basic X" / authorization=X
    (re.compile(rf"(?i)(\bauthorization{_Q}?\s*[:=]\s*{_Q}?\s*(?:(?:bearer|basic|token)\s+)?)"
                r"[^\s\"'\\,;}&<]+"), rf"\1{MASK}"),
    # api_key=X, "api-key": "X", x-api-key: X
    (re.compile(rf"(?i)(\b(?:x-)?api[_-]?key{_Q}?\s*[:=]\s*{_Q}?\s*)[^\s\"'\\,;}}&<]+"),
     rf"\1{MASK}"),
    # a Bearer token that has digits or punctuation (prose says "bearer" too)
    (re.compile(r"\b(Bearer\s+)(?=[A-Za-z0-9._~+/=-]*[0-9._~+/=-])[A-Za-z0-9._~+/=-]{8,}"),
     rf"\1{MASK}"),
    # OpenAI-style keys
    (re.compile(r"\bsk-[A-Za-z0-9_-]{16,}"), f"sk-{MASK}"),
)

_registered: set[str] = set()
_lock = threading.Lock()


def register_secret(value: str | None) -> None:
    """Redact ``value`` from everything written from now on (e.g. an API key passed in code)."""
    if isinstance(value, str) and len(value) >= _MIN_SECRET_LEN:
        with _lock:
            _registered.add(value)


def known_secrets() -> list[str]:
    """Registered secrets and secret-named environment variables' values, longest first."""
    from_env = (v for k, v in os.environ.items()
                if _SECRET_ENV_NAME.search(k) and len(v) >= _MIN_SECRET_LEN)
    with _lock:
        values = {*_registered, *from_env}
    return sorted(values, key=len, reverse=True)


def _spellings(secret: str) -> Iterable[str]:
    yield secret
    yield json.dumps(secret)[1:-1]
    yield html.escape(secret, quote=True)
    yield json.dumps(html.escape(secret, quote=True))[1:-1]


def redact(text: str) -> str:
    """``text`` with every secret replaced by ``***`` (see the module's docstring)."""
    if not isinstance(text, str) or not text:
        return text
    for secret in known_secrets():
        for spelling in _spellings(secret):
            if spelling and spelling in text:
                text = text.replace(spelling, MASK)
    for pattern, replacement in _PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def redact_data(data: Any) -> Any:
    """A copy of JSON-like ``data`` with :func:`redact` applied to every string in it."""
    if isinstance(data, str):
        return redact(data)
    if isinstance(data, dict):
        return {redact(k) if isinstance(k, str) else k: redact_data(v) for k, v in data.items()}
    if isinstance(data, (list, tuple)):
        return [redact_data(v) for v in data]
    return data


def redact_url(url: str | None) -> str | None:
    """``url`` without its credentials (``http://***@host/v1``); None stays None."""
    return None if url is None else redact(url)


def is_redacted_url(url: str | None) -> bool:
    """Whether ``url`` lost its credentials to :func:`redact_url` (it cannot connect as is)."""
    return isinstance(url, str) and f"://{MASK}@" in url


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's formatted message (install it on handlers)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
