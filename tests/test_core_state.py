import json

import pytest

from cotune import ChainOfThought, Example, Module, Predict, StateError, load_program, save_program


class Pipeline(Module):
    def __init__(self):
        self.draft = Predict("question -> draft")
        self.final = ChainOfThought("question, draft -> answer")

    def forward(self, question):
        draft = self.draft(question=question).draft
        return self.final(question=question, draft=draft)


def trained_pipeline():
    program = Pipeline()
    program.draft.instruction = "Write a draft answer."
    program.draft.demos = [Example(question="q1", draft="d1").with_inputs("question")]
    program.final.demos = [
        Example(question="q2", draft="d2", reasoning="r2", answer="a2").with_inputs(
            "question", "draft"
        )
    ]
    return program


def test_save_load_round_trip(tmp_path):
    program = trained_pipeline()
    path = save_program(program, tmp_path / "program.json")
    loaded = load_program(Pipeline(), path)
    assert loaded.draft.instruction == "Write a draft answer."
    assert loaded.draft.demos == program.draft.demos
    assert loaded.final.demos == program.final.demos
    assert loaded.final.instruction == program.final.instruction
    assert json.loads(path.read_text())["cotune_state_version"] == 1


def test_loading_into_a_program_of_another_shape_is_a_clear_error(tmp_path):
    path = save_program(trained_pipeline(), tmp_path / "program.json")

    class Other(Module):
        def __init__(self):
            self.only = Predict("question -> answer")

    with pytest.raises(StateError, match="predictors"):
        load_program(Other(), path)

    class SameNamesOtherFields(Module):
        def __init__(self):
            self.draft = Predict("question -> summary")
            self.final = ChainOfThought("question, draft -> answer")

    with pytest.raises(StateError, match="signature"):
        load_program(SameNamesOtherFields(), path)


@pytest.mark.parametrize(
    "content",
    [
        "not json at all {",
        "[1, 2]",
        json.dumps({"predictors": {}}),
        json.dumps({"cotune_state_version": 99, "predictors": {}}),
        json.dumps({"cotune_state_version": 1, "predictors": {"draft": {"instruction": 3}}}),
    ],
)
def test_corrupt_saved_programs_are_clear_errors(tmp_path, content):
    path = tmp_path / "bad.json"
    path.write_text(content)
    program = Pipeline()
    with pytest.raises(StateError):
        load_program(program, path)
    # nothing was half-loaded
    assert program.draft.demos == []


def test_failed_load_leaves_program_untouched(tmp_path):
    state = trained_pipeline().dump_state()
    state["predictors"]["final"]["demos"] = [{"broken": True}]
    path = tmp_path / "p.json"
    path.write_text(json.dumps(state))
    program = Pipeline()
    with pytest.raises(StateError, match="final"):
        load_program(program, path)
    assert program.draft.instruction != "Write a draft answer."


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    save_program(trained_pipeline(), tmp_path / "p.json")
    save_program(trained_pipeline(), tmp_path / "p.json")
    assert [p.name for p in tmp_path.iterdir()] == ["p.json"]
