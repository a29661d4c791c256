"""Standard errors of randomised estimates by batch means, framework-free.

``return_std=True`` draws the ``S`` samples as ``G`` independent groups of ``S/G`` (each its own plan, seeded
from ``seed``), evaluates each group's collapsed estimate ``m_g`` (an unbiased estimate by itself), and returns

    estimate = (1/G) Σ_g m_g,        standard error = sqrt( Σ_g (m_g − estimate)² / (G (G − 1)) ),

the batch-means error of the mean. The estimate has the distribution of an ``S``-sample estimate (the samples
are i.i.d.), though not the same numbers as ``return_std=False`` at the same seed. Cost: each group propagates
its own primal and top coefficient, so ``S + 2G`` arrays per node instead of ``S + 2`` (collapsed Laplacian),
never ``2S``. ``G`` is the largest divisor of ``S`` up to 8 (``S`` itself when ``S`` is prime and above 8): the
error estimate has ``G − 1`` degrees of freedom, so ``|estimate − exact| < std`` holds about 65 % of the time
at ``G = 8`` (a t-distribution's 68 %), and about 61 % at ``G = 4``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from .plan import Plan, make_plan
from .spec import Operator

__all__ = ["std_groups", "group_plans", "batch_means"]

MAX_GROUPS = 8


def std_groups(samples: int) -> int:
    """``G``: the largest divisor of ``samples`` in ``[2, 8]``, else ``samples`` (a prime above 8)."""
    if samples < 2:
        raise ValueError(f"return_std needs samples >= 2 (one sample has no standard error), got {samples}")
    for g in range(min(MAX_GROUPS, samples), 1, -1):
        if samples % g == 0:
            return g
    return samples


def group_plans(op: Operator, dim: int, samples: int, distribution: str | None, seed: int | None,
                route: str | None) -> list[Plan]:  # fmt: skip
    """The ``G`` independent plans of ``samples / G`` samples each, seeded from ``seed`` (fresh if None)."""
    G = std_groups(samples)
    root = np.random.SeedSequence(seed)
    seeds = [int(s.generate_state(2, np.uint64)[0] >> np.uint64(2)) for s in root.spawn(G)]
    return [make_plan(op, dim, samples=samples // G, distribution=distribution, seed=s, route=route) for s in seeds]


def batch_means(parts: Sequence[Any], sqrt) -> tuple[Any, Any]:
    """``(mean, standard error of the mean)`` of the group estimates (arrays of one framework)."""
    G = len(parts)
    mean = sum(parts[1:], parts[0]) / G
    var = sum(((p - mean) ** 2 for p in parts[1:]), (parts[0] - mean) ** 2) / (G * (G - 1))
    return mean, sqrt(var)
