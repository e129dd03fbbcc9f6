"""Errors of the fine-tuning layer.  All are :class:`FineTuneError`, so a caller that only wants
to know "training did not happen" catches one class."""

from __future__ import annotations


class FineTuneError(RuntimeError):
    """Fine-tuning failed (out of memory, unusable data, a model it cannot convert...)."""


class NotFineTunableError(FineTuneError, TypeError):
    """The LM has no local weights to train (a hosted endpoint, a scripted test LM)."""


class NoTrainingDataError(FineTuneError, ValueError):
    """There are no training records at all."""


class SequenceTooLongError(FineTuneError, ValueError):
    """Every training record is longer than ``max_seq_len`` tokens."""


OUT_OF_MEMORY_ADVICE = (
    "out of memory while training the LoRA adapter ({detail}); a step holds one record at a "
    "time, so memory grows with the longest (now {longest} tokens): set the LoRA setting "
    "max_seq_len below that to leave the longest records out, or use a smaller model"
)
