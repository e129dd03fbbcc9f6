"""Prompts that do not fit the context: a recorded failure of one example during evaluation, and
fitted (shortened, journaled) prompts in MIPRO's grounding and proposal steps — with a
scripted LM whose context is tiny.  ``--n-ctx`` reaches the engine and the run folder."""

from __future__ import annotations

from pathlib import Path

import scripted_task as scripted
from helpers import QA, exact, qa_data
from test_proposer import prompt_reply
from typer.testing import CliRunner

from cotune import Example, ScriptedLM, context
from cotune.cli import app
from cotune.evaluate import Evaluate, exact_match
from cotune.lm import ContextOverflow
from cotune.optimize import MIPRO, MemoryJournal
from cotune.runs.folder import RunFolder

TASK_FILE = Path(__file__).with_name("scripted_task.py")


def tiny_context(script, limit: int):
    """``script``, behind a context window of ``limit`` characters of prompt."""

    def reply(request) -> str:
        size = sum(len(m["content"]) for m in request.messages)
        if size > limit:
            raise ContextOverflow(f"Requested tokens ({size}) exceed context window of {limit}")
        return script(request)

    return reply


def test_a_prompt_over_the_context_is_a_recorded_failure_of_that_example():
    devset = [Example(question="short", answer="ok").with_inputs("question"),
              Example(question="long " * 200, answer="ok").with_inputs("question"),
              Example(question="short again", answer="ok").with_inputs("question")]
    lm = ScriptedLM(tiny_context(lambda r: "Answer: ok", 400))
    with context(lm=lm):
        result = Evaluate(devset, exact_match(), num_threads=2, display_progress=False)(QA())
    assert result.complete and result.num_errors == 1
    failed = result.results[1]
    assert failed.error_type == "ContextOverflow" and "context window" in failed.error
    assert failed.score == 0.0
    assert [r.score for r in result.results] == [1.0, 0.0, 1.0]


TRAIN = [Example(question=f"train {i} " + "padding " * 30, answer=f"a{i}").with_inputs("question")
         for i in range(12)]
VAL = qa_data("val", 6)


def task_reply(request) -> str:
    question = request.messages[-1]["content"]
    number = question.split()[2] if question.startswith("Question: ") else "0"
    return f"Answer: a{number}"


def test_mipro_fits_its_grounding_and_proposal_prompts_to_a_tiny_context():
    """The prompt LM's context holds less than one batch of training examples, the program
    source or three demos: every such prompt is shortened until it fits, the cuts are
    journaled, and the run finishes with proposals."""
    prompt = ScriptedLM(tiny_context(prompt_reply, 1800), name="prompt")
    journal = MemoryJournal()
    optimizer = MIPRO(exact, num_instruction_candidates=3, num_demo_candidates=2, num_trials=3,
                      minibatch_size=4, full_eval_every=3, max_bootstrapped_demos=3,
                      max_labeled_demos=0, prompt_lm=prompt, num_threads=1)
    with context(lm=ScriptedLM(task_reply, name="task")):
        result = optimizer.optimize(QA(), TRAIN, VAL, journal=journal)
    assert result.best_score is not None
    grounding = journal.get("grounding")
    assert grounding["dataset_summary"] == "DATASET-SUMMARY-TEXT"
    assert any("dataset summary, batch 1: the prompt did not fit" in n
               for n in grounding["notes"])
    instructions = journal.get("instructions")
    assert instructions["answer"][1:] == ["Proposed instruction 1.", "Proposed instruction 2."]
    too_long = [r for r in prompt.requests
                if sum(len(m["content"]) for m in r.messages) > 1800]
    assert too_long  # the first tries did overflow: what came back was fitted afterwards


def test_a_proposal_that_cannot_fit_at_all_is_skipped_and_the_run_finishes():
    prompt = ScriptedLM(tiny_context(prompt_reply, 300), name="prompt")  # not even the frame
    journal = MemoryJournal()
    optimizer = MIPRO(exact, num_instruction_candidates=3, num_demo_candidates=1, num_trials=2,
                      minibatch_size=3, full_eval_every=2, max_bootstrapped_demos=1,
                      max_labeled_demos=0, prompt_lm=prompt, num_threads=1)
    with context(lm=ScriptedLM(task_reply, name="task")):
        result = optimizer.optimize(QA(), TRAIN, VAL, journal=journal)
    assert result.best_score is not None
    instructions = journal.get("instructions")
    assert instructions["answer"] == [QA().answer.instruction]  # only the current one
    notes = instructions["notes: prompts fitted to the context"]
    assert any("skipped, the prompt does not fit the context" in n for n in notes)


def test_n_ctx_reaches_the_engine_and_the_run_folder(tmp_path, monkeypatch):
    made: list[dict] = []

    def make_lm(model="scripted", base_url=None, **options):
        made.append(options)
        lm = scripted.make_scripted_lm(model, base_url, **options)
        lm.n_ctx = options.get("n_ctx")
        return lm

    monkeypatch.setattr("cotune.lm.factory.make_lm", make_lm)
    monkeypatch.setenv("COTUNE_CACHE_DIR", str(tmp_path / "cache"))
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["optimize", "--task", str(TASK_FILE), "--optimizer",
                                      "vanilla", "--n-ctx", "777", "--run-dir", str(run)])
    assert result.exit_code == 0, result.output
    assert made[0]["n_ctx"] == 777
    folder = RunFolder(run)
    assert folder.config()["model"]["n_ctx"] == 777
    assert folder.read_json("result.json")["n_ctx"] == 777
    refused = CliRunner().invoke(app, ["evaluate", "--base-url", "http://127.0.0.1:1/v1",
                                       "--n-ctx", "512"])
    assert refused.exit_code == 1 and "embedded engine" in refused.output


def test_a_bench_spec_sets_n_ctx_for_every_cell(tmp_path):
    from cotune.runs.bench import BenchSpec

    spec = BenchSpec.from_dict({"tasks": ["iris"], "optimizers": ["vanilla"], "n_ctx": 1024})
    cell = spec.cells()[0]
    assert spec.run_spec(cell, tmp_path).n_ctx == 1024
    assert BenchSpec.from_dict({"tasks": ["iris"], "optimizers": ["vanilla"]}).n_ctx is None
