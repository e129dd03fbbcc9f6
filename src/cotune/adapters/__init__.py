"""Adapters between signatures and chat messages: field markers (``ChatAdapter``, ``"chat"``)
and structured JSON with its schema sent to the LM (``JSONAdapter``, ``"json"``)."""

from cotune.adapters.chat import ChatAdapter
from cotune.adapters.json_adapter import JSONAdapter
from cotune.adapters.names import ADAPTERS, adapter_named
from cotune.adapters.parsing import AdapterParseError

__all__ = ["ADAPTERS", "AdapterParseError", "ChatAdapter", "JSONAdapter", "adapter_named"]
