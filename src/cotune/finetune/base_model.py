"""A trainable transformers checkpoint for a GGUF model, converted once and cached.

transformers can read a GGUF file directly, dequantizing it to fp32, but slowly (18-50 s) and
into a model that ``save_pretrained`` refuses to save.  So the first call converts: load the
GGUF, drop the quantizer bookkeeping, save safetensors + config + tokenizer (which carries the
GGUF's own chat template) into a temporary folder, and rename it into place.  The folder is
named by the GGUF's sha256, so a changed file gets a fresh checkpoint and a killed conversion
leaves only a temporary folder behind.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from cotune._files import building_folder
from cotune.finetune.errors import FineTuneError
from cotune.lm.cache import default_cache_dir
from cotune.lm.models import file_sha256

logger = logging.getLogger(__name__)

SOURCE_FILE = "cotune_source.json"
"""Written last into a checkpoint: its presence marks the conversion as complete."""


def hf_checkpoint_for(gguf_path: str | os.PathLike[str], *, cache_dir: Path | None = None) -> Path:
    """The folder of the transformers checkpoint converted from ``gguf_path`` (made once)."""
    gguf_path = Path(gguf_path)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF model not found: {gguf_path}")
    digest = file_sha256(gguf_path)
    dest = (cache_dir if cache_dir is not None else default_cache_dir()) / "hf" / digest
    if (dest / SOURCE_FILE).is_file():
        return dest

    with building_folder(dest, complete=(dest / SOURCE_FILE).is_file) as tmp:
        logger.info("converting %s to a transformers checkpoint in %s", gguf_path.name, dest)
        architecture = _convert(gguf_path, tmp)
        source = {"gguf_path": str(gguf_path.resolve()), "gguf_sha256": digest,
                  "architecture": architecture}
        (tmp / SOURCE_FILE).write_text(json.dumps(source, indent=2) + "\n")
    return dest


def checkpoint_source(checkpoint: str | os.PathLike[str]) -> dict[str, str]:
    """What :func:`hf_checkpoint_for` recorded about a checkpoint's GGUF (path, sha256, arch);
    empty for a checkpoint made some other way."""
    path = Path(checkpoint) / SOURCE_FILE
    return json.loads(path.read_text()) if path.is_file() else {}


def _convert(gguf_path: Path, out_dir: Path) -> str:
    """Load the GGUF with transformers and save it as a plain fp32 checkpoint; return the
    GGUF architecture name (``llama``, ``qwen2``...)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        model = AutoModelForCausalLM.from_pretrained(
            gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
    except (ValueError, KeyError, NotImplementedError) as e:
        raise FineTuneError(
            f"transformers cannot convert {gguf_path.name} into a trainable model: {e}"
        ) from e
    # Dequantized, the weights are ordinary fp32 tensors; only the bookkeeping says "gguf".
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    return _gguf_architecture(gguf_path)


def _gguf_architecture(gguf_path: Path) -> str:
    from gguf import GGUFReader

    field = GGUFReader(gguf_path).fields["general.architecture"]
    return str(field.contents())
