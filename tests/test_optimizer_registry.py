"""The optimizer registry: every optimizer by its name, for the CLI, bench specs and run folders."""

from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path

import pytest
from import_check import modules_loaded_by
from optimizer_suite import OptimizerSuite, exact_answer
from typer.testing import CliRunner

import cotune.optimize
from cotune.cli import app
from cotune.optimize import (
    Optimizer,
    build_optimizer,
    optimizer_names,
    register_optimizer,
    registry,
)
from cotune.optimize.reporting import CostEstimate
from cotune.runs.bench import parse_optimizer
from cotune.runs.optimize import RunSpec

SUITE_MODULES = ("test_optimizer_suite", "test_mipro", "test_gepa", "test_opro")
"""Where the optimizers plug into the shared suite."""


def exported_optimizers() -> set[type[Optimizer]]:
    return {obj for name in cotune.optimize.__all__
            if inspect.isclass(obj := getattr(cotune.optimize, name))
            and issubclass(obj, Optimizer) and not inspect.isabstract(obj)}


def test_every_optimizer_is_registered_under_its_own_name():
    entries = registry.registered_optimizers()
    assert {e.cls for e in entries} == exported_optimizers()
    for entry in entries:
        assert entry.name == entry.cls.name
        assert registry.get_optimizer(entry.cls.name).cls is entry.cls
    assert "vanilla" in optimizer_names()
    assert {e.name for e in entries if e.arg == "preset"} == {
        "mipro", "mipro-0shot", "bayesian-bootstrap", "gepa"}
    assert registry.get_optimizer("bettertogether").arg == "strategy"


def test_every_registered_optimizer_runs_the_shared_suite():
    for module in SUITE_MODULES:
        importlib.import_module(module)
    suites = [cls for cls in _subclasses(OptimizerSuite) if "make_optimizer" in vars(cls)]
    covered = {suite().make_optimizer(exact_answer, 0).name for suite in suites}
    assert covered == set(optimizer_names())


def _subclasses(cls: type) -> list[type]:
    found = []
    for sub in cls.__subclasses__():
        found += [sub, *_subclasses(sub)]
    return found


class Nameless(Optimizer):
    def estimate_cost(self, program, trainset, valset):
        return CostEstimate(0)

    def _optimize(self, run, student, trainset, valset):
        run.offer(student, None, "as given")


class Mine(Nameless):
    """A user's optimizer."""

    name = "mine"


@pytest.fixture
def scratch_registry(monkeypatch):
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))


def test_a_name_is_registered_once_and_must_be_the_class_own(scratch_registry):
    with pytest.raises(ValueError, match="needs its own `name`"):
        register_optimizer("no name")(Nameless)
    taken = type("Other", (Mine,), {"name": "mipro"})
    with pytest.raises(ValueError, match="'mipro' is taken by MIPRO"):
        register_optimizer("a second mipro")(taken)
    with pytest.raises(ValueError, match="presets need arg='preset'"):
        register_optimizer("presets without the arg", presets=("a",))(Mine)


def test_a_registered_optimizer_is_known_to_runs_and_benches(scratch_registry):
    assert "mine" not in optimizer_names()
    with pytest.raises(ValueError, match="unknown optimizer 'mine'; known: .*vanilla"):
        RunSpec(task="iris", optimizer="mine")
    register_optimizer("the program as given")(Mine)
    assert isinstance(build_optimizer("mine", exact_answer, seed=3), Mine)
    assert RunSpec(task="iris", optimizer="mine").optimizer == "mine"
    assert parse_optimizer("mine").name == "mine"
    with pytest.raises(ValueError, match="'mine' takes no ':x' \\(only .*mipro:PRESET"):
        parse_optimizer("mine:x")
    with pytest.raises(ValueError, match="--preset applies to .*gepa.*not to 'mine'"):
        build_optimizer("mine", exact_answer, preset="light")


def test_gepa_takes_a_preset_in_a_bench_spec():
    assert parse_optimizer("gepa:medium").preset == "medium"
    assert build_optimizer("gepa", exact_answer, preset="medium").preset == "medium"


# -- the command line --------------------------------------------------------------------------


def _flat(text: str) -> str:
    """Help text without its box drawing and line wrapping."""
    return re.sub(r"\s+", " ", re.sub(r"[│╭╮╰╯─]", " ", text))


def test_the_cli_help_names_every_registered_optimizer():
    runner = CliRunner()
    names = ", ".join(optimizer_names())
    optimize = _flat(runner.invoke(app, ["optimize", "--help"]).output)
    assert names in optimize
    presets = ", ".join(e.name for e in registry.registered_optimizers() if e.arg == "preset")
    assert f"The preset of {presets}: light, medium, heavy" in optimize
    assert names in _flat(runner.invoke(app, ["bench", "--help"]).output)
    listed = runner.invoke(app, ["optimizers"])
    assert listed.exit_code == 0
    lines = listed.output.splitlines()
    assert [line.split()[0] for line in lines] == [
        e.label() for e in registry.registered_optimizers()]
    assert "vanilla" in lines[-1] and "no optimization" in lines[-1]
    assert any(line.startswith("mipro[:light|medium|heavy] ") for line in lines)
    assert any(line.startswith("bettertogether[:STRATEGY] ") for line in lines)


def test_the_cli_refuses_an_unknown_optimizer_naming_the_known_ones():
    result = CliRunner().invoke(app, ["optimize", "--task", "iris", "--optimizer", "nope"])
    assert result.exit_code == 1
    assert "unknown optimizer 'nope'" in result.output and "vanilla" in result.output


def test_the_cli_imports_no_heavy_dependency_for_its_help():
    heavy = {"torch", "transformers", "peft", "llama_cpp", "openai", "optuna", "sklearn",
             "ray", "mlflow"}
    assert modules_loaded_by("import cotune.cli", heavy) == []


# -- no private names across modules -------------------------------------------------------------


def test_no_optimizer_module_imports_a_private_name_of_another():
    package = Path(cotune.optimize.__file__).parent
    offenders = []
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("cotune"):
                offenders += [f"{path.name}: {node.module}.{a.name}" for a in node.names
                              if a.name.startswith("_") and not a.name.startswith("__")]
    assert offenders == []


# -- run folders ---------------------------------------------------------------------------------


def test_a_run_folder_records_flat_proposer_options_and_resumes_with_them(tmp_path):
    import scripted_task as scripted

    from cotune.runs.folder import RunFolder, RunFolderError
    from cotune.runs.optimize import run_optimization

    options = {"num_trials": 3, "num_instruction_candidates": 2, "num_demo_candidates": 2,
               "minibatch_size": 4, "full_eval_every": 3, "use_demos": False,
               "use_tip": False, "proposer_temperature": 0.5}
    spec = RunSpec(task=str(Path(scripted.__file__)), optimizer="mipro", threads=2,
                   options=options)
    first = run_optimization(spec, tmp_path / "run", lm=scripted.make_scripted_lm())
    saved = RunFolder(tmp_path / "run").config()["optimizer"]
    assert (saved["use_demos"], saved["use_tip"], saved["proposer_temperature"]) == (
        False, False, 0.5)
    lm = scripted.make_scripted_lm()
    again = run_optimization(spec, tmp_path / "run", lm=lm)
    assert again.attempt == 2 and lm.requests == []
    assert again.val_score == first.val_score
    changed = RunSpec(**{**spec.__dict__, "options": {**options, "use_tip": True}})
    with pytest.raises(RunFolderError, match="different configuration .*use_tip: False -> True"):
        run_optimization(changed, tmp_path / "run", lm=scripted.make_scripted_lm())
