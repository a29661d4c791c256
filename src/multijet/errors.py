"""Exceptions raised by multijet, each naming what is wrong and what was expected."""

from __future__ import annotations

__all__ = ["MultijetError", "PlanError", "UnsupportedPrimitiveError", "BackendError"]


class MultijetError(Exception):
    """Base class of multijet's own errors."""


class PlanError(MultijetError, ValueError):
    """The operator cannot be planned as asked (e.g. a biased randomised estimator)."""


class BackendError(MultijetError, ValueError):
    """An unknown or uninstalled backend, or an input the backend cannot take."""


class UnsupportedPrimitiveError(MultijetError, NotImplementedError):
    """A primitive of the user's program that no Taylor rule (hand-written or generic) can differentiate."""

    def __init__(self, primitive: str, backend: str, where: str | None = None, hint: str | None = None):
        self.primitive = primitive
        self.backend = backend
        self.where = where
        msg = f"multijet has no Taylor rule for primitive {primitive!r} on the {backend!r} backend"
        if where:
            msg += f" (used at {where})"
        msg += ". " + (
            hint
            or f"Register one with multijet.backends.{backend}.register_rule({primitive!r}, rule), "
            "or rewrite this step with supported operations."
        )
        super().__init__(msg)
