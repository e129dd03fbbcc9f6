"""How much memory does the process keep once a LoRA training has returned?

Trains a small LoRA (8 made-up records, one epoch) on MODEL (default smollm2-135m) and prints the
resident memory (Linux ``/proc``) before and after.  ``--no-trim`` skips the heap trim that
``train_lora`` does when it returns, to show what it is for.

    python benchmarks/probe_training_memory.py [MODEL] [--no-trim]
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

from cotune.finetune import LoraSettings, hf_checkpoint_for
from cotune.finetune import train as train_module
from cotune.lm.models import resolve_model_path


def resident_mib() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--no-trim", action="store_true", help="do not trim the heap")
    args = parser.parse_args()
    if args.no_trim:
        train_module.release_freed_memory = lambda device: False
    checkpoint = hf_checkpoint_for(resolve_model_path(args.model))
    records = [{"messages": [{"role": "user", "content": f"code red-{i} " * 40},
                             {"role": "assistant", "content": "kappa"}]} for i in range(8)]
    print(f"before training: {resident_mib():,.0f} MiB resident")
    with tempfile.TemporaryDirectory() as out:
        result = train_module.train_lora(
            checkpoint, records, LoraSettings(epochs=1, num_threads=1), Path(out), progress=False)
    print(f"after training ({result.steps} steps, heap trim {'off' if args.no_trim else 'on'}): "
          f"{resident_mib():,.0f} MiB resident")


if __name__ == "__main__":
    main()
