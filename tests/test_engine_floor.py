"""benchmarks/engine_throughput.py's prompt-token floor (what an unlimited prefix cache must
still evaluate) against the embedded engine's own counters, SmolLM2."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytestmark = pytest.mark.real_model

SCRIPT = Path(__file__).parents[1] / "benchmarks" / "engine_throughput.py"
SYSTEM = "You are a careful assistant who answers in one word. " * 12


def _script():
    spec = importlib.util.spec_from_file_location("engine_throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prompt(question: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


def test_the_floor_counts_what_a_fresh_engine_evaluates_and_only_new_suffixes_after(smollm2_path):
    from cotune.lm import LlamaCppLM

    script = _script()
    first, second = _prompt("What is 2 + 2?"), _prompt("Name a colour.")
    lm = LlamaCppLM(str(smollm2_path), n_ctx=2048, n_threads=1, cache=None)
    try:
        recorded = script.record_prompts(lm)
        before = script.prompt_tokens_evaluated(lm)
        lm.chat(first, max_tokens=2)
        evaluated_first = script.prompt_tokens_evaluated(lm) - before
        lm.chat(second, max_tokens=2)
        evaluated_both = script.prompt_tokens_evaluated(lm) - before
    finally:
        lm.close()
    assert recorded == [first, second]  # the wrapper saw both requests' messages, in order

    def floor(prompts: list[list[dict[str, str]]]) -> int:
        return script.unavoidable_prompt_tokens(str(smollm2_path), prompts)

    # a fresh engine evaluates the whole first prompt: the floor says the same (llama.cpp may
    # keep one token back for the first logits)
    assert abs(floor([first]) - evaluated_first) <= 1
    # the second shares the system prompt: the engine reuses it, and the floor counts only the
    # new part, which is far shorter than the prompt
    assert abs(floor([first, second]) - evaluated_both) <= 1
    assert floor([first, second]) - floor([first]) < floor([second]) / 3
    assert floor([first, first]) == floor([first])  # a repeated prompt costs nothing more
