"""Today's embedded engine (``LlamaCppLM``: one sequence at a time) against the batched one
(``LlamaServerLM``: llama-server with parallel slots and per-slot prefix reuse), on the same
evaluation: examples/s, generated tokens/s, prompt tokens actually evaluated (and the floor an
unlimited prefix cache would still evaluate), accuracy, and how often the two give different
answers.

Workloads (first N test examples, LM cache off, ``Evaluate`` with ``--threads`` workers):

* ``gsm8k``: the task's chain-of-thought program, zero-shot (generation-bound);
* ``hotpotqa``: the multi-hop program with 2 bootstrapped demos per module (bootstrapped once,
  saved as ``<out>/hotpotqa-program.json`` and reused by both engines);
* ``iris``: 4 labelled demos.

Each (task, engine) result is one JSON line in ``--out``; a rerun skips the lines already there,
so a killed run resumes.  ``--batched-bench`` runs llama.cpp's ``llama-batched-bench`` (built on
demand by ``scripts/build_llama_server.sh llama-batched-bench``) on the same model: the ceiling.

    COTUNE_LLAMA_THREADS=2 python benchmarks/engine_throughput.py --model qwen2.5-0.5b \
        --task hotpotqa:20 --task gsm8k:50 --task iris:50 --engine embedded --engine server \
        --out benchmarks/results/engine_throughput.jsonl
    python benchmarks/engine_throughput.py --batched-bench --model qwen2.5-0.5b
    python benchmarks/engine_throughput.py --micro --model smollm2-135m --n-ctx 2048
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cotune
from cotune.evaluate import Evaluate
from cotune.lm import LlamaCppLM, cache_disabled
from cotune.lm.llama_server import find_llama_server
from cotune.lm.llama_server_lm import LlamaServerLM
from cotune.lm.llamacpp import default_threads
from cotune.lm.models import resolve_model_path
from cotune.tasks import get_task
from cotune.tasks.demos import labelled_demos

ROOT = Path(__file__).resolve().parents[1]


def make_lm(engine: str, model: str, parallel: int, n_ctx: int) -> Any:
    if engine == "embedded":
        return LlamaCppLM(model, n_ctx=n_ctx, cache=None)
    return LlamaServerLM(model, n_ctx=n_ctx, parallel=parallel, cache=None)


def prompt_tokens_evaluated(lm: Any) -> int:
    """Prompt tokens the engine ran through the model so far (the rest it reused)."""
    if isinstance(lm, LlamaServerLM):
        return lm.engine_stats().prompt_tokens_evaluated
    import llama_cpp

    return int(llama_cpp.llama_perf_context(lm._llama.ctx).n_p_eval)


def record_prompts(lm: Any) -> list[list[dict[str, Any]]]:
    """From now on, every request's messages in the order they reach the engine."""
    recorded: list[list[dict[str, Any]]] = []
    lock = threading.Lock()
    complete = lm._complete

    def recording(request: Any) -> Any:
        with lock:
            recorded.append([dict(m) for m in request.messages])
        return complete(request)

    lm._complete = recording
    return recorded


def unavoidable_prompt_tokens(model: str, prompts: list[list[dict[str, Any]]]) -> int:
    """Prompt tokens that even an unlimited prefix cache must run through the model.

    Each prompt is rendered with the GGUF's own chat template and tokenized; a token counts when
    it lies beyond the longest prefix the prompt shares with *any* earlier prompt of the run (a
    trie of all of them).  The embedded engine keeps one prefix and llama-server one per slot plus
    its RAM cache, so both evaluate at least this many: the bound on what prefix reuse can save.
    """
    import llama_cpp
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    vocab = llama_cpp.Llama(str(resolve_model_path(model)), vocab_only=True, verbose=False)
    token = vocab._model.token_get_text
    formatter = Jinja2ChatFormatter(
        template=vocab.metadata["tokenizer.chat_template"],
        eos_token=token(vocab.token_eos()), bos_token=token(vocab.token_bos()))
    trie: dict[int, Any] = {}
    total = 0
    for messages in prompts:
        text = formatter(messages=messages).prompt
        node, shared = trie, True
        for tok in vocab.tokenize(text.encode(), add_bos=False, special=True):
            if shared and tok in node:
                node = node[tok]
                continue
            shared = False
            total += 1
            node = node.setdefault(tok, {})
    return total


def program_for(task_name: str, lm: Any, out_dir: Path, threads: int) -> Any:
    task = get_task(task_name)
    splits = task.load_splits(seed=0)
    program = task.make_program()
    if task_name == "iris":
        for p in program.predictors():
            p.demos = labelled_demos(splits.train, 4, seed=0)
    elif task_name == "hotpotqa":
        saved = out_dir / "hotpotqa-program.json"
        if not saved.is_file():
            from cotune.optimize import BootstrapFewShot

            # Qwen-0.5B answers ~1 in 12 exactly, so the demos are the program's first two
            # parsable traces, correct or not: the prompt shape (3 modules x 2 traced demos,
            # passages included) is what this benchmark is about, not their quality.
            optimizer = BootstrapFewShot(
                lambda example, prediction, trace=None: 1.0, max_bootstrapped_demos=2,
                max_labeled_demos=0, seed=0, num_threads=threads,
            )  # fmt: skip
            with cotune.context(lm=lm):
                result = optimizer.optimize(program, splits.train[:10])
            cotune.save_program(result.program, saved)
        cotune.load_program(program, saved)
    return program


def run_one(task_name: str, n: int, engine: str, args: argparse.Namespace) -> dict[str, Any]:
    task = get_task(task_name)
    devset = task.load_splits(seed=0).test[:n]
    saved = args.out.parent / f"{task_name}-program.json"
    if task_name == "hotpotqa" and not saved.is_file():  # bootstrap outside the timed engine
        helper = make_lm("server", args.model, args.parallel, args.n_ctx)
        try:
            program_for(task_name, helper, args.out.parent, args.threads)
        finally:
            helper.close()
    lm = make_lm(engine, args.model, args.parallel, args.n_ctx)
    try:
        program = program_for(task_name, lm, args.out.parent, args.threads)
        demos = {name: len(p.demos) for name, p in program.named_predictors()}
        evaluated_before = prompt_tokens_evaluated(lm)
        prompts = record_prompts(lm)
        evaluator = Evaluate(devset, task.metric, num_threads=args.threads,
                             display_progress=False)
        with cotune.context(lm=lm), cache_disabled():
            started = time.monotonic()
            result = evaluator(program)
            wall = time.monotonic() - started
        evaluated = prompt_tokens_evaluated(lm) - evaluated_before
    finally:
        close = getattr(lm, "close", None)
        if callable(close):
            close()
    u = result.usage
    answers = [_answer(r.prediction) for r in result.results]
    return {
        "task": task_name, "engine": engine, "model": args.model, "examples": len(devset),
        "demos": demos, "threads": args.threads, "llama_threads": default_threads(),
        "parallel": args.parallel if engine == "server" else 1,
        "wall_s": round(wall, 1), "examples_per_s": round(len(devset) / wall, 4),
        "calls": u.calls, "completion_tokens": u.completion_tokens,
        "generated_tok_per_s": round(u.completion_tokens / wall, 2),
        "prompt_tokens_sent": u.prompt_tokens, "prompt_tokens_evaluated": evaluated,
        "prompt_tokens_unavoidable": unavoidable_prompt_tokens(args.model, prompts),
        "score": round(result.score, 4), "errors": result.num_errors, "answers": answers,
        "date": time.strftime("%Y-%m-%d %H:%M"), "load": _load(),
    }  # fmt: skip


def _answer(prediction: Any) -> Any:
    if prediction is None:
        return None
    data = prediction.to_dict() if hasattr(prediction, "to_dict") else dict(prediction)
    return str(data.get("answer", data))


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().split(" ", 3)[:3].__str__()
    except OSError:
        return platform.platform()


def batched_bench(args: argparse.Namespace) -> None:
    """llama.cpp's own batched decoding at 200 prompt + 100 generated tokens per sequence."""
    binary = find_llama_server().parent / "llama-batched-bench"
    if not binary.is_file():  # the build tree scripts/setup.sh kept: only this tool's files
        subprocess.run(["bash", str(ROOT / "scripts/build_llama_server.sh"),
                        "llama-batched-bench"], check=True)
    model = resolve_model_path(args.model)
    npl = ",".join(str(b) for b in args.bench_batches)
    cmd = [str(binary), "-m", str(model), "-c", str(max(args.bench_batches) * 300 + 64),
           "-b", "2048", "-ub", "512", "-npp", "200", "-ntg", "100", "-npl", npl,
           "-t", str(default_threads()), "-fa", "off"]  # as LlamaServer runs
    print(" ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def micro(args: argparse.Namespace) -> None:
    """The issue's two probes, on both engines: three alternating ~1,000-token system prompts
    (a three-module program's instructions + demos), cold then warm; and 8 requests from 8
    threads against the same 8 sent one by one."""
    from concurrent.futures import ThreadPoolExecutor

    systems = [f"You are module {m} of a pipeline. " + " ".join(
        f"Rule {j}: answer module {m} questions briefly and exactly." for j in range(90))
        for m in range(3)]
    questions = [f"What is {a} + {a + 3}?" for a in range(8)]
    for engine in args.engine or ["embedded", "server"]:
        lm = make_lm(engine, args.model, args.parallel, args.n_ctx)
        try:
            rounds = []
            for r in range(3):
                before, started = prompt_tokens_evaluated(lm), time.monotonic()
                for system in systems:
                    lm.chat([{"role": "system", "content": system},
                             {"role": "user", "content": questions[r]}], max_tokens=8)
                rounds.append({"s": round(time.monotonic() - started, 2),
                               "prompt_evaluated": prompt_tokens_evaluated(lm) - before})

            def ask(q: str, lm: Any = lm) -> str:
                return lm.chat([{"role": "user", "content": q}], max_tokens=48).text

            started = time.monotonic()
            one_by_one = [ask(q) for q in questions]
            sequential_s = time.monotonic() - started
            started = time.monotonic()
            with ThreadPoolExecutor(len(questions)) as pool:
                together = list(pool.map(ask, questions))
            concurrent_s = time.monotonic() - started
        finally:
            lm.close()
        print(json.dumps({
            "engine": engine, "model": args.model, "llama_threads": default_threads(),
            "alternating_rounds": rounds, "sequential_8_s": round(sequential_s, 2),
            "concurrent_8_s": round(concurrent_s, 2),
            "same_answers": sum(a == b for a, b in zip(one_by_one, together, strict=True)),
            "load": _load(),
        }), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="qwen2.5-0.5b")
    parser.add_argument("--task", action="append", default=[], help="NAME:N, repeatable")
    parser.add_argument("--engine", action="append", choices=["embedded", "server"], default=[])
    parser.add_argument("--parallel", type=int, default=4, help="server slots")
    parser.add_argument("--threads", type=int, default=4, help="Evaluate worker threads")
    parser.add_argument("--n-ctx", type=int, default=4096)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/engine.jsonl")
    parser.add_argument("--batched-bench", action="store_true")
    parser.add_argument("--micro", action="store_true", help="the issue's two probes")
    parser.add_argument("--bench-batches", type=int, nargs="+", default=[1, 4, 8, 16])
    args = parser.parse_args()
    if args.batched_bench:
        batched_bench(args)
        return
    if args.micro:
        micro(args)
        return
    args.out.parent.mkdir(parents=True, exist_ok=True)
    done = set()
    if args.out.is_file():
        for line in args.out.read_text().splitlines():
            row = json.loads(line)
            done.add((row["task"], row["examples"], row["engine"], row["parallel"]))
    for spec in args.task:
        name, _, count = spec.partition(":")
        n = int(count or 20)
        for engine in args.engine or ["embedded", "server"]:
            key = (name, n, engine, args.parallel if engine == "server" else 1)
            if key in done:
                continue
            print(f"{name} x{n} on {engine} ...", file=sys.stderr, flush=True)
            row = run_one(name, n, engine, args)
            with args.out.open("a") as f:
                f.write(json.dumps(row) + "\n")
            summary = {k: v for k, v in row.items() if k != "answers"}
            print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
