"""The structured adapter: the answer is one JSON object that follows the signature's output
schema, which is sent with the request so that backends constrain decoding to it.

Prompt layout (as :class:`~cotune.adapters.ChatAdapter`, but every answer, demos included, is
the JSON object the model must produce)::

    system:    <instruction>
               Inputs: ... Outputs: ...
               Answer with one JSON object and nothing else, with the keys in this order:
               "reasoning" (a string), "answer" (an integer)
    user:      Question: ...
    assistant: {"reasoning": "...", "answer": 4}

A chain of thought must still think: its ``reasoning`` comes first and gets a length limit of
its own in the schema (``budget * reasoning_chars_per_token`` characters, the budget being the
predictor's ``max_tokens``); every other text field gets a smaller limit, and the request's
``max_tokens`` leaves room for all of them at their longest even at one token per character.
So the grammar closes each field in time and the answer is never cut off.

Parsing reads the first JSON object of the answer; where that misses fields (a backend that
could not constrain decoding), the field-marker reading of ``ChatAdapter`` fills them in.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping
from typing import Any

from cotune.adapters.chat import ChatAdapter, describe_fields, json_fields
from cotune.adapters.parsing import AdapterParseError, coerce
from cotune.core.jsonable import jsonable
from cotune.core.signature import Field, Signature

REASONING = "reasoning"
_JSON_TOKENS = 8
"""Tokens per field for its key, quotes and separators."""


class JSONAdapter(ChatAdapter):
    """Structured output: a JSON object per answer, with its JSON schema sent to the LM.

    Args:
        reasoning_chars_per_token: characters of reasoning allowed per token of the
            predictor's ``max_tokens`` (English runs ~4 characters a token; 3 leaves margin).
        answer_tokens: tokens reserved after the reasoning for each other output field.
    """

    name = "json"

    def __init__(self, *, reasoning_chars_per_token: int = 3, answer_tokens: int = 64) -> None:
        self.reasoning_chars_per_token = reasoning_chars_per_token
        self.answer_tokens = answer_tokens

    # -- the request -------------------------------------------------------------------------

    def response_schema(self, signature: Signature, budget: int) -> dict[str, Any]:
        """The signature's output schema, each free-text field's length limited to its share of
        the budget: the reasoning ``budget`` tokens' worth, every other text field
        ``answer_tokens``' worth (without reasoning, the text fields share the budget)."""
        schema = signature.output_schema()
        texts = _text_fields(schema)
        chars = self.reasoning_chars_per_token
        for name in texts:
            if REASONING in texts:
                tokens = budget if name == REASONING else self.answer_tokens
            else:
                tokens = max(1, budget // len(texts))
            schema["properties"][name]["maxLength"] = tokens * chars
        return schema

    def request_options(self, signature: Signature, budget: int) -> dict[str, Any]:
        """Options for the LM call: the schema, and a ``max_tokens`` in which the answer always
        closes: every text field at its longest (at worst one token per character) plus room
        for the other fields and the JSON around them."""
        schema = self.response_schema(signature, budget)
        texts = _text_fields(schema)
        if not texts:  # choices, numbers, booleans: the budget as it is
            return {"response_schema": schema, "max_tokens": budget}
        others = len(schema["properties"]) - len(texts)
        max_tokens = (sum(schema["properties"][n]["maxLength"] for n in texts)
                      + others * self.answer_tokens + _JSON_TOKENS * len(schema["properties"]))
        return {"response_schema": schema, "max_tokens": max(budget, max_tokens)}

    # -- rendering ---------------------------------------------------------------------------

    def system_prompt(self, signature: Signature) -> str:
        return _system_prompt(signature)

    def render_outputs(self, signature: Signature, values: Mapping[str, Any]) -> str:
        """The JSON object of the output fields present in ``values``, in signature order (a
        labelled demo of a chain of thought may lack its reasoning)."""
        data = {f.name: jsonable(values[f.name]) for f in signature.output_fields
                if f.name in values}
        return json.dumps(data, ensure_ascii=False)

    def answer_form(self, signature: Signature) -> str:
        return f"with only the JSON object: {_keys(signature)}."

    # -- parsing -----------------------------------------------------------------------------

    def parse(self, signature: Signature, text: str) -> dict[str, Any]:
        outputs = signature.output_fields
        raw = json_fields(outputs, text)
        if len(raw) < len(outputs):
            try:  # no (complete) JSON object: read it as the field-marker format
                return super().parse(signature, text)
            except AdapterParseError:
                missing = [f.name for f in outputs if f.name not in raw]
                raise AdapterParseError(
                    f"the answer has no value for {missing}", raw_text=text, field=missing[0]
                ) from None
        return {f.name: coerce(f, raw[f.name], text) for f in outputs}


@functools.lru_cache(maxsize=512)
def _system_prompt(signature: Signature) -> str:
    lines = describe_fields(signature)
    lines += ["", f"Answer with one JSON object and nothing else: {_keys(signature)}."]
    return "\n".join(lines)


def _text_fields(schema: Mapping[str, Any]) -> list[str]:
    return [name for name, prop in schema["properties"].items()
            if prop.get("type") == "string" and "enum" not in prop]


def _keys(signature: Signature) -> str:
    parts = ", ".join(f"{json.dumps(f.name)} ({_kind(f)})" for f in signature.output_fields)
    return f"the keys {parts}, in this order"


def _kind(f: Field) -> str:
    if f.choices is not None:
        return "one of " + ", ".join(json.dumps(c) for c in f.choices)
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        f.annotation, f"JSON of type {f.type_name()}"
    )
