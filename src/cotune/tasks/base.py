"""A benchmark task: seeded data splits, a program factory and a metric."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from cotune.core import Module
from cotune.core.example import Example, Prediction

Metric = Callable[..., float | bool]


@dataclass(frozen=True)
class Splits:
    train: list[Example]
    val: list[Example]
    test: list[Example]

    def get(self, name: str) -> list[Example]:
        if name not in ("train", "val", "test"):
            raise ValueError(f"unknown split {name!r}; use train, val or test")
        return getattr(self, name)


@dataclass(frozen=True)
class Reference:
    """A baseline without an LM that every run is compared with on its test examples, paired:
    what the program has to beat for its LM calls to be worth anything (HoVer: BM25 on the
    claim alone, at as many passages as the program retrieves)."""

    description: str
    predict: Callable[[Example], Prediction]
    metrics: tuple[str, ...]
    """The task's metrics that mean something for these predictions: ``"score"`` (the task
    metric) and names of ``extra_metrics`` (a retrieval baseline gives no answer to score)."""


@dataclass(frozen=True)
class Task:
    """``metric`` is what optimizers maximize; ``extra_metrics`` are reported beside it on the
    test split (computed from the same predictions, never optimized); ``reference``, when the
    task has one, builds the no-LM baseline for a program of the task."""

    name: str
    description: str
    load_splits: Callable[..., Splits]
    make_program: Callable[[], Module]
    metric: Metric
    extra_metrics: Mapping[str, Metric] = field(default_factory=dict)
    reference: Callable[[Module], Reference] | None = None


class SplitSizeError(ValueError):
    """The data holds fewer examples than the split sizes need."""

    def __init__(self, sizes: tuple[int, int, int], available: int, source: str | None) -> None:
        where = f" in {source}" if source else ""
        super().__init__(f"split sizes {'/'.join(map(str, sizes))} (train/val/test) need "
                         f"{sum(sizes)} examples, the data has {available}{where}")
        self.sizes = sizes
        self.available = available
        self.source = source


def seeded_split(
    examples: Sequence[Example], sizes: tuple[int, int, int], seed: int,
    source: str | None = None,
) -> Splits:
    """Shuffle with ``seed`` and cut into train/val/test of the given sizes (``source``: the
    data file, named in the error when the data is too small)."""
    if sum(sizes) > len(examples):
        raise SplitSizeError(tuple(sizes), len(examples), source)
    shuffled = list(examples)
    random.Random(seed).shuffle(shuffled)
    a, b, c = sizes
    return Splits(shuffled[:a], shuffled[a : a + b], shuffled[a + b : a + b + c])


def grouped_split(
    examples: Sequence[Example], sizes: tuple[int, int, int], seed: int,
    keys: Callable[[Example], Sequence[str]], source: str | None = None,
) -> Splits:
    """Like :func:`seeded_split`, but examples that share a key (HoVer claims written from the
    same documents share their supporting titles) stay in one split, so that no test example's
    answer is shown by a training demo.

    The families (examples linked through shared keys) are placed largest first, in an order
    shuffled with ``seed``, each into a split drawn at random in proportion to the room it has
    left among the splits it fits in; the many one-example families fill the splits exactly.
    Sizes that cannot be filled without cutting a family are an error naming them."""
    if sum(sizes) > len(examples):
        raise SplitSizeError(tuple(sizes), len(examples), source)
    rng = random.Random(seed)
    families = _families(examples, keys)
    rng.shuffle(families)
    families.sort(key=len, reverse=True)  # stable: the shuffle orders families of one size
    room = list(sizes)
    parts: list[list[Example]] = [[], [], []]
    for family in families:
        fits = [n for n in range(3) if room[n] >= len(family)]
        if not fits:
            continue  # left out, as seeded_split leaves out what the sizes do not ask for
        n = rng.choices(fits, weights=[room[n] for n in fits])[0]
        parts[n].extend(family)
        room[n] -= len(family)
    if any(room):
        where = f" in {source}" if source else ""
        raise ValueError(f"split sizes {'/'.join(map(str, sizes))} (train/val/test) cannot be "
                         f"cut from the examples' families{where} without splitting one (they "
                         f"filled {'/'.join(str(len(p)) for p in parts)}); choose other sizes")
    return Splits(*parts)


def _families(
    examples: Sequence[Example], keys: Callable[[Example], Sequence[str]]
) -> list[list[Example]]:
    """The examples grouped into connected families (union-find over shared keys), each in
    the data's order, the families in the order of their first example."""
    parent = list(range(len(examples)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    for i, example in enumerate(examples):
        for key in keys(example):
            if key in first_with:
                parent[root(i)] = root(first_with[key])
            else:
                first_with[key] = i
    families: dict[int, list[Example]] = {}
    for i, example in enumerate(examples):
        families.setdefault(root(i), []).append(example)
    return list(families.values())


def check_fields(row: dict[str, Any], required: Sequence[str], where: str) -> None:
    missing = [k for k in required if k not in row]
    if missing:
        raise ValueError(f"{where}: missing fields {missing}")
