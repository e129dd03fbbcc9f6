"""GEPA: reflective prompt evolution with textual feedback and Pareto selection.

Agrawal et al., "GEPA: Reflective Prompt Evolution Can Outperform Reinforcement Learning"
(2025, arXiv 2507.19457).  The loop, after scoring the program as given on the validation set:

1. **Parent**: draw a candidate from the Pareto frontier over validation examples
   (:mod:`cotune.optimize.pareto`), in proportion to the examples it leads.
2. **Predictor**: the parent's next predictor, round robin.
3. **Reflect**: run the parent on the next mini-batch of training examples with traces; show
   the reflection LM that predictor's inputs, outputs and the metric's feedback
   (:class:`~cotune.evaluate.metrics.Score`, or the score and expected output of a plain
   metric; with ``hindsight``, also the outputs the metric says the step should have given);
   it writes ``num_proposals`` new instructions (in parallel).
4. **Children**: each proposal is a child; with ``evolve_demos`` (beyond the paper) a child
   with one more (or one replaced) demo from a passing trace seen so far, alone and together
   with the first proposal (with ``hindsight``, also a failing trace's steps the metric
   credits, relabeled with its targets, see :mod:`cotune.optimize.traces`). The child with the
   best mini-batch score is accepted only if it beats the parent there. It is then scored on a
   seeded subsample of ``val_subsample`` validation examples and completed on the rest (and
   added to the pool) only if it scores at least as well as its parent there: a child the
   mini-batch let through by luck costs a fifth of a validation pass instead of a whole one
   (beyond the paper, which scores every accepted child on the whole validation set).
5. **Merge**: after an accepted child, two frontier candidates that changed different
   predictors since a common ancestor are combined; the merge is kept when it scores at least
   as well as both on validation examples where they differ, then completed on the rest.

The result is the best candidate on the validation set among those whose paired gain over the
seed ``min_gain`` accepts (by default beyond noise); when none is, the program as given.

Budget: the loop spends ``max_metric_calls`` metric calls (one per example a program is scored
on; a preset sets it from the sizes of the run) and never starts a step that would overrun it
or the active LM-call budget, so it stops cleanly with the best program so far; a token or
time budget stops it at the LM call that spends it.  The projected cost is computed from this
loop (metric calls times LM calls per program run, plus the reflections).

Resume: each evaluation and each reflection is journaled under its iteration; all choices come
from ``run.rng(iteration, ...)`` and the journaled results, so a resumed run replays the
journal and continues with the program an uninterrupted run reaches.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cotune.core import Module
from cotune.core.example import Example
from cotune.core.jsonable import demo_to_json
from cotune.core.parallel import imap_unordered
from cotune.core.predict import NoLMError, demo_from_step
from cotune.core.runtime import ChatModel, current_lm
from cotune.core.validate import check_int
from cotune.lm.budget import active_budgets
from cotune.lm.types import BudgetExceeded
from cotune.optimize.base import OptimizationRun, Optimizer, examples_digest
from cotune.optimize.feedback import run_with_feedback
from cotune.optimize.pareto import pareto_frontier
from cotune.optimize.reflection import propose_instruction, reflective_examples
from cotune.optimize.registry import register_optimizer
from cotune.optimize.reporting import CostEstimate
from cotune.optimize.traces import relabel
from cotune.optimize.trials import Child

PRESETS: dict[str, dict[str, int]] = {
    # reflective iterations, children accepted on their mini-batch (each scored on the
    # validation subsample) and children completed on the rest of the validation set that the
    # metric-call budget is sized for
    "light": {"iterations": 10, "accepted": 4, "completed": 2},
    "medium": {"iterations": 30, "accepted": 8, "completed": 4},
    "heavy": {"iterations": 60, "accepted": 15, "completed": 8},
}


@register_optimizer("GEPA: reflective instruction and demo evolution, Pareto frontier",
                    arg="preset", presets=tuple(PRESETS))
class GEPA(Optimizer):
    """GEPA (see the module docstring).

    Args:
        preset: ``light``, ``medium`` or ``heavy``: sizes ``max_metric_calls`` for that many
            reflective iterations and accepted candidates on this run's data.
        max_metric_calls: the budget in metric calls (overrides the preset).
        minibatch_size: training examples per reflection (and per acceptance test).
        val_subsample: validation examples an accepted child is scored on before it is
            completed on the rest (None: the whole validation set at once).
        num_proposals: instructions the reflection LM writes per iteration (in parallel).
        evolve_demos: also try children with a demo from a passing trace (with
            ``hindsight``, also from a failing trace's credited, relabeled steps).
        max_demos: the most demos a predictor gets from ``evolve_demos``.
        use_merge, max_merges, merge_minibatch_size: merging of frontier candidates.
        max_instruction_chars: cap on an instruction's length (None: no cap).
        reflection_lm: the LM that reflects (an LM, or a model name for
            :func:`cotune.lm.factory.make_lm`); default: the task LM of ``cotune.context``.
        reflection_temperature: sampling temperature of the reflections.
        skip_perfect: no reflection when the parent is perfect on its mini-batch.
        perfect_score: the per-example score that counts as perfect.
    """

    name = "gepa"

    def __init__(
        self,
        metric: Any,
        *,
        preset: str = "light",
        max_metric_calls: int | None = None,
        minibatch_size: int = 3,
        val_subsample: int | None = 10,
        num_proposals: int = 1,
        evolve_demos: bool = True,
        max_demos: int = 4,
        use_merge: bool = True,
        max_merges: int = 5,
        merge_minibatch_size: int = 5,
        max_instruction_chars: int | None = 1500,
        reflection_lm: ChatModel | str | None = None,
        reflection_base_url: str | None = None,
        reflection_temperature: float = 1.0,
        skip_perfect: bool = True,
        perfect_score: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, **kwargs)
        if preset not in PRESETS:
            raise ValueError(f"unknown preset {preset!r}; use one of {sorted(PRESETS)}")
        for key, value in (("minibatch_size", minibatch_size), ("num_proposals", num_proposals),
                           ("merge_minibatch_size", merge_minibatch_size),
                           ("val_subsample", val_subsample)):
            check_int(key, value, minimum=1, allow_none=key == "val_subsample")
        for key, value in (("max_metric_calls", max_metric_calls), ("max_demos", max_demos),
                           ("max_merges", max_merges)):
            check_int(key, value, minimum=0, allow_none=True)
        if max_instruction_chars is not None and max_instruction_chars < 20:
            raise ValueError("max_instruction_chars must be >= 20 (or None for no cap)")
        self.preset = preset
        self.max_metric_calls = max_metric_calls
        self.minibatch_size = minibatch_size
        self.val_subsample = val_subsample
        self.num_proposals = num_proposals
        self.evolve_demos = evolve_demos and max_demos > 0
        self.max_demos = max_demos
        self.use_merge = use_merge
        self.max_merges = max_merges
        self.merge_minibatch_size = merge_minibatch_size
        self.max_instruction_chars = max_instruction_chars
        self.reflection_base_url = reflection_base_url
        if isinstance(reflection_lm, str):
            from cotune.lm.factory import make_lm

            self.reflection_model: str | None = reflection_lm
            reflection_lm = make_lm(reflection_lm, reflection_base_url)
        else:
            self.reflection_model = reflection_lm.model if reflection_lm is not None else None
        self.reflection_lm = reflection_lm
        self.reflection_temperature = reflection_temperature
        self.skip_perfect = skip_perfect
        self.perfect_score = perfect_score

    def config(self) -> dict[str, Any]:
        keys = ("preset", "max_metric_calls", "minibatch_size", "val_subsample", "num_proposals",
                "evolve_demos", "max_demos", "use_merge", "max_merges", "merge_minibatch_size",
                "max_instruction_chars", "reflection_base_url", "reflection_temperature",
                "skip_perfect", "perfect_score")
        return {**super().config(), **{k: getattr(self, k) for k in keys},
                "reflection_lm": self.reflection_model}

    # -- cost --------------------------------------------------------------------------------

    @property
    def children_per_iteration(self) -> int:
        return self.num_proposals + (2 if self.evolve_demos else 0)

    def subsample_size(self, num_val: int) -> int:
        """Validation examples an accepted child is scored on first."""
        return num_val if self.val_subsample is None else min(self.val_subsample, num_val)

    def metric_budget(self, num_val: int) -> int:
        """``max_metric_calls``, or the preset's: the seed's validation pass, the mini-batches
        of its reflective iterations (parent and children), its accepted children's
        validation subsamples and its completed candidates' rest of the validation set."""
        if self.max_metric_calls is not None:
            return self.max_metric_calls
        preset = PRESETS[self.preset]
        iteration = self.minibatch_size * (1 + self.children_per_iteration)
        sub = self.subsample_size(num_val)
        return (num_val + preset["iterations"] * iteration + preset["accepted"] * sub
                + preset["completed"] * (num_val - sub))

    def estimate_cost(
        self, program: Module, trainset: Sequence[Example], valset: Sequence[Example] | None
    ) -> CostEstimate:
        """Metric calls times LM calls per program run, plus the reflections: between one per
        iteration that is rejected without demo children (the cheapest iteration) and one per
        iteration whose child is completed on the whole validation set (the dearest); the
        midpoint is projected.  The loop stops once the budget left cannot pay for another
        iteration and its child's validation pass, which leaves about a validation pass and
        half an iteration unspent (less when children are accepted), unless a candidate is
        perfect on the validation set first."""
        per_run = max(1, len(program.predictors()))
        num_val = len(valset or trainset)
        budget = self.metric_budget(num_val)
        iteration = self.minibatch_size * (1 + self.children_per_iteration)
        loop = max(0, budget - num_val)
        unspent = loop if loop < iteration + num_val else num_val + iteration / 2
        loop -= unspent
        cheapest = self.minibatch_size * (1 + self.num_proposals)
        dearest = iteration + num_val
        reflections = round((loop / cheapest + loop / dearest) / 2) * self.num_proposals
        runs = round(budget - unspent) * per_run
        return CostEstimate(runs + reflections,
                            {"program runs": runs, "reflections": reflections},
                            approximate=True)

    # -- the run -----------------------------------------------------------------------------

    def _optimize(
        self,
        run: OptimizationRun,
        student: Module,
        trainset: list[Example],
        valset: list[Example] | None,
    ) -> None:
        if not student.predictors():
            run.offer(student, None, "program without predictors: nothing to optimize")
            return
        reflector = self.reflection_lm or current_lm()
        if reflector is None:
            raise NoLMError("GEPA needs a reflection LM: pass reflection_lm= or use "
                            "cotune.context(lm=)")
        _Loop(self, run, student, trainset, valset or trainset, reflector).evolve()


# -- the loop ------------------------------------------------------------------------------------


@dataclass
class _Candidate:
    state: dict[str, Any]
    """``Module.dump_state()`` of the candidate's program."""
    parents: list[int]
    origin: dict[str, int]
    """Per predictor, the candidate that gave it its current instruction and demos."""
    val_scores: list[float]

    @property
    def mean(self) -> float:
        return sum(self.val_scores) / len(self.val_scores)


@dataclass
class _Loop:
    opt: GEPA
    run: OptimizationRun
    student: Module
    trainset: list[Example]
    valset: list[Example]
    reflector: ChatModel
    pool: list[_Candidate] = field(default_factory=list)
    metric_calls: int = 0
    demo_pool: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    """Per predictor, demos (in ``dump_state`` form) from passing traces, in the order seen."""
    next_predictor: dict[int, int] = field(default_factory=dict)
    batches_drawn: int = 0
    merges: int = 0
    merge_due: bool = False
    tried_merges: set[tuple[int, int, int]] = field(default_factory=set)
    stopped: str | None = None
    iterations: int = 0

    def __post_init__(self) -> None:
        self.names = [name for name, _ in self.student.named_predictors()]
        self.per_run = len(self.names)
        self.budget = self.opt.metric_budget(len(self.valset))
        self.demo_pool = {name: [] for name in self.names}
        self._seen_demos: set[str] = set()

    # -- driver ------------------------------------------------------------------------------

    def evolve(self) -> None:
        run = self.run
        run.reporter.message(f"gepa: a budget of {self.budget} metric calls "
                             f"({len(self.valset)} validation examples)")
        if self.budget < len(self.valset):
            raise ValueError(f"GEPA: max_metric_calls={self.budget} does not cover one pass "
                             f"over the {len(self.valset)} validation examples")
        self._fits(len(self.valset), 0)
        projected = self.opt.estimate_cost(self.student, self.trainset, self.valset).lm_calls
        caps = [b.remaining_calls for b in active_budgets() if b.remaining_calls is not None]
        if caps and min(caps) < projected:
            run.reporter.message(f"gepa: the LM-call budget ({min(caps)} calls left) will stop "
                                 f"the run before its metric budget is spent")
        seed_scores = run.evaluate(self.student, self.valset, "gepa:seed")["scores"]
        self.metric_calls += len(self.valset)
        self._add(self.student.dump_state(), [], dict.fromkeys(self.names, 0), seed_scores,
                  "seed: the program as given", kind="seed", iteration=None)
        run.reporter.start_phase("gepa: evolution", None)
        try:
            self._iterate()
        finally:
            frontier = pareto_frontier([c.val_scores for c in self.pool])
            for i, candidate in enumerate(run.candidates):
                candidate.params["on_frontier"] = i in frontier.leads
            run.reporter.message(
                f"gepa: stopped after {self.iterations} iterations and {self.metric_calls} "
                f"metric calls ({self.stopped or 'LM budget spent'}); frontier "
                f"{frontier.members}")

    def _iterate(self) -> None:
        opt, run = self.opt, self.run
        n = 0
        while self.stopped is None:
            if max(c.mean for c in self.pool) >= opt.perfect_score:
                self.stopped = "a candidate is perfect on the validation set"
                break
            if self.merge_due and opt.use_merge and self.merges < opt.max_merges:
                self.merge_due = False
                if self._merge(n):
                    n += 1
                    self.iterations = n
                    run.reporter.advance(run.best_score)
                    continue
            # an iteration only yields a candidate if its accepted child's whole validation
            # pass is paid for too; one the budget could not finish would be pure waste
            if not self._fits(opt.minibatch_size * (1 + opt.children_per_iteration)
                              + len(self.valset), opt.num_proposals):
                self.stopped = ("the budget left cannot pay for another reflective iteration "
                                "and its child's validation")
                break
            self._reflect(n)
            n += 1
            self.iterations = n
            run.reporter.advance(run.best_score)

    def _fits(self, metric_calls: int, extra_lm_calls: int) -> bool:
        """Whether a step of ``metric_calls`` program runs (and ``extra_lm_calls`` reflections)
        fits the metric-call budget.  Raises :class:`BudgetExceeded` before the step when it
        would overrun an active LM-call budget: the run stops with the best program so far."""
        if self.metric_calls + metric_calls > self.budget:
            return False
        calls = metric_calls * self.per_run + extra_lm_calls
        for b in active_budgets():
            left = b.remaining_calls
            if left is not None and left < calls:
                raise BudgetExceeded(f"the next GEPA step needs about {calls} LM calls and "
                                     f"the budget has {left} left")
        return True

    # -- candidates --------------------------------------------------------------------------

    def program(self, state: dict[str, Any]) -> Module:
        return self.student.deepcopy().load_state(state)

    def _add(self, state: dict[str, Any], parents: list[int], origin: dict[str, int],
             val_scores: list[float], description: str, **params: Any) -> int:
        index = len(self.pool)
        self.pool.append(_Candidate(state, parents, origin, list(val_scores)))
        entries = state["predictors"]
        # the per-example scores let the run tell a real validation gain from noise (min_gain)
        scored = {"score": self.pool[-1].mean, "scores": list(val_scores),
                  "examples": examples_digest(self.valset)}
        self.run.offer(
            self.program(state), scored, description, parents=parents,
            instruction_chars={n: len(entries[n]["instruction"]) for n in self.names},
            demos={n: len(entries[n]["demos"]) for n in self.names}, **params,
        )
        return index

    def _frontier_text(self) -> str:
        leads = pareto_frontier([c.val_scores for c in self.pool]).leads
        return ", ".join(f"{c}:{k}" for c, k in sorted(leads.items()))

    # -- reflective mutation -----------------------------------------------------------------

    def _reflect(self, n: int) -> None:
        opt, run = self.opt, self.run
        rng = run.rng("gepa-iteration", n)
        parent = pareto_frontier([c.val_scores for c in self.pool]).sample(rng)
        turn = self.next_predictor.get(parent, 0)
        self.next_predictor[parent] = turn + 1
        name = self.names[turn % len(self.names)]
        batch = self._next_minibatch()
        examples = [self.trainset[i] for i in batch]
        parent_state = self.pool[parent].state
        parent_records = self._records(f"gepa:{n}:parent:{parent}", parent_state, examples)
        self._collect_demos(parent_records, batch)
        parent_sum = sum(r["score"] for r in parent_records)
        trial: dict[str, Any] = {"trial": n, "kind": "reflect", "parent": parent,
                                 "predictor": name, "minibatch": batch,
                                 "parent_minibatch_score": parent_sum / len(batch)}
        if opt.skip_perfect and all(r["score"] >= opt.perfect_score for r in parent_records):
            self._trial(trial, [], None, "parent perfect on the mini-batch: no reflection")
            return
        proposals = self._proposals(n, parent_state, name, parent_records)
        children = self._children(parent_state, name, proposals, batch, rng)
        sums = []
        for j, (kind, state, info) in enumerate(children):
            records = self._records(f"gepa:{n}:child:{j}", state, examples)
            self._collect_demos(records, batch)
            sums.append(sum(r["score"] for r in records))
            info.update(kind=kind, minibatch_score=sums[-1] / len(batch))
        infos = [info for _, _, info in children]
        best = max(range(len(sums)), key=lambda j: (sums[j], -j)) if sums else None
        if best is None or sums[best] <= parent_sum:
            self._trial(trial, infos, None, "rejected: no child beat the parent on the "
                        "mini-batch")
            return
        kind, state, _ = children[best]
        scores = self._validate(n, parent, state, trial)
        if scores is None:
            self._trial(trial, infos, None, trial.pop("outcome"))
            return
        origin = {**self.pool[parent].origin, name: len(self.pool)}
        index = self._add(state, [parent], origin, scores,
                          f"iteration {n}: {kind} of {name} (parent {parent})",
                          kind=kind, predictor=name, iteration=n)
        self.next_predictor[index] = self.next_predictor[parent]
        self.merge_due = True
        self._trial(trial, infos, (best, index), f"accepted child {best} as candidate {index}")

    def _validate(self, n: int, parent: int, state: dict[str, Any], trial: dict[str, Any]
                  ) -> list[float] | None:
        """The accepted child's validation scores: a seeded subsample first, the rest only
        when the child is at least as good as its parent on the subsample.  None (the reason
        in ``trial["outcome"]``) when it is not, or when the budget cannot pay for it."""
        size = self.opt.subsample_size(len(self.valset))
        order = list(range(len(self.valset)))
        self.run.rng("gepa-val-subsample", n).shuffle(order)
        subset, rest = sorted(order[:size]), sorted(order[size:])
        if not self._fits(len(subset), 0):
            self.stopped = "an accepted child's validation pass would overrun the budget"
            trial["outcome"] = "accepted, but the budget cannot score it"
            return None
        program = self.program(state)
        label = f"gepa:{n}:val" if not rest else f"gepa:{n}:val-subsample"
        sub = self.run.evaluate(program, [self.valset[x] for x in subset], label)["scores"]
        self.metric_calls += len(subset)
        scores = dict(zip(subset, sub, strict=True))
        parent_sum = sum(self.pool[parent].val_scores[x] for x in subset)
        trial.update(val_subsample=subset, val_subsample_score=sum(sub) / len(subset),
                     parent_val_subsample_score=parent_sum / len(subset))
        if rest:
            if sum(sub) < parent_sum:
                trial["outcome"] = "rejected: worse than the parent on the validation subsample"
                return None
            if not self._fits(len(rest), 0):
                self.stopped = "an accepted child's validation pass would overrun the budget"
                trial["outcome"] = "accepted, but the budget cannot complete its validation"
                return None
            done = self.run.evaluate(program, [self.valset[x] for x in rest],
                                     f"gepa:{n}:val-rest")["scores"]
            self.metric_calls += len(rest)
            scores.update(zip(rest, done, strict=True))
        return [scores[x] for x in range(len(self.valset))]

    def _next_minibatch(self) -> list[int]:
        """The next ``minibatch_size`` training indices of a seeded shuffle, epoch by epoch."""
        size = min(self.opt.minibatch_size, len(self.trainset))
        out: list[int] = []
        while len(out) < size:
            epoch, offset = divmod(self.batches_drawn, len(self.trainset))
            order = list(range(len(self.trainset)))
            self.run.rng("gepa-epoch", epoch).shuffle(order)
            index = order[offset]
            self.batches_drawn += 1
            if index not in out:
                out.append(index)
        return out

    def _records(self, key: str, state: dict[str, Any], examples: list[Example]
                 ) -> list[dict[str, Any]]:
        program = self.program(state)
        records = self.run.journal.memo(key, lambda: run_with_feedback(
            program, examples, self.run.metric, num_threads=self.run.num_threads))
        self.metric_calls += len(examples)
        return records

    def _proposals(self, n: int, state: dict[str, Any], name: str,
                   records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        opt = self.opt
        predictor = dict(self.program(state).named_predictors())[name]
        shown = reflective_examples(name, records, hindsight=opt.hindsight)

        def one(k: int) -> dict[str, Any]:
            return self.run.journal.memo(f"gepa:{n}:reflect:{k}", lambda: propose_instruction(
                self.reflector, predictor, shown, temperature=opt.reflection_temperature,
                rollout_id=n * opt.num_proposals + k, max_chars=opt.max_instruction_chars))

        results: dict[int, dict[str, Any]] = {}
        threads = max(1, min(self.run.num_threads, opt.num_proposals))
        for k, future in imap_unordered(one, range(opt.num_proposals), threads):
            results[k] = future.result()
        return [results[k] for k in range(opt.num_proposals)]

    def _children(self, parent_state: dict[str, Any], name: str,
                  proposals: list[dict[str, Any]], batch: list[int], rng: Any
                  ) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        """``(kind, state, info)`` per distinct child that differs from its parent."""
        current = parent_state["predictors"][name]
        variants: list[tuple[str, str, list[dict[str, Any]], dict[str, Any]]] = [
            ("instruction", p["instruction"], current["demos"],
             {"instruction_chars": p["chars"], "truncated": p["truncated"]})
            for p in proposals
        ]
        demos = self._evolved_demos(name, current["demos"], batch, rng)
        if demos is not None:
            variants.append(("demos", current["instruction"], demos, {}))
            first = proposals[0]
            variants.append(("instruction+demos", first["instruction"], demos,
                             {"instruction_chars": first["chars"],
                              "truncated": first["truncated"]}))
        children, seen = [], {_key(current["instruction"], current["demos"])}
        for kind, instruction, demo_list, info in variants:
            key = _key(instruction, demo_list)
            if key in seen:
                continue
            seen.add(key)
            state = json.loads(json.dumps(parent_state))
            state["predictors"][name].update(instruction=instruction, demos=list(demo_list))
            children.append((kind, state, {**info, "demos": len(demo_list)}))
        return children

    # -- demos from passing (or, with hindsight, credited) traces ------------------------------

    def _collect_demos(self, records: list[dict[str, Any]], batch: list[int]) -> None:
        if not self.opt.evolve_demos:
            return
        for index, record in zip(batch, records, strict=True):
            passed = self.opt.passes(record["score"])
            if record["error"] is not None or not (passed or self.opt.hindsight):
                continue
            steps = record["steps"]
            if self.opt.hindsight:
                steps = relabel(steps, record.get("predictor_targets") or {}, passed=passed)
            used: set[str] = set()
            for name, inputs, outputs in steps:
                if name in used or name not in self.demo_pool:
                    continue
                used.add(name)
                demo = {**demo_to_json(demo_from_step(inputs, outputs)), "example": index}
                key = json.dumps([name, demo["fields"]], sort_keys=True)
                if key not in self._seen_demos:
                    self._seen_demos.add(key)
                    self.demo_pool[name].append(demo)

    def _evolved_demos(self, name: str, demos: list[dict[str, Any]], batch: list[int],
                       rng: Any) -> list[dict[str, Any]] | None:
        """``demos`` with one passing trace added (or, when full, swapped in): one from an
        example outside the mini-batch when there is one, so it can help there."""
        if not self.opt.evolve_demos:
            return None
        have = [json.dumps(d["fields"], sort_keys=True) for d in demos]
        fresh = [d for d in self.demo_pool[name]
                 if json.dumps(d["fields"], sort_keys=True) not in have]
        if not fresh:
            return None
        outside = [d for d in fresh if d["example"] not in batch]
        pick = rng.choice(outside or fresh)
        demo = {"fields": pick["fields"], "inputs": pick["inputs"]}
        out = list(demos)
        if len(out) < self.opt.max_demos:
            out.append(demo)
        else:
            out[rng.randrange(len(out))] = demo
        return out

    # -- merge -------------------------------------------------------------------------------

    def _merge(self, n: int) -> bool:
        """One merge attempt; False when no pair qualifies (nothing spent)."""
        found = self._merge_pair(n)
        if found is None:
            return False
        i, j, a = found
        if not self._fits(len(self.valset), 0):
            return False
        self.merges += 1
        state, origin = self._merged(i, j, a)
        subset, rest = self._merge_subset(n, i, j)
        program = self.program(state)
        sub = self.run.evaluate(program, [self.valset[x] for x in subset], f"gepa:{n}:merge")
        self.metric_calls += len(subset)
        merged_sum = sum(sub["scores"])
        best_parent = max(sum(self.pool[c].val_scores[x] for x in subset) for c in (i, j))
        trial: dict[str, Any] = {"trial": n, "kind": "merge", "parents": [i, j],
                                 "ancestor": a, "merge_subset": subset,
                                 "parent_minibatch_score": best_parent / len(subset)}
        info = {"kind": "merge", "minibatch_score": merged_sum / len(subset)}
        if merged_sum < best_parent:
            self._trial(trial, [info], None, "merge rejected on the differing examples")
            return True
        scores = dict(zip(subset, sub["scores"], strict=True))
        if rest:
            done = self.run.evaluate(program, [self.valset[x] for x in rest],
                                     f"gepa:{n}:merge-rest")
            self.metric_calls += len(rest)
            scores.update(zip(rest, done["scores"], strict=True))
        index = self._add(state, [i, j], origin, [scores[x] for x in range(len(self.valset))],
                          f"iteration {n}: merge of {i} and {j} (ancestor {a})",
                          kind="merge", iteration=n)
        self._trial(trial, [info], (0, index), f"merged as candidate {index}")
        return True

    def _merge_pair(self, n: int) -> tuple[int, int, int] | None:
        members = pareto_frontier([c.val_scores for c in self.pool]).members
        pairs = [(i, j) for i in members for j in members if i < j]
        self.run.rng("gepa-merge-pairs", n).shuffle(pairs)
        for i, j in pairs:
            common = (self._ancestors(i) & self._ancestors(j)) - {i, j}
            for a in sorted(common, reverse=True):
                if (i, j, a) in self.tried_merges:
                    continue
                if self.pool[a].mean > min(self.pool[i].mean, self.pool[j].mean):
                    continue
                only_i, only_j = self._changed(i, a) - self._changed(j, a), \
                    self._changed(j, a) - self._changed(i, a)
                if only_i and only_j:
                    self.tried_merges.add((i, j, a))
                    return i, j, a
        return None

    def _ancestors(self, c: int) -> set[int]:
        seen, todo = set(), [c]
        while todo:
            x = todo.pop()
            if x not in seen:
                seen.add(x)
                todo.extend(self.pool[x].parents)
        return seen

    def _changed(self, c: int, ancestor: int) -> set[str]:
        return {p for p in self.names
                if self.pool[c].origin[p] != self.pool[ancestor].origin[p]}

    def _merged(self, i: int, j: int, a: int) -> tuple[dict[str, Any], dict[str, int]]:
        """Each predictor from the side that changed it since ``a`` (from the better of the
        two when both did)."""
        changed_i, changed_j = self._changed(i, a), self._changed(j, a)
        better = i if self.pool[i].mean >= self.pool[j].mean else j
        state = json.loads(json.dumps(self.pool[a].state))
        origin = dict(self.pool[a].origin)
        for p in self.names:
            source = (better if p in changed_i and p in changed_j else
                      i if p in changed_i else j if p in changed_j else a)
            state["predictors"][p] = json.loads(json.dumps(self.pool[source].state[
                "predictors"][p]))
            origin[p] = self.pool[source].origin[p]
        return state, origin

    def _merge_subset(self, n: int, i: int, j: int) -> tuple[list[int], list[int]]:
        """Validation examples to test a merge on, those where the parents differ first."""
        si, sj = self.pool[i].val_scores, self.pool[j].val_scores
        order = list(range(len(self.valset)))
        self.run.rng("gepa-merge-subset", n).shuffle(order)
        differ = [x for x in order if si[x] != sj[x]]
        same = [x for x in order if si[x] == sj[x]]
        subset = sorted((differ + same)[: self.opt.merge_minibatch_size])
        rest = [x for x in range(len(self.valset)) if x not in subset]
        return subset, rest

    # -- lineage -----------------------------------------------------------------------------

    def _trial(self, trial: dict[str, Any], children: list[dict[str, Any]],
               accepted: tuple[int, int] | None, outcome: str) -> None:
        """Record iteration ``trial["trial"]``: its parents, the children it tried with their
        mini-batch scores, and ``accepted`` = (the child kept, the candidate it became)."""
        best = max((c["minibatch_score"] for c in children), default=None)
        candidate = None if accepted is None else accepted[1]
        parents = trial.pop("parents", None) or [trial.pop("parent")]
        n, kind, predictor = trial.pop("trial"), trial.pop("kind"), trial.get("predictor")
        frontier = self._frontier_text()
        kids = [Child(c["kind"], c["minibatch_score"],
                      candidate if accepted is not None and j == accepted[0] else None,
                      {k: v for k, v in c.items() if k not in ("kind", "minibatch_score")})
                for j, c in enumerate(children)]
        self.run.record_trial(
            n, kind, minibatch_score=best,
            parent_minibatch_score=trial.pop("parent_minibatch_score"),
            score=None if candidate is None else self.pool[candidate].mean,
            parents=parents, candidate=candidate, accepted=accepted is not None,
            outcome=outcome, children=kids,
            params={"kind": kind, "parents": parents, "predictor": predictor,
                    "outcome": outcome, "frontier": frontier},
            details={**trial, "frontier": frontier, "metric_calls": self.metric_calls},
        )


def _key(instruction: str, demos: list[dict[str, Any]]) -> str:
    return json.dumps([instruction, demos], sort_keys=True)
