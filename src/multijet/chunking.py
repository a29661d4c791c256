"""Chunking, framework-free: the chunk keywords checked, and a plan's groups split into direction blocks.

``Σ_r w_r f_K(v_r)`` is additive over subsets of directions, so a group may run as blocks of at most
``direction_chunk_size`` directions; points are independent, so ``chunk_size`` points may run per pass. The
collapsed and standard executors split directions inside the engine (:func:`multijet.engine.group_specs`);
nested AD, which runs every group by itself, takes the plan split by :func:`split_directions`. Every backend
splits points with :func:`by_points`, passing its own concatenation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import numpy as np

from .plan import JetGroup, Plan

__all__ = ["check_chunks", "split_directions", "by_points"]


def check_chunks(chunk_size, direction_chunk_size, sparsity=None) -> dict:
    """``{"chunk_size": …, "direction_chunk_size": …}``, each a positive integer or None (no chunking), and
    ``"sparsity"`` when given (False turns direction sparsity off, an int caps the blocks per element; None and
    True, the default, leave it to the cost model and are not passed on, so backends without the option keep
    working)."""
    out = {"chunk_size": chunk_size, "direction_chunk_size": direction_chunk_size}
    extra = {}
    integer = isinstance(sparsity, int | np.integer) and not isinstance(sparsity, bool)
    if not (sparsity is None or isinstance(sparsity, bool) or (integer and sparsity >= 1)):
        raise ValueError(
            "sparsity must be None (the cost model decides), False (off), True, or a positive int (the most "
            f"particles one element may depend on), got {sparsity!r}"
        )
    if sparsity is False or integer:
        extra["sparsity"] = False if sparsity is False else int(sparsity)
    for key, value in out.items():
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
            raise ValueError(f"{key} must be a positive integer or None (no chunking), got {value!r}")
        out[key] = int(value)
    return out | extra


def split_directions(plan: Plan, chunk: int | None) -> Plan:
    """The plan with every group of more than ``chunk`` directions split into groups of at most ``chunk``
    (unit directions stay symbolic). Mixed-order sharing is dropped: for executors that run every group."""
    if chunk is None:
        return plan
    groups: list[JetGroup] = []
    for g in plan.groups:
        step = chunk if g.order else g.size  # a value group has one (zero) direction
        for lo in range(0, g.size, step):
            hi = min(lo + step, g.size)
            if g.unit_axes is not None:
                groups.append(JetGroup(g.order, None, g.weights[lo:hi], g.label, g.unit_axes[lo:hi], dim=g.dim))
            else:
                groups.append(JetGroup(g.order, g.directions[lo:hi], g.weights[lo:hi], g.label))
    return dataclasses.replace(plan, groups=tuple(groups))


def by_points(fn: Callable[[Any], tuple], X, chunk: int | None, concat: Callable[[list], Any]) -> tuple:
    """``fn(X)`` over chunks of at most ``chunk`` points (``X``'s leading axis; None: all at once), each entry of
    the result tuples joined by ``concat`` (a list of arrays → one array; ``None`` entries stay ``None``)."""
    n = X.shape[0]
    if chunk is None or n <= chunk:
        return fn(X)
    parts = [fn(X[i : i + chunk]) for i in range(0, n, chunk)]
    return tuple(None if p[0] is None else concat(list(p)) for p in zip(*parts, strict=True))
