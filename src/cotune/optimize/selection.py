"""Choosing the final program knowing the noise of a validation score.

The first scored candidate is the **baseline** (the unoptimized program, for the optimizers that
score it first).  Every later candidate is compared with it on the same examples: the paired
bootstrap interval of its gain (:func:`~cotune.evaluate.stats.paired_bootstrap_ci`).  With
``min_gain="noise"`` a candidate may replace the baseline only when that interval lies above 0;
with a number, when its mean gain exceeds the number (``min_gain=0``: any gain, the plain "best
score wins").  Among the candidates allowed to, the highest validation score wins (the earliest
on ties).  Optionally the top few are first re-scored on more validation examples, and the
choice is made again on those scores.  :meth:`Selection.record` says what was chosen and why.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from cotune.evaluate.stats import Interval, paired_bootstrap_ci

NOISE = "noise"
MinGain = float | str
"""``"noise"`` or a number: what a candidate must gain over the baseline to replace it."""


def check_min_gain(value: Any) -> MinGain:
    if value == NOISE:
        return NOISE
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"min_gain must be 'noise' or a number, got {value!r}")
    return float(value)


@dataclass
class Scored:
    """What the choice looks at of one candidate."""

    index: int
    score: float
    scores: list[float] | None
    examples: str | None
    """A digest of the examples behind ``scores``: only scores on the same examples pair."""


@dataclass
class Verdict:
    """A candidate compared with the baseline."""

    gain: float
    interval: Interval | None
    """The paired interval of the gain; None when the two were not scored example by example
    on the same examples (then only the means are compared)."""
    allowed: bool
    """Whether the gain lets the candidate replace the baseline."""

    def to_json(self) -> dict[str, Any]:
        return {"gain": self.gain,
                "interval": self.interval.to_json() if self.interval is not None else None,
                "allowed": self.allowed}

    def text(self) -> str:
        if self.interval is not None:
            return self.interval.format(signed=True)
        return f"{self.gain:+.3f} (means only)"


def judge(candidate: Scored, baseline: Scored, min_gain: MinGain, seed: int) -> Verdict:
    """``candidate`` against ``baseline`` under the ``min_gain`` rule."""
    gain = candidate.score - baseline.score
    paired = (candidate.scores and baseline.scores
              and len(candidate.scores) == len(baseline.scores)
              and candidate.examples == baseline.examples)
    interval = (paired_bootstrap_ci(candidate.scores, baseline.scores, seed=seed)
                if paired else None)
    if min_gain == NOISE:
        allowed = interval.low > 0 if interval is not None else gain > 0
    else:
        allowed = (interval.estimate if interval is not None else gain) > float(min_gain)
    return Verdict(gain, interval, allowed)


class Selection:
    """The running choice of an :class:`~cotune.optimize.base.OptimizationRun`."""

    def __init__(self, min_gain: MinGain, seed: int) -> None:
        self.min_gain = check_min_gain(min_gain)
        self.seed = seed
        self.baseline: Scored | None = None
        self.best: Scored | None = None
        self.verdicts: dict[int, Verdict] = {}
        self.rescored: list[dict[str, Any]] | None = None
        self.note = ""
        self._known: dict[int, Scored] = {}

    def add(self, candidate: Scored) -> Verdict | None:
        """Take a scored candidate into account; its verdict (None for the baseline)."""
        self._known[candidate.index] = candidate
        if self.baseline is None:
            self.baseline = self.best = candidate
            return None
        verdict = judge(candidate, self.baseline, self.min_gain, self.seed)
        self.verdicts[candidate.index] = verdict
        assert self.best is not None
        if verdict.allowed and candidate.score > self.best.score:
            self.best = candidate
        return verdict

    def finalists(self, top: int) -> list[int]:
        """The baseline and the ``top`` best other candidates by validation score."""
        if self.baseline is None:
            return []
        # sorted() is stable: on equal scores the earlier candidate comes first
        others = sorted(self.verdicts, key=lambda i: -self._known[i].score)
        return [self.baseline.index, *others[:top]]

    def rescore(self, finalists: Sequence[int], scored: Callable[[int], Scored]) -> None:
        """Choose again among ``finalists`` (baseline first) from their scores on more
        examples (``scored(index)``), recorded in :attr:`rescored`."""
        again = [scored(i) for i in finalists]
        baseline, best = again[0], again[0]
        self.rescored = [{"index": baseline.index, "score": baseline.score,
                          "examples": len(baseline.scores or []), "verdict": None}]
        for candidate in again[1:]:
            verdict = judge(candidate, baseline, self.min_gain, self.seed)
            if verdict.allowed and candidate.score > best.score:
                best = candidate
            self.rescored.append({"index": candidate.index, "score": candidate.score,
                                  "examples": len(candidate.scores or []),
                                  "verdict": verdict.to_json()})
        self.best = self._known[best.index]

    @property
    def chosen(self) -> int | None:
        return None if self.best is None else self.best.index

    def reason(self) -> str:
        if self.baseline is None or self.best is None:
            return "no candidate was scored on validation data: the last one produced is the result"
        rule = ("a paired 95% interval of the gain above 0" if self.min_gain == NOISE
                else f"a mean gain above {self.min_gain:g}")
        where = "after re-scoring the finalists on more validation examples, " \
            if self.rescored is not None else ""
        if self.best.index == self.baseline.index:
            if not self.verdicts:
                return f"{where}#{self.baseline.index} is the only scored candidate"
            closest = max(self.verdicts, key=lambda i: self.verdicts[i].gain)
            return (f"{where}no candidate gained enough over the baseline #{self.baseline.index} "
                    f"(needed: {rule}; closest: #{closest}, "
                    f"{self._verdict_now(closest).text()}): the baseline stays")
        if self.min_gain == NOISE and self._verdict_now(self.best.index).interval is None:
            rule = ("a mean gain above 0 (judged on means: its scores could not be paired with "
                    "the baseline's)")
        if self.rescored is not None:  # the choice was made on the finalists' new scores
            allowed = [e["index"] for e in self.rescored
                       if e["verdict"] is not None and e["verdict"]["allowed"]]
            entry = next(e for e in self.rescored if e["index"] == self.best.index)
            score, pool = f"{entry['score']:.3f} on {entry['examples']} examples", "finalist(s)"
        else:
            allowed = [i for i, v in self.verdicts.items() if v.allowed]
            score, pool = f"{self.best.score:.3f}", "candidate(s)"
        return (f"{where}#{self.best.index} has the best validation score ({score}) of the "
                f"{len(allowed)} {pool} with {rule} over the baseline #{self.baseline.index}; "
                f"its gain: {self._verdict_now(self.best.index).text()}")

    def record(self) -> dict[str, Any]:
        """Why the result is what it is (written to candidates.json and result.json)."""
        return {
            "min_gain": self.min_gain,
            "baseline_index": None if self.baseline is None else self.baseline.index,
            "chosen_index": self.chosen,
            "reason": (self.reason() + (f" ({self.note})" if self.note else "")),
            "rescored": self.rescored,
            "advice": self.advice(),
        }

    def advice(self) -> str | None:
        """What to try when the noise rule kept the baseline although some candidate scored
        higher on validation: such a gain is as often real as not (docs/results.md), and only
        more validation examples can tell."""
        if (self.min_gain != NOISE or self.baseline is None or self.best is None
                or self.best.index != self.baseline.index or not self.verdicts):
            return None
        closest = max(self.verdicts, key=lambda i: self._verdict_now(i).gain)
        verdict = self._verdict_now(closest)
        if verdict.gain <= 0:
            return None
        if self.rescored is not None:
            return (f"#{closest} scored higher on validation ({verdict.text()}), within noise "
                    f"even after re-scoring; a larger validation set is what can tell")
        return (f"#{closest} scored higher on validation ({verdict.text()}), within noise: "
                f"re-score the finalists on more validation examples (--rescore-size N) to "
                f"tell, or choose on means (--set min_gain=0)")

    # -- internals ---------------------------------------------------------------------------

    def _verdict_now(self, index: int) -> Verdict:
        """The verdict behind the current choice: the re-scored one when there is one."""
        for entry in self.rescored or []:
            if entry["index"] == index and entry["verdict"] is not None:
                v = entry["verdict"]
                return Verdict(v["gain"], Interval.from_json(v["interval"]), v["allowed"])
        return self.verdicts[index]
