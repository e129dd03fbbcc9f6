"""GEPA's reflection step: show an LM one predictor's inputs, outputs and feedback on a few
examples, and let it write a better instruction.

The prompt is kept short and literal so that a small model can follow it: the current
instruction, the step's input and output fields, then numbered examples with what the step
produced and what the metric said about the whole program's answer.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from cotune.core.predict import Predict
from cotune.core.runtime import ChatModel
from cotune.optimize.feedback import short
from cotune.optimize.prompting import ask, clean_instruction, describe_signature, text_signature

_REFLECT = text_signature(
    "You improve the instruction of one step of a language-model program. Below are the "
    "step's current instruction, its input and output fields, and examples of what it "
    "produced with feedback on the result. Write a new instruction for the step that fixes "
    "the mistakes the feedback points out and keeps what worked. State the rules the feedback "
    "reveals about the task (the right answer format, facts that decide the answer). Write "
    "only the instruction, in plain sentences.",
    [("current_instruction", "the instruction the step uses now"),
     ("step_fields", "the step's input and output fields"),
     ("examples_with_feedback", "inputs, the step's outputs, and feedback on each example")],
    ("new_instruction", "the improved instruction, and nothing else"),
)
_MAX_EXAMPLE_STEPS = 1
"""Calls of the predictor shown per example (a predictor called in a loop shows the first)."""


def reflective_examples(
    predictor_name: str, records: Sequence[Mapping[str, Any]], *, max_examples: int = 8,
    hindsight: bool = False,
) -> list[dict[str, Any]]:
    """The examples the reflection LM sees for one predictor: its calls in each record's trace
    (inputs and outputs), the score and the feedback meant for it (the predictor's own, when
    the metric gave one, else the program's); with ``hindsight``, also the outputs the metric
    says its first call should have given (``wanted``), where they differ from the traced."""
    shown = []
    for record in records:
        calls = [s for s in record["steps"] if s[0] == predictor_name][:_MAX_EXAMPLE_STEPS]
        feedback = record["predictor_feedback"].get(predictor_name) or record["feedback"]
        if not calls and record["error"] is None:
            continue  # the predictor never ran on this example: nothing to learn from it
        target = (record.get("predictor_targets") or {}).get(predictor_name) if hindsight else None
        for _, inputs, outputs in calls or [(predictor_name, record["inputs"], {})]:
            example = {"inputs": inputs, "outputs": outputs, "score": record["score"],
                       "feedback": feedback}
            wanted = {k: v for k, v in (target or {}).items() if outputs.get(k) != v}
            if wanted and calls:
                example["wanted"] = wanted
            shown.append(example)
        if len(shown) >= max_examples:
            break
    return shown[:max_examples]


def format_reflective_examples(examples: Sequence[Mapping[str, Any]]) -> str:
    blocks = []
    for i, ex in enumerate(examples, 1):
        lines = [f"Example {i}:", "  Inputs:"]
        lines += [f"    {k}: {short(v)}" for k, v in ex["inputs"].items()]
        lines.append("  Outputs of the step:")
        lines += [f"    {k}: {short(v)}" for k, v in ex["outputs"].items()] or ["    (none)"]
        lines.append(f"  Feedback: {short(ex['feedback'], 600)}")
        if ex.get("wanted"):
            lines.append("  What the step should have output:")
            lines += [f"    {k}: {short(v)}" for k, v in ex["wanted"].items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def propose_instruction(
    lm: ChatModel,
    predictor: Predict,
    examples: Sequence[Mapping[str, Any]],
    *,
    temperature: float,
    rollout_id: int,
    max_chars: int | None,
    max_tokens: int = 320,
) -> dict[str, Any]:
    """One reflection: ``{"instruction", "chars", "truncated"}``; the instruction is the
    current one when the LM's answer is empty."""
    text = ask(
        lm, _REFLECT, "new_instruction",
        current_instruction=predictor.instruction,
        step_fields=describe_signature(predictor),
        examples_with_feedback=format_reflective_examples(examples),
        temperature=temperature, rollout_id=rollout_id, max_tokens=max_tokens,
    )
    text = strip_echo(clean_instruction(text)) or predictor.instruction
    capped, truncated = cap_length(text, max_chars)
    return {"instruction": capped, "chars": len(capped), "truncated": truncated}


_ECHO = re.compile(
    r"^\s*(Example \d+:|(?:[A-Z]\w* ){0,2}(?:Inputs?|Outputs?|Feedback|Fields?|Instructions?"
    r"|Examples?|Explanation|Note)( [a-z]\w*){0,3}:)", re.MULTILINE)


def strip_echo(text: str) -> str:
    """``text`` up to where a small model starts copying the prompt's field labels and
    example blocks, or explaining itself ("Steps Fields:", "Explanation:" on a new line)."""
    match = _ECHO.search(text)
    return (text[: match.start()] if match else text).strip()


def cap_length(text: str, max_chars: int | None) -> tuple[str, bool]:
    """``text`` cut to ``max_chars`` at the last sentence end (else word) before the cap."""
    if max_chars is None or len(text) <= max_chars:
        return text, False
    head = text[:max_chars]
    end = max(head.rfind(". "), head.rfind(".\n"), head.rfind("! "), head.rfind("? "))
    if end >= max_chars // 2:
        return head[: end + 1].rstrip(), True
    cut = head.rsplit(None, 1)[0] if " " in head else head
    return cut.rstrip(), True
