"""Malformed inputs against the ``cotune`` command line, each in its own subprocess.

Data files, task files, CLI values, saved programs, run-folder files and bench specs, each
broken in one way.  A case's outcome is one of:

* ``clear``: exit status != 0, no "Traceback", and the output names what is wrong (the case's
  expected fragments: the file, the field or option, the problem);
* ``unclear``: it failed without a traceback, but the message misses a fragment;
* ``traceback``: a Python traceback reached the user;
* ``silent``: it exited 0, i.e. a malformed input produced a result (a silent wrong result).

A few valid inputs next to them (``controls``) must succeed, to show that the checks do not
refuse good input.  The LM is a local stub server (no model), so the probe needs no GPU and
takes a few minutes::

    python benchmarks/bad_inputs_probe.py --out /tmp/bad_inputs.json

It prints a table per category and the totals; exit status 0 when every case is clear and
every control passes.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from stub_server import start_stub_server  # noqa: E402

TASK = str(ROOT / "tests" / "scripted_task.py")
Files = dict[str, str | bytes]


@dataclass
class Case:
    category: str
    name: str
    argv: list[str]
    expect: list[str]
    """Fragments the output must contain (case-insensitive, whitespace-normalized)."""
    files: Files = field(default_factory=dict)
    """Files to write into the case's folder first (relative path -> content)."""
    data: bool = False
    """Point ``COTUNE_DATA_DIR`` at the case's ``data/`` folder."""
    run: bool = False
    """Copy a finished run folder to ``run/`` first (``files`` then overwrite its files)."""
    control: bool = False
    """A valid input: it must succeed."""


# -- the cases ---------------------------------------------------------------------------------

LM = ["--base-url", "{stub}", "--model", "stub"]
OPT = ["optimize", "--task", TASK, "--threads", "2", *LM, "--run-dir", "run"]
VANILLA = [*OPT, "--optimizer", "vanilla", "--val-size", "2", "--test-size", "2"]
EVAL = ["evaluate", "--task", TASK, "--threads", "2", *LM, "--limit", "2"]


def _gsm8k(rows: int) -> str:
    return "".join(json.dumps({"question": f"{i} + 1?", "answer": f"so #### {i + 1}"}) + "\n"
                   for i in range(rows))


GOOD_ROW = json.dumps({"question": "1 + 1?", "answer": "#### 2"}) + "\n"
HEART_ROW = {k: "1" for k in ("age", "sex", "dataset", "cp", "trestbps", "chol", "fbs",
                              "restecg", "thalch", "exang", "oldpeak", "slope", "ca", "thal")}
HOTPOT_ROW = {"id": "a", "question": "q?", "answer": "a", "type": "bridge",
              "gold_titles": ["T1", "T2"]}


def data_cases() -> list[Case]:
    gsm8k = "data/gsm8k/train.jsonl"
    ev = ["evaluate", "--task", "gsm8k", *LM, "--limit", "1"]

    def case(name: str, content: str | bytes, *expect: str, path: str = gsm8k,
             argv: list[str] | None = None, task: str = "gsm8k") -> Case:
        command = argv or [a if a != "gsm8k" else task for a in ev]
        return Case("data files", name, command, [path.split("/", 1)[1], *expect],
                    files={path: content}, data=True)

    heart, scone, hotpot = ("data/heart/train.jsonl", "data/scone/train.jsonl",
                            "data/hotpotqa/train.jsonl")
    return [
        Case("data files", "data file missing", ev, ["gsm8k/train.jsonl", "not found"],
             files={"data/README.md": "no data here"}, data=True),
        case("empty file", "", "no rows"),
        case("only blank lines", "\n \n\n", "no rows"),
        case("invalid UTF-8", GOOD_ROW.encode() + b'{"question": "\xff"}\n', "line 2",
             "not UTF-8"),
        case("latin-1 text", '{"question": "caf\xe9", "answer": "#### 1"}\n'.encode("latin-1"),
             "line 1", "not UTF-8"),
        case("not JSON", GOOD_ROW + "question: 1 + 1\n", "line 2", "not valid JSON"),
        case("truncated last line", GOOD_ROW + '{"question": "2 + 2?", "ans', "line 2",
             "not valid JSON"),
        case("a JSON array row", GOOD_ROW + "[1, 2]\n", "line 2", "expected a JSON object"),
        case("a JSON string row", '"1 + 1?"\n', "line 1", "expected a JSON object"),
        case("missing field", '{"question": "1 + 1?"}\n', "line 1", "missing fields",
             "answer"),
        case("field of the wrong type", '{"question": "1 + 1?", "answer": 2}\n', "line 1",
             "'answer' should be str"),
        case("no #### answer", '{"question": "1 + 1?", "answer": "it is 2"}\n', "line 1",
             "no '####'"),
        case("#### without a number", '{"question": "q", "answer": "#### many"}\n', "line 1",
             "no number"),
        case("too few rows for the default split", _gsm8k(100), "need 500 examples",
             "has 100"),
        case("heart: diagnosis out of range",
             json.dumps({**HEART_ROW, "num": "7"}) + "\n", "line 1", "'num' should be 0-4",
             path=heart, task="heart"),
        case("heart: missing column", json.dumps({"num": "0"}) + "\n", "line 1",
             "missing fields", path=heart, task="heart"),
        case("scone: unknown label",
             json.dumps({"premise": "p", "hypothesis": "h", "label": "maybe"}) + "\n",
             "line 1", "'maybe' is not one of", path=scone, task="scone"),
        case("scone: contradictory duplicate",
             "".join(json.dumps({"premise": "p", "hypothesis": "h", "label": label}) + "\n"
                     for label in ("entailment", "neutral")), "line 2", "appeared before",
             path=scone, task="scone"),
        case("hotpotqa: gold_titles not a list",
             json.dumps({**HOTPOT_ROW, "gold_titles": "T1"}) + "\n", "line 1",
             "'gold_titles' should be list[str]", path=hotpot, task="hotpotqa"),
        Case("data files", "hotpotqa: dev split missing",
             ["evaluate", "--task", "hotpotqa", *LM, "--limit", "1"],
             ["hotpotqa/dev.jsonl", "not found"],
             files={hotpot: "".join(
                 json.dumps({**HOTPOT_ROW, "id": str(i)}) + "\n" for i in range(200))},
             data=True),
        Case("data files", "COTUNE_DATA_DIR is a file", ["evaluate", "--task", "gsm8k", *LM],
             ["COTUNE_DATA_DIR", "not a directory"], files={"data": "x"}, data=True),
        Case("data files", "control: a 2/2/2 split of a 100-row file",
             ["optimize", "--task", "gsm8k", "--optimizer", "vanilla", *LM, "--run-dir", "run",
              "--train-size", "2", "--val-size", "2", "--test-size", "2", "--threads", "2"],
             [], files={gsm8k: _gsm8k(100)}, data=True, control=True),
    ]


TASK_HEAD = ("from cotune import Example, Module, Predict, Signature, InputField, OutputField\n"
             "class S(Signature):\n    q: str = InputField()\n    a: str = OutputField()\n"
             "class P(Module):\n    def __init__(self):\n        self.p = Predict(S)\n"
             "    def forward(self, q):\n        return self.p(q=q)\n"
             "def metric(example, prediction, trace=None):\n    return 1.0\n")
EXAMPLES = "[Example(q=str(i), a='x').with_inputs('q') for i in range(4)]"


def task_cases() -> list[Case]:
    def case(name: str, body: str | bytes, *expect: str, head: bool = True) -> Case:
        text = body if isinstance(body, bytes) else (TASK_HEAD if head else "") + body
        argv = ["optimize", "--task", "my_task.py", *OPT[3:], "--optimizer", "vanilla"]
        return Case("task files", name, argv, ["my_task.py", *expect],
                    files={"my_task.py": text})

    return [
        Case("task files", "task file missing",
             ["optimize", "--task", "missing_task.py", "--optimizer", "vanilla", *LM],
             ["missing_task.py", "not found"]),
        Case("task files", "unknown task name", ["evaluate", "--task", "irsi", *LM],
             ["unknown task 'irsi'", "known tasks"]),
        Case("task files", "task name with brackets",
             ["evaluate", "--task", "no[such]task", *LM], ["'no[such]task'"]),
        case("syntax error", "def broken(:\n", "failed to import", "SyntaxError"),
        case("raises on import", "raise RuntimeError('no data today')\n", "failed to import",
             "no data today"),
        case("imports a missing module", "import no_such_module_xyz\n", "failed to import",
             "no_such_module_xyz"),
        case("no program", f"trainset = {EXAMPLES}\n", "neither `program`"),
        case("program not a Module", f"program = 3\ntrainset = {EXAMPLES}\n",
             "`program` is a int"),
        case("make_program returns no Module",
             f"def make_program():\n    return 'P'\ntrainset = {EXAMPLES}\n",
             "make_program() returned a str"),
        case("no metric", f"program = P()\ntrainset = {EXAMPLES}\ndel metric\n",
             "no `metric"),
        case("metric not callable",
             f"program = P()\ntrainset = {EXAMPLES}\nmetric = 1\n", "no `metric"),
        case("no trainset", "program = P()\n", "neither `trainset`"),
        case("empty trainset", "program = P()\ntrainset = []\n", "training set is empty"),
        case("trainset of dicts", "program = P()\ntrainset = [{'q': '1', 'a': 'x'}]\n",
             "trainset[0] is a dict"),
        case("example without inputs",
             "program = P()\ntrainset = [Example(q='1', a='x')]\n", "no inputs marked"),
        case("load_splits returns a list",
             "program = P()\ndef load_splits(seed=0):\n    return [1, 2]\n",
             "must return Splits or (train, val, test)"),
        case("extra_metrics not a dict",
             f"program = P()\ntrainset = {EXAMPLES}\nextra_metrics = [metric]\n",
             "`extra_metrics` must be a dict"),
        case("not UTF-8", TASK_HEAD.encode() + b"name = 'caf\xe9'\nprogram = P()\n",
             "failed to import", "utf-8"),
    ]


def cli_cases() -> list[Case]:
    rs = [*OPT, "--optimizer", "random-search"]
    mipro = [*OPT, "--optimizer", "mipro"]
    bt = [*OPT, "--optimizer", "bettertogether"]

    def case(name: str, argv: list[str], *expect: str, files: Files | None = None) -> Case:
        return Case("CLI values", name, argv, list(expect), files=files or {})

    return [
        case("optimize --threads 0", [*VANILLA, "--threads", "0"], "threads", ">= 1"),
        case("optimize --threads -1", [*VANILLA, "--threads", "-1"], "threads", ">= 1"),
        case("optimize --threads abc", [*VANILLA, "--threads", "abc"], "--threads",
             "valid integer"),
        case("optimize --train-size -1", [*VANILLA, "--train-size", "-1"], "train_size",
             ">= 0"),
        case("optimize --val-size -3", [*OPT, "--optimizer", "vanilla", "--val-size", "-3"],
             "val_size", ">= 0"),
        case("optimize --train-size too big", [*VANILLA, "--train-size", "999"],
             "--train-size 999", "train split has 20"),
        case("optimize --max-calls -1", [*VANILLA, "--max-calls", "-1"], "max_calls", ">= 0"),
        case("optimize --max-tokens -5", [*VANILLA, "--max-tokens", "-5"], "max_tokens",
             ">= 0"),
        case("optimize --max-seconds -1", [*VANILLA, "--max-seconds", "-1"], "max_seconds",
             ">= 0"),
        case("optimize --max-seconds soon", [*VANILLA, "--max-seconds", "soon"],
             "--max-seconds", "valid number"),
        case("optimize --seed abc", [*VANILLA, "--seed", "abc"], "--seed", "valid integer"),
        case("unknown optimizer", [*OPT, "--optimizer", "mirpo"], "unknown optimizer 'mirpo'"),
        case("unknown MIPRO preset", [*mipro, "--preset", "huge"], "preset", "'huge'"),
        case("a preset for random-search", [*rs, "--preset", "light"], "--preset",
             "random-search"),
        case("unknown BetterTogether step", [*bt, "--strategy", "p -> x"],
             "unknown step(s) ['x']"),
        case("empty BetterTogether strategy", [*bt, "--strategy", " "], "empty strategy"),
        case("dangling arrow in a strategy", [*bt, "--strategy", "p ->"],
             "malformed strategy"),
        case("--set without =", [*rs, "--set", "num_candidates"], "--set expects KEY=VALUE"),
        case("--set with no key", [*rs, "--set", "=3"], "--set expects KEY=VALUE"),
        case("--set num_candidates=-5", [*rs, "--set", "num_candidates=-5"], "num_candidates",
             ">= 0", "-5"),
        case("--set num_candidates=abc", [*rs, "--set", "num_candidates=abc"],
             "num_candidates", "'abc'"),
        case("--set num_candidates=2.5", [*rs, "--set", "num_candidates=2.5"],
             "num_candidates", "2.5"),
        case("--set an unknown option", [*rs, "--set", "num_candiates=3"],
             "num_candiates"),
        case("--set max_labeled_demos=true", [*rs, "--set", "max_labeled_demos=true"],
             "max_labeled_demos", "True"),
        case("--set metric_threshold=high", [*rs, "--set", "metric_threshold=high"],
             "metric_threshold", "'high'"),
        case("--set seed=x", [*rs, "--set", "seed=x"], "seed"),
        case("mipro --set num_trials=0", [*mipro, "--set", "num_trials=0"], "num_trials",
             ">= 1"),
        case("mipro --set minibatch_size=-2", [*mipro, "--set", "minibatch_size=-2"],
             "minibatch_size", ">= 1"),
        case("mipro --set use_tip=maybe", [*mipro, "--set", "use_tip=maybe"], "use_tip",
             "true or false"),
        case("mipro --set mode=everything", [*mipro, "--set", "mode=everything"], "mode",
             "'everything'"),
        case("mipro --set proposer_temperature=-1",
             [*mipro, "--set", "proposer_temperature=-1"], "proposer_temperature"),
        case("finetune --set lora rank 0",
             [*OPT, "--optimizer", "finetune", "--set", 'lora={"rank": 0}'], "lora", "rank"),
        case("finetune --set lora unknown key",
             [*OPT, "--optimizer", "finetune", "--set", 'lora={"rnak": 8}'], "lora", "rnak"),
        case("finetune --set lora=abc", [*OPT, "--optimizer", "finetune", "--set", "lora=abc"],
             "lora", "'abc'"),
        case("bettertogether --set prompt_options=3",
             [*bt, "--set", "strategy=p", "--set", "prompt_options=3"], "prompt_options"),
        case("--run-dir is a file", [*OPT[:-1], "notes.txt", "--optimizer", "vanilla"],
             "notes.txt", "is a file", files={"notes.txt": "x"}),
        case("--run-dir is someone else's folder",
             [*OPT[:-1], "mine", "--optimizer", "vanilla"], "mine", "not a cotune run folder",
             files={"mine/thesis.tex": "x"}),
        case("evaluate --split bogus", [*EVAL, "--split", "bogus"], "unknown split 'bogus'"),
        case("evaluate --limit 0", [*EVAL[:-2], "--limit", "0"], "--limit must be >= 1"),
        case("evaluate --limit -1", [*EVAL[:-2], "--limit", "-1"], "--limit must be >= 1"),
        case("evaluate --limit abc", [*EVAL[:-2], "--limit", "abc"], "--limit",
             "valid integer"),
        case("evaluate --demos -2", [*EVAL, "--demos", "-2"], "--demos must be >= 0"),
        case("evaluate --threads 0", [*EVAL, "--threads", "0"], "--threads must be >= 1"),
        case("evaluate --threads -3", [*EVAL, "--threads", "-3"], "--threads must be >= 1"),
        case("bench: unknown optimizer", ["bench", "--task", TASK, "--optimizer", "nope",
                                          *LM, "--out", "b"], "unknown optimizer 'nope'"),
        case("bench --cache sometimes", ["bench", "--task", TASK, "--optimizer", "vanilla",
                                         "--cache", "sometimes", *LM, "--out", "b"],
             "cache must be one of"),
        case("bench --threads 0", ["bench", "--task", TASK, "--optimizer", "vanilla",
                                   "--threads", "0", *LM, "--out", "b"], "threads", ">= 1"),
        case("bench --optimizer random-search:x",
             ["bench", "--task", TASK, "--optimizer", "random-search:x", *LM, "--out", "b"],
             "takes no ':x'"),
        Case("CLI values", "control: evaluate --limit 2", EVAL, [], control=True),
    ]


STATE = {"cotune_state_version": 1, "predictors": {"classify": {
    "signature": {"inputs": ["text"], "outputs": ["parity"]}, "instruction": "x", "demos": []}}}


def program_cases() -> list[Case]:
    def case(name: str, content: str | bytes, *expect: str) -> Case:
        return Case("saved programs", name, [*EVAL, "--program", "prog.json"],
                    ["prog.json", *expect], files={"prog.json": content})

    def state(**predictor: object) -> str:
        entry = {**STATE["predictors"]["classify"], **predictor}
        return json.dumps({**STATE, "predictors": {"classify": entry}})

    return [
        Case("saved programs", "program file missing", [*EVAL, "--program", "nope.json"],
             ["nope.json", "not found"]),
        Case("saved programs", "program is a folder", [*EVAL, "--program", "adir"],
             ["adir", "not found"], files={"adir/x": "1"}),
        case("empty file", "", "not valid JSON"),
        case("invalid JSON", "{", "not valid JSON"),
        case("not UTF-8", b"\xff\xfe{}", "not a UTF-8 text file"),
        case("a JSON list", "[1, 2]", "expected a JSON object"),
        case("no version", json.dumps({"predictors": {}}), "not a cotune program state"),
        case("another version", json.dumps({**STATE, "cotune_state_version": 99}),
             "unsupported state version 99"),
        case("no predictors mapping", json.dumps({"cotune_state_version": 1}),
             "no 'predictors' mapping"),
        case("other predictors", json.dumps({**STATE, "predictors": {"solve": {}}}),
             "['solve']", "['classify']"),
        case("instruction not a string", state(instruction=5), "instruction must be a string"),
        case("demos not a list", state(demos="none"), "classify"),
        case("entry without signature",
             json.dumps({**STATE, "predictors": {"classify": {"demos": []}}}), "classify"),
    ]


def run_cases() -> list[Case]:
    resume = VANILLA

    def case(name: str, argv: list[str], files: Files, *expect: str) -> Case:
        return Case("run-folder files", name, argv, list(expect), files=files, run=True)

    show, report = ["show", "run"], ["report", "run"]
    return [
        case("config.json corrupt: resume", resume, {"run/config.json": "{"},
             "config.json is corrupt"),
        case("config.json a list: resume", resume, {"run/config.json": "[]"},
             "config.json is corrupt", "not a JSON object"),
        case("config.json corrupt: show", show, {"run/config.json": "{"},
             "config.json is corrupt"),
        case("config.json corrupt: report", report, {"run/config.json": "{"},
             "config.json is corrupt"),
        case("config.json not UTF-8: resume", resume, {"run/config.json": b"\xff"},
             "config.json is corrupt"),
        case("status.json corrupt: resume", resume, {"run/status.json": "{"},
             "status.json is corrupt"),
        case("journal.sqlite garbage: resume", resume,
             {"run/journal.sqlite": b"not a database" * 100}, "journal.sqlite",
             "not a usable journal"),
        case("candidates.json corrupt: report", report, {"run/candidates.json": '{"cand'},
             "candidates.json is corrupt"),
        case("candidates.json a list: report", report, {"run/candidates.json": "[]"},
             "candidates.json is corrupt", "expected a JSON object"),
        case("candidates.json corrupt: show", show, {"run/candidates.json": "{"},
             "candidates.json is corrupt"),
        case("result.json corrupt: report", report, {"run/result.json": "{"},
             "result.json is corrupt"),
        case("result.json corrupt: show", show, {"run/result.json": "nul"},
             "result.json is corrupt"),
        case("trials.json an object: report", report, {"run/trials.json": "{}"},
             "trials.json is corrupt", "expected a JSON list"),
        case("candidates.json of the wrong shape: show", show,
             {"run/candidates.json": '{"best_index": 0, "candidates": 5}'}, "malformed"),
        case("a run of another seed in the folder", [*resume, "--seed", "7"], {},
             "different configuration", "seed"),
        Case("run-folder files", "report of a folder that is no run",
             ["report", "empty"], ["empty", "neither a run folder"], files={"empty/x": "1"}),
        Case("run-folder files", "show of a folder that is no run", ["show", "empty"],
             ["empty", "not a cotune run folder"], files={"empty/x": "1"}),
        case("lm_cache.sqlite garbage: resume with --cache-dir",
             [*resume, "--cache-dir", "run"], {"run/lm_cache.sqlite": b"garbage" * 200},
             "lm_cache.sqlite", "is not usable"),
    ]


def bench_cases() -> list[Case]:
    base = {"tasks": [TASK], "optimizers": ["vanilla"], "val_size": 2, "test_size": 2,
            "base_url": "{stub}", "models": ["stub"]}

    def case(name: str, changes: dict | str | bytes, *expect: str, ext: str = "json",
             in_file: bool = True) -> Case:
        """``in_file``: the error names the spec file; else it is a cell's error at run time
        (the bench records it, runs the other cells, and exits 1), naming the cell."""
        if isinstance(changes, dict):
            content: str | bytes = json.dumps({**base, **changes})
        else:
            content = changes
        spec = f"spec.{ext}"
        where = [spec] if in_file else ["some cells did not finish", "scripted_task-"]
        if "gone.py" in expect:
            where[-1] = "gone-vanilla"
        return Case("bench specs", name, ["bench", "--spec", spec, "--out", "b"],
                    [*where, *expect], files={spec: content})

    return [
        Case("bench specs", "spec file missing", ["bench", "--spec", "none.json", "--out", "b"],
             ["none.json", "not found"]),
        case("invalid JSON", '{"tasks": [', "not a valid bench spec"),
        case("invalid TOML", 'tasks = ["iris"\n', "not a valid bench spec", ext="toml"),
        case("not UTF-8", b'{"tasks": ["\xff"]}', "not UTF-8"),
        case("a JSON list", "[1]", "an object of settings"),
        case("unknown setting", {"seed": 3}, "unknown bench setting", "'seed'"),
        case("no tasks", {"tasks": []}, "at least one task"),
        case("no optimizers", {"optimizers": []}, "at least one task and one optimizer"),
        case("tasks not a list", {"tasks": 5}, "tasks must be a list"),
        case("unknown optimizer", {"optimizers": ["vanila"]}, "unknown optimizer 'vanila'"),
        case("optimizer argument not taken", {"optimizers": ["labeled:3"]}, "takes no ':3'"),
        case("seeds a string", {"seeds": "abc"}, "seeds[]", "'abc'"),
        case("seeds with a boolean", {"seeds": [0, True]}, "seeds[]", "True"),
        case("models a number", {"models": 5}, "models must be a list"),
        case("models with an empty name", {"models": [""]}, "models[]"),
        case("models empty", {"models": []}, "models must not be empty"),
        case("max_calls a word", {"max_calls": "ten"}, "max_calls", "'ten'"),
        case("max_calls negative", {"max_calls": -3}, "max_calls", ">= 0"),
        case("max_seconds a list", {"max_seconds": [1]}, "max_seconds"),
        case("threads 0", {"threads": 0}, "threads", ">= 1"),
        case("threads a float", {"threads": 1.5}, "threads", "1.5"),
        case("cache a number", {"cache": 5}, "cache must be one of"),
        case("cache unknown", {"cache": "sometimes"}, "cache must be one of"),
        case("base_url a number", {"base_url": 8000}, "base_url"),
        case("train_size a word", {"train_size": "big"}, "train_size", "'big'"),
        case("task table with an unknown key", {"tasks": [{"name": TASK, "size": 3}]},
             "unknown key(s) ['size']"),
        case("task table with a negative size", {"tasks": [{"name": TASK, "val_size": -1}]},
             "val_size", ">= 0"),
        case("task table without a name", {"tasks": [{"train_size": 3}]},
             "a task is a name or a table"),
        case("task name a number", {"tasks": [{"name": 3}]}, "a task's name"),
        case("optimizer options a list",
             {"optimizers": [{"name": "random-search", "options": [1, 2]}]}, "options"),
        case("optimizer preset a number", {"optimizers": [{"name": "mipro", "preset": 2}]},
             "preset"),
        case("optimizer with an unknown key",
             {"optimizers": [{"name": "mipro", "presett": "light"}]},
             "unknown optimizer setting(s) ['presett']"),
        case("optimizer label empty", {"optimizers": [{"name": "vanilla", "label": " "}]},
             "label must be a non-empty string"),
        case("strategy a number", {"optimizers": [{"name": "bettertogether", "strategy": 7}]},
             "strategy"),
        case("the same cell twice", {"optimizers": ["vanilla", "vanilla"]},
             "names two cells alike"),
        case("a bad option value in a cell",
             {"optimizers": [{"name": "random-search", "options": {"num_candidates": -1}}]},
             "num_candidates", ">= 0", in_file=False),
        case("a cell's task file missing", {"tasks": ["gone.py"]}, "gone.py", "not found",
             in_file=False),
        Case("bench specs", "control: a good spec",
             ["bench", "--spec", "spec.json", "--out", "b"], [],
             files={"spec.json": json.dumps(base)}, control=True),
    ]


def all_cases() -> list[Case]:
    return [*data_cases(), *task_cases(), *cli_cases(), *program_cases(), *run_cases(),
            *bench_cases()]


# -- running -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    case: Case
    kind: str
    exit_code: int
    missing: list[str]
    output: str
    seconds: float


_BOX = re.compile(r"[│╭╮╰╯─]")


def normalize(text: str) -> str:
    return " ".join(_BOX.sub(" ", text).split()).lower()


def classify(case: Case, code: int, output: str) -> tuple[str, list[str]]:
    text = normalize(output)
    if case.control:
        return ("accepted" if code == 0 and "traceback" not in text else "refused"), []
    if "traceback (most recent call last)" in text:
        return "traceback", []
    if code == 0:
        return "silent", []
    missing = [f for f in case.expect if normalize(f) not in text]
    return ("clear" if not missing else "unclear"), missing


def prepare(case: Case, folder: Path, stub: str, template: Path) -> None:
    folder.mkdir(parents=True)
    if case.run:
        shutil.copytree(template, folder / "run")
    for name, content in case.files.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            content = content.replace("{stub}", stub)
        path.write_bytes(content if isinstance(content, bytes) else content.encode())


def run_case(case: Case, folder: Path, stub: str, template: Path, env: dict[str, str],
             timeout: float) -> Outcome:
    prepare(case, folder, stub, template)
    argv = [a.replace("{stub}", stub) for a in case.argv]
    case_env = dict(env)
    if case.data:
        case_env["COTUNE_DATA_DIR"] = str(folder / "data")
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-m", "cotune", *argv], cwd=folder,
                              env=case_env, capture_output=True, text=True, timeout=timeout)
        code, output = done.returncode, done.stdout + done.stderr
    except subprocess.TimeoutExpired as exc:
        code, output = 124, f"timed out after {timeout} s: {exc.stdout or ''}{exc.stderr or ''}"
    kind, missing = classify(case, code, output)
    return Outcome(case, kind, code, missing, output, time.monotonic() - started)


def make_template(root: Path, stub: str, env: dict[str, str]) -> Path:
    """A finished run folder that the run-folder cases copy and then break."""
    folder = root / "template"
    folder.mkdir()
    argv = [a.replace("{stub}", stub) for a in VANILLA]
    subprocess.run([sys.executable, "-m", "cotune", *argv, "--cache-dir", "run"], cwd=folder,
                   env=env, check=True, capture_output=True, timeout=300)
    return folder / "run"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, help="write every outcome as JSON here")
    parser.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    parser.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    parser.add_argument("-k", dest="keyword", help="only the cases whose name has this")
    parser.add_argument("--show", action="store_true", help="print the output of every case")
    parser.add_argument("--src", type=Path, default=ROOT / "src",
                        help="the cotune sources to probe (default: this checkout's)")
    args = parser.parse_args(argv)

    cases = [c for c in all_cases() if not args.keyword or args.keyword in c.name]
    stub, stop = start_stub_server("Parity: even")
    root = Path(tempfile.mkdtemp(prefix="cotune-bad-inputs-"))
    env = {**os.environ, "COTUNE_CACHE_DIR": str(root / "cache"), "COLUMNS": "250",
           "NO_COLOR": "1", "TERM": "dumb", "COTUNE_LLAMA_THREADS": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(args.src.resolve()),
                                                        os.environ.get("PYTHONPATH")]))}
    env.pop("OPENAI_API_KEY", None)
    env.pop("COTUNE_DATA_DIR", None)
    started = time.monotonic()
    try:
        template = make_template(root, stub, env)
        work: list[Callable[[], Outcome]] = [
            (lambda c=c, i=i: run_case(c, root / f"case{i:03d}", stub, template, env,
                                       args.timeout))
            for i, c in enumerate(cases)]
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            outcomes = list(pool.map(lambda job: job(), work))
    finally:
        stop()
    wall = time.monotonic() - started
    report(outcomes, wall, args.show)
    if args.out is not None:
        args.out.write_text(json.dumps([{
            "category": o.case.category, "name": o.case.name, "control": o.case.control,
            "kind": o.kind, "exit_code": o.exit_code, "missing": o.missing,
            "seconds": round(o.seconds, 2), "output": o.output[-2000:],
        } for o in outcomes], indent=2, ensure_ascii=False))
    shutil.rmtree(root, ignore_errors=True)
    bad = [o for o in outcomes if o.kind not in ("clear", "accepted")]
    return 0 if not bad else 1


def report(outcomes: list[Outcome], wall: float, show: bool) -> None:
    cases = [o for o in outcomes if not o.case.control]
    controls = [o for o in outcomes if o.case.control]
    print(f"{'category':18s} {'cases':>5s} {'clear':>5s} {'unclear':>7s} {'traceback':>9s} "
          f"{'silent':>6s}")
    for category in dict.fromkeys(o.case.category for o in cases):
        kinds = Counter(o.kind for o in cases if o.case.category == category)
        print(f"{category:18s} {sum(kinds.values()):5d} {kinds['clear']:5d} "
              f"{kinds['unclear']:7d} {kinds['traceback']:9d} {kinds['silent']:6d}")
    kinds = Counter(o.kind for o in cases)
    print(f"{'total':18s} {len(cases):5d} {kinds['clear']:5d} {kinds['unclear']:7d} "
          f"{kinds['traceback']:9d} {kinds['silent']:6d}")
    accepted = sum(o.kind == "accepted" for o in controls)
    print(f"controls (valid inputs) accepted: {accepted}/{len(controls)}; wall {wall:.0f} s")
    for o in outcomes:
        if o.kind not in ("clear", "accepted") or show:
            print(f"\n--- [{o.kind}] {o.case.category}: {o.case.name} (exit {o.exit_code})"
                  + (f"; missing {o.missing}" if o.missing else ""))
            print("\n".join(o.output.strip().splitlines()[-8:]))


if __name__ == "__main__":
    sys.exit(main())
