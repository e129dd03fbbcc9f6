"""MIPRO: joint search over instructions and demo sets with a Bayesian surrogate.

Opsahl-Ong et al., "Optimizing Instructions and Demonstrations for Multi-Stage Language Model
Programs" (2024, arXiv 2406.11695).  Three steps:

1. **Demo candidates**: ``num_demo_candidates`` demo sets per predictor, bootstrapped from the
   program's own successful runs on shuffled copies of the training set.
2. **Instruction candidates**: a :class:`~cotune.optimize.proposer.GroundedProposer` writes
   ``num_instruction_candidates - 1`` new instructions per predictor (candidate 0 is the current
   instruction).
3. **Search**: a TPE surrogate (optuna) picks one instruction and one demo set per predictor for
   each trial; a trial scores its program on a random mini-batch of the validation set.  Every
   ``full_eval_every`` trials, and at the end, the combination with the best *mean* mini-batch
   score that has not been fully evaluated is scored on the whole validation set and offered as
   a candidate; the best fully evaluated program is the result.

Variants: ``mode="instructions_only"`` (0-shot MIPRO: no demos in the program),
``mode="demos_only"`` (Bayesian bootstrap: instructions kept), and ``meta_optimize_proposer``
(MIPRO++: the surrogate also picks, per predictor, the proposer's grounding sources, tip and
temperature; the instruction index then names a sample drawn with those settings, proposed
lazily the first time a trial asks for it).

Resume: every step is journaled (demo sets, grounding, instructions, each trial, each full
evaluation).  Trial ``n``'s parameters are asked from a sampler seeded with ``(seed, n)`` and a
study rebuilt from the journaled results of the earlier trials, so they depend on nothing a kill
can lose; a restarted run replays the journal and continues exactly where the killed one was.
"""

from __future__ import annotations

import hashlib
import json
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from cotune.core import Module
from cotune.core.example import Example
from cotune.core.predict import NoLMError, Predict
from cotune.core.runtime import ChatModel, current_lm
from cotune.core.validate import check_bool, check_choice, check_int
from cotune.optimize.base import OptimizationRun, Optimizer
from cotune.optimize.bootstrap import bootstrap_demo_sets
from cotune.optimize.proposer import TIPS, GroundedProposer, Grounding, ProposerSettings
from cotune.optimize.registry import register_optimizer
from cotune.optimize.reporting import CostEstimate

Mode = Literal["full", "instructions_only", "demos_only"]
DemoSets = list[dict[str, list[Example]]]
"""Demo candidates: ``demo_sets[i][predictor name]`` is demo set ``i`` of that predictor."""

PRESETS: dict[str, dict[str, int]] = {
    "light": {"num_instruction_candidates": 6, "num_demo_candidates": 6, "num_trials": 15,
              "minibatch_size": 25, "full_eval_every": 5},
    "medium": {"num_instruction_candidates": 12, "num_demo_candidates": 12, "num_trials": 40,
               "minibatch_size": 35, "full_eval_every": 10},
    "heavy": {"num_instruction_candidates": 18, "num_demo_candidates": 18, "num_trials": 100,
              "minibatch_size": 50, "full_eval_every": 10},
}
PROPOSER_TEMPERATURES = (0.5, 1.0, 1.5)
"""The proposer temperatures MIPRO++ chooses from."""
SUMMARY_BATCHES = 3
"""Batches of training data the proposer's dataset summary looks at (one LM call each)."""

_FITTING_NOTES = "notes: prompts fitted to the context"
"""A key of the journaled proposals that no predictor name can be (it has spaces)."""


# -- proposer settings as options --------------------------------------------------------------

_OPTIONS_OF_OLDER_CONFIGS = ("use_dataset_summary", "use_program_summary", "use_demos",
                             "use_tip", "proposer_temperature")
"""The proposer options every MIPRO run config holds; the others are recorded only when they
differ from their default, so run folders written before they existed still resume."""


def proposer_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor options as the command line and bench specs give them (``use_demos=False``,
    ``proposer_temperature=0.7``, flat) with the proposer's folded into ``proposer_settings``
    (merged into one given there as a mapping)."""
    names = ProposerSettings.option_names()
    flat = {k: v for k, v in options.items() if k in names}
    if not flat:
        return dict(options)
    rest = {k: v for k, v in options.items() if k not in names}
    given = rest.pop("proposer_settings", None)
    merged = {**ProposerSettings.of(given).to_options(), **flat} if given is not None else flat
    return {**rest, "proposer_settings": merged}


def _recorded_proposer_options(settings: ProposerSettings) -> dict[str, Any]:
    default = ProposerSettings().to_options()
    return {k: v for k, v in settings.to_options().items()
            if k in _OPTIONS_OF_OLDER_CONFIGS or v != default[k]}


def _refuse_flat_proposer_options(kwargs: Mapping[str, Any]) -> None:
    flat = sorted(set(kwargs) & set(ProposerSettings.option_names()))
    if flat:
        raise TypeError(f"{', '.join(flat)}: proposer settings go in proposer_settings= "
                        f"(e.g. proposer_settings={{{flat[0]!r}: ...}}); the flat spelling is "
                        "the command line's (--set), see proposer_options()")


@register_optimizer("MIPRO: instructions and demos, Bayesian search", arg="preset",
                    presets=tuple(PRESETS), options=proposer_options)
class MIPRO(Optimizer):
    """MIPRO (see the module docstring).

    ``preset`` ("light", "medium", "heavy") sets the candidate counts, trials, mini-batch size
    and full-evaluation interval; any of them given explicitly overrides the preset.
    ``prompt_lm`` writes the instructions (default: the LM in ``cotune.context`` at run time);
    the program itself runs with its own LMs.  With ``evaluate_baseline`` the program as given is
    scored on the validation set first (one extra pass over it) and is the baseline: a searched
    program replaces it only with a gain ``min_gain`` accepts (by default, beyond noise), so
    the result is never worse than the input there.  Without it the first full evaluation is
    the baseline.  When the budget runs out, the choice so far is returned (the program as
    given before any full evaluation).

    ``proposer_settings`` (a :class:`~cotune.optimize.proposer.ProposerSettings`, or a mapping
    of its settings) say what the proposer is grounded in and how it samples; MIPRO++ chooses
    among the sources switched on there.  The command line sets them by their option names
    (``--set use_demos=false``, ``--set proposer_temperature=0.7``): see
    :func:`proposer_options`.
    """

    name = "mipro"

    def __init__(
        self,
        metric: Any,
        *,
        preset: str = "light",
        num_instruction_candidates: int | None = None,
        num_demo_candidates: int | None = None,
        num_trials: int | None = None,
        minibatch_size: int | None = None,
        full_eval_every: int | None = None,
        max_bootstrapped_demos: int = 4,
        max_labeled_demos: int = 4,
        mode: Mode = "full",
        prompt_lm: ChatModel | None = None,
        proposer_settings: ProposerSettings | Mapping[str, Any] | None = None,
        meta_optimize_proposer: bool = False,
        evaluate_baseline: bool = True,
        **kwargs: Any,
    ) -> None:
        _refuse_flat_proposer_options(kwargs)
        super().__init__(metric, **kwargs)
        check_choice("preset", preset, sorted(PRESETS))
        check_choice("mode", mode, ("full", "instructions_only", "demos_only"))
        for name, flag in (("meta_optimize_proposer", meta_optimize_proposer),
                           ("evaluate_baseline", evaluate_baseline)):
            check_bool(name, flag)
        settings = ProposerSettings.of(proposer_settings)
        if meta_optimize_proposer and mode == "demos_only":
            raise ValueError("meta_optimize_proposer needs instructions to propose")
        check_int("max_bootstrapped_demos", max_bootstrapped_demos, minimum=0)
        check_int("max_labeled_demos", max_labeled_demos, minimum=0)
        chosen = {**PRESETS[preset], **{k: v for k, v in {
            "num_instruction_candidates": num_instruction_candidates,
            "num_demo_candidates": num_demo_candidates, "num_trials": num_trials,
            "minibatch_size": minibatch_size, "full_eval_every": full_eval_every,
        }.items() if v is not None}}
        for key, value in chosen.items():
            check_int(key, value, minimum=1)
        self.preset = preset
        self.num_instruction_candidates = chosen["num_instruction_candidates"]
        self.num_demo_candidates = chosen["num_demo_candidates"]
        self.num_trials = chosen["num_trials"]
        self.minibatch_size = chosen["minibatch_size"]
        self.full_eval_every = chosen["full_eval_every"]
        self.max_bootstrapped_demos = max_bootstrapped_demos
        self.max_labeled_demos = max_labeled_demos
        self.mode = mode
        self.prompt_lm = prompt_lm
        self.proposer_settings = settings
        self.meta_optimize_proposer = meta_optimize_proposer
        self.evaluate_baseline = evaluate_baseline

    def config(self) -> dict[str, Any]:
        keys = ("preset", "num_instruction_candidates", "num_demo_candidates", "num_trials",
                "minibatch_size", "full_eval_every", "max_bootstrapped_demos",
                "max_labeled_demos", "mode")
        prompt_model = self.prompt_lm.model if self.prompt_lm is not None else None
        return {**super().config(), **{k: getattr(self, k) for k in keys},
                **_recorded_proposer_options(self.proposer_settings),
                "meta_optimize_proposer": self.meta_optimize_proposer,
                "evaluate_baseline": self.evaluate_baseline, "prompt_lm": prompt_model}

    # -- which steps run ---------------------------------------------------------------------

    @property
    def _proposes(self) -> bool:
        return self.mode != "demos_only"

    @property
    def _bootstraps(self) -> bool:
        """Demo sets are needed for the program, or (0-shot) only to ground the proposer."""
        return self.mode != "instructions_only" or self.proposer_settings.use_demos

    @property
    def _searches_demos(self) -> bool:
        return self.mode != "instructions_only"

    def _num_full_evals(self) -> int:
        return math.ceil(self.num_trials / self.full_eval_every)

    # -- cost --------------------------------------------------------------------------------

    def estimate_cost(
        self, program: Module, trainset: Sequence[Example], valset: Sequence[Example] | None
    ) -> CostEstimate:
        per_run = max(1, len(program.predictors()))
        evalset = valset or trainset
        parts: dict[str, int] = {}
        if self._bootstraps:
            parts["bootstrap (at most)"] = self.num_demo_candidates * len(trainset) * per_run
        if self._proposes:
            parts["proposer"] = self._proposer_calls(len(trainset), per_run)
        if self.evaluate_baseline:
            parts["baseline"] = len(evalset) * per_run
        batch = min(self.minibatch_size, len(evalset))
        parts["trials"] = self.num_trials * batch * per_run
        parts["full evaluations"] = self._num_full_evals() * len(evalset) * per_run
        return CostEstimate(sum(parts.values()), parts)

    def _proposer_calls(self, num_train: int, num_predictors: int) -> int:
        calls = 0
        settings = self.proposer_settings
        if settings.use_dataset_summary:
            calls += min(SUMMARY_BATCHES, math.ceil(num_train / settings.data_batch_size)) + 1
        if settings.use_program_summary:
            calls += 1 + num_predictors
        if self.meta_optimize_proposer:  # at most one new proposal per predictor and trial
            return calls + num_predictors * self.num_trials
        return calls + num_predictors * (self.num_instruction_candidates - 1)

    # -- the run -----------------------------------------------------------------------------

    def _optimize(
        self,
        run: OptimizationRun,
        student: Module,
        trainset: list[Example],
        valset: list[Example] | None,
    ) -> None:
        evalset = valset or trainset
        if not student.predictors():
            run.offer(student, None, "program without predictors: nothing to optimize")
            return
        demo_sets = self._demo_candidates(run, student, trainset) if self._bootstraps else []
        proposer = self._proposer(run, student, trainset) if self._proposes else None
        instructions = self._instruction_candidates(run, student, proposer, demo_sets)
        space = _SearchSpace.build(self, student, instructions, demo_sets)
        builder = _ProgramBuilder(self, run, student, instructions, proposer, demo_sets)
        if self.evaluate_baseline:
            evaluation = run.evaluate(student, evalset, "baseline")
            run.offer(student, evaluation, "baseline: the program as given")
        _Search(self, run, space, builder, evalset).search()

    def _demo_candidates(
        self, run: OptimizationRun, student: Module, trainset: list[Example]
    ) -> DemoSets:
        """Set 0 bootstraps from the training set in order; set ``i`` from a shuffled copy,
        with a random number (1 to the maximum) of bootstrapped demos."""
        run.reporter.start_phase("mipro: demo candidates", self.num_demo_candidates)
        sets = []
        for i in range(self.num_demo_candidates):
            order, k = list(trainset), self.max_bootstrapped_demos
            if i > 0:
                rng = run.rng("mipro-demo-set", i)
                rng.shuffle(order)
                k = rng.randint(1, k) if k > 0 else 0
            sets.append(bootstrap_demo_sets(
                run, student, order, k, self.max_labeled_demos, key=f"mipro:{i}",
                threshold=self.metric_threshold, hindsight=self.hindsight,
            ))
            run.reporter.advance(run.best_score)
        return sets

    def _proposer(
        self, run: OptimizationRun, student: Module, trainset: list[Example]
    ) -> GroundedProposer:
        lm = self.prompt_lm or current_lm()
        if lm is None:
            raise NoLMError("MIPRO needs a prompt LM: pass prompt_lm= or use cotune.context(lm=)")
        proposer = GroundedProposer(lm, self.proposer_settings, num_threads=self.num_threads)
        grounding = run.journal.memo("grounding", lambda: proposer.ground(
            student, trainset, run.rng("mipro-grounding")).to_json())
        proposer.grounding = Grounding.from_json(grounding)
        for note in proposer.grounding.notes:  # journaled with the grounding
            run.reporter.message(note)
        return proposer

    def _instruction_candidates(
        self,
        run: OptimizationRun,
        student: Module,
        proposer: GroundedProposer | None,
        demo_sets: DemoSets,
    ) -> dict[str, list[str]]:
        """Per predictor, its instruction candidates (MIPRO++ and demos-only: only the current
        instruction; MIPRO++ proposes lazily during the search)."""
        current = {name: [p.instruction] for name, p in student.named_predictors()}
        if proposer is None or self.meta_optimize_proposer:
            return current

        def compute() -> dict[str, list[str]]:
            named = student.named_predictors()
            run.reporter.start_phase("mipro: instruction proposals", len(named))
            proposals = {}
            for name, p in named:
                proposals[name] = proposer.propose(
                    name, p, [s[name] for s in demo_sets], self.num_instruction_candidates,
                    run.rng("mipro-propose", name),
                )
                run.reporter.advance(run.best_score)
            if proposer.notes:  # prompts cut to fit the context, journaled with the proposals
                proposals[_FITTING_NOTES] = list(proposer.notes)
            return proposals

        proposals = run.journal.memo("instructions", compute)
        for note in proposals.pop(_FITTING_NOTES, []):
            run.reporter.message(note)
        return proposals


# -- search space and program building --------------------------------------------------------


@dataclass
class _SearchSpace:
    """Categorical parameters of a trial: name -> allowed values (all JSON scalars)."""

    choices: dict[str, list[Any]]

    @classmethod
    def build(cls, opt: MIPRO, student: Module, instructions: dict[str, list[str]],
              demo_sets: DemoSets) -> _SearchSpace:
        choices: dict[str, list[Any]] = {}
        for name, _ in student.named_predictors():
            if opt.meta_optimize_proposer:
                choices[f"{name}:instruction"] = list(range(opt.num_instruction_candidates))
                choices.update(_proposer_choices(opt, name, bool(demo_sets)))
            elif opt.mode != "demos_only":
                choices[f"{name}:instruction"] = list(range(len(instructions[name])))
            if opt._searches_demos:
                choices[f"{name}:demos"] = list(range(len(demo_sets)))
        return cls(choices)

    def distributions(self) -> dict[str, Any]:
        from optuna.distributions import CategoricalDistribution

        return {name: CategoricalDistribution(values) for name, values in self.choices.items()}


def _proposer_choices(opt: MIPRO, name: str, have_demos: bool) -> dict[str, list[Any]]:
    """MIPRO++'s proposer settings for one predictor; a source switched off for the whole run
    stays off (it is not a choice)."""
    choices: dict[str, list[Any]] = {}
    settings = opt.proposer_settings
    for switch in ProposerSettings.SOURCES:
        if getattr(settings, switch) and (have_demos or switch != "use_demos"):
            choices[f"{name}:proposer.{switch}"] = [True, False]
    if settings.use_tip:
        choices[f"{name}:proposer.tip"] = ["none", *sorted(TIPS)]
    choices[f"{name}:proposer.temperature"] = list(PROPOSER_TEMPERATURES)
    return choices


class _ProgramBuilder:
    """Turns a trial's parameters into a program (a copy of the student)."""

    def __init__(self, opt: MIPRO, run: OptimizationRun, student: Module,
                 instructions: dict[str, list[str]], proposer: GroundedProposer | None,
                 demo_sets: DemoSets) -> None:
        self.opt, self.run, self.student = opt, run, student
        self.instructions = instructions
        self.proposer = proposer
        self.demo_sets = demo_sets

    def __call__(self, params: dict[str, Any]) -> Module:
        program = self.student.deepcopy()
        originals = dict(self.student.named_predictors())
        for name, p in program.named_predictors():
            if self.opt.mode != "demos_only":
                p.instruction = self.instruction(name, originals[name], params)
            if self.opt.mode == "instructions_only":
                p.demos = []
            else:
                p.demos = list(self.demo_sets[params[f"{name}:demos"]][name])
        return program

    def instruction(self, name: str, original: Predict, params: dict[str, Any]) -> str:
        index = params[f"{name}:instruction"]
        if not self.opt.meta_optimize_proposer:
            return self.instructions[name][index]
        if index == 0:
            return original.instruction
        return self._lazy_proposal(name, original, index, params)

    def _lazy_proposal(self, name: str, original: Predict, index: int,
                       params: dict[str, Any]) -> str:
        """MIPRO++: sample ``index`` of the proposer configured as ``params`` say, journaled."""
        assert self.proposer is not None
        prefix = f"{name}:proposer."
        config = {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}
        config_text = json.dumps(config, sort_keys=True)
        tip = config.get("tip", "none")
        variant = self.proposer.configured(
            **{s: config.get(s, False) for s in ProposerSettings.SOURCES},
            use_tip=tip != "none", tip=None if tip == "none" else tip,
            temperature=config["temperature"],
        )

        def compute() -> str:
            rng = self.run.rng("mipro-proposal", name, config_text, index)
            demos = variant.pick_demos([s[name] for s in self.demo_sets], index, rng)
            text = variant.propose_one(name, original, demos, variant.pick_tip(rng),
                                       rollout_id=index)
            return text or original.instruction

        return self.run.journal.memo(f"proposal:{name}:{config_text}:{index}", compute)


# -- the search loop --------------------------------------------------------------------------


@dataclass
class _Search:
    opt: MIPRO
    run: OptimizationRun
    space: _SearchSpace
    build: Callable[[dict[str, Any]], Module]
    evalset: list[Example]
    observations: list[tuple[dict[str, Any], float]] = field(default_factory=list)
    """What the surrogate has seen, in trial order: parameters and mini-batch score."""
    minibatch_scores: dict[str, list[float]] = field(default_factory=dict)
    params_by_key: dict[str, dict[str, Any]] = field(default_factory=dict)
    fully_evaluated: set[str] = field(default_factory=set)

    def search(self) -> None:
        total = self.opt.num_trials
        self.run.reporter.start_phase("mipro: search", total)
        for n in range(total):
            record = self.run.journal.memo(f"trial:{n}", lambda n=n: self._trial(n))
            self._record(n, record)
            if (n + 1) % self.opt.full_eval_every == 0 or n + 1 == total:
                self._full_evaluation(after_trial=n)
            self.run.reporter.advance(self.run.best_score)

    def _trial(self, n: int) -> dict[str, Any]:
        params = self._ask(n)
        program = self.build(params)
        size = min(self.opt.minibatch_size, len(self.evalset))
        batch = self.run.rng("mipro-minibatch", n).sample(self.evalset, size)
        result = self.run.evaluate(program, batch, f"minibatch:{n}:{_params_key(params)}")
        return {"params": params, "score": result["score"]}

    def _ask(self, n: int) -> dict[str, Any]:
        """Trial ``n``'s parameters, from a fresh TPE sampler seeded with (seed, n) and a study
        holding exactly the observations made before it: nothing else carries state."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        distributions = self.space.distributions()
        seed = self.run.rng("mipro-tpe", n).randrange(2**31)
        startup = max(3, min(10, self.opt.num_trials // 5))  # random trials before TPE
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            sampler = optuna.samplers.TPESampler(
                seed=seed, n_startup_trials=startup, multivariate=True)
            study = optuna.create_study(direction="maximize", sampler=sampler)
            for params, value in self.observations:
                study.add_trial(optuna.trial.create_trial(
                    params=params, distributions=distributions, value=value))
            trial = study.ask(distributions)
        return {name: trial.params[name] for name in distributions}

    def _record(self, n: int, record: dict[str, Any]) -> None:
        params, score = record["params"], record["score"]
        key = _params_key(params)
        self.observations.append((params, score))
        self.minibatch_scores.setdefault(key, []).append(score)
        self.params_by_key.setdefault(key, params)
        self.run.record_trial(n, "search", params=params, minibatch_score=score)

    def _full_evaluation(self, after_trial: int) -> None:
        """Score the not yet fully evaluated combination with the best mean mini-batch score
        (earliest first on ties) on the whole evaluation set, and offer it."""
        pending = [k for k in self.minibatch_scores if k not in self.fully_evaluated]
        if not pending:
            return
        key = max(pending, key=lambda k: _mean(self.minibatch_scores[k]))  # first max wins
        params = self.params_by_key[key]
        program = self.build(params)
        evaluation = self.run.evaluate(program, self.evalset, f"full:{key}")
        self.fully_evaluated.add(key)
        runs = self.minibatch_scores[key]
        self.run.offer(
            program, evaluation,
            f"after trial {after_trial}: mean mini-batch score {_mean(runs):.3f} "
            f"over {len(runs)} trial(s)",
            **params,
        )


def _params_key(params: dict[str, Any]) -> str:
    text = json.dumps(params, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)




# -- paper baselines --------------------------------------------------------------------------


@register_optimizer("MIPRO, instructions only (0-shot)", arg="preset",
                    presets=tuple(PRESETS), options=proposer_options)
class ZeroShotMIPRO(MIPRO):
    """0-shot MIPRO: instructions only; the optimized program has no demos."""

    name = "mipro-0shot"

    def __init__(self, metric: Any, **kwargs: Any) -> None:
        super().__init__(metric, mode="instructions_only", **kwargs)


@register_optimizer("MIPRO's Bayesian search over demo sets only", arg="preset",
                    presets=tuple(PRESETS), options=proposer_options)
class BayesianBootstrap(MIPRO):
    """Bayesian bootstrap: MIPRO's demo-set search with the instructions left as they are."""

    name = "bayesian-bootstrap"

    def __init__(self, metric: Any, **kwargs: Any) -> None:
        super().__init__(metric, mode="demos_only", **kwargs)
