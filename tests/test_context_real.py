"""A tiny context with the real SmolLM2 (embedded llama.cpp): a prompt over n_ctx is one
example's recorded failure, and the proposer fits its prompts to the context."""

from __future__ import annotations

import random

import pytest

from cotune import Example, Module, Predict, context
from cotune.evaluate import Evaluate, exact_match
from cotune.lm import LlamaCppLM
from cotune.lm.models import default_n_ctx, gguf_metadata
from cotune.optimize import GroundedProposer, ProposerSettings

pytestmark = pytest.mark.real_model


class QA(Module):
    def __init__(self):
        self.answer = Predict("question -> answer", max_tokens=8)

    def forward(self, question):
        return self.answer(question=question)


@pytest.fixture(scope="module")
def tiny(smollm2_path):
    lm = LlamaCppLM(smollm2_path, n_ctx=512, cache=None, max_tokens=32)
    yield lm
    lm.close()


def test_default_n_ctx_comes_from_the_gguf_metadata(smollm2_path):
    meta = gguf_metadata(smollm2_path, {"general.architecture", "llama.context_length"})
    assert meta["llama.context_length"] == 8192
    assert 2048 <= default_n_ctx(smollm2_path) <= 8192


def test_a_prompt_over_n_ctx_is_a_recorded_failure_during_evaluation(tiny):
    devset = [Example(question="Say ok.", answer="ok").with_inputs("question"),
              Example(question="Say ok. " * 300, answer="ok").with_inputs("question")]
    with context(lm=tiny):
        result = Evaluate(devset, exact_match(), num_threads=1, display_progress=False)(QA())
    assert result.complete and result.num_errors == 1
    failed = result.results[1]
    assert failed.error_type == "ContextOverflow"
    assert "exceed context window of 512" in failed.error
    assert not result.results[0].failed


def test_the_proposer_fits_its_prompts_to_a_tiny_context(tiny):
    train = [Example(question=f"Question {i}: " + "a long word problem about apples " * 8,
                     answer=str(i)).with_inputs("question") for i in range(10)]
    demos = [[Example(question=ex["question"], answer=ex["answer"]).with_inputs("question")
              for ex in train[:6]]]
    proposer = GroundedProposer(tiny, ProposerSettings(use_program_summary=False,
                                                       max_demos_shown=6), num_threads=1)
    program = QA()
    grounding = proposer.ground(program, train, random.Random(0))
    assert any("did not fit the context" in note for note in grounding.notes)
    instructions = proposer.propose("answer", program.answer, demos, 3, random.Random(0))
    assert instructions[0] == program.answer.instruction
    assert proposer.notes  # the demos were cut (or a proposal skipped), and it says so
