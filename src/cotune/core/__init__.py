"""The programming model: examples, signatures, modules, predictors and tracing. No I/O."""

from cotune.core.example import Example, Prediction
from cotune.core.parallel import imap_unordered
from cotune.core.predict import (
    ChainOfThought,
    Module,
    NoLMError,
    Predict,
    demo_from_step,
    labelled_demo,
)
from cotune.core.runtime import (
    DEFAULT_ADAPTER,
    ChatModel,
    PromptAdapter,
    adapter_named,
    context,
    current_adapter,
    current_lm,
)
from cotune.core.signature import (
    Field,
    InputField,
    OutputField,
    Signature,
    SignatureError,
    ensure_signature,
)
from cotune.core.state import STATE_VERSION, StateError
from cotune.core.trace import Trace, TraceStep, trace

__all__ = [
    "DEFAULT_ADAPTER",
    "STATE_VERSION",
    "ChainOfThought",
    "ChatModel",
    "Example",
    "Field",
    "InputField",
    "Module",
    "NoLMError",
    "OutputField",
    "Predict",
    "Prediction",
    "PromptAdapter",
    "Signature",
    "SignatureError",
    "StateError",
    "Trace",
    "TraceStep",
    "context",
    "current_adapter",
    "current_lm",
    "demo_from_step",
    "adapter_named",
    "ensure_signature",
    "imap_unordered",
    "labelled_demo",
    "trace",
]
