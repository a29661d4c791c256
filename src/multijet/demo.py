"""The main job's demo: ``python -m multijet.demo``.

Prints the plan of a Laplacian and of a bi-Laplacian, then both operators of a small tanh MLP on every
installed backend, each beside a float64 finite-difference check.
"""

from __future__ import annotations

import numpy as np
from array_api_compat import array_namespace

import multijet as mj
from multijet.backends.interop import interop

D = 3
_rng = np.random.default_rng(0)
W1, B1 = _rng.normal(size=(16, D)) / np.sqrt(D), _rng.normal(size=16)
W2 = _rng.normal(size=(1, 16)) / 4


def mlp(x):
    """A tanh MLP R^3 → R written against the array API, so every backend runs it."""
    xp = array_namespace(x)
    h = xp.tanh(xp.asarray(W1, dtype=x.dtype) @ x + xp.asarray(B1, dtype=x.dtype))
    return xp.sum(xp.asarray(W2, dtype=x.dtype) @ h)


def _finite_difference_laplacian(f, x, h=1e-4):
    return sum((f(x + h * e) - 2 * f(x) + f(x - h * e)) / h**2 for e in np.eye(x.size))


def _to_backend(name, x):
    if name == "jax":  # the demo runs in float64 everywhere
        import jax

        jax.config.update("jax_enable_x64", True)
    return interop(name).from_numpy(x)[0]


def main() -> None:
    x = np.array([[0.1, -0.2, 0.3], [0.5, 0.4, -0.6]])
    print(mj.plan(mj.Laplacian(), D))
    print()
    print(mj.plan(mj.Bilaplacian(), D))
    print()
    fd = [_finite_difference_laplacian(lambda z: float(mlp(z)), p) for p in x]
    print(f"finite differences (float64)     Δf = {np.array2string(np.asarray(fd), precision=8)}")
    for name in mj.available_backends():
        xb = _to_backend(name, x)
        for method in ("collapsed", "standard"):
            lap = np.asarray(mj.laplacian(mlp, xb, backend=name, method=method))
            bil = np.asarray(mj.bilaplacian(mlp, xb, backend=name, method=method))
            print(
                f"{name:>5} {method:<9}  Δf = {np.array2string(lap, precision=8)}   "
                f"Δ²f = {np.array2string(bil, precision=8)}"
            )
    est, std = mj.laplacian(mlp, x, samples=64, seed=0, return_std=True)
    terms = ", ".join(f"{e:.4f} ± {s:.4f}" for e, s in zip(np.ravel(est), np.ravel(std), strict=True))
    print(f"numpy randomised (64 Rademacher) Δf ≈ [{terms}]  (± one standard error, return_std=True)")


if __name__ == "__main__":
    main()
