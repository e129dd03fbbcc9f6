"""Programs and their predictors: ``Module``, the base class of programs, whose learnable
parameters are the ``Predict`` objects (one LM call with learnable instruction and demos;
``ChainOfThought``) among its attributes.  The two live together because each needs the other:
a module finds its predictors, a predictor is a module.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, Self

from cotune.core.example import Example, Prediction
from cotune.core.runtime import (
    ChatModel,
    PromptAdapter,
    adapter_named,
    current_adapter,
    current_lm,
)
from cotune.core.signature import Signature, ensure_signature
from cotune.core.state import dump_state, load_state

_LM_OPTIONS = {"temperature", "max_tokens", "stop", "seed", "n", "rollout_id", "cache"}


class Module:
    """Base class of programs.  Subclasses set sub-modules as attributes and define
    ``forward(**inputs)``.  The learnable parameters are the ``Predict`` objects found among the
    attributes, recursively (also inside lists, tuples and dicts)."""

    def forward(self, **inputs: Any) -> Any:
        raise NotImplementedError(f"{type(self).__name__} must define forward()")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.forward(*args, **kwargs)

    def named_predictors(self) -> list[tuple[str, Predict]]:
        """``(dotted name, predictor)`` for every predictor, in a stable order, each once."""
        found: list[tuple[str, Predict]] = []
        seen: set[int] = set()

        def visit(value: Any, name: str) -> None:
            if id(value) in seen:
                return
            if isinstance(value, Predict):
                seen.add(id(value))
                found.append((name or "self", value))
            elif isinstance(value, Module):
                seen.add(id(value))
                for attr, child in vars(value).items():
                    if not attr.startswith("_"):
                        visit(child, f"{name}.{attr}" if name else attr)
            elif isinstance(value, (list, tuple)):
                for i, child in enumerate(value):
                    visit(child, f"{name}[{i}]")
            elif isinstance(value, dict):
                for key, child in value.items():
                    visit(child, f"{name}[{key!r}]")

        if isinstance(self, Predict):
            return [("self", self)]
        visit(self, "")
        return found

    def predictors(self) -> list[Predict]:
        return [p for _, p in self.named_predictors()]

    def deepcopy(self) -> Self:
        """An independent copy: learnable state copied, LMs and other resources shared."""
        return copy.deepcopy(self)

    def reset_copy(self) -> Self:
        """A copy with every predictor's demos cleared and instruction reset."""
        new = self.deepcopy()
        for p in new.predictors():
            p.reset()
        return new

    # Save / load of learnable state (the format is cotune.core.state's)
    def dump_state(self) -> dict[str, Any]:
        return dump_state(self)

    def load_state(self, state: dict[str, Any]) -> Self:
        load_state(self, state)
        return self

    def __iter__(self) -> Iterator[Any]:  # pragma: no cover - guard against accidental use
        raise TypeError(f"{type(self).__name__} is not iterable")


@dataclass(frozen=True)
class TraceStep:
    """One predictor call, as ``cotune.trace()`` records it."""

    predictor: Predict
    inputs: dict[str, Any]
    outputs: Prediction


_step_listeners: ContextVar[tuple[Callable[[TraceStep], None], ...]] = ContextVar(
    "cotune_step_listeners", default=()
)


@contextmanager
def steps_to(listener: Callable[[TraceStep], None]) -> Iterator[None]:
    """Hand every predictor call made in the block to ``listener`` (after the ones of the
    enclosing blocks): what ``cotune.trace()`` is built on."""
    token = _step_listeners.set((*_step_listeners.get(), listener))
    try:
        yield
    finally:
        _step_listeners.reset(token)


class NoLMError(RuntimeError):
    """A predictor ran with no LM bound to it and none set with ``cotune.context(lm=...)``."""


class Predict(Module):
    """One LM call.

    Learnable state: ``instruction``, ``demos`` (examples holding this predictor's input and output
    fields) and ``lm`` (which model, and later which LoRA adapter, answers).  ``adapter`` (an
    adapter or a registered name: ``"chat"`` field markers, ``"json"`` structured) overrides
    the ``cotune.context`` one and the LM backend's default.
    """

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        *,
        instruction: str | None = None,
        lm: ChatModel | None = None,
        adapter: PromptAdapter | str | None = None,
        **lm_options: Any,
    ) -> None:
        unknown = set(lm_options) - _LM_OPTIONS
        if unknown:
            raise TypeError(f"unknown LM options {sorted(unknown)}; allowed: {sorted(_LM_OPTIONS)}")
        self.signature = ensure_signature(signature)
        self.instruction = instruction or self.signature.instruction
        self.original_instruction = self.instruction
        """What ``reset()`` returns to: the instruction the program was written with."""
        self.demos: list[Example] = []
        self.lm = lm
        self.adapter = adapter
        self.lm_options = lm_options

    @property
    def active_signature(self) -> Signature:
        """The signature with the current (possibly optimized) instruction."""
        cached = self.__dict__.get("_active_signature")
        if cached is None or cached.instruction != self.instruction:
            cached = self.signature.with_instruction(self.instruction)
            self.__dict__["_active_signature"] = cached
        return cached

    def effective_adapter(self, lm: ChatModel | None = None) -> PromptAdapter:
        """This predictor's adapter, else the ``cotune.context`` one, else the default of the
        LM that answers (``lm``, the bound one, or the context's)."""
        if self.adapter is not None:
            return adapter_named(self.adapter)
        return current_adapter(lm or self.lm or current_lm())

    optional_demo_outputs: frozenset[str] = frozenset()
    """Outputs a demo may lack (a chain of thought's reasoning: labelled data rarely has it)."""

    def demo_is_complete(self, demo: Mapping[str, Any]) -> bool:
        """True when ``demo`` holds every input and every (non-optional) output."""
        return all(demo.get(f.name) is not None for f in self.signature.fields
                   if f.name not in self.optional_demo_outputs)

    def demos_for(self, inputs: Mapping[str, Any]) -> list[Example]:
        """The demos a call with ``inputs`` shows the model: not one made from this very query
        (it would hand the model its own answer), nor one that lacks an output (it would teach
        the model to leave it out)."""
        return [d for d in self.demos
                if not is_same_query(d, inputs) and self.demo_is_complete(d)]

    def reset(self) -> None:
        self.instruction = self.original_instruction
        self.demos = []

    def forward(self, **inputs: Any) -> Prediction:
        missing = [f.name for f in self.signature.input_fields if f.name not in inputs]
        if missing:
            raise ValueError(
                f"{type(self).__name__}({self.signature.spec()!r}) is missing inputs {missing}"
            )
        options = dict(self.lm_options)
        for key in _LM_OPTIONS & inputs.keys():
            options[key] = inputs.pop(key)
        unexpected = set(inputs) - {f.name for f in self.signature.input_fields}
        if unexpected:
            raise ValueError(
                f"unexpected inputs {sorted(unexpected)} for {self.signature.spec()!r}"
            )

        lm = self.lm or current_lm()
        if lm is None:
            raise NoLMError(
                "no LM for this predictor: bind one (Predict(..., lm=lm)) "
                "or use `with cotune.context(lm=lm):`"
            )
        adapter = self.effective_adapter(lm)
        signature = self.active_signature
        messages = adapter.format(signature, self.demos_for(inputs), inputs)
        request_options = getattr(adapter, "request_options", None)
        if callable(request_options):  # e.g. the structured adapter's output schema
            budget = options.get("max_tokens") or lm.max_tokens
            options.update(request_options(signature, budget))
        response = lm.chat(messages, **options)
        completions = [
            _parse_or_repair(adapter, lm, signature, messages, choice.text, options)
            for choice in response.choices
        ]
        prediction = Prediction(completions[0], completions=completions)
        step = TraceStep(predictor=self, inputs=dict(inputs), outputs=prediction)
        for listener in _step_listeners.get():
            listener(step)
        return prediction

    def __deepcopy__(self, memo: dict[int, Any]) -> Predict:
        new = object.__new__(type(self))
        memo[id(self)] = new
        for key, value in vars(self).items():
            # the LM is a shared resource (a loaded model, an HTTP client): never copy it
            setattr(new, key, value if key == "lm" else copy.deepcopy(value, memo))
        return new

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}({self.signature.spec()!r}, demos={len(self.demos)}, "
            f"instruction={self.instruction[:60]!r})"
        )


class ChainOfThought(Predict):
    """``Predict`` with a ``reasoning`` output produced before the signature's outputs."""

    optional_demo_outputs = frozenset({"reasoning"})

    def __init__(
        self,
        signature: str | Signature | type[Signature],
        *,
        reasoning_description: str = "Think step by step to reach the answer.",
        **kwargs: Any,
    ) -> None:
        base = ensure_signature(signature)
        if "reasoning" in {f.name for f in base.fields}:
            raise ValueError("the signature already has a `reasoning` field")
        super().__init__(base.prepend_output("reasoning", str, reasoning_description), **kwargs)


def _parse_or_repair(
    adapter: PromptAdapter,
    lm: ChatModel,
    signature: Signature,
    messages: list[dict[str, str]],
    text: str,
    options: dict[str, Any],
) -> dict[str, Any]:
    """The parsed answer; an unparsable one gets one repair request (when the adapter can
    write one), whose failure is the error that counts."""
    try:
        return adapter.parse(signature, text)
    except ValueError as first:  # the adapter's parse error (a ValueError, raw text attached)
        repair_messages = getattr(adapter, "repair_messages", None)
        if not callable(repair_messages):
            raise
        again = repair_messages(signature, messages, text, first)
        retry = {k: v for k, v in options.items() if k not in ("n", "rollout_id")}
        response = lm.chat(again, **retry, repair=True)
        return adapter.parse(signature, response.choices[0].text)


def is_same_query(demo: Mapping[str, Any], query: Mapping[str, Any]) -> bool:
    """Whether ``demo`` holds every field of ``query`` with the same value: a demo made from
    that very query, which would hand the model its own answer."""
    return all(demo.get(k, _ABSENT) == v for k, v in query.items())


_ABSENT = object()


def labelled_demo(predictor: Predict, example: Mapping[str, Any]) -> Example | None:
    """``example`` as a labelled demo for ``predictor``: its fields of the predictor's
    signature, or None unless it holds every one the demo needs (all inputs and outputs, a
    chain of thought's reasoning aside).  An intermediate module whose output the labels lack
    (a multi-hop program's search query) so gets no labelled demo."""
    if not predictor.demo_is_complete(example):
        return None
    sig = predictor.signature
    inputs = [f.name for f in sig.input_fields]
    keep = [f.name for f in sig.fields if example.get(f.name) is not None]
    return Example({k: example[k] for k in keep}, input_keys=inputs)


def demo_from_step(inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> Example:
    """A demo for a predictor, made from one traced call."""
    return Example({**inputs, **outputs}, input_keys=inputs.keys())
