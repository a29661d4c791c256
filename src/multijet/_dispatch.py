"""Small backend helpers shared by :mod:`multijet.compare`, :mod:`multijet.autotune` and the benchmarks.

Below the public modules in the import graph: it imports only the backend registry and the planner's
constants, never :mod:`multijet.api` or anything above it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .backends import get_backend, infer_backend
from .backends.interop import native_program_backend, to_numpy
from .plan import METHODS

__all__ = ["backend_methods", "native_backend", "to_numpy"]


def backend_methods(name: str) -> tuple[str, ...]:
    """The methods a backend offers: its ``METHODS`` attribute if it has one, else all but nested for NumPy."""
    module = get_backend(name)
    methods = getattr(module, "METHODS", None)
    if methods is not None:
        return tuple(m for m in METHODS if m in methods)
    return tuple(m for m in METHODS if not (name == "numpy" and m == "nested"))


def native_backend(f: Callable, x: Any) -> str | None:
    """The one framework ``f`` / ``x`` belong to (torch for an ``nn.Module``, the type of a non-NumPy ``x``),
    or None for an array-API program given NumPy input (which every backend can run)."""
    source = infer_backend(x)
    if source != "numpy":
        return source
    return native_program_backend(f)



