"""The benchmark network (the paper's tanh MLP), its inputs and the operators, built natively per backend.

The weights come from one NumPy seed, so every backend evaluates the same function. Frameworks are imported
only when a configuration uses them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

import numpy as np

from ..spec import Bilaplacian, Laplacian, Operator, WeightedLaplacian

__all__ = ["PAPER_WIDTHS", "OPERATORS", "mlp_layers", "make_program", "make_input", "make_operator", "torch_device"]

#: hidden widths of the paper's network (D → 768 → 768 → 512 → 512 → 1, tanh)
PAPER_WIDTHS: tuple[int, ...] = (768, 768, 512, 512)
#: operator names understood by :func:`make_operator` (the CLI's ``--operator``)
OPERATORS: tuple[str, ...] = ("laplacian", "weighted-laplacian", "bilaplacian")


def mlp_layers(dim: int, widths: Sequence[int], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Weights ``(W, b)`` of a tanh MLP ``dim → widths… → 1`` (PyTorch's default uniform initialisation)."""
    rng = np.random.default_rng(seed)
    sizes = [dim, *widths, 1]
    layers = []
    for fan_in, fan_out in zip(sizes[:-1], sizes[1:], strict=True):
        bound = 1.0 / np.sqrt(fan_in)
        layers.append((rng.uniform(-bound, bound, (fan_out, fan_in)), rng.uniform(-bound, bound, fan_out)))
    return layers


def make_program(
    backend: str, dim: int, widths: Sequence[int], dtype: str = "float32", seed: int = 0, requires_grad: bool = False
) -> Callable:
    """The tanh MLP as its backend's users write it: an array-API function of NumPy weights (numpy), an
    ``nn.Sequential`` (torch) or a function closing over ``jnp`` arrays (jax). Output shape ``(1,)``."""
    layers = mlp_layers(dim, widths, seed)
    if backend == "torch":
        import torch

        mods: list = []
        for i, (W, b) in enumerate(layers):
            lin = torch.nn.Linear(W.shape[1], W.shape[0], dtype=getattr(torch, dtype))
            with torch.no_grad():
                lin.weight.copy_(torch.as_tensor(W))
                lin.bias.copy_(torch.as_tensor(b))
            mods.append(lin)
            if i < len(layers) - 1:
                mods.append(torch.nn.Tanh())
        net = torch.nn.Sequential(*mods).to(torch_device())
        net.requires_grad_(requires_grad)
        return net
    if backend == "jax":
        import jax.numpy as jnp

        jl = [(jnp.asarray(W, dtype=dtype), jnp.asarray(b, dtype=dtype)) for W, b in layers]

        def f_jax(x):
            h = x
            for i, (W, b) in enumerate(jl):
                h = W @ h + b
                if i < len(jl) - 1:
                    h = jnp.tanh(h)
            return h

        return f_jax
    nl = [(W.astype(dtype), b.astype(dtype)) for W, b in layers]

    def f(x):
        from array_api_compat import array_namespace

        xp = array_namespace(x)
        h = x
        for i, (W, b) in enumerate(nl):
            h = xp.asarray(W) @ h + xp.asarray(b)
            if i < len(nl) - 1:
                h = xp.tanh(h)
        return h

    return f


def torch_device():
    """The device torch benchmarks run on: the visible accelerator (CUDA, XPU, MPS…), else the CPU; JAX runs on
    its default device by itself. ``MULTIJET_BENCH_DEVICE=cpu`` keeps torch on the CPU."""
    import torch

    if os.environ.get("MULTIJET_BENCH_DEVICE", "").lower() == "cpu":
        return torch.device("cpu")
    acc = getattr(torch, "accelerator", None)
    if acc is not None and acc.is_available():
        return acc.current_accelerator()
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def make_input(backend: str, n: int | None, dim: int, dtype: str = "float32", seed: int = 1):
    """Standard-normal points ``(n, dim)`` (or one point ``(dim,)`` for ``n=None``) as the backend's array."""
    shape = (dim,) if n is None else (n, dim)
    x = np.random.default_rng(seed).standard_normal(shape).astype(dtype)
    if backend == "torch":
        import torch

        return torch.as_tensor(x, device=torch_device())
    if backend == "jax":
        import jax.numpy as jnp

        return jnp.asarray(x)
    return x


def make_operator(name: str, dim: int, seed: int = 0) -> Operator:
    """``laplacian``, ``weighted-laplacian`` (``C = σσᵀ`` with a fixed random full-rank ``σ``) or ``bilaplacian``."""
    key = name.replace("_", "-").lower()
    if key == "laplacian":
        return Laplacian()
    if key == "weighted-laplacian":
        sigma = np.random.default_rng(seed + 1000).standard_normal((dim, dim)) / np.sqrt(dim)
        return WeightedLaplacian(factor=sigma)
    if key == "bilaplacian":
        return Bilaplacian()
    raise ValueError(f"unknown operator {name!r}; expected one of {OPERATORS}")
