"""Coefficient patterns and direction sets: the lattice the schedule computes over."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Pattern", "DirSet", "ALL", "NONE", "input_pattern", "const_pattern", "pattern_union", "pattern_leq"]

Pattern = tuple[bool, ...]  # present[k] for k = 0..K


@dataclass(frozen=True)
class DirSet:
    """The directions a value depends on: none, all, or (for structured plans) a set of indices."""

    indices: frozenset[int] | None  # None: all directions

    def __or__(self, other: DirSet) -> DirSet:
        if self.indices is None or other.indices is None:
            return ALL
        return DirSet(self.indices | other.indices)

    @property
    def empty(self) -> bool:
        return self.indices is not None and not self.indices

    def __str__(self) -> str:
        if self.indices is None:
            return "all"
        return "none" if not self.indices else "{" + ", ".join(map(str, sorted(self.indices))) + "}"


ALL = DirSet(None)
NONE = DirSet(frozenset())


def input_pattern(order: int) -> Pattern:
    """The seed ``(x_0, v, 0, …, 0)``."""
    return tuple(k <= 1 for k in range(order + 1))


def const_pattern(order: int) -> Pattern:
    """A constant: only ``x_0``."""
    return (True,) + (False,) * order


def pattern_union(a: Pattern, b: Pattern) -> Pattern:
    return tuple(x or y for x, y in zip(a, b, strict=True))


def pattern_leq(a: Pattern, b: Pattern) -> bool:
    """Every coefficient present in ``a`` is present in ``b``."""
    return all(y or not x for x, y in zip(a, b, strict=True))
