"""Module-level OPRO: the MIPRO paper's instruction-only baseline.

Yang et al., "Large Language Models as Optimizers" (2023, arXiv 2309.03409), applied per module
as in Opsahl-Ong et al. (2024): predictors take turns; for the predictor whose turn it is, an LM
reads the history of its instructions with their mini-batch scores (worst first, as OPRO's
meta-prompt orders them) and writes ``num_proposals`` new ones.  Each proposal replaces that
predictor's instruction in the current program (every predictor holding its best-scoring
instruction so far) and is scored on a random mini-batch of the validation set.  Every
``full_eval_every`` iterations, and at the end, the best combination not yet fully evaluated is
scored on the whole validation set and offered; the best fully evaluated program wins.

It shares GEPA's pieces: proposals go through the same LM call and length cap
(:mod:`cotune.optimize.reflection`), evaluations through ``run.evaluate`` (journaled), and every
step is memoized under its iteration, so a resumed run replays to the same program.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from typing import Any

from cotune.core import Module
from cotune.core.example import Example
from cotune.core.parallel import imap_unordered
from cotune.core.predict import NoLMError, Predict
from cotune.core.runtime import ChatModel, current_lm
from cotune.core.validate import check_int
from cotune.optimize.base import OptimizationRun, Optimizer
from cotune.optimize.feedback import short
from cotune.optimize.prompting import ask, clean_instruction, describe_signature, text_signature
from cotune.optimize.reflection import cap_length, strip_echo
from cotune.optimize.registry import register_optimizer
from cotune.optimize.reporting import CostEstimate

_OPTIMIZE = text_signature(
    "You write instructions for one step of a language-model program. Below are instructions "
    "tried for this step with their scores (higher is better), from worst to best. Write a "
    "new instruction that is different from all of them and scores higher. Write only the "
    "instruction, in plain sentences.",
    [("step_fields", "the step's input and output fields"),
     ("scored_instructions", "instructions with their scores, worst first")],
    ("new_instruction", "the new instruction, and nothing else"),
)


@register_optimizer("module-level OPRO: instructions from the history of (instruction, score)")
class OPRO(Optimizer):
    """Module-level OPRO (see the module docstring).  ``prompt_lm`` writes the instructions
    (default: the LM of ``cotune.context``); ``max_history`` caps the scored instructions shown
    (the best ones)."""

    name = "opro"

    def __init__(
        self,
        metric: Any,
        *,
        num_iterations: int = 10,
        num_proposals: int = 2,
        minibatch_size: int = 10,
        full_eval_every: int = 3,
        max_history: int = 10,
        max_instruction_chars: int | None = 1500,
        prompt_lm: ChatModel | None = None,
        temperature: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(metric, **kwargs)
        for key, value in (("num_iterations", num_iterations), ("num_proposals", num_proposals),
                           ("minibatch_size", minibatch_size),
                           ("full_eval_every", full_eval_every), ("max_history", max_history)):
            check_int(key, value, minimum=1)
        self.num_iterations = num_iterations
        self.num_proposals = num_proposals
        self.minibatch_size = minibatch_size
        self.full_eval_every = full_eval_every
        self.max_history = max_history
        self.max_instruction_chars = max_instruction_chars
        self.prompt_lm = prompt_lm
        self.temperature = temperature

    def config(self) -> dict[str, Any]:
        keys = ("num_iterations", "num_proposals", "minibatch_size", "full_eval_every",
                "max_history", "max_instruction_chars", "temperature")
        return {**super().config(), **{k: getattr(self, k) for k in keys},
                "prompt_lm": self.prompt_lm.model if self.prompt_lm is not None else None}

    def estimate_cost(
        self, program: Module, trainset: Sequence[Example], valset: Sequence[Example] | None
    ) -> CostEstimate:
        per_run = max(1, len(program.predictors()))
        num_val = len(valset or trainset)
        batch = min(self.minibatch_size, num_val)
        full = math.ceil(self.num_iterations / self.full_eval_every)
        parts = {"baseline": num_val * per_run,
                 "proposals": self.num_iterations * self.num_proposals,
                 "mini-batches": self.num_iterations * self.num_proposals * batch * per_run,
                 "full evaluations": full * num_val * per_run}
        return CostEstimate(sum(parts.values()), parts)

    def _optimize(self, run: OptimizationRun, student: Module, trainset: list[Example],
                  valset: list[Example] | None) -> None:
        if not student.predictors():
            run.offer(student, None, "program without predictors: nothing to optimize")
            return
        lm = self.prompt_lm or current_lm()
        if lm is None:
            raise NoLMError("OPRO needs a prompt LM: pass prompt_lm= or use cotune.context(lm=)")
        _Search(self, run, student, valset or trainset, lm).search()


class _Search:
    def __init__(self, opt: OPRO, run: OptimizationRun, student: Module,
                 evalset: list[Example], lm: ChatModel) -> None:
        self.opt, self.run, self.student, self.evalset, self.lm = opt, run, student, evalset, lm
        self.names = [name for name, _ in student.named_predictors()]
        self.scores: dict[str, dict[str, list[float]]] = {
            name: {p.instruction: []} for name, p in student.named_predictors()}
        """Per predictor: instruction -> its mini-batch scores."""
        self.evaluated: set[str] = set()

    def search(self) -> None:
        run = self.run
        baseline = run.evaluate(self.student, self.evalset, "opro:baseline")
        for name in self.names:
            self.scores[name][self._current()[name]].append(baseline["score"])
        run.offer(self.student, baseline, "baseline: the program as given")
        self.evaluated.add(_combo_key(self._current()))
        run.reporter.start_phase("opro: search", self.opt.num_iterations)
        for n in range(self.opt.num_iterations):
            self._iteration(n)
            if (n + 1) % self.opt.full_eval_every == 0 or n + 1 == self.opt.num_iterations:
                self._full_evaluation(n)
            run.reporter.advance(run.best_score)

    def _current(self) -> dict[str, str]:
        """Per predictor, its instruction with the best mean mini-batch score (first on ties)."""
        return {name: max(history, key=lambda text: _mean(history[text]))
                for name, history in self.scores.items()}

    def _program(self, instructions: dict[str, str]) -> Module:
        program = self.student.deepcopy()
        for name, p in program.named_predictors():
            p.instruction = instructions[name]
        return program

    def _iteration(self, n: int) -> None:
        name = self.names[n % len(self.names)]
        current = self._current()
        predictor = dict(self.student.named_predictors())[name]
        proposals = self._proposals(n, name, predictor)
        size = min(self.opt.minibatch_size, len(self.evalset))
        batch = self.run.rng("opro-minibatch", n).sample(range(len(self.evalset)), size)
        for k, text in enumerate(proposals):
            program = self._program({**current, name: text})
            score = self.run.evaluate(program, [self.evalset[i] for i in batch],
                                      f"opro:{n}:{k}")["score"]
            self.scores[name].setdefault(text, []).append(score)
            self.run.record_trial(
                n, "search", minibatch_score=score,
                params={"predictor": name, "instruction": short(text, 80)},
                details={"proposal": k, "instruction_chars": len(text)},
            )

    def _proposals(self, n: int, name: str, predictor: Predict) -> list[str]:
        history = sorted(self.scores[name].items(), key=lambda kv: _mean(kv[1]))
        shown = history[-self.opt.max_history:]
        listing = "\n".join(f"Instruction: {text}\nScore: {_mean(s):.3f}" for text, s in shown)

        def one(k: int) -> str:
            def compute() -> str:
                text = ask(self.lm, _OPTIMIZE, "new_instruction",
                            step_fields=describe_signature(predictor),
                            scored_instructions=listing, temperature=self.opt.temperature,
                            rollout_id=n * self.opt.num_proposals + k, max_tokens=320)
                text = strip_echo(clean_instruction(text)) or predictor.instruction
                return cap_length(text, self.opt.max_instruction_chars)[0]

            return self.run.journal.memo(f"opro:{n}:propose:{k}", compute)

        results: dict[int, str] = {}
        threads = max(1, min(self.run.num_threads, self.opt.num_proposals))
        for k, future in imap_unordered(one, range(self.opt.num_proposals), threads):
            results[k] = future.result()
        return [results[k] for k in range(self.opt.num_proposals)]

    def _full_evaluation(self, n: int) -> None:
        combo = self._current()
        key = _combo_key(combo)
        if key in self.evaluated:
            return
        self.evaluated.add(key)
        program = self._program(combo)
        # the whole record, per-example scores included: the run judges the gain against noise
        evaluation = self.run.evaluate(program, self.evalset, f"opro:full:{key}")
        self.run.offer(program, evaluation,
                       f"after iteration {n}: the best instruction per predictor",
                       instruction_chars={k: len(v) for k, v in combo.items()})


def _combo_key(instructions: dict[str, str]) -> str:
    return hashlib.sha256(json.dumps(instructions, sort_keys=True).encode()).hexdigest()[:16]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else float("-inf")
