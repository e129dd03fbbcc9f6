"""cotune: optimize LM programs end to end — prompts and LoRA weights — from a task metric.

The public API is what ``__all__`` lists; everything else is private.  Heavy dependencies
(openai, llama-cpp-python, optuna, torch) are imported only when the feature that needs them is
used, so ``import cotune`` stays fast.
"""

from cotune._version import __version__
from cotune.adapters import AdapterParseError, ChatAdapter, JSONAdapter
from cotune.core import (
    ChainOfThought,
    Example,
    InputField,
    Module,
    NoLMError,
    OutputField,
    Predict,
    Prediction,
    Signature,
    SignatureError,
    StateError,
    context,
    trace,
)
from cotune.evaluate.metrics import Score
from cotune.lm import (
    LM,
    Budget,
    BudgetExceeded,
    LMCache,
    LMError,
    LMRequestError,
    LMTransientError,
    ScriptedLM,
    budget,
    cache_disabled,
    track_usage,
)
from cotune.runs import load_program, save_program

__all__ = [
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
]
