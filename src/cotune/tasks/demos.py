"""Choosing labelled demos from a training split."""

from __future__ import annotations

import random
from collections import defaultdict

from cotune.core.example import Example
from cotune.core.predict import Predict, labelled_demo


def labelled_demos(
    train: list[Example], k: int, seed: int = 0, predictor: Predict | None = None
) -> list[Example]:
    """``k`` training examples, shuffled with ``seed``, cycling over the label values so that
    each class is shown before any repeats (for single-label classification tasks).

    With ``predictor``, only examples that hold every field its demos need are used (as that
    predictor's fields): an intermediate module whose outputs the labels lack gets none."""
    if predictor is not None:
        train = [d for ex in train if (d := labelled_demo(predictor, ex)) is not None]
    if k <= 0 or not train:
        return []
    shuffled = list(train)
    random.Random(seed).shuffle(shuffled)
    labels = sorted(shuffled[0].labels())
    by_label: dict[str, list[Example]] = defaultdict(list)
    for ex in shuffled:
        by_label[repr([ex[name] for name in labels])].append(ex)
    queues = list(by_label.values())
    demos: list[Example] = []
    while len(demos) < min(k, len(shuffled)):
        for queue in queues:
            if queue and len(demos) < k:
                demos.append(queue.pop(0))
    return demos
