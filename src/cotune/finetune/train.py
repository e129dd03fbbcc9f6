"""Train a LoRA adapter on chat records with peft and a plain AdamW loop.

The records become token sequences exactly as at inference (see :mod:`cotune.finetune.records`);
the loss covers only the final answer.  Randomness (LoRA init, dropout, record order) comes from
``settings.seed``.
"""

from __future__ import annotations

import json
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cotune.evaluate.progress import progress_bar
from cotune.finetune.device import cpu_threads, release_freed_memory, resolve_device
from cotune.finetune.errors import OUT_OF_MEMORY_ADVICE, FineTuneError, NoTrainingDataError
from cotune.finetune.records import (
    IGNORE_INDEX,
    RECORDS_FILE,
    Encoded,
    encode_records,
    write_records,
)
from cotune.finetune.settings import LoraSettings

logger = logging.getLogger(__name__)

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
    """Wall time of the whole run: loading the model, training, saving the adapter."""
    step_seconds: float
    """Mean wall time of one optimizer step."""
    records_used: int
    records_dropped: int
    """Records left out for being longer than ``max_seq_len``."""
    device: str
    settings: LoraSettings
    gguf_path: Path | None = None
    """The adapter as a llama.cpp GGUF LoRA, once exported."""

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        for key in ("adapter_dir", "checkpoint", "gguf_path"):
            data[key] = str(data[key]) if data[key] is not None else None
        return data


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
    learning rate) and ``out_dir/train_records.jsonl`` (the records).  ``progress`` shows a
    progress bar.
    """
    import torch
    from transformers import AutoTokenizer

    checkpoint, out_dir = Path(checkpoint), Path(out_dir)
    if not records:
        raise NoTrainingDataError("no training records: nothing to fine-tune on")
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    limit, limit_name = _sequence_limit(checkpoint, settings)
    encoded, dropped = encode_records(tokenizer, records, limit, limit_name=limit_name)
    if dropped:
        logger.warning(
            "left out %d of %d training records longer than %s tokens (the longest has %d)%s",
            len(dropped), len(records), limit_name, max(dropped),
            f": set the LoRA setting max_seq_len to {max(dropped)} to train on all of them"
            if settings.max_seq_len is not None else "",
        )  # fmt: skip
    out_dir.mkdir(parents=True, exist_ok=True)
    write_records(out_dir / RECORDS_FILE, records)

    device = resolve_device(settings.device)
    start = time.perf_counter()
    try:
        threads = cpu_threads(settings.num_threads) if device.type == "cpu" else nullcontext()
        with threads:
            model = _lora_model(checkpoint, settings, device)
            loop_start = time.perf_counter()
            losses = _train_loop(
                model, encoded, settings, device, out_dir, on_step, progress
            )
            step_seconds = (time.perf_counter() - loop_start) / max(1, len(losses))
        model.save_pretrained(out_dir / "adapter")
        del model
    except (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError)) as e:
        raise _out_of_memory(e, settings, encoded) from e
    except RuntimeError as e:
        if "out of memory" in str(e).lower():  # MPS and some CUDA paths raise plain RuntimeError
            raise _out_of_memory(e, settings, encoded) from e
        raise
    release_freed_memory(device)
    return TrainedLora(
        adapter_dir=out_dir / "adapter",
        checkpoint=checkpoint,
        losses=losses,
        steps=len(losses),
        seconds=time.perf_counter() - start,
        step_seconds=step_seconds,
        records_used=len(encoded),
        records_dropped=len(dropped),
        device=str(device),
        settings=settings,
    )


def _sequence_limit(checkpoint: Path, settings: LoraSettings) -> tuple[int, str]:
    """The longest record to train on, and how to name that limit in messages: the setting,
    or (``max_seq_len=None``) the model's context window."""
    if settings.max_seq_len is not None:
        return settings.max_seq_len, f"max_seq_len={settings.max_seq_len}"
    from transformers import AutoConfig

    window = getattr(AutoConfig.from_pretrained(checkpoint), "max_position_embeddings", None)
    if not isinstance(window, int) or window < 1:
        return UNBOUNDED, "the model's context window"
    return window, f"the model's context window ({window})"


UNBOUNDED = 2**62
"""The limit when neither the setting nor the model's config gives one."""


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
    encoded: list[Encoded],
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
                value = backward_batch_loss(
                    model, [encoded[i] for i in order[b : b + settings.batch_size]], device
                )
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
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


def backward_batch_loss(model: Any, batch: Sequence[Encoded], device: Any) -> float:
    """Back-propagate one optimizer step and return its loss: the mean cross-entropy over the
    batch's answer tokens, as a padded batch gives it, but computed one record at a time and
    with the output head applied only where a position predicts an answer token.

    A padded batch holds batch x length x vocabulary logits and their gradient: with Qwen's
    152k-token vocabulary that is 1.2 GB per 2,048-token record in float32, each, and four
    HoVer condense prompts took a 24 GiB machine's memory (the kernel killed the run).  The
    prompt's positions carry no loss, so their logits are never needed; one record at a time
    bounds the activations by the longest record and wastes nothing on padding."""
    import torch
    import torch.nn.functional as F

    answers = [_answer_positions(labels) for _, labels in batch]
    counted = max(1, sum(len(positions) for positions in answers))
    total = 0.0
    for (ids, labels), positions in zip(batch, answers, strict=True):
        if not positions:
            continue
        targets = torch.tensor([labels[p + 1] for p in positions], device=device)
        logits = model(input_ids=torch.tensor([ids], device=device),
                       logits_to_keep=torch.tensor(positions, device=device)).logits[0]
        loss = F.cross_entropy(logits.float(), targets, reduction="sum")
        (loss / counted).backward()
        total += float(loss.detach())
    return total / counted


def _answer_positions(labels: Sequence[int]) -> list[int]:
    """The positions whose next token is a labelled one (position p predicts token p + 1)."""
    return [p for p in range(len(labels) - 1) if labels[p + 1] != IGNORE_INDEX]


def _lr_factor(step: int, warmup: int, total: int) -> float:
    """Linear warm-up over ``warmup`` steps, then linear decay to zero at ``total``."""
    if step < warmup:
        return (step + 1) / (warmup + 1)
    return max(0.0, (total - step) / max(1, total - warmup))


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Callable[[int, float], None] | None]:
    """A context giving ``show(step, loss)`` (a progress bar) or None when disabled."""
    if not enabled:
        yield None
        return
    with progress_bar("LoRA training", "loss {task.fields[loss]}", total, loss="-") as update:
        yield None if update is None else (lambda step, loss: update(step, loss=f"{loss:.4f}"))


def _out_of_memory(
    error: BaseException, settings: LoraSettings, encoded: Sequence[Encoded]
) -> FineTuneError:
    detail = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
    longest = max(len(ids) for ids, _ in encoded)
    return FineTuneError(OUT_OF_MEMORY_ADVICE.format(detail=detail, longest=longest))

