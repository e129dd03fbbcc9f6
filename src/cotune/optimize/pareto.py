"""The Pareto frontier over validation examples that GEPA picks its parents from.

Every candidate has a score on every validation example.  On each example the candidates with
the highest score *lead* it.  A candidate stays on the frontier while it leads at least one
example that no surviving candidate it ties with covers better: candidates are dropped, worst
mean first, when every example they lead is also led by another surviving candidate (they are
dominated).  Parents are drawn in proportion to the number of examples each survivor leads, so
a specialist that alone solves a few hard examples keeps being explored next to the best
generalist.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Frontier:
    """``leads[c]``: how many validation examples candidate ``c`` leads (survivors only)."""

    leads: dict[int, int]

    @property
    def members(self) -> list[int]:
        return sorted(self.leads)

    def sample(self, rng: random.Random) -> int:
        """A member drawn with probability proportional to the examples it leads."""
        members = self.members
        return rng.choices(members, weights=[self.leads[m] for m in members], k=1)[0]


def leader_sets(scores: Sequence[Sequence[float]]) -> list[set[int]]:
    """Per validation example, the candidates with the best score on it.

    ``scores[c][i]`` is candidate ``c``'s score on example ``i``; every row has the same length.
    """
    if not scores:
        return []
    width = len(scores[0])
    if any(len(row) != width for row in scores):
        raise ValueError("every candidate needs a score on every validation example")
    sets = []
    for i in range(width):
        best = max(row[i] for row in scores)
        sets.append({c for c, row in enumerate(scores) if row[i] == best})
    return sets


def pareto_frontier(scores: Sequence[Sequence[float]]) -> Frontier:
    """The non-dominated leaders and the number of examples each leads (see the module
    docstring).  Ties in mean are broken by keeping the earlier candidate."""
    sets = leader_sets(scores)
    alive = set().union(*sets) if sets else set()
    means = {c: sum(scores[c]) / max(1, len(scores[c])) for c in alive}
    # worst mean first; among equal means the later candidate goes first
    for c in sorted(alive, key=lambda c: (means[c], -c)):
        if len(alive) == 1:
            break
        covering = [s for s in sets if c in s]
        if all(len(s & alive) > 1 for s in covering):
            alive.discard(c)
    leads = {c: sum(1 for s in sets if c in s) for c in alive}
    return Frontier(leads)
