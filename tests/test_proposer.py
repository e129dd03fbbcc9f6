"""The grounded instruction proposer: what its prompt holds, and what it returns."""

from __future__ import annotations

import random
import re

import pytest

from cotune import Example, Module, Predict, ScriptedLM
from cotune.optimize import TIPS, GroundedProposer, Grounding, ProposerSettings
from cotune.optimize.proposer import describe_program, program_source, summarize_dataset

REPLIES = {
    "observations": "OBSERVED-THINGS",
    "summary": "DATASET-SUMMARY-TEXT",
    "program_description": "PROGRAM-DESCRIPTION-TEXT",
    "module_description": "MODULE-DESCRIPTION-TEXT",
}


def prompt_reply(request) -> str:
    """A prompt model: answers each proposer signature with a recognizable text; proposals
    are numbered by the request's rollout id."""
    system = request.messages[0]["content"]
    field = re.findall(r"<(\w+)>", system)[-1]
    title = " ".join(part.capitalize() for part in field.split("_"))
    if field == "proposed_instruction":
        return f"{title}: Proposed instruction {request.rollout_id}."
    return f"{title}: {REPLIES[field]}"


def prompt_lm(**kwargs) -> ScriptedLM:
    return ScriptedLM(prompt_reply, name="prompt", **kwargs)


def is_proposal(request) -> bool:
    return "<proposed_instruction>" in request.messages[0]["content"]


def prompt_text(request) -> str:
    return "\n".join(m["content"] for m in request.messages)


class QA(Module):
    def __init__(self):
        self.answer = Predict("question -> answer", instruction="Answer the question.")

    def forward(self, question):
        return self.answer(question=question)


TRAIN = [Example(question=f"question {i}", answer=f"answer {i}").with_inputs("question")
         for i in range(25)]
DEMO_SETS = [
    [Example(question="DEMO-MARKER-ONE", answer="x").with_inputs("question")],
    [Example(question="DEMO-MARKER-TWO", answer="y").with_inputs("question")],
]

# what each grounding source puts into the proposer's prompt (its text and its field's title)
SOURCES = {
    "use_dataset_summary": ["DATASET-SUMMARY-TEXT", "Dataset Summary"],
    "use_program_summary": ["PROGRAM-DESCRIPTION-TEXT", "Program Description",
                            "MODULE-DESCRIPTION-TEXT", "Module Description"],
    "use_demos": ["DEMO-MARKER", "Task Demos"],
    "use_tip": [*TIPS.values(), "Tip:"],
}


def propose(n=4, **switches):
    lm = prompt_lm()
    proposer = GroundedProposer(lm, ProposerSettings(**switches))
    program = QA()
    proposer.ground(program, TRAIN, random.Random(0))
    name, predictor = program.named_predictors()[0]
    instructions = proposer.propose(name, predictor, DEMO_SETS, n, random.Random(1))
    return instructions, lm


def test_candidate_zero_is_the_current_instruction_and_proposals_differ():
    instructions, lm = propose(n=4)
    assert instructions[0] == "Answer the question."
    assert instructions[1:] == [f"Proposed instruction {j}." for j in (1, 2, 3)]
    proposals = [r for r in lm.requests if is_proposal(r)]
    assert sorted(r.rollout_id for r in proposals) == [1, 2, 3]
    assert all(r.temperature == 1.0 for r in proposals)


def test_every_source_is_in_the_prompt_when_switched_on():
    _, lm = propose()
    proposals = [prompt_text(r) for r in lm.requests if is_proposal(r)]
    assert proposals
    for text in proposals:
        for switch, needles in SOURCES.items():
            if switch == "use_tip":
                assert any(tip in text for tip in TIPS.values())
            else:
                assert all(needle in text for needle in needles), switch
        assert "Module Signature: inputs: question -> outputs: answer" in text
        assert "Answer the question." in text  # the current instruction


@pytest.mark.parametrize("switch", sorted(SOURCES))
def test_a_source_switched_off_never_reaches_the_prompt(switch):
    _, lm = propose(**{switch: False})
    proposals = [prompt_text(r) for r in lm.requests if is_proposal(r)]
    assert len(proposals) == 3
    for text in proposals:
        for other, needles in SOURCES.items():
            if other == switch:
                assert not any(needle in text for needle in needles), needles
            elif other != "use_tip":
                assert all(needle in text for needle in needles), other


def test_grounding_calls_only_what_is_switched_on():
    _, lm = propose(use_dataset_summary=False, use_program_summary=False)
    assert all(is_proposal(r) for r in lm.requests)
    _, lm = propose(use_program_summary=False, use_demos=False, use_tip=False)
    grounding = [r for r in lm.requests if not is_proposal(r)]
    assert len(grounding) == 4  # three batches of observations, one summary


def test_fixed_tip_and_temperature():
    lm = prompt_lm()
    proposer = GroundedProposer(lm, ProposerSettings(
        use_dataset_summary=False, use_program_summary=False, tip="persona", temperature=0.5))
    name, predictor = QA().named_predictors()[0]
    proposer.propose(name, predictor, DEMO_SETS, 3, random.Random(0))
    for request in lm.requests:
        assert TIPS["persona"] in prompt_text(request)
        assert request.temperature == 0.5


def test_repeated_proposals_are_dropped():
    lm = ScriptedLM("Proposed Instruction: Always the same.")
    proposer = GroundedProposer(lm, ProposerSettings(use_dataset_summary=False,
                                                     use_program_summary=False))
    name, predictor = QA().named_predictors()[0]
    result = proposer.propose(name, predictor, DEMO_SETS, 5, random.Random(0))
    assert result == ["Answer the question.", "Always the same."]


def test_propose_needs_grounding_when_summaries_are_on():
    proposer = GroundedProposer(prompt_lm())
    name, predictor = QA().named_predictors()[0]
    with pytest.raises(RuntimeError, match="ground"):
        proposer.propose(name, predictor, DEMO_SETS, 3, random.Random(0))


def test_render_prompt_is_what_is_sent():
    lm = prompt_lm()
    proposer = GroundedProposer(lm)
    program = QA()
    proposer.ground(program, TRAIN, random.Random(0))
    name, predictor = program.named_predictors()[0]
    messages = proposer.render_prompt(name, predictor, DEMO_SETS[0], "concise")
    proposer.propose_one(name, predictor, DEMO_SETS[0], "concise", rollout_id=7)
    assert list(lm.requests[-1].messages) == messages


def test_summarize_dataset_looks_at_a_few_batches():
    lm = prompt_lm()
    summary = summarize_dataset(lm, TRAIN, batch_size=5, rng=random.Random(0), max_batches=2)
    assert summary == "DATASET-SUMMARY-TEXT"
    assert len(lm.requests) == 3
    assert "OBSERVED-THINGS" in prompt_text(lm.requests[-1])
    shown = prompt_text(lm.requests[0])
    assert sum(f"question {i}\n" in shown + "\n" for i in range(25)) == 5


def test_program_description_from_source_or_a_fallback():
    lm = prompt_lm()
    assert describe_program(lm, QA()) == "PROGRAM-DESCRIPTION-TEXT"
    assert "class QA(Module)" in prompt_text(lm.requests[0])

    namespace: dict = {"Module": Module, "Predict": Predict}
    exec("class Dynamic(Module):\n    def __init__(self):\n"
         "        self.step = Predict('a -> b')\n", namespace)
    source = program_source(namespace["Dynamic"]())
    assert "Dynamic" in source and "step" in source


# -- the settings object -------------------------------------------------------------------------


def test_settings_are_checked_and_named_by_their_option_names():
    with pytest.raises(ValueError, match="use_demos must be true or false"):
        ProposerSettings(use_demos="no")
    with pytest.raises(ValueError, match="proposer_temperature must be a number >= 0"):
        ProposerSettings(temperature=-0.5)
    with pytest.raises(ValueError, match="unknown tip 'loud'"):
        ProposerSettings(tip="loud")
    with pytest.raises(ValueError, match="unknown tip"):
        ProposerSettings(tip=["persona"])
    with pytest.raises(ValueError, match="proposer_data_batch_size must be an integer >= 1"):
        ProposerSettings(data_batch_size=0)
    assert ProposerSettings.option_names() == {
        "use_dataset_summary": "use_dataset_summary", "use_program_summary": "use_program_summary",
        "use_demos": "use_demos", "use_tip": "use_tip", "proposer_tip": "tip",
        "proposer_temperature": "temperature", "proposer_max_demos_shown": "max_demos_shown",
        "proposer_data_batch_size": "data_batch_size"}


def test_settings_from_a_mapping_and_changed_copies():
    settings = ProposerSettings.of({"use_tip": False, "proposer_temperature": 0.5})
    assert settings == ProposerSettings(use_tip=False, temperature=0.5)
    assert ProposerSettings.of({"temperature": 0.5}).temperature == 0.5
    assert ProposerSettings.of(None) == ProposerSettings()
    assert ProposerSettings.of(settings) is settings
    assert settings.replace(use_demos=False) == ProposerSettings(use_tip=False, use_demos=False,
                                                                 temperature=0.5)
    with pytest.raises(TypeError, match="unknown proposer setting.*'use_tips'"):
        settings.replace(use_tips=True)
    with pytest.raises(TypeError, match="unknown proposer setting"):
        ProposerSettings.of({"use_tips": True})
    with pytest.raises(ValueError, match="a ProposerSettings or a mapping"):
        ProposerSettings.of("use_tip=false")
    round_trip = ProposerSettings.of(settings.to_options())
    assert round_trip == settings


def test_a_configured_proposer_shares_the_grounding_and_changes_only_its_settings():
    proposer = GroundedProposer(prompt_lm(), {"use_dataset_summary": False})
    proposer.grounding = Grounding(program_description="PROGRAM")
    variant = proposer.configured(use_tip=False, temperature=0.5)
    assert variant.settings == ProposerSettings(use_dataset_summary=False, use_tip=False,
                                                temperature=0.5)
    assert proposer.settings == ProposerSettings(use_dataset_summary=False)
    assert variant.grounding is proposer.grounding and variant.notes is proposer.notes
    with pytest.raises(TypeError, match="unknown proposer setting"):
        proposer.configured(prompt_lm=None)
