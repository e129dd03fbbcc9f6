"""The chat adapter: signature + instruction + demos + inputs -> chat messages, and back.

Prompt layout (one system message, then one user/assistant pair per demo, then the query)::

    system:    <instruction>
               Inputs: - Question: <description>
               Outputs: - Answer (one of: a, b): <description>
               Answer in exactly this form, one field per line: ...
    user:      Question: ...
    assistant: Answer: ...

Parsing tries, in order: ``Field: value`` markers, a JSON object, then lenient fallbacks that
can only succeed unambiguously (a whole answer for a single free-text output, exactly one
allowed choice named, the last number).  Anything else raises :class:`AdapterParseError`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

from cotune.adapters.parsing import AdapterParseError, coerce, find_json_object, last_number
from cotune.core.signature import Field, Signature


class ChatAdapter:
    name = "chat"

    def format(
        self,
        signature: Signature,
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
    ) -> list[dict[str, str]]:
        messages = [{"role": "system", "content": self.system_prompt(signature)}]
        for demo in demos:
            messages.append({"role": "user", "content": self.render_inputs(signature, demo)})
            messages.append({"role": "assistant", "content": self.render_outputs(signature, demo)})
        messages.append({"role": "user", "content": self.render_inputs(signature, inputs)})
        return messages

    def format_training_example(
        self,
        signature: Signature,
        demos: Sequence[Mapping[str, Any]],
        inputs: Mapping[str, Any],
        outputs: Mapping[str, Any],
    ) -> dict[str, list[dict[str, str]]]:
        """A chat fine-tuning record: the exact inference prompt plus the target answer."""
        messages = self.format(signature, demos, inputs)
        messages.append({"role": "assistant", "content": self.render_outputs(signature, outputs)})
        return {"messages": messages}

    # -- rendering ---------------------------------------------------------------------------

    def system_prompt(self, signature: Signature) -> str:
        return _system_prompt(signature)

    def render_inputs(self, signature: Signature, values: Mapping[str, Any]) -> str:
        return "\n".join(
            f"{f.title}: {_render_value(values[f.name])}"
            for f in signature.input_fields
            if f.name in values
        )

    def render_outputs(self, signature: Signature, values: Mapping[str, Any]) -> str:
        return "\n".join(
            f"{f.title}: {_render_value(values[f.name])}"
            for f in signature.output_fields
            if f.name in values
        )

    def repair_messages(
        self,
        signature: Signature,
        messages: Sequence[Mapping[str, str]],
        text: str,
        error: Exception,
    ) -> list[dict[str, str]]:
        """The conversation so far, the unreadable answer, and a request to answer again."""
        reason = str(error).split("\n", 1)[0]
        return [
            *({"role": m["role"], "content": m["content"]} for m in messages),
            {"role": "assistant", "content": text},
            {"role": "user", "content": f"That answer could not be read ({reason}). Answer "
             f"again {self.answer_form(signature)}"},
        ]

    def answer_form(self, signature: Signature) -> str:
        """How a repair request asks for the answer (completes "Answer again ...")."""
        form = "\n".join(f"{f.title}: <{f.name}>" for f in signature.output_fields)
        return f"in exactly this form, one field per line:\n{form}"

    # -- parsing -----------------------------------------------------------------------------

    def parse(self, signature: Signature, text: str) -> dict[str, Any]:
        outputs = signature.output_fields
        raw = _from_markers(signature, text)
        if len(raw) < len(outputs):
            from_json = json_fields(outputs, text)
            raw = {**from_json, **raw}
        if len(raw) < len(outputs):
            raw = _lenient(outputs, text, raw)
        missing = [f.name for f in outputs if f.name not in raw]
        if missing:
            raise AdapterParseError(
                f"the answer has no value for {missing}", raw_text=text, field=missing[0]
            )
        return {f.name: coerce(f, raw[f.name], text) for f in outputs}


@functools.lru_cache(maxsize=512)
def _system_prompt(signature: Signature) -> str:
    lines = describe_fields(signature)
    lines += ["", "Answer in exactly this form, one field per line:"]
    lines += [f"{f.title}: <{f.name}>" for f in signature.output_fields]
    return "\n".join(lines)


def describe_fields(signature: Signature) -> list[str]:
    """The instruction, then every input and output field with its type and description: the
    head of every adapter's system prompt."""
    lines = [signature.instruction.strip(), "", "Inputs:"]
    lines += [f"- {_describe(f)}" for f in signature.input_fields]
    lines += ["Outputs:"]
    lines += [f"- {_describe(f)}" for f in signature.output_fields]
    return lines


def _describe(f: Field) -> str:
    parts = [f.title]
    if f.choices is not None:
        parts.append("(one of: " + ", ".join(str(c) for c in f.choices) + ")")
    elif f.annotation is not str:
        parts.append(f"({f.type_name()})")
    text = " ".join(parts)
    return f"{text}: {f.description}" if f.description else text


def _render_value(value: Any) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "model_dump_json"):
        return value.model_dump_json()
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


@functools.lru_cache(maxsize=512)
def _marker_pattern(signature: Signature) -> re.Pattern[str]:
    names = set()
    for f in signature.fields:
        names.update({re.escape(f.title), re.escape(f.name)})
    alternatives = "|".join(sorted(names, key=len, reverse=True))
    # optional bullets / markdown around the name: "**Answer:** x", "## Answer: x", "- answer: x"
    return re.compile(
        rf"^[ \t>#*\-]*\**\[?(?P<name>{alternatives})\]?\**[ \t]*[:：][ \t]*\**[ \t]*",
        re.IGNORECASE | re.MULTILINE,
    )


def _from_markers(signature: Signature, text: str) -> dict[str, str]:
    by_label = {}
    for f in signature.fields:
        by_label[f.title.lower()] = f
        by_label[f.name.lower()] = f
    matches = list(_marker_pattern(signature).finditer(text))
    found: dict[str, str] = {}
    for i, match in enumerate(matches):
        f = by_label[match.group("name").lower()]
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        if not f.is_input and f.name not in found:  # first occurrence wins; echoed inputs skip
            found[f.name] = text[match.end() : end].strip().strip("*").strip()
    return found


def json_fields(outputs: Sequence[Field], text: str) -> dict[str, Any]:
    """The output fields found (by name, any case) in the first JSON object of ``text``."""
    data = find_json_object(text)
    if data is None:
        return {}
    lowered = {str(k).lower(): v for k, v in data.items()}
    return {f.name: lowered[f.name.lower()] for f in outputs if f.name.lower() in lowered}


def _lenient(outputs: Sequence[Field], text: str, found: dict[str, Any]) -> dict[str, Any]:
    """Fill missing fields only where the text allows exactly one reading."""
    result = dict(found)
    if len(outputs) == 1:
        if not found:
            result[outputs[0].name] = text.strip()  # coerce() still checks choices and types
        return result
    last = outputs[-1]
    if last.name not in result:
        # The final field (e.g. the answer after free-form reasoning) without its marker.
        if last.choices is not None:
            with contextlib.suppress(AdapterParseError):  # ambiguous: stays missing
                result[last.name] = coerce(last, text, text)
        elif last.annotation in (int, float):
            number = last_number(text)
            if number is not None:
                result[last.name] = number
    first = outputs[0]
    unmarked_reasoning = len(outputs) == 2 and first.name not in result and first.annotation is str
    if unmarked_reasoning and last.name in result:
        result[first.name] = text.strip()
    return result
