"""Primitive-table fixes: ``remainder``/``fmod`` pass the coefficients of ``x`` through (d/dx = 1), and a
multi-operand ``lax.optimization_barrier`` is the identity on every operand — both checked against nested AD."""

from __future__ import annotations

import numpy as np
import pytest

import multijet as mj


@pytest.mark.torch
@pytest.mark.parametrize(
    "mod",
    ["python_mod", "fmod", "tensor_constant", "divisor_depends_on_x"],
)
def test_torch_remainder_matches_nested(mod):
    import torch

    period = torch.tensor([0.5, 0.6, 0.8], dtype=torch.float64)
    g = {
        "python_mod": lambda x: (2.0 * x) % 0.7,
        "fmod": lambda x: torch.fmod(2.0 * x, 0.7),
        "tensor_constant": lambda x: torch.remainder(3.0 * x, period),
        "divisor_depends_on_x": lambda x: torch.remainder(x * x, x + 3.0),
    }[mod]

    def f(x):
        return (torch.sin(g(x)) ** 2 + g(x) ** 3).sum(-1)

    x = torch.randn(5, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    got = mj.laplacian(f, x, backend="torch")
    ref = torch.stack([torch.func.hessian(f)(v).trace() for v in x])
    assert ref.abs().max() > 1e-3  # the remainder's pass-through matters
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.torch
def test_torch_remainder_by_module_buffer():
    import torch

    class Periodic(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("box", torch.tensor(0.9, dtype=torch.float64))
            self.lin = torch.nn.Linear(3, 1, dtype=torch.float64)

        def forward(self, x):
            return torch.tanh(self.lin(torch.remainder(x, self.box))).squeeze(-1)

    torch.manual_seed(0)
    net = Periodic()
    x = torch.randn(4, 3, dtype=torch.float64)
    got = mj.laplacian(net, x, backend="torch")
    ref = torch.stack([torch.func.hessian(lambda v: net(v[None])[0])(v).trace() for v in x])
    torch.testing.assert_close(got, ref, rtol=1e-9, atol=1e-9)


@pytest.mark.jax
def test_jax_optimization_barrier_all_operands():
    import jax
    import jax.numpy as jnp

    jax.config.update("jax_enable_x64", True)

    def f(x):
        a, b, i = jax.lax.optimization_barrier((jnp.sin(x), x**2, jnp.arange(3)))
        return jnp.sum(a * b) + jnp.sum(jnp.cos(b)) + i.sum()

    x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)))
    got = mj.laplacian(f, x, backend="jax")
    ref = jax.vmap(lambda v: jnp.trace(jax.hessian(f)(v)))(x)
    np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-10, atol=1e-10)
