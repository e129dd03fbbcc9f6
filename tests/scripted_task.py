"""Parity of a number: a user task file (as `cotune optimize --task FILE` loads it) plus a
scripted LM for it, so that whole optimization runs take milliseconds.

The scripted LM answers every output field the prompt asks for; the parity is right unless a
hash of the whole prompt says otherwise, so demos and instructions change the score, and the
same prompt always gets the same answer.  ``COTUNE_TEST_SLEEP`` (seconds per call) slows it
down; ``COTUNE_TEST_LOG`` names a file that gets the cache key of every request that reaches
the backend, one per line.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
from typing import Any

from cotune import (
    Example,
    InputField,
    Module,
    OutputField,
    Predict,
    Prediction,
    ScriptedLM,
    Signature,
)
from cotune.lm.types import LMRequest
from cotune.tasks import Reference


class ParitySignature(Signature):
    """Say whether the number is even or odd."""

    text: str = InputField()
    parity: str = OutputField()


class Parity(Module):
    def __init__(self) -> None:
        self.classify = Predict(ParitySignature, max_tokens=16)

    def forward(self, text: str) -> Prediction:
        return self.classify(text=text)


def _example(n: int) -> Example:
    return Example(text=f"number {n}", parity="even" if n % 2 == 0 else "odd").with_inputs("text")


program = Parity()
trainset = [_example(n) for n in range(0, 20)]
valset = [_example(n) for n in range(100, 112)]
testset = [_example(n) for n in range(200, 208)]


def metric(example: Example, prediction: Prediction, trace: Any = None) -> float:
    return float(prediction.get("parity") == example["parity"])


def said_odd(example: Example, prediction: Prediction, trace: Any = None) -> float:
    """Reported beside the metric: how often the program answers "odd"."""
    return float(prediction.get("parity") == "odd")


extra_metrics = {"said_odd": said_odd}


def reference(program: Module) -> Reference:
    """The baseline without an LM: always "even" (right on half of the numbers)."""
    return Reference("always 'even'", lambda example: Prediction(parity="even"), ("score",))


# -- the scripted LM ---------------------------------------------------------------------------

_FIELD = re.compile(r"^(.+): <(\w+)>$", re.MULTILINE)


def scripted_answer(request: LMRequest) -> str:
    system = request.messages[0]["content"]
    query = request.messages[-1]["content"]
    digest = int(hashlib.sha256(json.dumps(request.messages).encode()).hexdigest(), 16)
    fields = _FIELD.findall(system.rpartition("one field per line:")[2]) or [("Answer", "answer")]
    return "\n".join(f"{title}: {_value(name, query, digest)}" for title, name in fields)


def _value(name: str, query: str, digest: int) -> str:
    if name == "parity":
        numbers = re.findall(r"\d+", query)
        right = "even" if numbers and int(numbers[-1]) % 2 == 0 else "odd"
        wrong = "odd" if right == "even" else "even"
        return wrong if digest % 3 == 0 else right
    return f"Decide the parity of the number carefully (variant {digest % 7})."


class SlowScriptedLM(ScriptedLM):
    """``scripted_answer`` after an optional sleep; logs each backend request's cache key."""

    _log_lock = threading.Lock()

    def _complete(self, request: LMRequest):
        time.sleep(float(os.environ.get("COTUNE_TEST_SLEEP", "0")))
        response = super()._complete(request)
        log = os.environ.get("COTUNE_TEST_LOG")
        if log:
            with self._log_lock, open(log, "a", encoding="utf-8") as f:
                f.write(request.fingerprint(self.identity()) + "\n")
        return response


def make_scripted_lm(model: str = "scripted", base_url: str | None = None,
                     **options: Any) -> ScriptedLM:
    """Stands in for ``cotune.lm.factory.make_lm`` (it takes the same ``cache=`` option)."""
    return SlowScriptedLM(scripted_answer, model=model, cache=options.get("cache"))
