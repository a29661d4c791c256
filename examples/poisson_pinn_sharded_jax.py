"""A Poisson PINN with its batch sharded over every visible device (JAX ``NamedSharding``).

    −Δu = f on (0, 1)^d, u = 0 on the boundary, f = dπ² Π sin(πx_i) (exact u = Π sin(πx_i)).

The collocation points are placed with ``NamedSharding(mesh, P("batch"))``; ``mj.laplacian`` inside the
jitted training step keeps them there: each device propagates the jets of its own rows, the Laplacian comes
out sharded like the batch, and only the loss's mean and the parameter gradient are reduced across devices
(by XLA, as for any data-parallel JAX program). The parameters are replicated.

Try it on 4 simulated devices of this CPU:

    XLA_FLAGS=--xla_force_host_platform_device_count=4 python examples/poisson_pinn_sharded_jax.py --steps 300
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

import multijet as mj

jax.config.update("jax_enable_x64", True)


def init(key, sizes):
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


def loss_fn(params, interior, boundary):
    d = interior.shape[1]
    rhs = d * jnp.pi**2 * jnp.prod(jnp.sin(jnp.pi * interior), axis=1)
    lap = mj.laplacian(lambda x: mlp(params, x), interior)  # sharded like `interior`
    u_boundary = jax.vmap(lambda x: mlp(params, x))(boundary)
    return jnp.mean((-lap - rhs) ** 2) + 10 * jnp.mean(u_boundary**2)


def points(key, n: int, d: int):
    k_in, k_bd, k_side, k_val = jax.random.split(key, 4)
    interior = jax.random.uniform(k_in, (n, d))
    boundary = jax.random.uniform(k_bd, (n // 2, d))
    side = jax.random.randint(k_side, (n // 2,), 0, d)
    boundary = boundary.at[jnp.arange(n // 2), side].set(jax.random.randint(k_val, (n // 2,), 0, 2) * 1.0)
    return interior, boundary


def main(steps: int = 300, dim: int = 2, n: int = 256, seed: int = 0) -> list[float]:
    mesh = jax.make_mesh((len(jax.devices()),), ("batch",))
    batch = NamedSharding(mesh, P("batch"))
    interior, boundary = points(jax.random.PRNGKey(seed + 1), n, dim)
    interior, boundary = jax.device_put(interior, batch), jax.device_put(boundary, batch)
    params = jax.device_put(init(jax.random.PRNGKey(seed), (dim, 32, 32, 1)), NamedSharding(mesh, P()))

    @jax.jit
    def step(params, m, v, i):
        loss, g = jax.value_and_grad(loss_fn)(params, interior, boundary)
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
    lap = jax.jit(lambda p, x: mj.laplacian(lambda y: mlp(p, y), x))(params, interior)
    print(f"{steps} steps on {len(jax.devices())} device(s) in {time.perf_counter() - t0:.1f} s; "
          f"loss {losses[0]:.3e} -> {losses[-1]:.3e}; Laplacian sharded as {lap.sharding.spec}")  # fmt: skip
    return losses


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--dim", type=int, default=2)
    parser.add_argument("--points", type=int, default=256, help="interior points (divisible by the devices)")
    args = parser.parse_args()
    main(args.steps, args.dim, args.points)
