"""Train a small Poisson PINN with multijet's collapsed Laplacian on the JAX backend.

    −Δu = f on (0, 1)², u = 0 on the boundary, with f = 2π² sin(πx) sin(πy) (exact u = sin(πx) sin(πy)).

`mj.laplacian` runs inside the user's `jax.jit` and `jax.grad` with respect to the network's parameters,
which the function closes over. Plain Adam written out, so the example needs nothing beyond JAX.
Run: python examples/poisson_pinn_jax.py [--steps 300]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp

import multijet as mj

jax.config.update("jax_enable_x64", True)


def init(key, sizes=(2, 32, 32, 1)):
    keys = jax.random.split(key, len(sizes) - 1)
    return [
        (jax.random.normal(k, (m, n)) / jnp.sqrt(n), jnp.zeros(m))
        for k, n, m in zip(keys, sizes[:-1], sizes[1:], strict=True)
    ]


def mlp(params, x):
    for W, b in params[:-1]:
        x = jnp.tanh(W @ x + b)
    W, b = params[-1]
    return (W @ x + b)[0]


def loss_fn(params, interior, boundary, rhs):
    lap = mj.laplacian(lambda x: mlp(params, x), interior, backend="jax")  # (N,), differentiable in params
    u_boundary = jax.vmap(lambda x: mlp(params, x))(boundary)
    return jnp.mean((-lap - rhs) ** 2) + 10 * jnp.mean(u_boundary**2)


def main(steps: int = 300, seed: int = 0) -> list[float]:
    k_param, k_in, k_bd = jax.random.split(jax.random.PRNGKey(seed), 3)
    params = init(k_param)
    interior = jax.random.uniform(k_in, (256, 2))
    t = jax.random.uniform(k_bd, (64, 1))
    zeros, ones = jnp.zeros_like(t), jnp.ones_like(t)
    boundary = jnp.concatenate([jnp.concatenate(p, 1) for p in [(t, zeros), (t, ones), (zeros, t), (ones, t)]])
    rhs = 2 * jnp.pi**2 * jnp.sin(jnp.pi * interior[:, 0]) * jnp.sin(jnp.pi * interior[:, 1])

    @jax.jit
    def step(params, m, v, i):
        loss, g = jax.value_and_grad(loss_fn)(params, interior, boundary, rhs)
        m = jax.tree.map(lambda m, g: 0.9 * m + 0.1 * g, m, g)
        v = jax.tree.map(lambda v, g: 0.999 * v + 0.001 * g * g, v, g)
        lr = 3e-3 * jnp.sqrt(1 - 0.999**i) / (1 - 0.9**i)
        params = jax.tree.map(lambda p, m, v: p - lr * m / (jnp.sqrt(v) + 1e-8), params, m, v)
        return params, m, v, loss

    m = jax.tree.map(jnp.zeros_like, params)
    v = jax.tree.map(jnp.zeros_like, params)
    losses = []
    t0 = time.perf_counter()
    for i in range(1, steps + 2):
        params, m, v, loss = step(params, m, v, i)
        losses.append(float(loss))
        if (i - 1) % 50 == 0:
            print(f"step {i - 1:4d}  loss {float(loss):.4e}")
    grid = jax.random.uniform(jax.random.PRNGKey(seed + 1), (1000, 2))
    exact = jnp.sin(jnp.pi * grid[:, 0]) * jnp.sin(jnp.pi * grid[:, 1])
    err = float(jnp.max(jnp.abs(jax.vmap(lambda x: mlp(params, x))(grid) - exact)))
    print(
        f"{steps} steps in {time.perf_counter() - t0:.1f} s; loss {losses[0]:.3e} -> {losses[-1]:.3e}; "
        f"max |u - u*| = {err:.3e}"
    )
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    main(args.steps)
