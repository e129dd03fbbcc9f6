"""Uncertainty of scores: 95% bootstrap confidence intervals over examples.

A score is a mean over examples, so the examples are what is resampled: :func:`bootstrap_ci`
gives the percentile interval of a program's mean score, :func:`paired_bootstrap_ci` the
interval of the difference of two programs' means on the *same* examples (resampling examples,
not each program on its own, so that what the two share cancels out).  Both are seeded and
deterministic: the same scores and seed give the same interval, on any machine.

``numpy`` (installed with optuna) is imported on first use only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONFIDENCE = 0.95
RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A mean (``estimate``) over ``n`` examples and its bootstrap confidence interval."""

    estimate: float
    low: float
    high: float
    n: int
    confidence: float = CONFIDENCE

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    @property
    def excludes_zero(self) -> bool:
        """For a difference: the sign is beyond noise (the interval does not include 0)."""
        return not self.contains(0.0)

    def to_json(self) -> dict[str, Any]:
        return {"estimate": self.estimate, "low": self.low, "high": self.high, "n": self.n,
                "confidence": self.confidence}

    @classmethod
    def from_json(cls, data: Any) -> Interval | None:
        """The interval a ``to_json`` wrote; None for anything else (e.g. an old run folder)."""
        if not isinstance(data, Mapping):
            return None
        try:
            values = [float(data[k]) for k in ("estimate", "low", "high")]
            n = int(data["n"])
            confidence = float(data.get("confidence", CONFIDENCE))
        except (KeyError, TypeError, ValueError):
            return None
        return cls(*values, n=n, confidence=confidence)

    def format(self, digits: int = 3, *, signed: bool = False) -> str:
        """``0.540 [0.420, 0.660]`` (``+0.120 [-0.020, +0.260]`` when ``signed``)."""
        sign = "+" if signed else ""
        return (f"{self.estimate:{sign}.{digits}f} "
                f"[{self.low:{sign}.{digits}f}, {self.high:{sign}.{digits}f}]")

    def __str__(self) -> str:
        return self.format()


def bootstrap_ci(
    scores: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The mean of ``scores`` and its percentile bootstrap interval (examples resampled with
    replacement ``resamples`` times)."""
    values = _checked(scores, "scores")
    return _percentile_interval(values, confidence, resamples, seed)


def paired_bootstrap_ci(
    scores_a: Sequence[float],
    scores_b: Sequence[float],
    *,
    confidence: float = CONFIDENCE,
    resamples: int = RESAMPLES,
    seed: int = 0,
) -> Interval:
    """``mean(a) - mean(b)`` and its paired bootstrap interval: ``a[i]`` and ``b[i]`` are two
    programs' scores on the same example ``i``, resampled together."""
    a = _checked(scores_a, "scores_a")
    b = _checked(scores_b, "scores_b")
    if len(a) != len(b):
        raise ValueError(f"paired scores need the same examples: {len(a)} scores vs {len(b)}")
    return _percentile_interval([x - y for x, y in zip(a, b, strict=True)],
                                confidence, resamples, seed)


def spread(values: Sequence[float]) -> dict[str, float | int]:
    """Mean, sample standard deviation (0 for one value), min and max of e.g. one cell's test
    score over seeds."""
    xs = _checked(values, "values")
    mean = math.fsum(xs) / len(xs)
    sd = math.sqrt(math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0
    return {"n": len(xs), "mean": mean, "sd": sd, "min": min(xs), "max": max(xs)}


def _checked(scores: Sequence[float], name: str) -> list[float]:
    values = [float(s) for s in scores]
    if not values:
        raise ValueError(f"{name} is empty: an interval needs at least one example")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} holds a value that is not a finite number")
    return values


def _percentile_interval(
    values: list[float], confidence: float, resamples: int, seed: int
) -> Interval:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    if resamples < 1:
        raise ValueError(f"resamples must be >= 1, got {resamples}")
    import numpy as np

    data = np.asarray(values, dtype=np.float64)
    n = len(data)
    estimate = float(math.fsum(values) / n)
    if n == 1 or float(data.min()) == float(data.max()):
        return Interval(estimate, estimate, estimate, n, confidence)
    rng = np.random.Generator(np.random.PCG64(seed))
    means = np.empty(resamples)
    chunk = max(1, 2_000_000 // n)  # bounded memory for large evaluations
    for start in range(0, resamples, chunk):
        stop = min(resamples, start + chunk)
        means[start:stop] = data[rng.integers(0, n, size=(stop - start, n))].mean(axis=1)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    # clip: the quantiles of resampled means can fall a hair outside the data by rounding
    return Interval(estimate, max(float(low), float(data.min())),
                    min(float(high), float(data.max())), n, confidence)
