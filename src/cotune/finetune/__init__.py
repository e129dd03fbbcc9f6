"""LoRA fine-tuning of local GGUF models and export of the adapter back to llama.cpp.

torch, transformers and peft are imported only inside the functions that train, so importing
this package is cheap.
"""

from cotune.finetune.base_model import hf_checkpoint_for
from cotune.finetune.errors import (
    FineTuneError,
    NotFineTunableError,
    NoTrainingDataError,
    SequenceTooLongError,
)
from cotune.finetune.export import export_lora_to_gguf
from cotune.finetune.records import encode_record
from cotune.finetune.settings import LoraSettings
from cotune.finetune.train import TrainedLora, train_lora
from cotune.finetune.trainer import LoraTrainer

__all__ = [
    "FineTuneError",
    "LoraSettings",
    "LoraTrainer",
    "NoTrainingDataError",
    "NotFineTunableError",
    "SequenceTooLongError",
    "TrainedLora",
    "encode_record",
    "export_lora_to_gguf",
    "hf_checkpoint_for",
    "train_lora",
]
