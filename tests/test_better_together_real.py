"""One real BetterTogether run (``p -> w``) of SmolLM2 on a tiny Iris split, through the CLI:
bootstrap random search, then LoRA on the passing traces, served by llama.cpp."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cotune.lm.models import file_sha256

pytestmark = pytest.mark.real_model

LORA = {"epochs": 1, "batch_size": 4, "rank": 4, "alpha": 8, "max_seq_len": 512}
PROMPT = {"num_candidates": 1, "max_bootstrapped_demos": 2, "max_labeled_demos": 2}
SIZES = {"train": 12, "test": 4}


def _requirements() -> None:
    for module in ("llama_cpp", "torch", "transformers", "peft", "sklearn"):
        pytest.importorskip(module)
    finetune = pytest.importorskip("cotune.finetune")
    if not hasattr(finetune, "LoraTrainer"):
        pytest.skip("the finetune layer has no LoraTrainer")


def _optimize(run_dir: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "cotune.cli", "optimize",
        "--task", "iris", "--optimizer", "bettertogether", "--strategy", "p -> w",
        "--model", "smollm2-135m", "--train-size", str(SIZES["train"]), "--val-size", "0",
        "--test-size", str(SIZES["test"]), "--threads", "2",
        "--run-dir", str(run_dir), "--cache-dir", str(run_dir),
        "--set", f"prompt_options={json.dumps(PROMPT)}", "--set", f"lora={json.dumps(LORA)}",
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def finished_run(smollm2_path, tmp_path_factory) -> Path:
    _requirements()
    run_dir = tmp_path_factory.mktemp("bettertogether") / "run"
    done = _optimize(run_dir)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return run_dir


def test_the_run_folder_holds_the_adapter_its_data_and_the_program(finished_run):
    program = json.loads((finished_run / "program.json").read_text())
    lm = program["predictors"]["classify"]["lm"]
    assert lm["backend"] == "llamacpp" and lm["lora_path"]
    adapter = Path(lm["lora_path"])
    assert adapter.is_file() and finished_run.resolve() in adapter.resolve().parents
    assert file_sha256(adapter) == lm["lora_sha256"]

    out_dir = adapter.parent
    while out_dir.name and not (out_dir / "train_records.jsonl").is_file():
        out_dir = out_dir.parent
    records = (out_dir / "train_records.jsonl").read_text().splitlines()
    assert records and all(json.loads(r)["messages"][-1]["role"] == "assistant" for r in records)
    logs = [p for p in out_dir.rglob("*") if p.is_file() and "log" in p.name.lower()]
    assert logs, f"no training log in {sorted(p.name for p in out_dir.rglob('*'))}"

    candidates = json.loads((finished_run / "candidates.json").read_text())["candidates"]
    assert [c["params"]["strategy_prefix"] for c in candidates] == ["p", "p -> w"]


def test_the_saved_program_reproduces_the_fine_tuned_answers(finished_run):
    from cotune.evaluate import Evaluate
    from cotune.lm.cache import cache_disabled
    from cotune.lm.llamacpp import LlamaCppLM
    from cotune.runs.optimize import RunSpec, load_data
    from cotune.runs.programs import load_program
    from cotune.tasks import get_task

    task = get_task("iris")
    splits = load_data(task, RunSpec(task="iris", train_size=SIZES["train"], val_size=0,
                                     test_size=SIZES["test"]))
    program = load_program(task.make_program(), finished_run / "program.json", restore_lms=True)
    tuned = program.classify.lm
    assert isinstance(tuned, LlamaCppLM) and tuned.lora_path is not None

    with cache_disabled():  # no context LM: an unbound predictor would fail (NoLMError)
        result = Evaluate(splits.test, task.metric, num_threads=1)(program)
    recorded = json.loads((finished_run / "result.json").read_text())
    assert result.num_errors == 0
    assert result.score == pytest.approx(recorded["test"]["score"])


def test_rerunning_the_finished_run_does_not_train_again(finished_run):
    journal_adapters = sorted(finished_run.rglob("*.gguf"))
    mtimes = [p.stat().st_mtime_ns for p in journal_adapters]
    done = _optimize(finished_run)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in sorted(finished_run.rglob("*.gguf"))] == mtimes


def test_bootstrap_finetune_scores_the_untuned_program_before_choosing(
    smollm2_path, tmp_path: Path
) -> None:
    """Standalone BootstrapFinetune on the real engine: the program as given is scored on the
    validation split first, and the saved program is the candidate the paired rule chose, with
    the adapter exactly when the tuned one was chosen."""
    _requirements()
    run_dir = tmp_path / "finetune"
    command = [
        sys.executable, "-m", "cotune.cli", "optimize", "--task", "iris",
        "--optimizer", "finetune", "--model", "smollm2-135m", "--train-size", "12",
        "--val-size", "8", "--test-size", "4", "--threads", "2",
        "--run-dir", str(run_dir), "--cache-dir", str(run_dir),
        "--set", f"lora={json.dumps(LORA)}",
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]

    search = json.loads((run_dir / "candidates.json").read_text())
    baseline, tuned = search["candidates"]
    assert baseline["description"].startswith("baseline")
    assert baseline["state"]["predictors"]["classify"]["lm"] is None
    assert tuned["state"]["predictors"]["classify"]["lm"]["lora_path"]
    assert len(baseline["scores"]) == len(tuned["scores"]) == 8
    assert baseline["examples"] == tuned["examples"]  # paired on the same validation examples
    allowed = tuned["vs_baseline"]["allowed"]
    assert tuned["vs_baseline"]["allowed"] == (tuned["vs_baseline"]["interval"]["low"] > 0)
    assert search["best_index"] == search["selection"]["chosen_index"] == (1 if allowed else 0)

    saved_lm = json.loads((run_dir / "program.json").read_text())["predictors"]["classify"]["lm"]
    assert (saved_lm is not None and bool(saved_lm.get("lora_path"))) == allowed
    result = json.loads((run_dir / "result.json").read_text())
    assert result["selection"]["reason"]
