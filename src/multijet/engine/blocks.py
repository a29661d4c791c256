"""What one direction block of a jet group is seeded with, framework-free: every backend converts it natively.

A group of ``spec.size`` directions runs as ``spec.blocks`` blocks of ``spec.R`` (the last may be partial).
Block ``b`` holds its weights and either nothing (the identity seed over all D axes in one block, a served
group, a value group), the unit directions ``e_a`` by their axes ``rows`` (a block of the identity, or unit
directions on some axes: the backend seeds ``Identity(R, rows)``, never an R×D array), or dense
``directions``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .run import GroupSpec, group_weights

__all__ = ["BlockInputs", "block_inputs"]


@dataclass(frozen=True)
class BlockInputs:
    R: int  # directions in this block (``spec.R`` when padded)
    weights: np.ndarray  # (R,) float64 (zero on padding)
    rows: np.ndarray | None = None  # (R,) int axes of unit directions ``e_a`` (``a = D`` on padding: a zero row)
    directions: np.ndarray | None = None  # (R, D) float64 dense directions (zero rows on padding)


def block_inputs(plan, i: int, spec: GroupSpec, b: int = 0, pad: bool = False) -> BlockInputs:
    """Group ``i``'s block ``b`` (see the module doc); ``pad``: the last block filled up to ``spec.R``
    directions of weight zero (fixed shapes for ``lax.map``)."""
    lo = b * spec.R
    n = min(spec.R, spec.size - lo)
    weights = np.asarray(group_weights(plan, i, spec))[lo : lo + n]
    rows = directions = None
    if spec.order and not spec.served:
        if spec.identity:
            if spec.blocks > 1:  # a block of the identity
                rows = np.arange(lo, lo + n)
        elif plan.groups[i].unit_axes is not None:
            rows = np.asarray(plan.groups[i].unit_axes[lo : lo + n])
        else:
            directions = np.asarray(plan.groups[i].directions[lo : lo + n])
    R = spec.R if pad else n
    if R > n:
        weights = np.pad(weights, (0, R - n))
        rows = None if rows is None else np.pad(rows, (0, R - n), constant_values=plan.dim)
        directions = None if directions is None else np.pad(directions, ((0, R - n), (0, 0)))
    return BlockInputs(R, weights, rows, directions)
