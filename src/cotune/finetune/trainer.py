"""``LoraTrainer``: fine-tune an LM on chat records and get back an LM that serves the result.

Only the embedded llama.cpp engine has weights here to train: its GGUF is converted (once) to a
transformers checkpoint, a LoRA adapter is trained on that with peft, exported back to a GGUF
LoRA, and a new :class:`LlamaCppLM` loads the same GGUF with the adapter on top.  A hosted
endpoint has no training route, so it is refused up front.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cotune._files import write_atomic
from cotune.finetune.base_model import hf_checkpoint_for
from cotune.finetune.errors import NotFineTunableError, NoTrainingDataError
from cotune.finetune.export import export_lora_to_gguf
from cotune.finetune.settings import LoraSettings
from cotune.finetune.train import StepCallback, TrainedLora, train_lora
from cotune.lm.base import LM
from cotune.lm.llama_server_lm import LlamaServerLM
from cotune.lm.llamacpp import LlamaCppLM

ADAPTER_GGUF = "adapter.gguf"
RESULT_FILE = "lora.json"


class LoraTrainer:
    """Trains one LoRA adapter per :meth:`fine_tune` call and keeps each outcome in
    ``history`` (``last_result`` is the latest).

    Args:
        settings: LoRA and optimizer settings (default :class:`LoraSettings()`).
        progress: show a progress bar with the loss while training.
        on_step: called as ``on_step(step, total_steps, loss)`` after every step.
        cache_dir: where converted checkpoints are kept (default: the cotune cache directory).
    """

    def __init__(
        self,
        settings: LoraSettings | None = None,
        *,
        progress: bool = True,
        on_step: StepCallback | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        self.settings = settings if settings is not None else LoraSettings()
        self.progress = progress
        self.on_step = on_step
        self.cache_dir = cache_dir
        self.history: list[TrainedLora] = []

    @property
    def last_result(self) -> TrainedLora | None:
        return self.history[-1] if self.history else None

    def fine_tune(
        self, lm: LM, records: list[dict[str, Any]], out_dir: str | os.PathLike[str]
    ) -> LM:
        """Train on ``records`` (``{"messages": [...]}``) and return a new LM with the adapter.

        Training always starts from the base GGUF: an adapter ``lm`` already carries is
        replaced, not stacked.  ``lm`` itself is left untouched.
        """
        if not isinstance(lm, (LlamaCppLM, LlamaServerLM)):
            raise NotFineTunableError(
                f"{type(lm).__name__} ({lm.model}) cannot be fine-tuned here: "
                "cotune trains LoRA adapters for local GGUF models run by LlamaCppLM. For a "
                "hosted model, fine-tune with its provider and point an LM at the result (e.g. "
                "OpenAILM(..., lora=<name>) for a vLLM server serving the adapter)."
            )
        if not records:
            raise NoTrainingDataError("no training records: nothing to fine-tune on")
        out_dir = Path(out_dir)
        checkpoint = hf_checkpoint_for(lm.model_path, cache_dir=self.cache_dir)
        result = train_lora(
            checkpoint, records, self.settings, out_dir, on_step=self.on_step,
            progress=self.progress,
        )  # fmt: skip
        gguf_path = export_lora_to_gguf(result.adapter_dir, checkpoint, out_dir / ADAPTER_GGUF)
        result.gguf_path = gguf_path
        write_atomic(out_dir / RESULT_FILE, json.dumps(result.to_json(), indent=2) + "\n")
        self.history.append(result)
        return lm.with_lora(result.gguf_path)
