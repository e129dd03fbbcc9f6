"""Labelled demos for intermediate modules: a multi-predictor program whose labelled examples
hold the question and the final answer but not the intermediate search query.  No demo with a
missing output (or input) is ever rendered, whichever optimizer or command put the demos there;
the final module, whose fields the labels do hold, still gets labelled demos."""

from __future__ import annotations

import re

import pytest
from helpers import exact, qa_data
from test_proposer import prompt_lm

from cotune import ChainOfThought, Example, Module, Predict, Prediction, ScriptedLM, context
from cotune.core import labelled_demo
from cotune.optimize import MIPRO, BootstrapRandomSearch, LabeledFewShot
from cotune.tasks.demos import labelled_demos


class TwoHop(Module):
    def __init__(self):
        self.hop = Predict("question -> search_query")
        self.answer = ChainOfThought("question -> answer")

    def forward(self, question):
        query = self.hop(question=question).search_query
        return Prediction(answer=self.answer(question=question).answer, query=query)


TRAIN, VAL = qa_data("train", 10), qa_data("val", 6)


class Recorder:
    """A task LM that checks every prompt it gets: each demo (user + assistant pair) must
    hold all of its predictor's inputs and outputs (reasoning aside)."""

    def __init__(self):
        self.violations: list[str] = []
        self.demos_seen = {"hop": 0, "answer": 0}
        self.lm = ScriptedLM(self.reply, name="task")

    def reply(self, request) -> str:
        messages = request.messages
        hop = "<search_query>" in messages[0]["content"]
        i = re.search(r"Question: \w+ (\d+)", messages[-1]["content"]).group(1)
        demos = messages[1:-1]
        for user, assistant in zip(demos[::2], demos[1::2], strict=True):
            self.demos_seen["hop" if hop else "answer"] += 1
            if "Question:" not in user["content"]:
                self.violations.append(f"demo without its input: {user['content']!r}")
            needed = "Search Query:" if hop else "Answer:"
            if needed not in assistant["content"]:
                self.violations.append(f"demo without {needed} {assistant['content']!r}")
        if hop:
            return f"Search Query: query {i}"
        return f"Reasoning: because\nAnswer: a{i}"


def test_labelled_demo_needs_every_field_but_the_reasoning():
    program = TwoHop()
    example = TRAIN[0]
    assert labelled_demo(program.hop, example) is None  # no search_query in the labels
    demo = labelled_demo(program.answer, example)
    assert demo is not None and demo.to_dict() == {"question": "train 0", "answer": "a0"}
    assert labelled_demos(TRAIN, 3, predictor=program.hop) == []
    assert len(labelled_demos(TRAIN, 3, predictor=program.answer)) == 3


@pytest.mark.parametrize("make", [
    lambda: LabeledFewShot(exact, k=3),
    lambda: BootstrapRandomSearch(exact, num_candidates=2, max_bootstrapped_demos=2,
                                  max_labeled_demos=2, num_threads=1),
    lambda: MIPRO(exact, num_instruction_candidates=2, num_demo_candidates=2, num_trials=3,
                  minibatch_size=4, full_eval_every=3, max_bootstrapped_demos=1,
                  max_labeled_demos=2, prompt_lm=prompt_lm(), num_threads=1),
], ids=["labeled", "random-search", "mipro"])
def test_no_demo_with_a_missing_field_is_ever_rendered(make):
    recorder = Recorder()
    with context(lm=recorder.lm):
        result = make().optimize(TwoHop(), TRAIN, VAL)
        result.program(question="val 0")  # the winner's prompts too
    assert recorder.violations == []
    for candidate in result.candidates:
        for name, entry in candidate.state["predictors"].items():
            for demo in entry["demos"]:
                needed = {"question", "search_query"} if name == "hop" else {"question", "answer"}
                assert needed <= demo["fields"].keys(), (name, demo)
    assert recorder.demos_seen["answer"] > 0  # the final module still got demos


def test_labelled_only_leaves_the_intermediate_module_without_demos():
    recorder = Recorder()
    with context(lm=recorder.lm):
        result = LabeledFewShot(exact, k=3).optimize(TwoHop(), TRAIN, VAL)
    assert result.program.hop.demos == []
    assert len(result.program.answer.demos) == 3


def test_a_demo_missing_an_output_set_by_hand_is_not_rendered():
    recorder = Recorder()
    program = TwoHop()
    program.hop.demos = [Example(question="train 1").with_inputs("question"),
                         Example(question="train 2", search_query="q2").with_inputs("question")]
    with context(lm=recorder.lm):
        program(question="val 3")
    assert recorder.violations == []
    assert recorder.demos_seen["hop"] == 1
