import subprocess
import sys
import threading
from pathlib import Path

import pytest

import cotune
from cotune import (
    ChainOfThought,
    Example,
    Module,
    NoLMError,
    Predict,
    Prediction,
    ScriptedLM,
    context,
    trace,
)
from cotune.core import imap_unordered


class TwoHop(Module):
    def __init__(self):
        self.hops = [Predict("question -> query"), Predict("question -> query")]
        self.answer = ChainOfThought("question, context -> answer")

    def forward(self, question):
        context_parts = [hop(question=question).query for hop in self.hops]
        return self.answer(question=question, context=" | ".join(context_parts))


def echo_lm():
    """Answers each output field with a marker line, from the system prompt's field list."""

    def answer(request):
        system = request.messages[0]["content"]
        form = system.split("one field per line:\n", 1)[1].splitlines()
        return "\n".join(line.split(":")[0] + ": filled" for line in form)

    return ScriptedLM(answer)


def test_example_inputs_and_labels():
    ex = Example(question="2+2?", answer="4").with_inputs("question")
    assert ex.inputs() == {"question": "2+2?"}
    assert ex.labels() == {"answer": "4"}
    assert ex.question == "2+2?"
    with pytest.raises(ValueError, match="no inputs marked"):
        Example(question="x").inputs()
    with pytest.raises(ValueError, match="not fields"):
        Example(question="x").with_inputs("nope")
    with pytest.raises(AttributeError):
        ex.answer = "5"
    assert ex == Example(question="2+2?", answer="4").with_inputs("question")
    assert len({ex, Example(question="2+2?", answer="4").with_inputs("question")}) == 1


def test_named_predictors_are_recursive_and_stable():
    program = TwoHop()
    names = [name for name, _ in program.named_predictors()]
    assert names == ["hops[0]", "hops[1]", "answer"]
    assert Predict("a -> b").named_predictors()[0][0] == "self"


def test_predict_needs_an_lm_and_its_inputs():
    p = Predict("question -> answer")
    with pytest.raises(NoLMError):
        p(question="hi")
    with context(lm=ScriptedLM("Answer: ok")):
        with pytest.raises(ValueError, match="missing inputs"):
            p(other="hi")
        assert p(question="hi").answer == "ok"


def test_bound_lm_wins_over_context_lm():
    bound = ScriptedLM("Answer: bound")
    scoped = ScriptedLM("Answer: scoped")
    p = Predict("q -> answer", lm=bound)
    with context(lm=scoped):
        assert p(q="x").answer == "bound"
        assert Predict("q -> answer")(q="x").answer == "scoped"


def test_chain_of_thought_adds_reasoning_first():
    lm = ScriptedLM("Reasoning: because\nAnswer: 7")
    cot = ChainOfThought("question -> answer: int")
    with context(lm=lm):
        pred = cot(question="3+4")
    assert pred.reasoning == "because"
    assert pred.answer == 7
    assert isinstance(pred, Prediction)


def test_trace_records_every_predictor_call_in_order():
    program = TwoHop()
    with context(lm=echo_lm()), trace() as t:
        program(question="who?")
    assert [step.predictor for step in t] == program.predictors()
    assert t.steps[2].inputs["context"] == "filled | filled"
    assert t.steps[2].outputs.answer == "filled"


def test_traces_do_not_leak_between_threads():
    program = TwoHop()
    lm = echo_lm()
    lengths = []
    lock = threading.Lock()

    def run(i):
        with trace() as t:
            program(question=f"q{i}")
        with lock:
            lengths.append(len(t))

    with context(lm=lm):
        for _, future in imap_unordered(run, range(16), num_threads=8):
            future.result()
    assert lengths == [3] * 16


def test_context_reaches_worker_threads_of_imap_unordered():
    lm = ScriptedLM("Answer: yes")
    p = Predict("q -> answer")

    def run(i):
        return p(q=str(i)).answer

    with context(lm=lm):
        answers = [f.result() for _, f in imap_unordered(run, range(10), num_threads=4)]
    assert answers == ["yes"] * 10
    assert len(lm.requests) == 10


def test_deepcopy_copies_state_but_shares_the_lm():
    lm = ScriptedLM("Answer: a")
    program = TwoHop()
    program.answer.lm = lm
    program.answer.demos = [Example(question="q", context="c", reasoning="r", answer="a")]
    clone = program.deepcopy()
    clone.answer.demos.append(Example(question="x", context="y", reasoning="z", answer="w"))
    clone.answer.instruction = "changed"
    assert len(program.answer.demos) == 1
    assert program.answer.instruction != "changed"
    assert clone.answer.lm is lm


def test_lm_options_reach_the_lm():
    lm = ScriptedLM("Answer: a")
    p = Predict("q -> answer", lm=lm, temperature=0.7, max_tokens=33)
    p(q="x", rollout_id=3)
    request = lm.requests[0]
    assert (request.temperature, request.max_tokens, request.rollout_id) == (0.7, 33, 3)
    with pytest.raises(TypeError, match="unknown LM options"):
        Predict("q -> a", temprature=1.0)


def test_n_completions_are_all_parsed():
    lm = ScriptedLM(["Answer: 1", "Answer: 2", "Answer: 3"])
    p = Predict("q -> answer: int", lm=lm)
    pred = p(q="x", n=3, temperature=1.0)
    assert [c["answer"] for c in pred.completions] == [1, 2, 3]
    assert pred.answer == 1


def test_reset_returns_to_the_instruction_given_at_construction():
    p = Predict("q -> a", instruction="Be brief.")
    p.instruction = "optimized"
    p.demos = [Example(q="x", a="y").with_inputs("q")]
    p.reset()
    assert (p.instruction, p.demos) == ("Be brief.", [])


def test_core_runs_a_predictor_without_the_package_root(tmp_path):
    """Nothing has to be registered by ``cotune/__init__.py``: with the package root never run
    (a bare ``cotune`` package in its place), ``cotune.core`` and ``cotune.lm`` alone run a
    predictor with the adapter its LM names."""
    code = f"""
import sys, types
root = types.ModuleType("cotune")
root.__path__ = [{str(Path(cotune.__file__).parent)!r}]
sys.modules["cotune"] = root
from cotune.core import Predict, context
from cotune.lm import ScriptedLM
chat, structured = ScriptedLM("Answer: 4"), ScriptedLM('{{"answer": "5"}}')
structured.default_adapter = "json"
with context(lm=chat):
    first = Predict("question -> answer")(question="2 + 2?").answer
second = Predict("question -> answer", lm=structured)(question="2 + 3?").answer
assert not hasattr(root, "Predict")  # the package root never ran
print(first, second, chat.requests[0].messages[0]["content"].splitlines()[-1])
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["4", "5", "Answer:", "<answer>"]
