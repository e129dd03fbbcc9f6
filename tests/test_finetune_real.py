"""LoRA fine-tuning of the real SmolLM2-135M, end to end: GGUF -> cached transformers checkpoint
-> peft training -> GGUF adapter -> llama.cpp, through the normal ``Predict`` path.

The task is made up, so the base model cannot know it: a code such as ``red-417`` has the label
``kappa`` (red), ``zeta`` (blue) or ``omega`` (green).  Training on 30 such records must move the
greedy answers to the labels, in torch and in llama.cpp alike.  The checkpoint conversion is
cached under the cotune cache directory, so only the first run pays for it (about a minute).
"""

from __future__ import annotations

import importlib.util
import json
import random
import time
from pathlib import Path
from typing import Any, Literal

import pytest

from cotune import ChatAdapter, InputField, OutputField, Predict, Signature
from cotune.adapters import AdapterParseError
from cotune.core.signature import ensure_signature
from cotune.finetune import LoraSettings, LoraTrainer, hf_checkpoint_for
from cotune.finetune.device import idle_cores

pytestmark = [
    pytest.mark.real_model,
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing`:FutureWarning"),  # peft + hf
]

CUES = {"red": "kappa", "blue": "zeta", "green": "omega"}
MIN_GAIN = 0.30
MIN_AGREEMENT = 0.90


class CodeLabel(Signature):
    """Give the label of the code."""

    code: str = InputField()
    label: Literal["kappa", "zeta", "omega"] = OutputField()


def make_examples(n: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    cues = list(CUES.items())
    return [(f"{cues[i % 3][0]}-{rng.randrange(100, 1000)}", cues[i % 3][1]) for i in range(n)]


TRAIN = make_examples(30, seed=0)


def accuracy(answers: list[str | None]) -> float:
    return sum(a == label for a, (_, label) in zip(answers, TRAIN, strict=True)) / len(TRAIN)


def agreement(first: list[str | None], second: list[str | None]) -> float:
    return sum(a == b for a, b in zip(first, second, strict=True)) / len(first)


def llama_answers(lm: Any) -> list[str | None]:
    """Greedy answers through the normal cotune path: Predict + ChatAdapter + llama.cpp."""
    # the free-text format the training records were rendered in (not the engine's default,
    # the grammar-constrained JSON adapter), as in torch_answers
    predict = Predict(CodeLabel, lm=lm, adapter=ChatAdapter(), max_tokens=8, temperature=0.0)
    answers: list[str | None] = []
    for code, _ in TRAIN:
        try:
            answers.append(predict(code=code).label)
        except AdapterParseError:
            answers.append(None)
    return answers


def torch_answers(checkpoint: Path, adapter_dir: Path) -> tuple[list[str | None], list[str | None]]:
    """Greedy answers of the torch model (fp32 checkpoint + peft adapter): (without, with)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_dir).eval()
    adapter, signature = ChatAdapter(), ensure_signature(CodeLabel)

    def answer(code: str) -> str | None:
        messages = adapter.format(signature, [], {"code": code})
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(
                ids, max_new_tokens=8, do_sample=False,
                eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
            )  # fmt: skip
        text = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
        try:
            return adapter.parse(signature, text)["label"]
        except AdapterParseError:
            return None

    threads = torch.get_num_threads()
    torch.set_num_threads(idle_cores())  # spinning oversubscribed threads crawl
    try:
        with torch.inference_mode():
            tuned = [answer(code) for code, _ in TRAIN]
            with model.disable_adapter():
                base = [answer(code) for code, _ in TRAIN]
    finally:
        torch.set_num_threads(threads)
    return base, tuned


@pytest.fixture(scope="module")
def run(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Train once for the module and collect every answer the tests compare."""
    for module in ("llama_cpp", "torch", "transformers", "peft", "gguf"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install 'cotune[local,finetune]')")
    from cotune.lm import LlamaCppLM

    out_dir = tmp_path_factory.mktemp("lora")
    threads = idle_cores()  # oversubscribed spinning threads would make this test crawl
    base = LlamaCppLM(smollm2_path, n_ctx=512, n_threads=threads, cache=None)
    adapter = ChatAdapter()
    signature = ensure_signature(CodeLabel)
    records = [adapter.format_training_example(signature, [], {"code": c}, {"label": label})
               for c, label in TRAIN]  # fmt: skip

    start = time.perf_counter()
    llama_before = llama_answers(base)
    llama_before_s = time.perf_counter() - start
    settings = LoraSettings(learning_rate=1e-3, epochs=3, batch_size=2, max_seq_len=256)
    trainer = LoraTrainer(settings, progress=False)
    start = time.perf_counter()
    tuned = trainer.fine_tune(base, records, out_dir)
    fine_tune_s = time.perf_counter() - start
    result = trainer.last_result
    assert result is not None
    start = time.perf_counter()
    llama_after = llama_answers(tuned)
    llama_after_s = time.perf_counter() - start
    start = time.perf_counter()
    torch_before, torch_after = torch_answers(result.checkpoint, result.adapter_dir)
    torch_s = time.perf_counter() - start

    summary = {
        "steps": result.steps, "fine_tune_seconds": round(fine_tune_s, 1),
        "train_seconds": round(result.seconds, 1),
        "step_seconds": round(result.step_seconds, 2), "threads": threads,
        "first_loss": round(result.losses[0], 3), "last_loss": round(result.losses[-1], 3),
        "llama_before": accuracy(llama_before), "llama_after": accuracy(llama_after),
        "torch_before": accuracy(torch_before), "torch_after": accuracy(torch_after),
        "agreement": agreement(llama_after, torch_after),
        "llama_eval_seconds": [round(llama_before_s, 1), round(llama_after_s, 1)],
        "torch_eval_seconds": round(torch_s, 1),
    }  # fmt: skip
    print("\nLoRA on SmolLM2:", json.dumps(summary))
    return {
        "base": base, "tuned": tuned, "result": result, "records": records, "out_dir": out_dir,
        "llama_before": llama_before, "llama_after": llama_after,
        "torch_before": torch_before, "torch_after": torch_after, "summary": summary,
    }  # fmt: skip


def test_training_text_is_exactly_what_llama_cpp_renders(run: dict[str, Any]) -> None:
    """The tokens trained on (prompt part) are the ones llama.cpp feeds the model."""
    from transformers import AutoTokenizer

    from cotune.finetune import encode_record

    tokenizer = AutoTokenizer.from_pretrained(run["result"].checkpoint)
    record = run["records"][0]
    ids, labels = encode_record(tokenizer, record)
    prompt_ids = [t for t, label in zip(ids, labels, strict=True) if label == -100]

    llama = run["base"]._llama
    seen: list[list[int]] = []

    def capture(prompt: list[int], **kwargs: Any) -> Any:
        seen.append(list(prompt))
        raise RuntimeError("captured")

    llama.create_completion = capture
    try:
        with pytest.raises(RuntimeError, match="captured"):
            llama.create_chat_completion(messages=record["messages"][:-1], max_tokens=1)
    finally:
        del llama.create_completion
    assert seen == [prompt_ids]
    assert tokenizer.decode(ids[len(prompt_ids) :]) == "Label: " + TRAIN[0][1] + "<|im_end|>"


def test_training_moves_torch_answers_to_the_labels(run: dict[str, Any]) -> None:
    before, after = accuracy(run["torch_before"]), accuracy(run["torch_after"])
    assert after - before >= MIN_GAIN, run["summary"]


def test_exported_adapter_moves_llama_cpp_answers_to_the_labels(run: dict[str, Any]) -> None:
    before, after = accuracy(run["llama_before"]), accuracy(run["llama_after"])
    assert after - before >= MIN_GAIN, run["summary"]


def test_llama_cpp_with_the_adapter_answers_like_torch(run: dict[str, Any]) -> None:
    tuned = agreement(run["llama_after"], run["torch_after"])
    assert tuned >= MIN_AGREEMENT, (tuned, run["llama_after"], run["torch_after"])
    assert agreement(run["llama_before"], run["torch_before"]) >= MIN_AGREEMENT  # conversion


def test_the_checkpoint_holds_the_gguf_weights_in_transformers_order(
    run: dict[str, Any], smollm2_path: Path
) -> None:
    """Dequantized GGUF q/k rows are the checkpoint's rows permuted for llama.cpp's rope: the
    permutation the export applies to ``lora_b``."""
    import numpy as np
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.numpy import load_file

    from cotune.finetune.export import rope_permute_rows

    weights = load_file(run["result"].checkpoint / "model.safetensors")
    tensors = {t.name: t for t in GGUFReader(smollm2_path).tensors}
    for gguf_name, hf_name, heads in [("attn_q", "q_proj", 9), ("attn_k", "k_proj", 3),
                                      ("attn_v", "v_proj", None)]:  # fmt: skip
        ours = weights[f"model.layers.5.self_attn.{hf_name}.weight"]
        tensor = tensors[f"blk.5.{gguf_name}.weight"]
        theirs = dequantize(tensor.data, tensor.tensor_type).reshape(ours.shape)
        expected = rope_permute_rows(ours, heads) if heads else ours
        assert np.array_equal(theirs, expected), gguf_name


def test_the_tuned_lm_is_a_new_llama_cpp_lm_with_the_adapter(run: dict[str, Any]) -> None:
    base, tuned, result = run["base"], run["tuned"], run["result"]
    assert tuned is not base and base.lora_path is None
    assert tuned.lora_path == result.gguf_path == run["out_dir"] / "adapter.gguf"
    assert tuned.model_path == base.model_path and tuned.n_ctx == base.n_ctx
    described = tuned.describe()
    assert described["lora_path"] == str(result.gguf_path) and len(described["lora_sha256"]) == 64
    out_dir = run["out_dir"]
    for name in ("training_log.jsonl", "train_records.jsonl", "lora.json"):
        assert (out_dir / name).is_file(), name
    assert (out_dir / "adapter" / "adapter_model.safetensors").is_file()
    assert len((out_dir / "training_log.jsonl").read_text().splitlines()) == result.steps
    assert result.losses[-1] < result.losses[0]


def test_the_converted_checkpoint_is_reused(run: dict[str, Any], smollm2_path: Path) -> None:
    start = time.perf_counter()
    assert hf_checkpoint_for(smollm2_path) == run["result"].checkpoint
    assert time.perf_counter() - start < 2.0
