"""Choosing the result knowing the noise: a candidate that is lucky on a small validation set
does not replace the baseline; a real gain does; re-scoring on more examples unmasks luck."""

from __future__ import annotations

import re

import pytest
from helpers import exact

from cotune import Example, Predict, ScriptedLM, context
from cotune.evaluate.stats import Interval
from cotune.optimize import Optimizer
from cotune.optimize.reporting import CostEstimate

BASELINE, LUCKY, GOOD = "Answer the sum.", "Answer the sum, lucky.", "Answer the sum, well."
VAL = list(range(100, 108))  # 8 validation examples
MORE = list(range(200, 240))  # 40 more validation examples


def right(instruction: str, n: int) -> bool:
    if instruction == GOOD:
        return n % 9 != 0  # right on 8 of 9
    if instruction == LUCKY:  # the baseline's right answers on VAL and one more; poor elsewhere
        return n in (100, 101, 102, 104, 106) or (n >= 200 and n % 4 == 0)
    return n % 2 == 0  # the baseline: 50%


def answer(request) -> str:
    instruction = request.messages[0]["content"]
    n = int(re.search(r"Question: (\d+) \+ 1", request.messages[-1]["content"]).group(1))
    used = next(i for i in (LUCKY, GOOD, BASELINE) if i in instruction)
    return f"Answer: {n + 1 if right(used, n) else n}"


def data(numbers: list[int]) -> list[Example]:
    return [Example(question=f"{n} + 1", answer=n + 1).with_inputs("question") for n in numbers]


class Planted(Optimizer):
    """Offers the program as given (the baseline), then the planted candidates in order."""

    name = "planted"

    def __init__(self, metric, *, planted=(LUCKY,), **kwargs) -> None:
        super().__init__(metric, **kwargs)
        self.planted = planted

    def estimate_cost(self, program, trainset, valset) -> CostEstimate:
        return CostEstimate(len(valset or []) * (1 + len(self.planted)))

    def _optimize(self, run, student, trainset, valset) -> None:
        run.offer(student, run.evaluate(student, valset, "baseline"), "baseline")
        for instruction in self.planted:
            program = student.deepcopy()
            program.instruction = instruction
            run.offer(program, run.evaluate(program, valset, instruction), instruction)


def optimize(rescore_set=None, **options):
    program = Predict("question -> answer: int", instruction=BASELINE)
    lm = ScriptedLM(answer)
    with context(lm=lm):
        result = Planted(exact, **options).optimize(program, data([1]), data(VAL),
                                                    rescore_set=rescore_set)
    return result, lm


def test_a_lucky_candidate_does_not_replace_the_baseline() -> None:
    result, _ = optimize()
    assert [c.score for c in result.candidates] == [0.5, 0.625]
    assert result.best_index == 0 and result.program.instruction == BASELINE
    lucky = result.candidates[1].vs_baseline
    assert lucky["gain"] == pytest.approx(0.125) and not lucky["allowed"]
    assert lucky["interval"]["low"] <= 0.0 <= lucky["interval"]["high"]
    assert result.candidates[0].vs_baseline is None
    assert result.candidates[1].scores == [1, 1, 1, 0, 1, 0, 1, 0]
    selection = result.selection
    assert selection["min_gain"] == "noise"
    assert (selection["baseline_index"], selection["chosen_index"]) == (0, 0)
    assert "the baseline stays" in selection["reason"] and "#1" in selection["reason"]
    # the run says how to tell whether the higher score was luck
    gain = Interval.from_json(lucky["interval"]).format(signed=True)
    assert selection["advice"] == (
        f"#1 scored higher on validation ({gain}), within noise: re-score the finalists on "
        f"more validation examples "
        f"(--rescore-size N) to tell, or choose on means (--set min_gain=0)")


def test_with_min_gain_zero_the_best_score_wins_lucky_or_not() -> None:
    result, _ = optimize(min_gain=0)
    assert result.best_index == 1 and result.program.instruction == LUCKY
    assert result.selection["min_gain"] == 0.0
    assert result.selection["advice"] is None  # nothing was kept out
    assert "#1 has the best validation score (0.625)" in result.selection["reason"]


def test_a_real_gain_replaces_the_baseline() -> None:
    result, _ = optimize(planted=(LUCKY, GOOD))
    assert [c.score for c in result.candidates] == [0.5, 0.625, 1.0]
    good = result.candidates[2].vs_baseline
    assert good["allowed"] and good["interval"]["low"] > 0
    assert result.best_index == 2 and result.program.instruction == GOOD
    assert "#2 has the best validation score" in result.selection["reason"]


def test_rescoring_on_more_examples_unmasks_the_lucky_candidate() -> None:
    result, lm = optimize(rescore_set=data(MORE), min_gain=0, rescore_top=1)
    assert result.best_index == 0  # fooled on 8 examples, not on 48
    rescored = result.selection["rescored"]
    assert [(r["index"], r["examples"]) for r in rescored] == [(0, 48), (1, 48)]
    assert rescored[1]["score"] < rescored[0]["score"]
    assert not rescored[1]["verdict"]["allowed"]
    assert "re-scoring" in result.selection["reason"]
    assert result.selection["advice"] is None  # min_gain=0: the rule kept nothing out
    assert result.best_score == 0.5  # the validation score stays that of the validation set
    assert len(lm.requests) == 8 * 2 + 48 * 2


def test_rescoring_keeps_a_real_gain_and_only_the_top_few() -> None:
    result, _ = optimize(planted=(LUCKY, GOOD), rescore_set=data(MORE), rescore_top=1)
    rescored = result.selection["rescored"]
    assert [r["index"] for r in rescored] == [0, 2]  # baseline, best
    assert result.best_index == 2
    # the reason tells of the new scores the choice was made on, not the first ones
    assert result.selection["reason"].startswith(
        f"after re-scoring the finalists on more validation examples, #2 has the best "
        f"validation score ({rescored[1]['score']:.3f} on 48 examples) of the 1 finalist(s) "
        f"with a paired 95% interval of the gain above 0 over the baseline #0")


def test_without_a_rescore_set_nothing_is_rescored() -> None:
    result, lm = optimize(rescore_top=2)
    assert result.selection["rescored"] is None
    assert len(lm.requests) == 16


def test_bad_selection_settings_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="min_gain must be 'noise' or a number"):
        Planted(exact, min_gain="big")
    with pytest.raises(ValueError, match="rescore_top must be a whole number"):
        Planted(exact, rescore_top=-1)
    assert Planted(exact, min_gain=0.05).config()["min_gain"] == 0.05


def test_a_choice_made_on_means_alone_says_so() -> None:
    from cotune.optimize.selection import NOISE, Scored, Selection

    selection = Selection(NOISE, seed=0)
    selection.add(Scored(0, 0.50, None, None))  # no per-example scores: nothing to pair
    verdict = selection.add(Scored(1, 0.55, None, None))
    assert verdict is not None and verdict.interval is None and verdict.allowed
    reason = selection.reason()
    assert selection.chosen == 1 and "judged on means" in reason
    assert "paired 95% interval" not in reason
