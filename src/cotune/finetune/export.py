"""Export a peft LoRA adapter as a GGUF LoRA adapter that llama.cpp applies at load time.

The GGUF adapter format (what llama.cpp's loader checks):

* metadata ``general.architecture`` = the base model's, ``general.type = "adapter"``,
  ``adapter.type = "lora"``, ``adapter.lora.alpha`` (float32); llama.cpp scales each update by
  ``alpha / rank``, with the rank read off the tensors, exactly as peft does (without rsLoRA).
* one pair of tensors per adapted weight, named after the base tensor: ``blk.N.attn_q.weight``
  gets ``blk.N.attn_q.weight.lora_a`` and ``.lora_b``.  In numpy (row-major) shape, ``lora_a``
  is ``(rank, in_features)`` and ``lora_b`` is ``(out_features, rank)``: the same as peft's
  ``lora_A.weight`` and ``lora_B.weight``, so no transposition.

One catch: llama.cpp's converter permutes the rows of the q and k projections of llama-family
models (its rope kernel wants each head's rotary pairs interleaved, where transformers keeps them
in two halves), and transformers undoes that when it reads such a GGUF.  Our checkpoint is thus
in transformers' order, and the adapter's ``lora_b`` rows of q and k must be permuted the same
way as the base model's rows were.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cotune._files import replacing
from cotune.finetune.base_model import checkpoint_source
from cotune.finetune.errors import FineTuneError

if TYPE_CHECKING:
    import numpy as np

HF_TO_GGUF = {
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}
"""Linear modules of a llama / qwen2 decoder layer -> the base name of their GGUF tensor."""

ROPE_PERMUTED_ARCHITECTURES = {"llama"}
"""GGUF architectures whose q/k rows llama.cpp's converter permutes (mistral GGUFs say llama)."""

_PEFT_KEY = re.compile(
    r"(?:^|\.)layers\.(?P<layer>\d+)\.(?P<module>[\w.]+?)\.lora_(?P<part>[AB])\.weight$"
)


def gguf_tensor_name(peft_key: str) -> tuple[str, str]:
    """``...model.layers.3.self_attn.q_proj.lora_A.weight`` -> (``blk.3.attn_q.weight``, ``a``)."""
    match = _PEFT_KEY.search(peft_key)
    module = HF_TO_GGUF.get(match.group("module")) if match else None
    if match is None or module is None:
        raise FineTuneError(
            f"cannot export LoRA tensor {peft_key!r} to GGUF: only the linear layers of the "
            f"decoder blocks ({', '.join(HF_TO_GGUF)}) are supported"
        )
    return f"blk.{match.group('layer')}.{module}.weight", match.group("part").lower()


def rope_permute_rows(rows: np.ndarray, n_heads: int) -> np.ndarray:
    """Reorder the output rows of a q/k projection from transformers' rope layout (per head:
    first halves, then second halves of the rotary pairs) to llama.cpp's (pairs side by side)."""
    out_features = rows.shape[0]
    half = out_features // n_heads // 2
    per_head = rows.reshape(n_heads, 2, half, *rows.shape[1:])
    return per_head.swapaxes(1, 2).reshape(rows.shape)


def export_lora_to_gguf(
    adapter_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    out_path: str | os.PathLike[str],
) -> Path:
    """Write the peft adapter in ``adapter_dir`` (trained on ``checkpoint``) as a GGUF LoRA
    adapter at ``out_path``; returns ``out_path``.  Written to a temporary file, then renamed."""
    adapter_dir, checkpoint, out_path = Path(adapter_dir), Path(checkpoint), Path(out_path)
    config = json.loads((adapter_dir / "adapter_config.json").read_text())
    _check_supported(config)
    model_config = json.loads((checkpoint / "config.json").read_text())
    source = checkpoint_source(checkpoint)
    architecture = source.get("architecture") or _architecture_of(model_config)
    tensors = _gguf_tensors(adapter_dir, model_config, architecture)
    if source.get("gguf_path") and Path(source["gguf_path"]).is_file():
        _check_against_base(tensors, Path(source["gguf_path"]))

    import gguf

    with replacing(out_path) as tmp:
        writer = gguf.GGUFWriter(tmp, architecture)
        writer.add_type(gguf.GGUFType.ADAPTER)
        writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
        writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(config["lora_alpha"]))
        for name, array in tensors.items():
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return out_path


def _check_supported(config: dict[str, Any]) -> None:
    """Refuse peft options that llama.cpp's ``alpha / rank`` scaling cannot express."""
    problems = []
    if config.get("peft_type", "LORA") != "LORA":
        problems.append(f"peft_type {config.get('peft_type')}")
    if config.get("use_rslora"):
        problems.append("use_rslora")
    if config.get("use_dora"):
        problems.append("use_dora")
    if config.get("alpha_pattern"):
        problems.append("alpha_pattern")
    if config.get("modules_to_save"):
        problems.append("modules_to_save")
    if config.get("bias", "none") != "none":
        problems.append(f"bias={config.get('bias')}")
    if problems:
        unsupported = ", ".join(problems)
        raise FineTuneError(f"cannot export this adapter to GGUF: unsupported {unsupported}")


def _gguf_tensors(
    adapter_dir: Path, model_config: dict[str, Any], architecture: str
) -> dict[str, np.ndarray]:
    import numpy as np
    from safetensors.numpy import load_file

    weights = load_file(adapter_dir / "adapter_model.safetensors")
    permute = architecture in ROPE_PERMUTED_ARCHITECTURES
    n_heads = model_config["num_attention_heads"]
    n_kv_heads = model_config.get("num_key_value_heads") or n_heads
    tensors: dict[str, np.ndarray] = {}
    for key in sorted(weights):
        base, part = gguf_tensor_name(key)
        array = weights[key].astype(np.float32)
        if permute and part == "b" and ".attn_q." in base:
            array = rope_permute_rows(array, n_heads)
        elif permute and part == "b" and ".attn_k." in base:
            array = rope_permute_rows(array, n_kv_heads)
        tensors[f"{base}.lora_{part}"] = np.ascontiguousarray(array)
    if not tensors:
        raise FineTuneError(f"no LoRA tensors in {adapter_dir / 'adapter_model.safetensors'}")
    return tensors


def _check_against_base(tensors: dict[str, np.ndarray], base_gguf: Path) -> None:
    """Every adapted tensor must exist in the base GGUF with matching shape (numpy shape
    ``(out, in)``; GGUFReader reports ggml's reversed ``(in, out)``)."""
    from gguf import GGUFReader

    shapes = {t.name: tuple(int(n) for n in t.shape) for t in GGUFReader(base_gguf).tensors}
    for name, array in tensors.items():
        base = name.rsplit(".lora_", 1)[0]
        if base not in shapes:
            raise FineTuneError(f"the base model {base_gguf.name} has no tensor {base!r}")
        in_features, out_features = shapes[base][:2]
        expected = out_features if name.endswith(".lora_b") else in_features
        actual = array.shape[0] if name.endswith(".lora_b") else array.shape[1]
        if actual != expected:
            raise FineTuneError(
                f"LoRA tensor {name} has shape {array.shape}, which does not fit {base} "
                f"(in={in_features}, out={out_features}) of {base_gguf.name}"
            )


def _architecture_of(model_config: dict[str, Any]) -> str:
    model_type = model_config.get("model_type", "")
    return "llama" if model_type in ("llama", "mistral") else model_type
