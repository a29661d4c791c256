"""Executor registry: backend name → module, imported lazily (``import multijet`` imports no framework).

Every backend module provides ``NAME`` and ``run(plan, f, x, *, method, return_grad) -> (value, result,
gradient)``; optionally ``compile(plan, f, x_example, *, method, return_grad) -> callable`` and
``seed_from(obj) -> int`` (a framework generator or key turned into an integer seed).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from types import ModuleType

from ..errors import BackendError
from .interop import INTEROPS, Interop, owner

__all__ = ["available_backends", "get_backend", "infer_backend", "register_backend", "BACKENDS"]

#: backend name → (module implementing it, framework it needs)
BACKENDS: dict[str, tuple[str, str]] = {
    "numpy": ("multijet.backends.numpy", "numpy"),
    "torch": ("multijet.backends.torch", "torch"),
    "jax": ("multijet.backends.jax", "jax"),
}


def register_backend(name: str, module: str, framework: str, interop=None) -> None:
    """Add a backend: ``module`` (dotted name, imported on first use) implements the module protocol above
    for arrays of ``framework`` (an importable package); ``interop`` (a :class:`.interop.Interop`) says how
    its arrays convert (default: NumPy's). See docs/ARCHITECTURE.md, "A new backend"."""
    if not isinstance(name, str) or not name.isidentifier() or name in ("auto",):
        raise ValueError(f"a backend name must be an identifier other than 'auto', got {name!r}")
    BACKENDS[name] = (module, framework)
    if interop is not None:
        if not isinstance(interop, Interop):
            raise TypeError(f"interop must be a multijet.backends.interop.Interop, got {type(interop).__name__}")
        INTEROPS[name] = interop


def _implemented(name: str) -> bool:
    module = BACKENDS[name][0]
    return importlib.util.find_spec(module) is not None


def available_backends() -> list[str]:
    """Backends whose framework is installed here (checked without importing the framework)."""
    out = []
    for name, (_, framework) in BACKENDS.items():
        if _implemented(name) and (framework in sys.modules or importlib.util.find_spec(framework) is not None):
            out.append(name)
    return out


def get_backend(name: str) -> ModuleType:
    """The executor module for ``name``; a clear error for unknown or uninstalled backends."""
    if name not in BACKENDS:
        raise BackendError(
            f"unknown backend {name!r}; installed backends: {available_backends()} "
            f"(known: {sorted(BACKENDS)}, or 'auto' / None to choose)"
        )
    if name not in available_backends():
        framework = BACKENDS[name][1]
        why = "is not implemented yet" if not _implemented(name) else f"needs {framework}, which is not installed"
        raise BackendError(
            f"backend {name!r} {why}; installed backends: {available_backends()}. "
            f"Install it with: pip install -c constraints.txt 'multijet[{name}]'"
        )
    return importlib.import_module(BACKENDS[name][0])


def infer_backend(x) -> str:
    """The backend matching the array type of ``x``, found through ``sys.modules`` (never importing one)."""
    return owner(x)
