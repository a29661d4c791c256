"""Extending multijet once for every backend: a new elementwise function with its derivative table.

``register_elementwise(name, table, numpy=…, torch=…, jax=…)`` adds the table to the shared derivative
tables and tells each backend which native operation it belongs to; a backend imported later picks the
registration up when it loads. ``unregister_elementwise(name)`` (or leaving ``with register_elementwise(…):``)
undoes it. No framework is imported here.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from typing import Any

from .derivatives import TABLE

__all__ = ["register_elementwise", "unregister_elementwise", "Registration", "on_register", "registered"]

#: ``hook(name, native) -> undo`` (or ``None`` when the backend cannot undo its part)
Hook = Callable[[str, Any], Callable[[], None] | None]

_ELEMENTWISE: dict[str, dict[str, Any]] = {}
_ACTIVE: dict[str, Registration] = {}
_HOOKS: dict[str, Hook] = {}
BACKEND_NAMES = ("numpy", "torch", "jax")
_MISSING = object()


class Registration:
    """What :func:`register_elementwise` returns: ``remove()`` undoes it, and so does leaving a ``with`` block."""

    def __init__(self, name: str, previous_table: Any) -> None:
        self.name = name
        self._previous_table = previous_table
        self._undo: dict[str, Callable[[], None] | None] = {}

    def _hook(self, backend: str, native: Any) -> None:
        self._undo[backend] = _HOOKS[backend](self.name, native)

    def remove(self) -> None:
        """Undo the registration on every backend it reached (no-op once removed or replaced)."""
        if _ACTIVE.get(self.name) is not self:
            return
        del _ACTIVE[self.name], _ELEMENTWISE[self.name]
        for undo in reversed(list(self._undo.values())):
            if undo is not None:
                undo()
        if self._previous_table is _MISSING:
            TABLE.pop(self.name, None)
        else:
            TABLE[self.name] = self._previous_table

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()

    def __repr__(self) -> str:
        state = "active" if _ACTIVE.get(self.name) is self else "removed"
        return f"<multijet elementwise {self.name!r} ({state})>"


def register_elementwise(name: str, table: Callable, *, numpy=None, torch=None, jax=None) -> Registration:
    """Teach every backend the elementwise function ``name`` with derivatives ``table``.

    ``table(xp, x0, y0, K) -> [g'(x0), …, g^{(K)}(x0)]`` uses only arithmetic and ``xp`` functions (``None``
    for a derivative that is identically zero). The natives say what the function is on each backend:
    ``numpy`` a callable on NumPy arrays (the tracer's namespace gains ``xp.<name>``), ``torch`` an ATen op
    (``torch.ops.aten.erfc``, ``torch.erfc`` or the name ``"erfc"``), ``jax`` a primitive (``jax.lax.erfc_p``
    or its name). Registering a name again replaces the earlier registration; the returned
    :class:`Registration` undoes it (``.remove()``, or as a context manager).
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"the name of an elementwise function must be an identifier, got {name!r}")
    if not callable(table):
        raise TypeError(f"table must be callable as table(xp, x0, y0, K), got {type(table).__name__}")
    natives = {"numpy": numpy, "torch": torch, "jax": jax}
    if all(v is None for v in natives.values()):
        raise ValueError("give the native operation for at least one backend (numpy=, torch= or jax=)")
    unregister_elementwise(name)
    reg = Registration(name, TABLE.get(name, _MISSING))
    TABLE[name] = table
    _ELEMENTWISE[name] = natives
    _ACTIVE[name] = reg
    try:
        for backend, native in natives.items():
            if native is not None and backend in _HOOKS:
                reg._hook(backend, native)
    except Exception:
        reg.remove()
        raise
    return reg


def unregister_elementwise(name: str) -> None:
    """Undo :func:`register_elementwise` for ``name`` (no-op if it is not registered)."""
    reg = _ACTIVE.get(name)
    if reg is not None:
        reg.remove()


def on_register(backend: str, hook: Hook) -> None:
    """Called by a backend module when it loads: ``hook(name, native)`` now and for every later registration;
    the hook returns a callable undoing its part (used by :func:`unregister_elementwise`)."""
    if backend not in BACKEND_NAMES:
        raise ValueError(f"unknown backend {backend!r}")
    _HOOKS[backend] = hook
    for name, natives in _ELEMENTWISE.items():
        if natives.get(backend) is None:
            continue
        native = natives[backend]
        try:
            _ACTIVE[name]._hook(backend, native)
        except Exception as e:  # a bad native given before the backend loaded must not break loading it
            natives[backend] = None  # ``registered()`` no longer lists this backend for ``name``
            warnings.warn(
                f"multijet: the elementwise function {name!r} was registered with {backend}={native!r} "
                f"before the {backend} backend loaded, and that registration failed now ({type(e).__name__}: {e}); "
                f"{name!r} stays unregistered on {backend} (call register_elementwise({name!r}, …) again to fix it)",
                RuntimeWarning,
                stacklevel=2,
            )


def registered() -> dict[str, tuple[str, ...]]:
    """``{name: backends it is registered for}``."""
    return {n: tuple(b for b, v in natives.items() if v is not None) for n, natives in _ELEMENTWISE.items()}
