"""Pins the public surface: a change here is a deliberate API change."""

from import_check import modules_loaded_by

import cotune

EXPECTED = {
    "LM",
    "AdapterParseError",
    "Budget",
    "BudgetExceeded",
    "ChainOfThought",
    "ChatAdapter",
    "Example",
    "InputField",
    "JSONAdapter",
    "LMCache",
    "LMError",
    "LMRequestError",
    "LMTransientError",
    "Module",
    "NoLMError",
    "OutputField",
    "Predict",
    "Prediction",
    "ScriptedLM",
    "Score",
    "Signature",
    "SignatureError",
    "StateError",
    "__version__",
    "budget",
    "cache_disabled",
    "context",
    "load_program",
    "save_program",
    "trace",
    "track_usage",
}


def test_public_names_are_pinned():
    assert set(cotune.__all__) == EXPECTED
    for name in cotune.__all__:
        assert getattr(cotune, name) is not None


def test_import_does_not_pull_heavy_dependencies():
    heavy = {"torch", "transformers", "peft", "llama_cpp", "openai", "optuna", "sklearn",
             "ray", "mlflow"}
    assert modules_loaded_by("import cotune, cotune.lm, cotune.evaluate, cotune.tasks",
                             heavy) == []
