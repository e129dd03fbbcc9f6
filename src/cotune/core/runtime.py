"""Which LM and adapter a predictor uses when none is bound to it: a ``contextvars`` scope.

There is no global settings object.  ``with context(lm=...)`` applies to the block and to the
worker threads that cotune starts inside it (they copy the context).  ``core`` cannot import the
layers above it, so it talks to LMs and adapters through the two small protocols below, and
reaches an adapter given by name (``"chat"``, ``"json"``) through the adapters layer when a
predictor runs: nothing has to be registered by importing the package.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from importlib import import_module
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from cotune.core.signature import Signature


class ChatResponse(Protocol):
    @property
    def text(self) -> str: ...

    @property
    def choices(self) -> Sequence[Any]: ...


class ChatModel(Protocol):
    """What a predictor needs from an LM (``cotune.lm.LM`` implements it)."""

    model: str
    max_tokens: int
    """The answer length of calls that do not set one."""

    def chat(self, messages: Sequence[Mapping[str, str]], **options: Any) -> ChatResponse: ...

    def describe(self) -> Mapping[str, Any] | None:
        """What a saved program records of the LM (JSON data; None: nothing)."""
        ...


class PromptAdapter(Protocol):
    """What a predictor needs from an adapter (``cotune.adapters.ChatAdapter`` implements it)."""

    def format(
        self,
        signature: Signature,
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[dict[str, str]]: ...

    def parse(self, signature: Signature, text: str) -> dict[str, Any]: ...


_lm: ContextVar[ChatModel | None] = ContextVar("cotune_lm", default=None)
_adapter: ContextVar[PromptAdapter | None] = ContextVar("cotune_adapter", default=None)

DEFAULT_ADAPTER = "chat"
"""The adapter of an LM that names none (``default_adapter``): the field-marker format."""


@contextmanager
def context(
    lm: ChatModel | None = None, adapter: PromptAdapter | str | None = None
) -> Iterator[None]:
    """Use ``lm`` (and/or ``adapter``, an object or a registered name) for every predictor
    without one of its own in the block."""
    tokens = []
    if lm is not None:
        tokens.append((_lm, _lm.set(lm)))
    if adapter is not None:
        tokens.append((_adapter, _adapter.set(adapter_named(adapter))))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current_lm() -> ChatModel | None:
    return _lm.get()


def current_adapter(lm: object | None = None) -> PromptAdapter:
    """The adapter of a ``context(adapter=...)`` block; else the one ``lm`` names as its
    backend's default (its ``default_adapter`` attribute); else ``DEFAULT_ADAPTER``."""
    adapter = _adapter.get()
    if adapter is not None:
        return adapter
    preferred = getattr(lm, "default_adapter", None)
    return adapter_named(preferred if isinstance(preferred, str) else DEFAULT_ADAPTER)


def adapter_named(setting: PromptAdapter | str) -> PromptAdapter:
    """``setting`` itself, or the adapter of that name (a ``ValueError`` naming the known ones
    for an unknown name)."""
    if not isinstance(setting, str):
        return setting
    # the one reference from core upward, by name and at call time: the adapters layer owns
    # the names (tests/test_layers.py lists it as the sole such reference)
    return import_module("cotune.adapters.names").adapter_named(setting)  # type: ignore
