"""The fine-tuning layer without a real model: settings, errors, label masking, the training loop
and the GGUF export on a tiny random llama model made here (torch tests skip without torch)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
from import_check import modules_loaded_by

from cotune.finetune import (
    FineTuneError,
    LoraSettings,
    LoraTrainer,
    NotFineTunableError,
    NoTrainingDataError,
    SequenceTooLongError,
)
from cotune.finetune.export import HF_TO_GGUF, gguf_tensor_name, rope_permute_rows
from cotune.lm import OpenAILM, ScriptedLM

CHATML = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def record(answer: str, question: str = "Code: tiger", demo: tuple[str, str] | None = None):
    messages = [{"role": "system", "content": "Give the label of the code word."}]
    if demo is not None:
        messages += [
            {"role": "user", "content": demo[0]}, {"role": "assistant", "content": demo[1]}
        ]
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages}


RECORDS = [record(f"Label: {label}", f"Code: {word}") for word, label in [
    ("tiger", "kappa"), ("apple", "zeta"), ("truck", "omega"),
    ("horse", "kappa"), ("mango", "zeta"), ("canoe", "omega"),
]]  # fmt: skip


# -- settings and errors (no torch) ---------------------------------------------------------------


def test_default_settings_are_valid_and_json_able() -> None:
    settings = LoraSettings()
    assert settings.rank == 8 and settings.target_modules == "all-linear"
    assert json.loads(json.dumps(settings.to_dict()))["learning_rate"] == settings.learning_rate
    assert LoraSettings(target_modules=("q_proj", "v_proj")).target_modules == ["q_proj", "v_proj"]


@pytest.mark.parametrize(
    "bad",
    [
        {"rank": 0}, {"rank": 2.5}, {"alpha": 0}, {"dropout": 1.0}, {"dropout": -0.1},
        {"epochs": 0}, {"learning_rate": 0}, {"learning_rate": 2}, {"batch_size": 0},
        {"max_seq_len": -1}, {"seed": True}, {"seed": "0"}, {"target_modules": []},
        {"target_modules": ""}, {"target_modules": ["q_proj", ""]}, {"device": ""},
        {"num_threads": 0}, {"weight_decay": -1}, {"warmup_fraction": 1.0},
    ],
)  # fmt: skip
def test_invalid_settings_are_refused(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        LoraSettings(**bad)


def test_all_errors_are_fine_tune_errors() -> None:
    for error in (NotFineTunableError, NoTrainingDataError, SequenceTooLongError):
        assert issubclass(error, FineTuneError)


def test_importing_cotune_finetune_is_cheap() -> None:
    heavy = {"torch", "transformers", "peft", "safetensors", "gguf", "numpy", "llama_cpp"}
    assert modules_loaded_by("import cotune.finetune", heavy) == []


def test_a_scripted_lm_is_not_fine_tunable(tmp_path: Path) -> None:
    with pytest.raises(NotFineTunableError, match="ScriptedLM"):
        LoraTrainer().fine_tune(ScriptedLM("Label: kappa"), RECORDS, tmp_path)


def test_a_hosted_lm_is_not_fine_tunable(tmp_path: Path) -> None:
    lm = OpenAILM("gpt-4o-mini", base_url="http://127.0.0.1:9/v1", cache=None)
    with pytest.raises(NotFineTunableError, match="OpenAILM"):
        LoraTrainer().fine_tune(lm, RECORDS, tmp_path)
    assert not any(tmp_path.iterdir())  # refused before writing anything


def test_export_names_follow_llama_cpp() -> None:
    for layer in (0, 17):
        for module, gguf in HF_TO_GGUF.items():
            key = f"base_model.model.model.layers.{layer}.{module}.lora_A.weight"
            assert gguf_tensor_name(key) == (f"blk.{layer}.{gguf}.weight", "a")
    key = "base_model.model.model.layers.3.self_attn.k_proj.lora_B.weight"
    assert gguf_tensor_name(key) == ("blk.3.attn_k.weight", "b")
    for unsupported in ("base_model.model.lm_head.lora_A.weight",
                        "base_model.model.model.embed_tokens.lora_embedding_A"):
        with pytest.raises(FineTuneError, match="only the linear layers"):
            gguf_tensor_name(unsupported)


# -- with transformers: a tiny tokenizer and model made here -------------------------------------


def tiny_tokenizer() -> Any:
    """A byte-level tokenizer (one token per byte) with a ChatML template."""
    pytest.importorskip("transformers")
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, eos_token="<|im_end|>", pad_token="<|im_end|>"
    )
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    tokenizer.chat_template = CHATML
    return tokenizer


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer llama (GQA: 4 heads, 2 kv heads) saved as a transformers checkpoint."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("peft")
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = tiny_tokenizer()
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        tie_word_embeddings=True, pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )  # fmt: skip
    path = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def test_labels_cover_exactly_the_final_answer_and_its_end_of_turn() -> None:
    from cotune.finetune import encode_record

    tokenizer = tiny_tokenizer()
    rec = record("Label: kappa", demo=("Code: apple", "Label: zeta"))
    ids, labels = encode_record(tokenizer, rec)
    assert len(ids) == len(labels)
    prompt = tokenizer.apply_chat_template(
        rec["messages"][:-1], tokenize=False, add_generation_prompt=True
    )
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert all(label == -100 for label in labels[:n_prompt])  # the demo's answer too
    assert labels[n_prompt:] == ids[n_prompt:]  # every token after the prompt is learned...
    assert tokenizer.decode(ids[n_prompt:]) == "Label: kappa<|im_end|>"  # ...up to end of turn
    assert tokenizer.decode(ids[:n_prompt]) == prompt  # the exact inference prompt


@pytest.mark.parametrize(
    "bad",
    [{}, {"messages": []}, {"messages": [{"role": "user", "content": "hi"}]},
     {"messages": [{"role": "assistant", "content": 3}]}],
)  # fmt: skip
def test_malformed_records_are_refused(bad: dict[str, Any]) -> None:
    from cotune.finetune import encode_record

    with pytest.raises(FineTuneError):
        encode_record(tiny_tokenizer(), bad)


def test_records_too_long_are_dropped_and_all_too_long_is_an_error() -> None:
    from cotune.finetune.records import encode_record, encode_records

    tokenizer = tiny_tokenizer()
    short, long = record("Label: zeta"), record("Label: " + "zeta " * 50)
    kept, dropped = encode_records(tokenizer, [short, long], max_seq_len=150)
    assert kept == [encode_record(tokenizer, short)]
    assert dropped == [len(encode_record(tokenizer, long)[0])] and dropped[0] > 150
    with pytest.raises(SequenceTooLongError, match="max_seq_len=20"):
        encode_records(tokenizer, [short, long], max_seq_len=20)


def test_empty_records_are_an_error(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from cotune.finetune import train_lora

    with pytest.raises(NoTrainingDataError):
        train_lora(tmp_path / "no-checkpoint", [], LoraSettings(), tmp_path / "out")


def test_rope_permutation_is_the_inverse_of_transformers_gguf_reader() -> None:
    np = pytest.importorskip("numpy")
    pytest.importorskip("transformers")
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    reader = LlamaTensorProcessor(config={})
    rows = np.arange(12 * 64 * 3, dtype=np.float32).reshape(12 * 64, 3)  # 12 heads of 64
    for n_heads, n_kv in [(12, 12), (12, 4)]:
        out = rows[: n_kv * 64]
        gguf_order = rope_permute_rows(out, n_kv)
        assert not np.array_equal(gguf_order, out)
        assert np.array_equal(reader._reverse_permute_weights(gguf_order, n_heads, n_kv), out)


def small_settings(**changes: Any) -> LoraSettings:
    base = {"rank": 4, "alpha": 8, "epochs": 2, "batch_size": 2, "learning_rate": 1e-2,
            "max_seq_len": 256, "num_threads": 1}
    return LoraSettings(**{**base, **changes})


def test_training_writes_the_adapter_and_logs_and_is_seeded(
    tiny_checkpoint: Path, tmp_path: Path
) -> None:
    from cotune.finetune import train_lora

    seen: list[tuple[int, int, float]] = []
    result = train_lora(
        tiny_checkpoint, RECORDS, small_settings(), tmp_path / "a",
        on_step=lambda *args: seen.append(args), progress=False,
    )  # fmt: skip
    assert result.steps == 6 == len(result.losses)  # 2 epochs of 3 batches
    assert [s[:2] for s in seen] == [(i, 6) for i in range(1, 7)]
    assert all(math.isfinite(loss) for loss in result.losses)
    assert result.losses[-1] < result.losses[0]
    assert (result.adapter_dir / "adapter_config.json").is_file()
    log_lines = (tmp_path / "a" / "training_log.jsonl").read_text().splitlines()
    log = [json.loads(line) for line in log_lines]
    assert [e["step"] for e in log] == list(range(1, 7))
    saved = (tmp_path / "a" / "train_records.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in saved] == RECORDS
    assert result.device == "cpu" and result.records_used == 6 and result.records_dropped == 0

    again = train_lora(tiny_checkpoint, RECORDS, small_settings(), tmp_path / "b", progress=False)
    assert again.losses == pytest.approx(result.losses, rel=1e-5)


def test_left_out_records_are_named_with_the_setting_that_keeps_them(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from cotune.finetune import train_lora
    from cotune.finetune.records import encode_record

    long = record("Label: omega", "Code: " + " ".join(["canoe"] * 80))
    length = len(encode_record(tiny_tokenizer(), long)[0])
    with caplog.at_level("WARNING", logger="cotune.finetune.train"):
        result = train_lora(tiny_checkpoint, [*RECORDS, long], small_settings(epochs=1),
                            tmp_path, progress=False)
    assert (result.records_used, result.records_dropped) == (6, 1)
    assert f"left out 1 of 7 training records longer than max_seq_len=256 tokens (the longest " \
           f"has {length}): set the LoRA setting max_seq_len to {length}" in caplog.text


def test_by_default_every_record_the_context_window_holds_is_trained_on(
    tiny_checkpoint: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No default length cuts a program with long prompts down to a few records: without
    max_seq_len the limit is the model's context window (512 for the tiny model)."""
    from cotune.finetune import train_lora
    from cotune.finetune.records import encode_record

    long = record("Label: omega", "Code: " + " ".join(["canoe"] * 50))
    too_long = record("Label: omega", "Code: " + " ".join(["canoe"] * 80))
    lengths = [len(encode_record(tiny_tokenizer(), r)[0]) for r in (long, too_long)]
    assert 256 < lengths[0] <= 512 < lengths[1]
    with caplog.at_level("WARNING", logger="cotune.finetune.train"):
        result = train_lora(tiny_checkpoint, [*RECORDS, long, too_long],
                            small_settings(epochs=1, max_seq_len=None), tmp_path, progress=False)
    assert (result.records_used, result.records_dropped) == (7, 1)
    assert f"longer than the model's context window (512) tokens (the longest has " \
           f"{lengths[1]})" in caplog.text
    assert "set the LoRA setting" not in caplog.text
    with pytest.raises(SequenceTooLongError, match="context window"):
        train_lora(tiny_checkpoint, [too_long], small_settings(max_seq_len=None),
                   tmp_path / "b", progress=False)


def test_the_step_loss_is_the_padded_batchs_loss_without_its_logits(
    tiny_checkpoint: Path,
) -> None:
    """One record at a time and the output head only at answer positions (the memory fix for
    long multi-hop prompts) gives the loss and gradients of the padded batch."""
    import torch
    from transformers import AutoModelForCausalLM

    from cotune.finetune.records import IGNORE_INDEX, encode_records
    from cotune.finetune.train import backward_batch_loss

    long_prompt = record("Label: omega", "Code: " + " ".join(["canoe"] * 30))
    batch, _ = encode_records(tiny_tokenizer(), [RECORDS[0], long_prompt, RECORDS[4]], 256)
    assert len({len(ids) for ids, _ in batch}) > 1  # the reference pads

    def model() -> Any:
        torch.manual_seed(0)
        return AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)

    reference, ours = model(), model()
    width = max(len(ids) for ids, _ in batch)
    ids = torch.tensor([seq + [0] * (width - len(seq)) for seq, _ in batch])
    labels = torch.tensor([lab + [IGNORE_INDEX] * (width - len(lab)) for _, lab in batch])
    mask = torch.tensor([[1] * len(seq) + [0] * (width - len(seq)) for seq, _ in batch])
    expected = reference(input_ids=ids, attention_mask=mask, labels=labels).loss
    expected.backward()

    head_rows: list[int] = []
    ours.get_output_embeddings().register_forward_hook(
        lambda _module, inputs, _output: head_rows.append(inputs[0].shape[1]))
    loss = backward_batch_loss(ours, batch, torch.device("cpu"))
    assert loss == pytest.approx(float(expected.detach()), rel=1e-5)
    answer_tokens = int((labels != IGNORE_INDEX).sum())
    assert head_rows == [sum(lab != IGNORE_INDEX for lab in labs) for _, labs in batch]
    assert sum(head_rows) == answer_tokens < sum(len(seq) for seq, _ in batch) // 3
    grads = dict(reference.named_parameters())
    for name, param in ours.named_parameters():
        assert torch.allclose(param.grad, grads[name].grad, rtol=1e-4, atol=1e-6), name


def test_out_of_memory_becomes_advice(
    tiny_checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import torch

    from cotune.finetune import train, train_lora
    from cotune.finetune.records import encode_record

    def boom(*args: Any, **kwargs: Any) -> None:
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(train, "_train_loop", boom)
    with pytest.raises(FineTuneError, match="out of memory") as info:
        train_lora(tiny_checkpoint, RECORDS, small_settings(), tmp_path, progress=False)
    longest = max(len(encode_record(tiny_tokenizer(), r)[0]) for r in RECORDS)
    assert f"the longest (now {longest} tokens): set the LoRA setting max_seq_len" in str(
        info.value
    )


def test_export_writes_a_llama_cpp_lora_adapter(tiny_checkpoint: Path, tmp_path: Path) -> None:
    pytest.importorskip("gguf")
    from gguf import GGUFReader
    from safetensors.numpy import load_file

    from cotune.finetune import export_lora_to_gguf, train_lora

    settings = small_settings(epochs=1)
    result = train_lora(tiny_checkpoint, RECORDS, settings, tmp_path, progress=False)
    out = export_lora_to_gguf(result.adapter_dir, tiny_checkpoint, tmp_path / "adapter.gguf")
    reader = GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["general.type"].contents() == "adapter"
    assert reader.fields["adapter.type"].contents() == "lora"
    assert reader.fields["adapter.lora.alpha"].contents() == pytest.approx(8.0)

    tensors = {t.name: t for t in reader.tensors}
    modules = ["attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"]
    expected = {f"blk.{i}.{m}.weight.lora_{p}" for i in (0, 1) for m in modules for p in "ab"}
    assert set(tensors) == expected
    # ggml lists dimensions innermost first: lora_a is [in, rank], lora_b is [rank, out]
    assert list(tensors["blk.0.attn_k.weight.lora_a"].shape) == [32, 4]
    assert list(tensors["blk.0.attn_k.weight.lora_b"].shape) == [4, 16]  # 2 kv heads of 8
    assert list(tensors["blk.1.ffn_down.weight.lora_a"].shape) == [64, 4]

    peft = load_file(result.adapter_dir / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers.0"
    v_b = peft[f"{prefix}.self_attn.v_proj.lora_B.weight"]
    k_b = peft[f"{prefix}.self_attn.k_proj.lora_B.weight"]
    q_b = peft[f"{prefix}.self_attn.q_proj.lora_B.weight"]
    assert (tensors["blk.0.attn_v.weight.lora_b"].data == v_b).all()  # as trained
    assert (tensors["blk.0.attn_k.weight.lora_b"].data == rope_permute_rows(k_b, 2)).all()
    assert (tensors["blk.0.attn_q.weight.lora_b"].data == rope_permute_rows(q_b, 4)).all()
    assert not (rope_permute_rows(q_b, 4) == q_b).all()


def _resident_mib() -> float:
    import os

    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads Linux's /proc")
def test_memory_a_training_freed_goes_back_to_the_system() -> None:
    """glibc keeps freed heap mapped: 300 MB of freed buffers below a live one stay resident
    until ``release_freed_memory`` trims the heap (as train_lora does when it returns)."""
    torch = pytest.importorskip("torch")
    from cotune.finetune.device import release_freed_memory

    before = _resident_mib()
    chunks = [bytearray(100_000) for _ in range(3000)]  # under glibc's mmap threshold
    pinned = bytearray(100_000)  # above them: the heap cannot shrink from its top
    del chunks
    held = _resident_mib()
    if held - before < 200:
        pytest.skip("this allocator gave the freed memory back by itself")
    assert release_freed_memory(torch.device("cpu"))
    assert _resident_mib() < held - 200
    del pinned
