"""Variational Monte Carlo for particles in a 3D harmonic trap, with `mj.local_kinetic_energy` on JAX.

    Ĥ = Σ_p [−∇_p²/(2 m_p) + m_p ω² |r_p|²/2],  trial ψ_α(r) = exp(−α Σ_p m_p ω |r_p|²)

The exact ground state is α = ½ with E₀ = (3/2) ω P for P particles; for any α the variational energy is
E(α) = (3/2) ω P (α + 1/(4α)) ≥ E₀. Metropolis walkers sample |ψ_α|², and the local energy
E_L = (Ĥψ)/ψ = local kinetic energy + V is averaged over them. At α = ½ every walker has E_L = E₀ exactly (the
zero-variance property of an eigenstate). Run: python examples/vmc_harmonic_jax.py [--walkers 2000]
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

import multijet as mj

jax.config.update("jax_enable_x64", True)

MASSES = np.array([1.0, 2.0])  # two particles
OMEGA = 1.0


def log_psi(alpha):
    m = jnp.asarray(np.repeat(MASSES, 3))
    return lambda x: -alpha * OMEGA * jnp.sum(m * x * x)


def potential(X):
    return 0.5 * OMEGA**2 * jnp.sum(jnp.asarray(np.repeat(MASSES, 3)) * X * X, axis=-1)


def sample(alpha, key, walkers: int, steps: int, step_size: float = 0.6):
    """Metropolis walkers with the stationary density |ψ_α|² = exp(2 log ψ_α)."""
    f = jax.vmap(log_psi(alpha))

    def step(carry, key):
        X, logp = carry
        k1, k2 = jax.random.split(key)
        Y = X + step_size * jax.random.normal(k1, X.shape)
        logq = 2 * f(Y)
        accept = jnp.log(jax.random.uniform(k2, (X.shape[0],))) < logq - logp
        return (jnp.where(accept[:, None], Y, X), jnp.where(accept, logq, logp)), None

    X = jax.random.normal(key, (walkers, 3 * len(MASSES)))
    (X, _), _ = jax.lax.scan(step, (X, 2 * f(X)), jax.random.split(key, steps))
    return X


def energy(alpha, X):
    """Mean and standard error of E_L = T_L + V over the walkers."""
    local = mj.local_kinetic_energy(log_psi(alpha), X, MASSES, backend="jax") + potential(X)
    return float(jnp.mean(local)), float(jnp.std(local) / np.sqrt(X.shape[0]))


def exact(alpha: float) -> float:
    return 1.5 * OMEGA * len(MASSES) * (alpha + 1 / (4 * alpha))


def main(walkers: int = 2000, steps: int = 200, alphas=(0.3, 0.4, 0.5, 0.6, 0.7)) -> dict[float, tuple]:
    key = jax.random.PRNGKey(0)
    results = {}
    for alpha in alphas:
        key, sub = jax.random.split(key)
        mean, err = energy(alpha, sample(alpha, sub, walkers, steps))
        results[alpha] = (mean, err)
        print(f"alpha={alpha:.2f}  E = {mean:.5f} ± {err:.5f}   exact E(alpha) = {exact(alpha):.5f}")
    print(f"ground state: alpha = 0.5, E0 = {exact(0.5):.5f}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walkers", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    main(args.walkers, args.steps)
