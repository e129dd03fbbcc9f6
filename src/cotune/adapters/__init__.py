"""Adapters between signatures and chat messages."""

from cotune.adapters.chat import ChatAdapter
from cotune.adapters.parsing import AdapterParseError

__all__ = ["AdapterParseError", "ChatAdapter"]
