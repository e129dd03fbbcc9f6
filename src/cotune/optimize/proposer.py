"""MIPRO's grounded instruction proposer.

An LM (the *prompt model*) writes new instructions for one predictor of a program.  What makes
the proposals useful is the context it is given, each part of which can be switched off:

* a summary of the training data (written by the LM from a few batches of examples),
* a summary of the program (from its source code and signatures) and of the module's role in it,
* a few demos bootstrapped from the program's own successful runs,
* a randomly drawn "tip" on how to write the instruction (be concise, be creative, ...).

Every prompt here is fitted to the prompt LM's context: one that does not fit
(:class:`~cotune.lm.ContextOverflow`) is sent again with its longest part shortened (fewer
examples or demos, a cut summary or source), and each such cut is noted in ``notes`` (MIPRO
journals them with the grounding and the proposals).

A switched-off source is left out of the proposer's prompt entirely: its field disappears from
the signature, so neither its text nor its name reaches the LM.
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import logging
import random
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

from cotune.core import Module
from cotune.core.example import Example
from cotune.core.parallel import imap_unordered
from cotune.core.predict import Predict
from cotune.core.runtime import ChatModel, current_adapter
from cotune.core.signature import Signature
from cotune.core.validate import check_bool, check_int, check_number
from cotune.lm.types import ContextOverflow
from cotune.optimize.prompting import ask, clean_instruction, describe_signature, text_signature

logger = logging.getLogger(__name__)

TIPS: dict[str, str] = {
    "concise": "Keep the instruction short: say what to do in as few words as possible.",
    "creative": "Feel free to be inventive in how you phrase the instruction.",
    "description": "Make the instruction detailed and descriptive about the task.",
    "edge_cases": "Warn the model about tricky inputs and edge cases it should handle with care.",
    "high_stakes": "Frame the task as a high-stakes situation where a wrong answer is costly.",
    "persona": "Give the model a persona suited to the task, e.g. 'You are an expert ...'.",
    "simple": "Use plain, simple wording that a beginner would understand.",
}
"""Tips the proposer draws from, by name.  Each nudges proposals in a different direction."""

_MAX_VALUE_CHARS = 400
_MAX_SOURCE_CHARS = 6000


# -- the LM-facing signatures --------------------------------------------------------------------


_OBSERVE = text_signature(
    "You are shown examples from a dataset. Write down what you notice about it: the task, "
    "the topics, the form and length of inputs and outputs, and anything unusual.",
    [("examples", "a batch of examples from the dataset")],
    ("observations", "what you notice, as a few short sentences"),
)
_OBSERVE_MORE = text_signature(
    "You are shown more examples from a dataset and the observations made so far. Extend the "
    "observations with anything new; repeat nothing.",
    [("prior_observations", "observations made so far"),
     ("examples", "another batch of examples from the dataset")],
    ("observations", "the new observations"),
)
_SUMMARIZE = text_signature(
    "Summarize these observations about a dataset in a few sentences: what the task is and "
    "what the data looks like.",
    [("observations", "observations about the dataset")],
    ("summary", "a short summary of the dataset"),
)
_DESCRIBE_PROGRAM = text_signature(
    "Below is the code of a program that calls language models, and the signatures of its "
    "modules. Describe in a few sentences what task the program solves and how.",
    [("program_code", "the program's source code"),
     ("module_signatures", "the inputs and outputs of each module")],
    ("program_description", "what the program does"),
)
_DESCRIBE_MODULE = text_signature(
    "Given a description of a language-model program, describe the role that one of its "
    "modules plays in it, in one or two sentences.",
    [("program_description", "what the program does"),
     ("module_name", "the module's name in the program"),
     ("module_signature", "the module's inputs and outputs")],
    ("module_description", "the module's role in the program"),
)

_PROPOSE_INSTRUCTION = (
    "You write instructions for one module of a program that calls language models. The "
    "instruction will be given to a language model, together with the module's inputs, to "
    "produce the module's outputs. Use the context below to write an instruction that helps "
    "the model do this module's task well."
)
_PROPOSER_FIELDS: dict[str, str] = {
    "dataset_summary": "a summary of the data the program runs on",
    "program_description": "what the whole program does",
    "module_description": "the role of this module in the program",
    "module_signature": "the module's input and output fields",
    "task_demos": "examples of this module's inputs and correct outputs",
    "current_instruction": "the instruction the module uses now",
    "tip": "a suggestion for how to write the new instruction",
}
_PROPOSED = ("proposed_instruction", "the new instruction, and nothing else")


# -- grounding: the context the proposer is given ----------------------------------------------


def summarize_dataset(
    lm: ChatModel,
    trainset: Sequence[Example],
    *,
    batch_size: int = 10,
    rng: random.Random,
    max_batches: int = 3,
    notes: list[str] | None = None,
) -> str:
    """Let ``lm`` observe up to ``max_batches`` shuffled batches of ``trainset``, then summarize
    its observations.  Costs at most ``max_batches + 1`` LM calls (more when a prompt has to be
    shortened to fit the context; a batch that cannot be made to fit is skipped)."""
    order = list(trainset)
    rng.shuffle(order)
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)][:max_batches]
    observations = ""
    for number, batch in enumerate(batches, 1):
        text = format_examples(batch)
        what = f"dataset summary, batch {number}"
        if observations:
            more = _ask_fitted(lm, _OBSERVE_MORE, notes, what,
                               prior_observations=observations, examples=text)
            observations = f"{observations}\n{more}" if more else observations
        else:
            observations = _ask_fitted(lm, _OBSERVE, notes, what, examples=text) or ""
    if not observations:
        return ""
    return _ask_fitted(lm, _SUMMARIZE, notes, "dataset summary", observations=observations) or ""


def describe_program(lm: ChatModel, program: Module, notes: list[str] | None = None) -> str:
    """Let ``lm`` describe what ``program`` does, from its source code and its signatures."""
    return _ask_fitted(
        lm,
        _DESCRIBE_PROGRAM,
        notes,
        "program description",
        program_code=program_source(program),
        module_signatures="\n".join(
            f"{name}: {describe_signature(p)}" for name, p in program.named_predictors()
        ),
    ) or ""


def describe_module(
    lm: ChatModel,
    program_description: str,
    predictor_name: str,
    predictor: Predict,
    notes: list[str] | None = None,
) -> str:
    """Let ``lm`` describe the role of one predictor within the program."""
    return _ask_fitted(
        lm,
        _DESCRIBE_MODULE,
        notes,
        f"description of module {predictor_name}",
        program_description=program_description or "(none)",
        module_name=predictor_name,
        module_signature=describe_signature(predictor),
    ) or ""


def program_source(program: Module) -> str:
    """The source of the program's class, or a short stand-in when it is not available
    (classes defined in a REPL or by ``exec`` have no source file)."""
    try:
        source = inspect.getsource(type(program))
    except (OSError, TypeError):
        names = ", ".join(name for name, _ in program.named_predictors())
        source = f"class {type(program).__name__}: a program with the modules {names}"
    return source[:_MAX_SOURCE_CHARS]


def format_examples(examples: Sequence[Mapping[str, Any]]) -> str:
    blocks = []
    for i, ex in enumerate(examples, 1):
        lines = [f"Example {i}:"]
        lines += [f"  {key}: {_short(value)}" for key, value in ex.items()]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


@dataclass
class Grounding:
    """The LM-written context shared by every proposal of one optimization (plain data, so an
    optimizer can journal it)."""

    dataset_summary: str | None = None
    program_description: str | None = None
    module_descriptions: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """Prompts that had to be shortened to fit the prompt LM's context, and how."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "dataset_summary": self.dataset_summary,
            "program_description": self.program_description,
            "module_descriptions": dict(self.module_descriptions),
        }
        if self.notes:
            data["notes"] = list(self.notes)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Grounding:
        return cls(data.get("dataset_summary"), data.get("program_description"),
                   dict(data.get("module_descriptions") or {}), list(data.get("notes") or []))


# -- the proposer ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProposerSettings:
    """What the proposer puts into its prompt and how it samples: one set of switches, shared
    by :class:`GroundedProposer` and MIPRO (which passes them on, and whose MIPRO++ varies the
    sources, the tip and the temperature per proposal).

    On the command line and in saved run configs each setting has its *option name*
    (:meth:`option_name`): the ``use_*`` switches keep theirs, the others are prefixed with
    ``proposer_`` (``--set use_demos=false``, ``--set proposer_temperature=0.7``).
    """

    use_dataset_summary: bool = True
    use_program_summary: bool = True
    use_demos: bool = True
    use_tip: bool = True
    tip: str | None = None
    """A tip by name (see :data:`TIPS`) for every candidate; None: one drawn at random each."""
    temperature: float = 1.0
    max_demos_shown: int = 3
    data_batch_size: int = 10
    """Training examples per batch the dataset summary observes."""

    SOURCES: ClassVar[tuple[str, ...]] = ("use_dataset_summary", "use_program_summary",
                                          "use_demos")
    """The grounding sources, in the order of the proposer's prompt."""

    def __post_init__(self) -> None:
        for switch in (*self.SOURCES, "use_tip"):
            check_bool(self.option_name(switch), getattr(self, switch))
        if self.tip is not None and (not isinstance(self.tip, str) or self.tip not in TIPS):
            raise ValueError(f"unknown tip {self.tip!r}; known tips: {sorted(TIPS)}")
        check_number(self.option_name("temperature"), self.temperature, minimum=0)
        check_int(self.option_name("max_demos_shown"), self.max_demos_shown, minimum=0)
        check_int(self.option_name("data_batch_size"), self.data_batch_size, minimum=1)

    @staticmethod
    def option_name(setting: str) -> str:
        return setting if setting.startswith("use_") else f"proposer_{setting}"

    @classmethod
    def option_names(cls) -> dict[str, str]:
        """Option name -> setting name, for every setting."""
        return {cls.option_name(f.name): f.name for f in fields(cls)}

    @classmethod
    def of(cls, value: ProposerSettings | Mapping[str, Any] | None) -> ProposerSettings:
        """``value`` as settings: settings as they are, a mapping of setting names (or of
        option names) as the changes to the defaults, None as the defaults."""
        if value is None:
            return cls()
        if isinstance(value, ProposerSettings):
            return value
        if not isinstance(value, Mapping):
            raise ValueError(f"proposer settings must be a ProposerSettings or a mapping, got "
                             f"{type(value).__name__}")
        names = cls.option_names()
        return cls().replace(**{names.get(key, key): v for key, v in value.items()})

    def replace(self, **changes: Any) -> ProposerSettings:
        """A copy with some settings changed (checked like the constructor's)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise TypeError(f"unknown proposer setting(s) {unknown}; known: {sorted(known)}")
        return dataclasses.replace(self, **changes)

    def to_options(self) -> dict[str, Any]:
        """The settings under their option names (as MIPRO writes them to a run config)."""
        return {self.option_name(f.name): getattr(self, f.name) for f in fields(self)}


class GroundedProposer:
    """Proposes instructions for a predictor with ``prompt_lm``, as ``settings`` say.

    Call :meth:`ground` once (or set ``grounding``) before :meth:`propose` when the dataset or
    program summary is switched on.
    """

    def __init__(
        self,
        prompt_lm: ChatModel,
        settings: ProposerSettings | Mapping[str, Any] | None = None,
        *,
        num_threads: int = 4,
    ) -> None:
        self.prompt_lm = prompt_lm
        self.settings = ProposerSettings.of(settings)
        self.num_threads = num_threads
        self.grounding: Grounding | None = None
        self.notes: list[str] = []
        """Proposal prompts shortened to fit the context (appended from worker threads)."""
        self._notes_lock = threading.Lock()

    def configured(self, **changes: Any) -> GroundedProposer:
        """A copy with some settings changed (sharing the grounding): MIPRO++ uses one per
        proposer configuration it tries."""
        new = copy.copy(self)  # shares ``notes``: one record of the cuts for the whole run
        new.settings = self.settings.replace(**changes)
        return new

    def ground(self, program: Module, trainset: Sequence[Example], rng: random.Random
               ) -> Grounding:
        """Write the summaries the switched-on sources need (a few LM calls)."""
        grounding = Grounding()
        notes = grounding.notes
        if self.settings.use_dataset_summary:
            grounding.dataset_summary = summarize_dataset(
                self.prompt_lm, trainset, batch_size=self.settings.data_batch_size, rng=rng,
                notes=notes,
            )
        if self.settings.use_program_summary:
            description = describe_program(self.prompt_lm, program, notes)
            grounding.program_description = description
            grounding.module_descriptions = {
                name: describe_module(self.prompt_lm, description, name, p, notes)
                for name, p in program.named_predictors()
            }
        self.grounding = grounding
        return grounding

    # -- proposing ----------------------------------------------------------------------------

    def propose(
        self,
        predictor_name: str,
        predictor: Predict,
        demo_sets: Sequence[Sequence[Example]],
        n: int,
        rng: random.Random,
    ) -> list[str]:
        """Up to ``n`` distinct instructions: the current one first, then ``n - 1`` proposals
        (fewer when the LM repeats itself).  Candidate ``j`` is shown demos from demo set
        ``j mod len(demo_sets)`` and is sampled with ``rollout_id=j``."""
        jobs = [(j, self.pick_demos(demo_sets, j, rng), self.pick_tip(rng)) for j in range(1, n)]

        def run(job: tuple[int, list[Example], str | None]) -> str | None:
            j, demos, tip = job
            return self.propose_one(predictor_name, predictor, demos, tip, rollout_id=j)

        results: dict[int, str | None] = {}
        for index, future in imap_unordered(run, jobs, max(1, self.num_threads)):
            results[index] = future.result()
        proposals = [predictor.instruction] + [results[i] or "" for i in range(len(jobs))]
        return _distinct(proposals)

    def pick_demos(
        self, demo_sets: Sequence[Sequence[Example]], j: int, rng: random.Random
    ) -> list[Example]:
        if not self.settings.use_demos or not demo_sets:
            return []
        demos = list(demo_sets[j % len(demo_sets)])
        return rng.sample(demos, min(self.settings.max_demos_shown, len(demos)))

    def pick_tip(self, rng: random.Random) -> str | None:
        if not self.settings.use_tip:
            return None
        return self.settings.tip if self.settings.tip is not None else rng.choice(sorted(TIPS))

    def propose_one(
        self,
        predictor_name: str,
        predictor: Predict,
        demos: Sequence[Example],
        tip: str | None,
        *,
        rollout_id: int,
    ) -> str | None:
        """One proposal, or None when the LM's answer is empty (or its prompt cannot be made
        to fit the context even with its demos and summaries cut down)."""
        inputs = self.prompt_inputs(predictor_name, predictor, demos, tip)
        notes: list[str] = []
        text = _ask_fitted(
            self.prompt_lm, _proposer_signature, notes,
            f"instruction proposal {rollout_id} for {predictor_name}",
            keep=("module_signature", "current_instruction"),
            temperature=self.settings.temperature, rollout_id=rollout_id,
            max_tokens=_MAX_INSTRUCTION_TOKENS, **inputs,
        )
        if notes:
            with self._notes_lock:
                self.notes.extend(notes)
        text = clean_instruction(text or "")
        return text or None

    def prompt_inputs(
        self, predictor_name: str, predictor: Predict, demos: Sequence[Example], tip: str | None
    ) -> dict[str, str]:
        """The proposer's prompt fields: only the switched-on sources, in a fixed order."""
        grounding = self._grounding()
        inputs: dict[str, str] = {}
        if self.settings.use_dataset_summary and grounding.dataset_summary:
            inputs["dataset_summary"] = grounding.dataset_summary
        if self.settings.use_program_summary and grounding.program_description:
            inputs["program_description"] = grounding.program_description
            module = grounding.module_descriptions.get(predictor_name)
            if module:
                inputs["module_description"] = module
        inputs["module_signature"] = describe_signature(predictor)
        if self.settings.use_demos and demos:
            inputs["task_demos"] = format_examples([d.to_dict() for d in demos])
        inputs["current_instruction"] = predictor.instruction
        if self.settings.use_tip and tip is not None:
            inputs["tip"] = TIPS[tip]
        return inputs

    def render_prompt(
        self, predictor_name: str, predictor: Predict, demos: Sequence[Example], tip: str | None
    ) -> list[dict[str, str]]:
        """The chat messages :meth:`propose_one` sends, for inspection."""
        inputs = self.prompt_inputs(predictor_name, predictor, demos, tip)
        return current_adapter(self.prompt_lm).format(_proposer_signature(inputs), [], inputs)

    def _grounding(self) -> Grounding:
        if self.grounding is not None:
            return self.grounding
        if self.settings.use_dataset_summary or self.settings.use_program_summary:
            raise RuntimeError(
                "the proposer has no grounding: call ground(program, trainset, rng) first, "
                "or switch the dataset and program summaries off"
            )
        return Grounding()


# -- helpers -----------------------------------------------------------------------------------


def _proposer_signature(inputs: Mapping[str, str]) -> Signature:
    return text_signature(
        _PROPOSE_INSTRUCTION, [(name, _PROPOSER_FIELDS[name]) for name in inputs], _PROPOSED
    )


_MAX_FITTING_STEPS = 12
_MIN_PART_CHARS = 24


def _ask_fitted(
    lm: ChatModel,
    signature: Signature | Callable[[Mapping[str, str]], Signature],
    notes: list[str] | None,
    what: str,
    *,
    keep: Sequence[str] = (),
    temperature: float | None = None,
    rollout_id: int | None = None,
    max_tokens: int | None = None,
    **inputs: str,
) -> str | None:
    """:func:`~cotune.optimize.prompting.ask`, with the prompt fitted to the LM's context:
    while it does not fit, its longest input (other than ``keep``) is shortened — a list of
    examples or demos loses its second half, a text is cut to half — and dropped once too
    short, where ``signature`` is built from the inputs (a function).  Each cut is added to
    ``notes``; None when the prompt cannot be made to fit."""
    options = {k: v for k, v in (("temperature", temperature), ("rollout_id", rollout_id),
                                 ("max_tokens", max_tokens)) if v is not None}
    inputs = dict(inputs)
    for _ in range(_MAX_FITTING_STEPS):
        sig = signature(inputs) if callable(signature) else signature
        try:
            return ask(lm, sig, _PROPOSED[0] if callable(signature) else None,
                       **options, **inputs)
        except ContextOverflow as exc:
            cut = _shorten_longest(inputs, keep, droppable=callable(signature))
            if cut is None:
                _note(notes, f"{what}: skipped, the prompt does not fit the context even "
                      f"shortened ({str(exc)[:200]})")
                return None
            _note(notes, f"{what}: the prompt did not fit the context; {cut}")
    _note(notes, f"{what}: skipped, still too long after {_MAX_FITTING_STEPS} cuts")
    return None


def _note(notes: list[str] | None, text: str) -> None:
    logger.info("%s", text)
    if notes is not None:
        notes.append(text)


def _shorten_longest(inputs: dict[str, str], keep: Sequence[str], *, droppable: bool
                     ) -> str | None:
    """Shorten (or drop) the longest shortenable input in place; say what was done, or None
    when nothing is left to shorten."""
    parts = [k for k, v in inputs.items() if k not in keep and len(v) > _MIN_PART_CHARS]
    if not parts:
        parts = [k for k, v in inputs.items() if k not in keep] if droppable else []
        if not parts:
            return None
        name = max(parts, key=lambda k: len(inputs[k]))
        del inputs[name]
        return f"dropped {name}"
    name = max(parts, key=lambda k: len(inputs[k]))
    before = inputs[name]
    blocks = before.split("\n\n")
    if len(blocks) > 1:  # examples or demos: keep the first half of them
        kept = blocks[: len(blocks) // 2]
        inputs[name] = "\n\n".join(kept)
        return f"kept {len(kept)} of the {len(blocks)} items of {name}"
    half = before[: len(before) // 2].rsplit(" ", 1)[0]
    inputs[name] = half + " ..."
    return f"cut {name} from {len(before)} to {len(half)} characters"


_MAX_INSTRUCTION_TOKENS = 256
"""An instruction is a paragraph; small models otherwise ramble on (or write code) for pages."""


def _distinct(texts: Sequence[str]) -> list[str]:
    seen: set[str] = set()
    out = []
    for text in texts:
        if text and text not in seen:
            seen.add(text)
            out.append(text)
    return out


def _short(value: Any) -> str:
    text = str(value).replace("\n", " ")
    return text if len(text) <= _MAX_VALUE_CHARS else text[: _MAX_VALUE_CHARS - 3] + "..."
