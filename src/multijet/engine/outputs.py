"""What every capture does with ``f``'s output: one array, or a tuple/list of equal shapes stacked.

Framework-free: the backend passes its own ``asarray`` and ``stack``."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["stack_outputs", "DICT_OUTPUT"]

DICT_OUTPUT = "f returned a dict; return one array (or a tuple/list of equally shaped arrays, which are stacked)"


def stack_outputs(f: Callable, asarray: Callable, stack: Callable) -> Callable:
    """``f`` with a tuple/list of equally shaped outputs stacked into one array (as every backend does);
    ``asarray`` converts one output, ``stack`` stacks a list of them (the backend's native functions)."""

    def g(x):
        out = f(x)
        if isinstance(out, dict):
            raise TypeError(DICT_OUTPUT)
        if isinstance(out, tuple | list):
            parts = [asarray(o) for o in out]
            shapes = [tuple(p.shape) for p in parts]
            if len(set(shapes)) > 1:
                raise TypeError(
                    f"f returned a tuple/list of arrays of shapes {shapes}; multijet stacks such outputs, "
                    "so they must share a shape"
                )
            out = stack(parts)
        return out

    return g
