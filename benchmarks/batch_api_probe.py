"""What llama-cpp-python's low-level batch API gives on this CPU: N sequences decoded together
in one llama.cpp context, greedy, driven from Python (the alternative to llama-server); and, with
``--server``, the same workload sent to llama-server as N concurrent requests.

Each sequence gets its own prompt of ``--prompt`` tokens and generates ``--gen`` tokens; one
``llama_decode`` per step carries one token of every sequence, exactly as
``llama-batched-bench`` does in C.  Reports prompt and generation tokens/s per batch size, so the
two engines can be compared at the same settings:

    COTUNE_LLAMA_THREADS=2 python benchmarks/batch_api_probe.py --model qwen2.5-0.5b \
        --batch 1 4 8 --prompt 200 --gen 100 [--server]
"""

from __future__ import annotations

import argparse
import json
import time

import llama_cpp
import numpy as np

from cotune.lm.llamacpp import default_threads
from cotune.lm.models import resolve_model_path


def run(model_path: str, n_seq: int, n_prompt: int, n_gen: int, threads: int) -> dict:
    mparams = llama_cpp.llama_model_default_params()
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), mparams)
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = n_seq * (n_prompt + n_gen) + 16
    cparams.n_batch = max(512, n_seq * n_prompt)
    cparams.n_ubatch = 512
    cparams.n_seq_max = n_seq
    cparams.kv_unified = True
    cparams.n_threads = cparams.n_threads_batch = threads
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    vocab = llama_cpp.llama_model_get_vocab(model)
    n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
    batch = llama_cpp.llama_batch_init(max(n_seq * n_prompt, n_seq), 0, n_seq)

    def add(i: int, token: int, pos: int, seq: int, logits: bool) -> None:
        batch.token[i] = token
        batch.pos[i] = pos
        batch.n_seq_id[i] = 1
        batch.seq_id[i][0] = seq
        batch.logits[i] = logits

    # distinct prompts (token ids spread over the vocabulary), as batched-bench uses
    t0 = time.perf_counter()
    batch.n_tokens = 0
    for s in range(n_seq):
        for p in range(n_prompt):
            add(batch.n_tokens, (1000 + 7 * s + 13 * p) % n_vocab, p, s, p == n_prompt - 1)
            batch.n_tokens += 1
    if llama_cpp.llama_decode(ctx, batch) != 0:
        raise RuntimeError("llama_decode failed on the prompts")
    t_prompt = time.perf_counter() - t0

    logits_index = [s * n_prompt + n_prompt - 1 for s in range(n_seq)]  # last prompt tokens
    t0 = time.perf_counter()
    for step in range(n_gen):
        tokens = []
        for s in range(n_seq):
            row = llama_cpp.llama_get_logits_ith(ctx, logits_index[s])
            tokens.append(int(np.argmax(np.ctypeslib.as_array(row, shape=(n_vocab,)))))
        batch.n_tokens = 0
        for s, token in enumerate(tokens):
            add(s, token, n_prompt + step, s, True)
            batch.n_tokens += 1
        logits_index = list(range(n_seq))
        if llama_cpp.llama_decode(ctx, batch) != 0:
            raise RuntimeError("llama_decode failed while generating")
    t_gen = time.perf_counter() - t0
    llama_cpp.llama_batch_free(batch)
    llama_cpp.llama_free(ctx)
    llama_cpp.llama_model_free(model)
    return {
        "batch": n_seq, "engine": "batch API",
        "prompt_tok_s": round(n_seq * n_prompt / t_prompt, 1),
        "gen_tok_s": round(n_seq * n_gen / t_gen, 1),
    }


def run_server(model: str, n_seq: int, n_prompt: int, n_gen: int) -> dict:
    """N concurrent ``/completion`` requests of ``n_prompt`` token ids each, ``n_gen`` tokens
    generated (EOS ignored), timed by the server itself."""
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from cotune.lm.llama_server import LlamaServer

    with LlamaServer(model, n_ctx=n_prompt + n_gen + 16, parallel=n_seq, cache_ram_mib=0) as srv:
        url = srv.base_url.removesuffix("/v1") + "/completion"

        def one(seq: int) -> dict:
            body = {"prompt": [(1000 + 7 * seq + 13 * p) % 30000 for p in range(n_prompt)],
                    "n_predict": n_gen, "ignore_eos": True, "temperature": 0,
                    "cache_prompt": False}
            request = urllib.request.Request(url, data=json.dumps(body).encode(),
                                             headers={"Content-Type": "application/json"})
            with urllib.request.urlopen(request, timeout=3600) as r:
                return json.loads(r.read())["timings"]

        started = time.perf_counter()
        with ThreadPoolExecutor(n_seq) as pool:
            timings = list(pool.map(one, range(n_seq)))
        wall = time.perf_counter() - started
    return {
        "batch": n_seq, "engine": "llama-server",
        "gen_tok_s": round(n_seq * n_gen / max(t["predicted_ms"] for t in timings) * 1000, 1),
        "wall_tok_s": round(n_seq * (n_prompt + n_gen) / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4, 8])
    parser.add_argument("--prompt", type=int, default=200)
    parser.add_argument("--gen", type=int, default=100)
    parser.add_argument("--server", action="store_true", help="llama-server instead")
    args = parser.parse_args()
    llama_cpp.llama_backend_init()
    path = str(resolve_model_path(args.model))
    for n in args.batch:
        if args.server:
            row = run_server(args.model, n, args.prompt, args.gen)
        else:
            row = run(path, n, args.prompt, args.gen, default_threads())
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
