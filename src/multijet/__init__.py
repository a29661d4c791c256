"""multijet: linear PDE operators of programs with collapsed Taylor-mode automatic differentiation.

>>> import multijet as mj
>>> mj.laplacian(f, x)                      # Δf, backend inferred from the type of x
>>> mj.apply(mj.Laplacian() + 4.0 * mj.LinearOperator({(0, 0): 1.0}), f, x)   # Helmholtz

Importing multijet imports neither torch nor jax; a backend's framework is imported when it is used.
"""

from .api import (
    Compiled,
    apply,
    available_backends,
    bilaplacian,
    compile,
    laplacian,
    plan,
    register_auto_backend,
    weighted_laplacian,
)
from .backends import register_backend
from .engine.config import GenericRuleWarning, set_strict
from .errors import BackendError, MultijetError, PlanError, UnsupportedPrimitiveError
from .extend import register_elementwise, unregister_elementwise
from .plan import JetGroup, Plan
from .spec import Bilaplacian, Laplacian, LinearOperator, Operator, SumOperator, WeightedLaplacian
from .vmc import local_kinetic_energy

__version__ = "0.1.0"


def _auto_backend(op, f, x, **kwargs) -> str:
    """``backend="auto"``: :func:`multijet.autotune.auto_backend`, loaded on the first call."""
    from .autotune import auto_backend

    return auto_backend(op, f, x, **kwargs)


# api sits below autotune in the import graph; the package (above both) connects them
register_auto_backend(_auto_backend)
del register_auto_backend


def __getattr__(name: str):
    """``compare`` and ``autotune`` load on first use (they import timing and reporting code)."""
    if name == "compare":
        from .compare import compare

        return compare
    if name == "autotune":
        from .autotune import autotune

        return autotune
    raise AttributeError(f"module 'multijet' has no attribute {name!r}")


__all__ = [
    "laplacian",
    "weighted_laplacian",
    "bilaplacian",
    "local_kinetic_energy",
    "apply",
    "compile",
    "plan",
    "available_backends",
    "register_backend",
    "register_elementwise",
    "unregister_elementwise",
    "set_strict",
    "GenericRuleWarning",
    "compare",
    "autotune",
    "Compiled",
    "Plan",
    "JetGroup",
    "Operator",
    "Laplacian",
    "WeightedLaplacian",
    "Bilaplacian",
    "LinearOperator",
    "SumOperator",
    "MultijetError",
    "PlanError",
    "BackendError",
    "UnsupportedPrimitiveError",
]
