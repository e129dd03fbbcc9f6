"""The pieces every instruction-writing optimizer shares: a free-text signature, one LM call
through a ``Predict`` that takes an unparsable answer whole, a predictor's fields as text, and
the clean-up of a written instruction.  MIPRO's proposer, GEPA's reflection and OPRO use them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from cotune.adapters.parsing import AdapterParseError
from cotune.core.predict import Predict
from cotune.core.runtime import ChatModel
from cotune.core.signature import Field, Signature

CALL_OPTIONS = ("temperature", "rollout_id", "max_tokens")
"""The keyword arguments of :func:`ask` that configure the call instead of filling a field."""


def text_signature(instruction: str, inputs: Sequence[tuple[str, str]], output: tuple[str, str]
                   ) -> Signature:
    """A signature of free-text fields: ``inputs`` and ``output`` are ``(name, description)``."""
    fields = [Field(name, True, str, desc) for name, desc in inputs]
    fields.append(Field(output[0], False, str, output[1]))
    return Signature(fields, instruction)


def ask(lm: ChatModel, signature: Signature, output: str | None = None, **inputs: Any) -> str:
    """One LM call through a ``Predict``: the text of field ``output`` (default: the last
    output field), stripped; an answer the adapter cannot parse is taken whole (free text).
    ``temperature``, ``rollout_id`` and ``max_tokens`` among ``inputs`` go to the call."""
    output = output or signature.output_fields[-1].name
    options = {k: inputs.pop(k) for k in CALL_OPTIONS if k in inputs}
    try:
        return str(Predict(signature, lm=lm, **options)(**inputs)[output]).strip()
    except AdapterParseError as exc:
        return exc.raw_text.strip()


def describe_signature(predictor: Predict) -> str:
    """``inputs: a; b (int): what b is -> outputs: c``: a predictor's fields, for a prompt."""
    sig = predictor.signature

    def part(f: Field) -> str:
        kind = "" if f.annotation is str else f" ({f.type_name()})"
        return f"{f.name}{kind}" + (f": {f.description}" if f.description else "")

    inputs = "; ".join(part(f) for f in sig.input_fields)
    outputs = "; ".join(part(f) for f in sig.output_fields)
    return f"inputs: {inputs} -> outputs: {outputs}"


def clean_instruction(text: str) -> str:
    """An LM-written instruction without the code block small models like to append and
    without quotes around the whole of it."""
    text = text.split("```", 1)[0].strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'`":
        text = text[1:-1].strip()
    return text
