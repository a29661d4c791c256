"""Extending multijet once for every backend: a new elementwise function with its derivative table.

``register_elementwise(name, table, numpy=…, torch=…, jax=…)`` adds the table to the shared derivative
tables and tells each backend which native operation it belongs to; a backend imported later picks the
registration up when it loads. No framework is imported here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .derivatives import TABLE

__all__ = ["register_elementwise", "on_register", "registered"]

_ELEMENTWISE: dict[str, dict[str, Any]] = {}
_HOOKS: dict[str, Callable[[str, Any], None]] = {}
BACKEND_NAMES = ("numpy", "torch", "jax")


def register_elementwise(name: str, table: Callable, *, numpy=None, torch=None, jax=None) -> None:
    """Teach every backend the elementwise function ``name`` with derivatives ``table``.

    ``table(xp, x0, y0, K) -> [g'(x0), …, g^{(K)}(x0)]`` uses only arithmetic and ``xp`` functions (``None``
    for a derivative that is identically zero). The natives say what the function is on each backend:
    ``numpy`` a callable on NumPy arrays (the tracer's namespace gains ``xp.<name>``), ``torch`` an ATen op
    (``torch.ops.aten.erfc`` or its name ``"erfc"``), ``jax`` a primitive (``jax.lax.erfc_p`` or its name).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"the name of an elementwise function must be an identifier, got {name!r}")
    if not callable(table):
        raise TypeError(f"table must be callable as table(xp, x0, y0, K), got {type(table).__name__}")
    natives = {"numpy": numpy, "torch": torch, "jax": jax}
    if all(v is None for v in natives.values()):
        raise ValueError("give the native operation for at least one backend (numpy=, torch= or jax=)")
    TABLE[name] = table
    _ELEMENTWISE[name] = natives
    for backend, native in natives.items():
        if native is not None and backend in _HOOKS:
            _HOOKS[backend](name, native)


def on_register(backend: str, hook: Callable[[str, Any], None]) -> None:
    """Called by a backend module when it loads: ``hook(name, native)`` now and for every later registration."""
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}")
    _HOOKS[backend] = hook
    for name, natives in _ELEMENTWISE.items():
        if natives.get(backend) is not None:
            hook(name, natives[backend])


def registered() -> dict[str, tuple[str, ...]]:
    """``{name: backends it is registered for}``."""
    return {n: tuple(b for b, v in natives.items() if v is not None) for n, natives in _ELEMENTWISE.items()}
