"""The batched local engine: llama.cpp's server as a supervised child process.

Process supervision is tested with plain child processes (``sleep``) and a fake server binary;
everything else talks to the real llama-server (built by ``scripts/setup.sh``) serving SmolLM2.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from cotune.lm import ContextOverflow, LMCache
from cotune.lm.child_process import ChildProcess
from cotune.lm.llama_server import SERVER_ENV, LlamaServer, LlamaServerError, find_llama_server
from cotune.lm.models import file_sha256

SRC = str(Path(__file__).resolve().parents[1] / "src")
QUESTIONS = [
    "What is the capital of France?",
    "Name a primary color.",
    "What is 2 + 3?",
    "Give one word for a young dog.",
    "What do bees make?",
    "Which planet is closest to the sun?",
    "What is the opposite of hot?",
    "How many legs does a spider have?",
]


def alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, dead but not yet reaped, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not alive(pid):
            return True
        time.sleep(0.05)
    return False


def run_parent(code: str) -> subprocess.Popen[str]:
    """A Python child process that runs ``code`` with this checkout's sources first."""
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, stdout=subprocess.PIPE, text=True
    )


# -- supervision, with plain child processes ---------------------------------------------------


def assert_gone_with_its_parent_killed(parent: subprocess.Popen[str], what: str) -> None:
    """``parent`` printed a child's pid: after ``kill -9`` of the parent the child is gone."""
    pid = int(parent.stdout.readline())
    assert alive(pid)
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    assert wait_gone(pid), f"{what} {pid} outlived its parent killed with SIGKILL"


def test_a_child_dies_with_its_parent_on_sigkill() -> None:
    parent = run_parent("""
        import sys, tempfile, time
        from pathlib import Path
        from cotune.lm.child_process import ChildProcess
        child = ChildProcess(["sleep", "600"], log_path=Path(tempfile.mkdtemp()) / "log")
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    assert_gone_with_its_parent_killed(parent, "child")


def test_a_child_is_stopped_when_its_parent_exits_normally() -> None:
    parent = run_parent("""
        import tempfile
        from pathlib import Path
        from cotune.lm.child_process import ChildProcess
        child = ChildProcess(["sleep", "600"], log_path=Path(tempfile.mkdtemp()) / "log")
        print(child.pid, flush=True)
    """)  # no stop(): atexit does it
    pid = int(parent.stdout.readline())
    assert parent.wait(timeout=30) == 0
    assert wait_gone(pid), f"child {pid} outlived its parent's normal exit"


def test_a_child_started_from_a_short_lived_thread_outlives_that_thread(tmp_path: Path) -> None:
    # PR_SET_PDEATHSIG fires when the forking *thread* ends: the launcher thread prevents it
    children: list[ChildProcess] = []
    worker = threading.Thread(
        target=lambda: children.append(ChildProcess(["sleep", "600"], log_path=tmp_path / "l"))
    )
    worker.start()
    worker.join()
    time.sleep(0.3)
    try:
        assert children[0].poll() is None
    finally:
        children[0].stop()
    assert not alive(children[0].pid)


def test_stop_kills_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    script = "trap '' TERM; echo ready; while true; do sleep 0.1; done"
    child = ChildProcess(["bash", "-c", script], log_path=tmp_path / "log")
    deadline = time.monotonic() + 10
    while "ready" not in child.log_tail() and time.monotonic() < deadline:
        time.sleep(0.05)
    started = time.monotonic()
    child.stop(timeout=0.5)
    assert child.poll() is not None
    assert time.monotonic() - started < 5


# -- start-up errors, with a fake binary ---------------------------------------------------------


def fake_binary(tmp_path: Path, script: str) -> Path:
    path = tmp_path / "llama-server"
    path.write_text("#!/usr/bin/env bash\n" + script + "\n")
    path.chmod(0o755)
    return path


def test_a_server_that_fails_to_start_is_an_error_with_its_log(
    smollm2_path: Path, tmp_path: Path
) -> None:
    binary = fake_binary(tmp_path, "echo 'error: unknown argument: --foo' >&2; exit 3")
    with pytest.raises(LlamaServerError, match=r"(?s)status 3.*unknown argument: --foo"):
        LlamaServer(smollm2_path, binary=binary, log_dir=tmp_path)


def test_a_server_that_crashes_while_starting_names_the_signal_and_the_likely_cause(
    smollm2_path: Path, tmp_path: Path
) -> None:
    # What ggml's AMX kernels did on an AMX VM: a segfault at the first compute after loading.
    binary = fake_binary(tmp_path, "echo 'llama threadpool init'; kill -SEGV $$")
    with pytest.raises(LlamaServerError,
                       match=r"(?s)crashed \(SIGSEGV: a llama.cpp build that does not fit this "
                             r"CPU.*scripts/setup.sh.*llama threadpool init"):
        LlamaServer(smollm2_path, binary=binary, log_dir=tmp_path)


def test_a_server_that_never_gets_ready_is_stopped_and_reported(
    smollm2_path: Path, tmp_path: Path
) -> None:
    binary = fake_binary(tmp_path, "echo 'loading forever'; exec sleep 600")
    started = time.monotonic()
    with pytest.raises(LlamaServerError, match=r"(?s)not ready after 1 s.*loading forever"):
        LlamaServer(smollm2_path, binary=binary, log_dir=tmp_path, start_timeout=1.0)
    assert time.monotonic() - started < 10
    out = subprocess.run(["pgrep", "-f", str(binary)], capture_output=True, text=True)
    assert out.stdout.strip() == "", "the server that never got ready was left running"


def test_the_binary_is_looked_up_in_the_environment_then_the_venv(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(SERVER_ENV, str(tmp_path / "absent"))
    with pytest.raises(LlamaServerError, match=SERVER_ENV):
        find_llama_server()
    monkeypatch.delenv(SERVER_ENV)
    monkeypatch.setattr(sys, "prefix", str(tmp_path))
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    with pytest.raises(LlamaServerError, match="scripts/setup.sh"):
        find_llama_server()
    built = tmp_path / "llama-server" / "bin" / "llama-server"
    built.parent.mkdir(parents=True)
    built.write_text("#!/bin/sh\n")
    built.chmod(0o755)
    assert find_llama_server() == built


def test_the_slot_count_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from cotune.lm.llama_server import PARALLEL_ENV, default_parallel

    monkeypatch.delenv(PARALLEL_ENV, raising=False)
    assert default_parallel() == 4
    monkeypatch.setenv(PARALLEL_ENV, "8")
    assert default_parallel() == 8
    for bad in ("0", "many"):
        monkeypatch.setenv(PARALLEL_ENV, bad)
        with pytest.raises(ValueError, match=PARALLEL_ENV):
            default_parallel()


def test_a_missing_lora_is_reported_before_starting(smollm2_path: Path, tmp_path: Path) -> None:
    from cotune.lm.llama_server_lm import LlamaServerLM

    with pytest.raises(FileNotFoundError, match="LoRA"):
        LlamaServerLM(smollm2_path, lora_path=tmp_path / "absent.gguf", cache=None)


# -- the real server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server_binary() -> Path:
    try:
        return find_llama_server()
    except LlamaServerError as e:
        pytest.skip(f"llama-server is not built ({e})")


@pytest.fixture(scope="module")
def smol_server(smollm2_path: Path, server_binary: Path) -> Iterator[LlamaServer]:
    server = LlamaServer(smollm2_path, n_ctx=1024, parallel=4)
    pid = server.pid
    yield server
    server.close()
    assert pid is not None and wait_gone(pid), "closing the LM left its server running"


def messages(question: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": question + " Answer in a few words."}]


@pytest.mark.real_model
def test_concurrent_requests_equal_the_same_requests_one_by_one(
    smol_server: LlamaServer,
) -> None:
    from cotune.lm.llama_server_lm import LlamaServerLM

    lm = LlamaServerLM(server=smol_server, cache=None)
    one_by_one = [lm.chat(messages(q), max_tokens=24).text for q in QUESTIONS]
    with ThreadPoolExecutor(len(QUESTIONS)) as pool:
        together = list(pool.map(lambda q: lm.chat(messages(q), max_tokens=24).text, QUESTIONS))
    assert all(one_by_one)
    same = sum(a == b for a, b in zip(one_by_one, together, strict=True))
    # llama.cpp's batched kernels may round a near-tie differently (measured: 0 of 8 differ)
    assert same >= len(QUESTIONS) - 1, list(zip(one_by_one, together, strict=True))


@pytest.mark.real_model
def test_a_repeated_prefix_is_read_once(smol_server: LlamaServer) -> None:
    from cotune.lm.llama_server_lm import LlamaServerLM

    lm = LlamaServerLM(server=smol_server, cache=None)
    modules = [
        f"You are module {i} of a pipeline. " + " ".join(f"Rule {j}: be brief." for j in range(60))
        for i in range(3)
    ]  # three ~500-token system prompts that alternate, as a 3-module program's do

    def round_of_calls(question: str) -> int:
        before = smol_server.stats().prompt_tokens_evaluated
        for system in modules:
            lm.chat([{"role": "system", "content": system}, *messages(question)], max_tokens=4)
        return smol_server.stats().prompt_tokens_evaluated - before

    metrics_before = smol_server.metrics()["prompt_tokens_total"]
    first = round_of_calls("What is 2 + 3?")
    second = round_of_calls("Name a primary color.")
    assert first > 3 * 400
    assert second < first / 5, (first, second)
    # the server's own counter agrees with the per-answer timings
    assert smol_server.metrics()["prompt_tokens_total"] - metrics_before == first + second


@pytest.mark.real_model
def test_cache_identity_does_not_depend_on_slots(
    smol_server: LlamaServer, smollm2_path: Path
) -> None:
    from cotune.lm.llama_server_lm import LlamaServerLM

    with LlamaServer(smollm2_path, n_ctx=1024, parallel=1) as single:
        one = LlamaServerLM(server=single, cache=None).identity()
    four = LlamaServerLM(server=smol_server, cache=None).identity()
    assert one == four
    assert four["backend"] == "llama-server" and four["n_ctx"] == 1024 and four["sha256"]


@pytest.mark.real_model
def test_seeds_stop_and_max_tokens_are_kept(smol_server: LlamaServer, tmp_path: Path) -> None:
    from cotune.lm.llama_server_lm import LlamaServerLM

    lm = LlamaServerLM(server=smol_server, cache=LMCache(tmp_path / "c.sqlite"))
    prompt = messages("Write a short poem about the sea.")
    short = lm.chat(prompt, max_tokens=5, cache=False)
    assert short.usage.completion_tokens == 5 and short.finish_reason == "length"
    a = lm.chat(prompt, temperature=1.0, seed=7, max_tokens=16, cache=False).text
    b = lm.chat(prompt, temperature=1.0, seed=7, max_tokens=16, cache=False).text
    c = lm.chat(prompt, temperature=1.0, seed=8, max_tokens=16, cache=False).text
    assert a == b and a != c
    samples = lm.chat(prompt, temperature=1.0, seed=3, n=3, max_tokens=12, cache=False)
    assert len({choice.text for choice in samples.choices}) == 3
    full = lm.chat(prompt, max_tokens=24, cache=False).text
    word = full.split()[2]
    stopped = lm.chat(prompt, max_tokens=24, stop=[word], cache=False).text
    assert word not in stopped and full.startswith(stopped)
    first = lm.chat(prompt, max_tokens=8)
    again = lm.chat(prompt, max_tokens=8)
    assert again.cached and again.text == first.text


@pytest.mark.real_model
def test_a_prompt_longer_than_the_context_is_a_context_overflow(
    smol_server: LlamaServer,
) -> None:
    from cotune.lm.llama_server_lm import LlamaServerLM

    lm = LlamaServerLM(server=smol_server, cache=None, max_retries=0)
    with pytest.raises(ContextOverflow, match="context"):
        lm.chat(messages("word " * 1500), max_tokens=4)


@pytest.mark.real_model
def test_the_server_accepts_a_json_schema_response_format(smol_server: LlamaServer) -> None:
    import urllib.request

    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    body = {
        "messages": messages("What is 2 + 3? Reply in JSON."),
        "max_tokens": 24,
        "temperature": 0,
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}},
    }
    request = urllib.request.Request(
        smol_server.base_url + "/chat/completions", data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )  # fmt: skip
    with urllib.request.urlopen(request, timeout=120) as r:
        text = json.loads(r.read())["choices"][0]["message"]["content"]
    answer = json.loads(text)
    assert set(answer) == {"answer"} and isinstance(answer["answer"], int)


@pytest.mark.real_model
def test_the_server_engine_constrains_an_answer_to_the_request_schema(
    smol_server: LlamaServer,
) -> None:
    """Through LlamaServerLM itself (its own request body, with and without an adapter
    field), not a hand-made request: the schema reaches the server and shapes the answer."""
    from cotune.lm.llama_server_lm import LlamaServerLM

    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    lm = LlamaServerLM(server=smol_server, cache=None, max_retries=0)
    response = lm.chat(messages("What is 2 + 3?"), max_tokens=24, response_schema=schema)
    answer = json.loads(response.text)
    assert set(answer) == {"answer"} and isinstance(answer["answer"], int)


@pytest.mark.real_model
def test_the_model_spec_server_prefix_makes_the_server_engine(server_binary: Path) -> None:
    from cotune.lm.factory import make_lm
    from cotune.lm.llama_server_lm import LlamaServerLM

    lm = make_lm("server:smollm2-135m", cache=None, n_ctx=256, parallel=1)
    try:
        assert isinstance(lm, LlamaServerLM) and lm.model == "smollm2-135m"
        assert lm.chat(messages("What is 2 + 3?"), max_tokens=4).text.strip()
    finally:
        lm.close()


@pytest.mark.real_model
def test_a_server_stops_when_its_lm_is_dropped(server_binary: Path) -> None:
    import gc

    from cotune.lm.llama_server_lm import LlamaServerLM

    lm = LlamaServerLM("smollm2-135m", n_ctx=256, parallel=1, cache=None)
    pid = lm.server.pid
    assert pid is not None and alive(pid)
    del lm  # e.g. one cell of a bench grid done: its server must not pile up
    gc.collect()
    assert wait_gone(pid)


@pytest.mark.real_model
def test_a_server_is_gone_after_its_parent_is_killed(server_binary: Path) -> None:
    parent = run_parent("""
        import time
        from cotune.lm.llama_server_lm import LlamaServerLM
        lm = LlamaServerLM("smollm2-135m", n_ctx=256, parallel=1, cache=None)
        print(lm.server.pid, flush=True)
        time.sleep(600)
    """)
    assert_gone_with_its_parent_killed(parent, "llama-server")


@pytest.mark.real_model
def test_a_server_is_gone_after_its_parent_exits_without_closing_it(
    server_binary: Path,
) -> None:
    parent = run_parent("""
        from cotune.lm.llama_server_lm import LlamaServerLM
        lm = LlamaServerLM("smollm2-135m", n_ctx=256, parallel=1, cache=None)
        print(lm.server.pid, flush=True)
    """)
    pid = int(parent.stdout.readline())
    assert parent.wait(timeout=60) == 0
    assert wait_gone(pid), f"llama-server {pid} outlived its parent's normal exit"


# -- LoRA adapters side by side ---------------------------------------------------------------


def random_lora(base_gguf: Path, out: Path, seed: int, scale: float = 0.25) -> Path:
    """A rank-4 LoRA adapter with random weights on every v and o projection of ``base_gguf``,
    in peft's file format, written as GGUF by cotune's own exporter (no training needed)."""
    import numpy as np
    from gguf import GGUFReader
    from safetensors.numpy import save_file

    from cotune.finetune import export_lora_to_gguf
    from cotune.finetune.base_model import SOURCE_FILE

    reader = GGUFReader(base_gguf)
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    field = lambda key: int(reader.fields[f"{arch}.{key}"].parts[-1][0])  # noqa: E731
    shapes = {t.name: tuple(int(n) for n in t.shape) for t in reader.tensors}
    rng = np.random.default_rng(seed)
    rank, tensors = 4, {}
    for layer in range(field("block_count")):
        for module, name in (("self_attn.v_proj", "attn_v"), ("self_attn.o_proj", "attn_output")):
            n_in, n_out = shapes[f"blk.{layer}.{name}.weight"][:2]
            key = f"base_model.model.model.layers.{layer}.{module}"
            tensors[f"{key}.lora_A.weight"] = rng.normal(0, n_in**-0.5, (rank, n_in))
            tensors[f"{key}.lora_B.weight"] = rng.normal(0, scale, (n_out, rank))
    adapter_dir, checkpoint = out / "peft", out / "checkpoint"
    adapter_dir.mkdir(parents=True)
    checkpoint.mkdir()
    save_file({k: v.astype(np.float32) for k, v in tensors.items()},
              str(adapter_dir / "adapter_model.safetensors"))
    (adapter_dir / "adapter_config.json").write_text(json.dumps(
        {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "bias": "none"}))
    (checkpoint / "config.json").write_text(json.dumps({
        "model_type": arch, "num_attention_heads": field("attention.head_count"),
        "num_key_value_heads": field("attention.head_count_kv"),
    }))
    (checkpoint / SOURCE_FILE).write_text(json.dumps(
        {"gguf_path": str(base_gguf), "architecture": arch}))
    return export_lora_to_gguf(adapter_dir, checkpoint, out / "adapter.gguf")


@pytest.fixture(scope="module")
def two_adapters(smollm2_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    for module in ("gguf", "safetensors", "numpy"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} not installed (pip install 'cotune[finetune]')")
    root = tmp_path_factory.mktemp("loras")
    return [random_lora(smollm2_path, root / name, seed) for seed, name in enumerate("ab")]


@pytest.mark.real_model
def test_two_adapters_served_side_by_side_give_their_own_answers(
    smol_server: LlamaServer, two_adapters: list[Path], smollm2_path: Path
) -> None:
    from cotune.lm import LlamaCppLM
    from cotune.lm.llama_server_lm import LlamaServerLM

    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python not installed (the reference answers come from it)")
    questions = QUESTIONS[1:5]  # not "capital of France": every adapter says Paris
    base = LlamaServerLM(server=smol_server, cache=None)
    tuned = [base.with_lora(path) for path in two_adapters]
    restarts = smol_server.stats().restarts
    lms = [base, *tuned]
    jobs = [(i, q) for q in questions for i in range(len(lms))]  # the adapters interleaved
    served = {(i, q): lms[i].chat(messages(q), max_tokens=12).text for i, q in jobs}
    assert smol_server.stats().restarts == restarts + 1  # both adapters loaded in one restart
    assert smol_server.adapters == [p.resolve() for p in two_adapters]
    assert [lm.identity()["lora_sha256"] for lm in lms][1:] == [
        file_sha256(p) for p in two_adapters
    ]
    for i, lora in enumerate([None, *two_adapters]):  # each as the embedded engine answers
        reference = LlamaCppLM(smollm2_path, lora_path=lora, n_ctx=1024, cache=None)
        try:
            for q in questions:
                assert served[(i, q)] == reference.chat(messages(q), max_tokens=12).text, (i, q)
        finally:
            reference.close()
    with ThreadPoolExecutor(len(jobs)) as pool:  # and all at once: the same, up to rounding
        together = list(pool.map(lambda job: lms[job[0]].chat(messages(job[1]), max_tokens=12)
                                 .text, jobs))
    same = sum(served[job] == text for job, text in zip(jobs, together, strict=True))
    assert same >= len(jobs) - 2, (same, len(jobs))
    for q in questions:  # the adapters do change the answers, each in its own way
        assert len({served[(i, q)] for i in range(3)}) == 3, [served[(i, q)] for i in range(3)]


@pytest.mark.real_model
def test_fine_tuned_adapters_stay_on_the_shared_server(
    smol_server: LlamaServer, two_adapters: list[Path]
) -> None:
    from cotune.lm.llama_server_lm import LlamaServerLM
    from cotune.optimize.finetune import restore_tuned_lm

    base = LlamaServerLM(server=smol_server, cache=None, max_tokens=7)
    tuned = base.with_lora(two_adapters[0])  # what LoraTrainer returns after training
    assert isinstance(tuned, LlamaServerLM) and tuned.server is smol_server
    assert tuned.lora_path == two_adapters[0].resolve() and tuned.max_tokens == 7
    rebuilt = restore_tuned_lm(tuned.describe(), like=base)  # a saved program, reloaded
    assert isinstance(rebuilt, LlamaServerLM) and rebuilt.server is smol_server
    assert rebuilt.identity() == tuned.identity() != base.identity()


@pytest.mark.real_model
def test_the_batched_engine_comes_back_from_its_description(
    smol_server: LlamaServer, two_adapters: list[Path]
) -> None:
    from cotune.lm import LlamaCppLM, lm_from_description
    from cotune.lm.llama_server_lm import LlamaServerLM

    base = LlamaServerLM(server=smol_server, cache=None, max_tokens=7)
    tuned = base.with_lora(two_adapters[1])
    described = json.loads(json.dumps(tuned.describe()))  # as program.json keeps it
    assert described["engine"] == "server" and described["n_ctx"] == smol_server.n_ctx
    again = LlamaServerLM.from_description(described, like=base)
    assert again.server is smol_server and again.max_tokens == 7
    assert again.describe() == tuned.describe() and again.identity() == tuned.identity()
    question = messages(QUESTIONS[1])
    assert again.chat(question).text == tuned.chat(question).text
    # with no LM to share a server with, it loads on the embedded engine, same files
    embedded = lm_from_description(described, n_threads=1, cache=None)
    try:
        assert isinstance(embedded, LlamaCppLM)
        assert dict(embedded.describe()) == {k: v for k, v in described.items() if k != "engine"}
    finally:
        embedded.close()


def test_the_default_context_is_the_embedded_one_shared_by_the_slots(
    smollm2_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from cotune.lm.models import default_n_ctx

    monkeypatch.setattr(LlamaServer, "_start", lambda self: None)  # only the settings matter
    whole = default_n_ctx(smollm2_path)  # 8192 for SmolLM2 here
    assert LlamaServer(smollm2_path, parallel=2).n_ctx == max(2048, whole // 2)
    assert LlamaServer(smollm2_path, parallel=64).n_ctx == 2048  # never below 2048 a slot
    assert LlamaServer(smollm2_path, parallel=4, n_ctx=512).n_ctx == 512


@pytest.mark.real_model
def test_the_server_engine_answers_in_the_structured_format_by_default(
    smol_server: LlamaServer,
) -> None:
    import cotune
    from cotune.lm.llama_server_lm import LlamaServerLM

    lm = LlamaServerLM(server=smol_server, cache=None, max_retries=0)
    assert lm.default_adapter == "json"
    with cotune.context(lm=lm):
        prediction = cotune.Predict("question -> answer: int")(question="What is 2 + 3?")
    assert isinstance(prediction.answer, int)  # read from the schema-constrained JSON
    sent = lm.meter.snapshot().calls
    assert sent == 1  # no repair request: the first answer parsed
