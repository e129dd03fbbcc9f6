"""Is LoRA training repeatable, and does its result depend on the number of torch threads?

Trains the same small LoRA (SmolLM2-135M, 16 made-up records, one epoch of 4 steps) three
times: twice on 1 thread, once on 2, and compares the losses and the adapter files' hashes.
(The trainer's default thread count is "the cores idle right now", which varies with load.)

    python benchmarks/repro_lora.py
"""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from pathlib import Path
from typing import Literal

from cotune import ChatAdapter, InputField, OutputField, Signature
from cotune.core.signature import ensure_signature
from cotune.finetune import LoraSettings, hf_checkpoint_for
from cotune.finetune.train import train_lora
from cotune.lm.models import resolve_model_path


class CodeLabel(Signature):
    """Give the label of the code."""

    code: str = InputField()
    label: Literal["kappa", "zeta", "omega"] = OutputField()


def main() -> None:
    rng = random.Random(0)
    cues = [("red", "kappa"), ("blue", "zeta"), ("green", "omega")]
    data = [(f"{cues[i % 3][0]}-{rng.randrange(100, 1000)}", cues[i % 3][1]) for i in range(16)]
    adapter, signature = ChatAdapter(), ensure_signature(CodeLabel)
    records = [adapter.format_training_example(signature, [], {"code": c}, {"label": label})
               for c, label in data]
    checkpoint = hf_checkpoint_for(resolve_model_path("smollm2-135m"))
    runs = {}
    for name, threads in (("1 thread", 1), ("1 thread again", 1), ("2 threads", 2)):
        settings = LoraSettings(epochs=1, batch_size=4, max_seq_len=256, num_threads=threads)
        trained = train_lora(checkpoint, records, settings, Path(tempfile.mkdtemp()),
                             progress=False)
        weights = (trained.adapter_dir / "adapter_model.safetensors").read_bytes()
        runs[name] = {"losses": trained.losses,
                      "adapter_sha256": hashlib.sha256(weights).hexdigest()[:16]}
    print(json.dumps(runs, indent=2))
    same = len({json.dumps(r, sort_keys=True) for r in runs.values()}) == 1
    print("identical losses and adapters:", same)


if __name__ == "__main__":
    main()
