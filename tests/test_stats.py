"""Bootstrap confidence intervals of scores and of paired differences."""

from __future__ import annotations

import math
import random

import pytest

from cotune.evaluate import Interval, bootstrap_ci, paired_bootstrap_ci
from cotune.evaluate.stats import spread


def bernoulli(n: int, p: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [float(rng.random() < p) for _ in range(n)]


def test_interval_matches_the_normal_approximation_for_accuracy() -> None:
    scores = [1.0] * 100 + [0.0] * 100
    ci = bootstrap_ci(scores)
    assert ci.estimate == 0.5 and ci.n == 200 and ci.confidence == 0.95
    half = 1.96 * math.sqrt(0.25 / 200)  # 0.069
    assert ci.low == pytest.approx(0.5 - half, abs=0.01)
    assert ci.high == pytest.approx(0.5 + half, abs=0.01)
    # fewer examples, wider interval
    small = bootstrap_ci([1.0] * 10 + [0.0] * 10)
    assert small.high - small.low > 2 * (ci.high - ci.low)


def test_intervals_are_seeded_and_deterministic() -> None:
    scores = bernoulli(60, 0.4, seed=1)
    assert bootstrap_ci(scores, seed=7) == bootstrap_ci(scores, seed=7)
    assert bootstrap_ci(scores) == bootstrap_ci(list(scores))
    other = bootstrap_ci(scores, seed=8)
    assert other.estimate == bootstrap_ci(scores, seed=7).estimate
    assert abs(other.low - bootstrap_ci(scores, seed=7).low) < 0.05


def test_constant_scores_have_no_spread() -> None:
    assert bootstrap_ci([1.0] * 30) == Interval(1.0, 1.0, 1.0, 30)
    assert bootstrap_ci([0.0]) == Interval(0.0, 0.0, 0.0, 1)
    partial = bootstrap_ci([0.5, 0.25, 1.0, 0.0])  # fractional scores (e.g. recall)
    assert 0.0 <= partial.low < partial.estimate < partial.high <= 1.0


def test_paired_difference_cancels_what_two_programs_share() -> None:
    base = bernoulli(100, 0.5, seed=2)
    # better on 12 examples the baseline got wrong, the same everywhere else
    wrong = [i for i, s in enumerate(base) if s == 0.0][:12]
    better = [1.0 if i in wrong else s for i, s in enumerate(base)]
    gain = paired_bootstrap_ci(better, base)
    assert gain.estimate == pytest.approx(0.12)
    assert gain.low > 0 and gain.excludes_zero
    # the unpaired intervals of the two overlap: only pairing shows the gain is real
    assert bootstrap_ci(better).low < bootstrap_ci(base).high

    same = paired_bootstrap_ci(base, base)
    assert (same.estimate, same.low, same.high) == (0.0, 0.0, 0.0)
    assert not same.excludes_zero


def test_a_lucky_difference_is_within_noise() -> None:
    base = bernoulli(20, 0.5, seed=3)
    flipped = list(base)
    flipped[base.index(0.0)] = 1.0  # one more example right of 20
    flipped[base.index(0.0, base.index(0.0) + 1)] = 1.0
    flipped[base.index(1.0)] = 0.0  # and one wrong that was right
    gain = paired_bootstrap_ci(flipped, base)
    assert gain.estimate == pytest.approx(0.05)
    assert gain.contains(0.0) and not gain.excludes_zero


def test_bad_input_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="empty"):
        bootstrap_ci([])
    with pytest.raises(ValueError, match="same examples: 3 scores vs 2"):
        paired_bootstrap_ci([1, 0, 1], [1, 0])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_ci([1.0, float("nan")])
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 0.0], confidence=95)


def test_interval_json_and_text() -> None:
    ci = bootstrap_ci(bernoulli(40, 0.3, seed=4))
    assert Interval.from_json(ci.to_json()) == ci
    assert Interval.from_json(None) is None
    assert Interval.from_json({"estimate": 0.5}) is None
    assert Interval(0.54, 0.42, 0.66, 50).format() == "0.540 [0.420, 0.660]"
    assert Interval(0.12, -0.02, 0.26, 50).format(signed=True) == "+0.120 [-0.020, +0.260]"


def test_spread_over_seeds() -> None:
    assert spread([0.5, 0.7, 0.6]) == pytest.approx(
        {"n": 3, "mean": 0.6, "sd": 0.1, "min": 0.5, "max": 0.7})
    assert spread([0.4])["sd"] == 0.0
    with pytest.raises(ValueError, match="empty"):
        spread([])
