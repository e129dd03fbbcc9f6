"""The adapters selectable by name: in ``Predict(adapter=...)``, ``cotune.context(adapter=...)``,
saved programs, and as an LM backend's ``default_adapter``.

A fixed table, not a registry that importing the package fills: core resolves a name here when
a predictor runs (``cotune.core.runtime.adapter_named``).  Any other adapter is passed as an
object.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from cotune.adapters.chat import ChatAdapter
from cotune.adapters.json_adapter import JSONAdapter

ADAPTERS: Mapping[str, ChatAdapter] = MappingProxyType(
    {"chat": ChatAdapter(), "json": JSONAdapter()}
)
"""Field markers (``"chat"``) and structured JSON with its schema sent to the LM (``"json"``);
both keep no state between calls, so predictors share one of each."""


def adapter_named(name: str) -> ChatAdapter:
    """The adapter called ``name``; a ``ValueError`` naming the known ones otherwise."""
    try:
        return ADAPTERS[name]
    except KeyError:
        known = ", ".join(sorted(ADAPTERS))
        raise ValueError(f"unknown adapter {name!r}; known: {known}") from None
