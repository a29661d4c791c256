"""Engine-wide switches: strict mode (no generic fallback) and the once-per-primitive fallback warning."""

from __future__ import annotations

import warnings

from ..errors import UnsupportedPrimitiveError

__all__ = ["set_strict", "is_strict", "generic_fallback", "GenericRuleWarning"]

_STRICT = [False]
_WARNED: set[tuple[str, str]] = set()


class GenericRuleWarning(UserWarning):
    """A primitive without a hand-written rule runs through the slower generic nested-AD rule."""


def set_strict(strict: bool = True) -> None:
    """In strict mode a primitive without a hand-written rule raises instead of using the generic rule."""
    _STRICT[0] = bool(strict)


def is_strict() -> bool:
    return _STRICT[0]


def generic_fallback(prim: str, backend: str, where: str | None, register_hint: str) -> None:
    """Called by a capture that falls back to the generic rule: raise in strict mode, else warn once."""
    if _STRICT[0]:
        raise UnsupportedPrimitiveError(
            prim,
            backend,
            where,
            hint=f"strict mode is on (multijet.set_strict); {register_hint}, or call multijet.set_strict(False) "
            "to use the generic nested-AD rule.",
        )
    key = (backend, prim)
    if key not in _WARNED:
        _WARNED.add(key)
        at = f" (first used at {where})" if where else ""
        warnings.warn(
            f"multijet: {prim!r} on {backend}{at} has no Taylor rule and runs through the generic nested-AD rule "
            f"(exact, slower); {register_hint} for speed, or multijet.set_strict(True) to make this an error",
            GenericRuleWarning,
            stacklevel=3,
        )
