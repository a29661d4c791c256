"""XLA compiler options of multijet's own jitted programs (``mj.compile`` and the eager runners).

On CPU, XLA hands dots fused with their elementwise producers and consumers, and reductions, to YNNPACK
("library fusions"). Jet programs sum over the direction axis next to every GEMM; in those fused library calls
XLA materialised broadcast operands (constants, primal factors) at the size of all directions, and the fused
calls ran several times slower than XLA's own loops plus a plain GEMM. Keeping YNNPACK to single dots
(``LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT``) measured, per batch of 16 in float64 on one core: a FermiNet-like
log|ψ| with 32 electrons 38 → 13 ms, a Psiformer-like one with 16 electrons 53 → 33 ms, the paper's MLP
Laplacian and bi-Laplacian unchanged within noise (``benchmarks/vmc_wavefunctions.py`` has the current figures).

The options apply only to programs multijet jits itself; inside a user's ``jax.jit`` the user's options hold.
Set :data:`COMPILER_OPTIONS` to ``{}`` for XLA's defaults. An XLA that does not know an option (another
version, another platform) gets none of them: they are checked once per process on a tiny program.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["COMPILER_OPTIONS", "compiler_options"]

#: XLA debug options for multijet's jitted programs (``{}``: XLA's defaults)
COMPILER_OPTIONS: dict[str, str] = {"xla_cpu_experimental_ynn_fusion_type": "LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}

_accepted: dict[tuple, bool] = {}


def compiler_options() -> dict[str, str] | None:
    """:data:`COMPILER_OPTIONS` when this XLA accepts them (checked once per process and setting), else None."""
    if not COMPILER_OPTIONS or jax.default_backend() != "cpu":
        return None
    key = tuple(sorted(COMPILER_OPTIONS.items()))
    ok = _accepted.get(key)
    if ok is None:
        try:
            jax.jit(lambda a: a + 1, compiler_options=dict(COMPILER_OPTIONS)).lower(jnp.zeros(2)).compile()
            ok = True
        except Exception:  # noqa: BLE001  (an unknown option or value: XLA's defaults instead)
            ok = False
        _accepted[key] = ok
    return dict(COMPILER_OPTIONS) if ok else None
