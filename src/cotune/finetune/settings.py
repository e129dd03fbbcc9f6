"""LoRA training settings: plain, JSON-able data, validated on construction."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass
class LoraSettings:
    """How to train a LoRA adapter.

    The defaults suit the small local models (SmolLM2-135M, Qwen2.5-0.5B) and a few dozen to a
    few hundred short chat records: rank 8 on every linear layer, a learning rate high enough to
    move a small model in a few dozen steps.

    Args:
        rank, alpha: LoRA rank r and scaling numerator (the update is ``alpha / r * B @ A``).
        dropout: dropout on the LoRA input during training.
        target_modules: ``"all-linear"`` (every linear layer but the output head) or a list of
            module names such as ``["q_proj", "v_proj"]``.
        epochs: passes over the training records.
        learning_rate: peak AdamW learning rate (linear warm-up, then linear decay to zero).
        batch_size: records per optimizer step.
        max_seq_len: records with more tokens are left out (an error if all are); ``None``
            (the default) keeps every record the model's context window holds, so a program
            whose prompts grow (demos, retrieved passages) is never cut to a few records by a
            default.  Training runs one record at a time, so memory grows with the longest
            record, not with the batch.
        seed: seeds the LoRA initialization, dropout and the record order.
        device: ``"auto"`` (CUDA, then Apple MPS, then CPU), or a torch device string.
        num_threads: CPU threads for training; ``None`` picks the cores that other work leaves
            idle right now.  Busy-waiting threads on an oversubscribed machine train
            several times slower than fewer threads.
        weight_decay: AdamW weight decay of the LoRA matrices.
        warmup_fraction: share of the steps spent warming the learning rate up.
    """

    rank: int = 8
    alpha: float = 16
    dropout: float = 0.05
    target_modules: str | list[str] = "all-linear"
    epochs: int = 2
    learning_rate: float = 1e-3
    batch_size: int = 4
    max_seq_len: int | None = None
    seed: int = 0
    device: str = "auto"
    num_threads: int | None = None
    weight_decay: float = 0.0
    warmup_fraction: float = 0.1

    def __post_init__(self) -> None:
        _positive_int("rank", self.rank)
        _positive_int("epochs", self.epochs)
        _positive_int("batch_size", self.batch_size)
        if self.max_seq_len is not None:
            _positive_int("max_seq_len", self.max_seq_len)
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an int, got {self.seed!r}")
        if not self.alpha > 0:
            raise ValueError(f"alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if not 0 < self.learning_rate < 1:
            raise ValueError(f"learning_rate must be in (0, 1), got {self.learning_rate!r}")
        if self.weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not 0 <= self.warmup_fraction < 1:
            raise ValueError(f"warmup_fraction must be in [0, 1), got {self.warmup_fraction!r}")
        if isinstance(self.target_modules, str):
            if not self.target_modules:
                raise ValueError("target_modules must not be empty")
        else:
            modules = list(self.target_modules)
            if not modules or not all(isinstance(m, str) and m for m in modules):
                raise ValueError(
                    f"target_modules must be 'all-linear' or a non-empty list of module names, "
                    f"got {self.target_modules!r}"
                )
            self.target_modules = modules
        if self.num_threads is not None:
            _positive_int("num_threads", self.num_threads)
        if not isinstance(self.device, str) or not self.device:
            raise ValueError(f"device must be 'auto' or a torch device string, got {self.device!r}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
