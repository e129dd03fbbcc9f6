"""Chat records -> training sequences that match inference token for token.

Each record is ``{"messages": [...]}`` whose last message is the assistant's answer (what
``ChatAdapter.format_training_example`` renders).  It becomes the token sequence the model sees
at inference: the prompt rendered by the model's own chat template (the one llama.cpp uses) with
the generation prompt, tokenized as llama.cpp tokenizes it, followed by the answer's tokens up to
and including the end-of-turn token.  The loss covers only those answer tokens.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from cotune._files import write_atomic
from cotune.finetune.errors import FineTuneError, NoTrainingDataError, SequenceTooLongError

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (torch's cross-entropy default ``ignore_index``)."""

Encoded = tuple[list[int], list[int]]
"""``(input_ids, labels)`` of one record."""

RECORDS_FILE = "train_records.jsonl"
"""The chat records an adapter was trained on, one JSON object a line, in its folder."""


def write_records(path: Path, records: Sequence[Mapping[str, Any]]) -> Path:
    """``records`` as JSON lines in ``path`` (written atomically)."""
    return write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records),
                        sync=False)


def encode_record(tokenizer: Any, record: Mapping[str, Any]) -> Encoded:
    """``(input_ids, labels)`` of one chat record; labels are :data:`IGNORE_INDEX` except on the
    final assistant message's tokens (and the end-of-turn token that closes it)."""
    messages = _messages(record)
    prompt_text = tokenizer.apply_chat_template(
        messages[:-1], tokenize=False, add_generation_prompt=True
    )
    full_text = tokenizer.apply_chat_template(messages, tokenize=False)
    if not full_text.startswith(prompt_text):
        raise FineTuneError(
            "the model's chat template does not render the answer after the prompt it renders "
            "for generation, so the training text cannot match inference"
        )
    # Tokenized separately, as at inference: llama.cpp tokenizes the prompt, then generates.
    prompt_ids = _token_ids(tokenizer, prompt_text)
    answer_ids = _through_end_of_turn(
        _token_ids(tokenizer, full_text[len(prompt_text) :]), _special_ids(tokenizer)
    )
    return prompt_ids + answer_ids, [IGNORE_INDEX] * len(prompt_ids) + answer_ids


def _messages(record: Mapping[str, Any]) -> list[dict[str, str]]:
    messages = record.get("messages") if isinstance(record, Mapping) else None
    if not isinstance(messages, list) or not messages:
        raise FineTuneError(f"a training record must be {{'messages': [...]}}, got {record!r:.200}")
    for m in messages:
        if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or "role" not in m:
            raise FineTuneError(f"malformed chat message {m!r:.200}")
    if messages[-1]["role"] != "assistant":
        raise FineTuneError("the last message of a training record must be the assistant's answer")
    return [{"role": m["role"], "content": m["content"]} for m in messages]


def _token_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _special_ids(tokenizer: Any) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, token in tokenizer.added_tokens_decoder.items() if token.special)
    return ids


def _through_end_of_turn(ids: list[int], special: set[int]) -> list[int]:
    """Cut after the first special token (``<|im_end|>``, ``<|eot_id|>``...): generation stops
    there, so what a template renders after it (a newline) is never produced at inference."""
    for i, token in enumerate(ids):
        if token in special:
            return ids[: i + 1]
    return ids


def encode_records(
    tokenizer: Any,
    records: Sequence[Mapping[str, Any]],
    max_seq_len: int,
    *,
    limit_name: str | None = None,
) -> tuple[list[Encoded], list[int]]:
    """Encoded records that fit in ``max_seq_len`` tokens, and the lengths of those that did
    not.  ``limit_name`` says where the limit comes from in the error (default: the setting)."""
    if not records:
        raise NoTrainingDataError("no training records: nothing to fine-tune on")
    encoded = [encode_record(tokenizer, r) for r in records]
    kept = [e for e in encoded if len(e[0]) <= max_seq_len]
    if not kept:
        longest = max(len(e[0]) for e in encoded)
        shortest = min(len(e[0]) for e in encoded)
        limit = limit_name or f"max_seq_len={max_seq_len}"
        raise SequenceTooLongError(
            f"all {len(encoded)} training records are longer than {limit} "
            f"tokens ({shortest} to {longest}); raise max_seq_len or shorten the prompts"
        )
    return kept, [len(e[0]) for e in encoded if len(e[0]) > max_seq_len]
