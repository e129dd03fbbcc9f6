"""Train a LoRA adapter on chat records with peft and a plain AdamW loop.

Each record is ``{"messages": [...]}`` whose last message is the assistant's answer (what
``ChatAdapter.format_training_example`` renders).  It becomes the token sequence the model sees
at inference: the prompt rendered by the model's own chat template (the one llama.cpp uses) with
the generation prompt, tokenized as llama.cpp tokenizes it, followed by the answer's tokens up to
and including the end-of-turn token.  The loss covers only those answer tokens.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cotune.finetune.errors import (
    OUT_OF_MEMORY_ADVICE,
    FineTuneError,
    NoTrainingDataError,
    SequenceTooLongError,
)
from cotune.finetune.settings import LoraSettings

IGNORE_INDEX = -100
"""Label of tokens that carry no loss (torch's cross-entropy default ``ignore_index``)."""

StepCallback = Callable[[int, int, float], None]
"""``on_step(step, total_steps, loss)``, called after every optimizer step."""


@dataclass
class TrainedLora:
    """The outcome of one training run."""

    adapter_dir: Path
    """The peft adapter (``adapter_config.json`` + ``adapter_model.safetensors``)."""
    checkpoint: Path
    """The transformers checkpoint the adapter was trained on."""
    losses: list[float]
    """Training loss of every optimizer step."""
    steps: int
    seconds: float
    records_used: int
    records_dropped: int
    """Records left out for being longer than ``max_seq_len``."""
    device: str
    settings: LoraSettings
    gguf_path: Path | None = None
    """The adapter as a llama.cpp GGUF LoRA, once exported."""

    @property
    def seconds_per_step(self) -> float:
        return self.seconds / self.steps if self.steps else 0.0

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("adapter_dir", "checkpoint", "gguf_path"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data


# -- turning chat records into training sequences -----------------------------------------------


def encode_record(tokenizer: Any, record: Mapping[str, Any]) -> tuple[list[int], list[int]]:
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
    tokenizer: Any, records: Sequence[Mapping[str, Any]], max_seq_len: int
) -> tuple[list[tuple[list[int], list[int]]], int]:
    """Encoded records that fit in ``max_seq_len`` tokens, and how many did not."""
    if not records:
        raise NoTrainingDataError("no training records: nothing to fine-tune on")
    encoded = [encode_record(tokenizer, r) for r in records]
    kept = [e for e in encoded if len(e[0]) <= max_seq_len]
    if not kept:
        longest = max(len(e[0]) for e in encoded)
        shortest = min(len(e[0]) for e in encoded)
        raise SequenceTooLongError(
            f"all {len(encoded)} training records are longer than max_seq_len={max_seq_len} "
            f"tokens ({shortest} to {longest}); raise max_seq_len or shorten the prompts"
        )
    return kept, len(encoded) - len(kept)


# -- training -----------------------------------------------------------------------------------


def train_lora(
    checkpoint: Path,
    records: list[dict[str, Any]],
    settings: LoraSettings,
    out_dir: Path,
    *,
    on_step: StepCallback | None = None,
    progress: bool = True,
) -> TrainedLora:
    """Train a LoRA adapter for the transformers ``checkpoint`` on chat ``records``.

    Writes ``out_dir/adapter/`` (peft), ``out_dir/training_log.jsonl`` (step, epoch, loss,
    learning rate) and ``out_dir/train_records.jsonl``.  ``progress`` shows a progress bar.
    """
    import torch
    from transformers import AutoTokenizer

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not records:
        raise NoTrainingDataError("no training records: nothing to fine-tune on")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    encoded, dropped = encode_records(tokenizer, records, settings.max_seq_len)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out_dir / "train_records.jsonl", records)

    device = resolve_device(settings.device)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    start = time.perf_counter()
    try:
        with _cpu_threads(settings.num_threads if device.type == "cpu" else None):
            model = _lora_model(checkpoint, settings, device)
            losses = _train_loop(
                model, encoded, pad_id, settings, device, out_dir, on_step, progress
            )
        model.save_pretrained(out_dir / "adapter")
    except (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError)) as e:
        raise _out_of_memory(e, settings) from e
    except RuntimeError as e:
        if "out of memory" in str(e).lower():  # MPS and some CUDA paths raise plain RuntimeError
            raise _out_of_memory(e, settings) from e
        raise
    return TrainedLora(
        adapter_dir=out_dir / "adapter",
        checkpoint=checkpoint,
        losses=losses,
        steps=len(losses),
        seconds=time.perf_counter() - start,
        records_used=len(encoded),
        records_dropped=dropped,
        device=str(device),
        settings=settings,
    )


def resolve_device(device: str) -> Any:
    """``"auto"``: CUDA if present, else Apple MPS, else the CPU."""
    import torch

    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def idle_cores() -> int:
    """CPU cores that other work leaves idle right now, at least one.

    Linux reports the runnable threads in ``/proc/loadavg``; a few samples, minus this
    thread, say how many cores are taken.  Elsewhere: every core.
    """
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cores = cores or 1
    samples = []
    try:
        for _ in range(5):
            samples.append(int(Path("/proc/loadavg").read_text().split()[3].split("/")[0]))
            time.sleep(0.02)
    except (OSError, IndexError, ValueError):
        return cores
    busy_elsewhere = sorted(samples)[len(samples) // 2] - 1
    return max(1, min(cores, cores - busy_elsewhere))


@contextmanager
def _cpu_threads(num_threads: int | None) -> Iterator[None]:
    """Train with ``num_threads`` torch threads (default: the idle cores), then restore."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(num_threads or idle_cores())
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _lora_model(checkpoint: Path, settings: LoraSettings, device: Any) -> Any:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(settings.seed)  # the LoRA A matrices start random
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model.config.use_cache = False
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout,
        target_modules=settings.target_modules,
        bias="none",
        task_type="CAUSAL_LM",
    )
    with warnings.catch_warnings():  # peft probes an attribute that transformers deprecated
        warnings.filterwarnings("ignore", "`is_gradient_checkpointing`", FutureWarning)
        return get_peft_model(model, config).to(device)


def _train_loop(
    model: Any,
    encoded: list[tuple[list[int], list[int]]],
    pad_id: int,
    settings: LoraSettings,
    device: Any,
    out_dir: Path,
    on_step: StepCallback | None,
    progress: bool,
) -> list[float]:
    import torch

    total = settings.epochs * math.ceil(len(encoded) / settings.batch_size)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        params, lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    warmup = int(settings.warmup_fraction * total)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: _lr_factor(step, warmup, total)
    )
    order_rng = torch.Generator().manual_seed(settings.seed)
    losses: list[float] = []
    model.train()
    with (out_dir / "training_log.jsonl").open("w") as log, _progress_bar(progress, total) as bar:
        for epoch in range(settings.epochs):
            order = torch.randperm(len(encoded), generator=order_rng).tolist()
            for b in range(0, len(order), settings.batch_size):
                batch = [encoded[i] for i in order[b : b + settings.batch_size]]
                inputs = {k: v.to(device) for k, v in _collate(batch, pad_id).items()}
                loss = model(**inputs).loss
                loss.backward()
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                value = float(loss.detach())
                losses.append(value)
                step = len(losses)
                lr = scheduler.get_last_lr()[0]
                log.write(json.dumps({"step": step, "epoch": epoch, "loss": value, "lr": lr}))
                log.write("\n")
                log.flush()
                if bar is not None:
                    bar(step, value)
                if on_step is not None:
                    on_step(step, total, value)
    model.eval()
    return losses


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


def _collate(batch: list[tuple[list[int], list[int]]], pad_id: int) -> dict[str, Any]:
    """Right-padded ``input_ids``, ``attention_mask`` and ``labels`` tensors."""
    import torch

    width = max(len(ids) for ids, _ in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE_INDEX, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (seq, lab) in enumerate(batch):
        ids[row, : len(seq)] = torch.tensor(seq)
        labels[row, : len(lab)] = torch.tensor(lab)
        mask[row, : len(seq)] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}


def _progress_bar(enabled: bool, total: int) -> AbstractContextManager[Any]:
    """A context giving ``show(step, loss)`` (a rich progress bar) or None when disabled."""
    if not enabled:
        return nullcontext(None)
    return _RichBar(total)


class _RichBar:
    def __init__(self, total: int) -> None:
        from rich.progress import (  # lazy: rich costs ~50 ms to import
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self._bar = Progress(
            TextColumn("LoRA training"), BarColumn(), MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(), TimeRemainingColumn(),
        )  # fmt: skip
        self._task = self._bar.add_task("train", total=total, loss="-")

    def __enter__(self) -> Callable[[int, float], None]:
        self._bar.start()
        return lambda step, loss: self._bar.update(self._task, completed=step, loss=f"{loss:.4f}")

    def __exit__(self, *exc: object) -> None:
        self._bar.stop()


def _out_of_memory(error: BaseException, settings: LoraSettings) -> FineTuneError:
    detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    return FineTuneError(
        OUT_OF_MEMORY_ADVICE.format(
            detail=detail, batch_size=settings.batch_size, max_seq_len=settings.max_seq_len
        )
    )


def _write_jsonl(path: Path, rows: Sequence[Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    os.replace(tmp, path)
