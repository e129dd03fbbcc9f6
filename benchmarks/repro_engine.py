"""Does the embedded llama.cpp engine give the same greedy answers whatever came before?

llama-cpp-python reuses the KV cache of the longest prefix shared with the previous prompt, so
a prompt's logits are computed from a different split of work depending on the call before it;
the thread count changes how the work is split too.  This runs HotPotQA answer prompts (long,
with a shared system prefix) greedily in three orders on one engine and once on a second engine
with another thread count, and lists the prompts whose answers differ from the first pass.

    COTUNE_LLAMA_THREADS=1 python benchmarks/repro_engine.py --model smollm2-135m --threads 1
"""

from __future__ import annotations

import argparse
import json
import time

from cotune.adapters.chat import ChatAdapter
from cotune.lm import LlamaCppLM
from cotune.tasks import get_task


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--prompts", type=int, default=12)
    args = parser.parse_args()
    task = get_task("hotpotqa")
    program = task.make_program()
    examples = task.load_splits(seed=0, sizes=(0, 0, args.prompts)).test
    prompts = []
    for ex in examples:
        passages = program.retriever.search(ex["question"], k=3)
        inputs = {"context": program.format_context(passages), "question": ex["question"]}
        prompts.append(ChatAdapter().format(program.generate_answer.signature, [], inputs))

    def run(lm: LlamaCppLM, order: list[int]) -> list[str]:
        answers = {i: lm.chat(prompts[i], max_tokens=48, cache=False).text for i in order}
        return [answers[i] for i in range(len(prompts))]

    n = len(prompts)
    h = max(n // 2 - 1, 0)  # 12 prompts: 0, 5, 1, 6, 2, 7, 3, 8, 4, 9, 10, 11
    interleaved = [i for pair in zip(range(h), range(h, 2 * h), strict=True) for i in pair]
    interleaved += list(range(2 * h, n))
    start = time.time()
    engine = LlamaCppLM(args.model, n_ctx=4096, cache=None, n_threads=args.threads)
    forward = run(engine, list(range(n)))
    backward = run(engine, list(reversed(range(n))))
    mixed = run(engine, interleaved)
    engine.close()
    other = LlamaCppLM(args.model, n_ctx=4096, cache=None, n_threads=args.threads % 2 + 1)
    other_threads = run(other, list(range(n)))
    other.close()

    def differs(answers: list[str]) -> list[int]:
        return [i for i in range(n) if answers[i] != forward[i]]

    print(json.dumps({"model": args.model, "threads": args.threads, "prompts": n,
                      "seconds": round(time.time() - start, 1),
                      "backward_differs": differs(backward), "interleaved_differs": differs(mixed),
                      f"threads_{args.threads % 2 + 1}_differs": differs(other_threads)}))


if __name__ == "__main__":
    main()
