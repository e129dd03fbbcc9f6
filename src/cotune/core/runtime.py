"""Which LM and adapter a predictor uses when none is bound to it: a ``contextvars`` scope.

There is no global settings object.  ``with context(lm=...)`` applies to the block and to the
worker threads that cotune starts inside it (they copy the context).  ``core`` cannot import the
layers above it, so it talks to LMs and adapters through the two small protocols below; the
package root registers the default adapter.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
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

    def chat(self, messages: Sequence[Mapping[str, str]], **options: Any) -> ChatResponse: ...


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
_default_adapter: list[PromptAdapter] = []


@contextmanager
def context(lm: ChatModel | None = None, adapter: PromptAdapter | None = None) -> Iterator[None]:
    """Use ``lm`` (and/or ``adapter``) for every predictor without one of its own in the block."""
    tokens = []
    if lm is not None:
        tokens.append((_lm, _lm.set(lm)))
    if adapter is not None:
        tokens.append((_adapter, _adapter.set(adapter)))
    try:
        yield
    finally:
        for var, token in reversed(tokens):
            var.reset(token)


def current_lm() -> ChatModel | None:
    return _lm.get()


def current_adapter() -> PromptAdapter:
    adapter = _adapter.get()
    if adapter is not None:
        return adapter
    if not _default_adapter:
        raise RuntimeError("no adapter registered; import cotune (the package root) first")
    return _default_adapter[0]


def register_default_adapter(adapter: PromptAdapter) -> None:
    _default_adapter[:] = [adapter]
