"""GEPA through the CLI with the real SmolLM2-135M (embedded llama.cpp) on a tiny Iris split:
reflection, acceptance tests and the validation frontier all run against a real model, and the
projected cost printed before the run matches what it spent."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys

import pytest

from cotune.runs.folder import RunFolder

pytestmark = pytest.mark.real_model


def test_gepa_on_iris_with_the_real_model_through_the_cli(tmp_path, smollm2_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("llama_cpp")
    run = tmp_path / "run"
    command = [sys.executable, "-m", "cotune.cli", "optimize", "--task", "iris",
               "--optimizer", "gepa", "--preset", "light", "--set", "max_metric_calls=26",
               "--set", "minibatch_size=2", "--set", "max_instruction_chars=300",
               "--model", "smollm2-135m", "--train-size", "6", "--val-size", "6",
               "--test-size", "6", "--threads", "2", "--run-dir", str(run),
               "--cache-dir", str(run)]
    env = {**os.environ, "COTUNE_CACHE_DIR": str(tmp_path / "shared-cache"),
           "COTUNE_LLAMA_THREADS": os.environ.get("COTUNE_LLAMA_THREADS", "1")}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    output = done.stdout + done.stderr
    projected = int(re.search(r"projected LM calls: about (\d+)", output).group(1))

    folder = RunFolder(run)
    assert folder.status()["state"] == "finished"
    result = folder.read_json("result.json")
    assert result["test"]["examples"] == 6 and 0.0 <= result["test_score"] <= 1.0
    spent = result["usage"]["optimization"]["calls"]
    trials = folder.read_json("trials.json")
    assert trials and all(t["details"]["metric_calls"] <= 26 for t in trials)
    if max(c["score"] for c in folder.read_json("candidates.json")["candidates"]) < 1.0:
        # the budget was spent as projected, up to the one iteration (2 x 4 program runs
        # and a reflection) that no longer fit this tiny budget
        assert abs(spent - projected) <= 0.1 * spent + 9, (spent, projected)
    with sqlite3.connect(run / "journal.sqlite") as conn:
        reflections = [json.loads(v) for k, v in conn.execute(
            "SELECT key, value FROM entries WHERE key LIKE 'gepa:%:reflect:%'")]
    assert reflections and all(0 < r["chars"] <= 300 for r in reflections)
