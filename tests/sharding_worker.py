"""Run by ``test_distributed.py`` (not collected) with 4 host devices: prints one JSON line of checks.

Each check is ``name → {"err": max |sharded − one device| / max(1, max |one device|), "kept": output sharded
like the batch, "collectives": collective ops in the compiled program}``; the test asserts on them.
"""

from __future__ import annotations

import json
import os

os.environ["XLA_FLAGS"] = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax import lax  # noqa: E402
from jax.sharding import AxisType, NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402

import multijet as mj  # noqa: E402
from multijet.bench.wavefunctions import per_electron_like  # noqa: E402

jax.config.update("jax_enable_x64", True)
rng = np.random.default_rng(0)
N, D, n_el = 8, 6, 2
PARAMS = {"W1": jnp.asarray(rng.normal(size=(16, D)) / D), "W2": jnp.asarray(rng.normal(size=(16,)) / 4)}
PHI = jnp.asarray(rng.normal(size=(n_el, 3, 8)) / 2)


VMC = per_electron_like(4)  # per-electron streams, slogdet: direction sparsity
XV = jnp.asarray(rng.normal(size=(N, 12)))


def mlp(p, x):
    """``W @ x`` form, an integer power and a residual."""
    return jnp.tanh(p["W1"] @ x) @ p["W2"] + 0.1 * (x**3).sum() + lax.integer_pow(x, 2).sum() / 7


def logpsi(x):
    """A determinant wavefunction: per-electron orbitals (``x @ W`` form), slogdet, a cusp-free Jastrow, and
    control flow (a cond on the value of x and a fori_loop)."""
    r = x.reshape(n_el, 3)
    orb = jnp.tanh(jnp.einsum("ik,jkh->ijh", r, PHI).sum(-1)) + jnp.eye(n_el)
    sign, logdet = jnp.linalg.slogdet(orb)
    d2 = jnp.sum((r[0] - r[1]) ** 2)
    jastrow = lax.cond(d2 > 1.0, lambda d: d / (1 + d), lambda d: d - d**2 / 2, d2)
    damp = lax.fori_loop(0, 3, lambda i, a: a + 0.1 * jnp.sin(a), jnp.sum(r**2) / 10)
    return logdet + jastrow - damp + 0.0 * sign


def collectives(fn, *args) -> int:
    text = fn.lower(*args).compile().as_text()
    return sum(text.count(op) for op in ("all-gather", "all-to-all", "collective-permute", "all-reduce"))


def check(out, ref, sharding) -> dict:
    outs, refs = (out if isinstance(out, tuple) else (out,)), (ref if isinstance(ref, tuple) else (ref,))
    err = max(float(np.max(np.abs(np.asarray(o) - np.asarray(r))) / max(1.0, np.max(np.abs(np.asarray(r)))))
              for o, r in zip(outs, refs, strict=True))  # fmt: skip
    kept = sharding is None or all(o.sharding.is_equivalent_to(sharding, o.ndim) for o in outs)
    return {"err": err, "kept": kept}


def main() -> dict:
    X = jnp.asarray(rng.normal(size=(N, D)))
    f = lambda x: mlp(PARAMS, x)  # noqa: E731
    one = {
        "laplacian": mj.laplacian(f, X),
        "weighted": mj.weighted_laplacian(f, X, np.diag(np.arange(1.0, D + 1))),
        "grad": mj.apply(mj.Laplacian(), f, X, return_grad=True),
        "randomised": mj.laplacian(f, X, samples=4, seed=3),
        "bilaplacian": mj.bilaplacian(f, X),
        "logpsi": mj.laplacian(logpsi, X),
        "kinetic": mj.local_kinetic_energy(logpsi, X),
        "nested": jax.vmap(lambda x: jnp.trace(jax.hessian(logpsi)(x)))(X),
        "vmc": mj.laplacian(VMC, XV, direction_chunk_size=5),
        "nested method": mj.laplacian(f, X, method="nested"),
    }
    res: dict = {"devices": len(jax.devices())}
    res["oracle: logpsi vs nested jax.hessian"] = check(one["logpsi"], one["nested"], None)
    for kind in ("explicit", "auto"):
        axis_type = AxisType.Explicit if kind == "explicit" else AxisType.Auto
        mesh = jax.make_mesh((4,), ("batch",), axis_types=(axis_type,))
        S = NamedSharding(mesh, P("batch"))
        Xs, XVs = jax.device_put(X, S), jax.device_put(XV, S)
        jit_lap = jax.jit(lambda x: mj.laplacian(f, x))
        jit_named = jax.jit(lambda x, m=mesh: mj.laplacian(f, x, mesh=m, batch_axis="batch", chunk_size=1))
        cases = {
            "jit laplacian": (jit_lap(Xs), one["laplacian"]),
            "eager laplacian": (mj.laplacian(f, Xs), one["laplacian"]),
            "jit weighted": (jax.jit(lambda x: mj.weighted_laplacian(f, x, np.diag(np.arange(1.0, D + 1))))(Xs),
                             one["weighted"]),
            "return_grad": (mj.apply(mj.Laplacian(), f, Xs, return_grad=True), one["grad"]),
            "randomised": (jax.jit(lambda x: mj.laplacian(f, x, samples=4, seed=3))(Xs), one["randomised"]),
            "bilaplacian": (mj.bilaplacian(f, Xs), one["bilaplacian"]),
            "compile": (mj.compile(mj.Laplacian(), f, Xs)(Xs), one["laplacian"]),
            "compile chunked": (mj.compile(mj.Laplacian(), f, Xs, chunk_size=1)(Xs), one["laplacian"]),
            "eager chunked": (mj.laplacian(f, Xs, chunk_size=1), one["laplacian"]),
            "named chunked": (jit_named(Xs), one["laplacian"]),
            "named placement": (mj.laplacian(f, X, mesh=mesh, batch_axis="batch"), one["laplacian"]),
            "logpsi": (jax.jit(lambda x: mj.laplacian(logpsi, x))(Xs), one["logpsi"]),
            "kinetic": (jax.jit(lambda x: mj.local_kinetic_energy(logpsi, x))(Xs), one["kinetic"]),
            "nested method": (jax.jit(lambda x: mj.laplacian(f, x, method="nested"))(Xs), one["nested method"]),
            "vmc direction chunks": (jax.jit(lambda x: mj.laplacian(VMC, x, direction_chunk_size=5))(XVs),
                                     one["vmc"]),
        }  # fmt: skip
        for name, (out, ref) in cases.items():
            res[f"{kind}: {name}"] = check(out, ref, S)
        res[f"{kind}: jit laplacian"]["collectives"] = collectives(jit_lap, Xs)
        res[f"{kind}: named chunked"]["collectives"] = collectives(jit_named, Xs)
        if kind == "explicit":
            res[f"{kind}: jit chunked"] = check(jax.jit(lambda x: mj.laplacian(f, x, chunk_size=1))(Xs),
                                                one["laplacian"], S)  # fmt: skip

        # shard_map: the operator as the per-device program (slogdet, integer_pow, cond, fori_loop)
        per_device = jax.jit(jax.shard_map(lambda x: mj.laplacian(logpsi, x), mesh=mesh, in_specs=P("batch"),
                                           out_specs=P("batch")))  # fmt: skip
        res[f"{kind}: shard_map logpsi"] = check(per_device(Xs), one["logpsi"], S)
        res[f"{kind}: shard_map logpsi"]["collectives"] = collectives(per_device, Xs)
        compiled = mj.compile(mj.Laplacian(), logpsi, X[: N // 4])
        per_device_c = jax.jit(jax.shard_map(compiled, mesh=mesh, in_specs=P("batch"), out_specs=P("batch")))
        res[f"{kind}: shard_map compiled"] = check(per_device_c(Xs), one["logpsi"], S)
        mlp_sm = jax.jit(jax.shard_map(lambda x: mj.laplacian(f, x, chunk_size=1), mesh=mesh, in_specs=P("batch"),
                                       out_specs=P("batch")))  # fmt: skip
        res[f"{kind}: shard_map chunked mlp"] = check(mlp_sm(Xs), one["laplacian"], S)
        vmc_sm = jax.jit(jax.shard_map(lambda x: mj.laplacian(VMC, x, direction_chunk_size=5), mesh=mesh,
                                       in_specs=P("batch"), out_specs=P("batch")))  # fmt: skip
        res[f"{kind}: shard_map vmc direction chunks"] = check(vmc_sm(XVs), one["vmc"], S)

    # parameters sharded as the user placed them (Auto mesh: data × model), gradient under jit
    mesh2 = jax.make_mesh((2, 2), ("data", "model"), axis_types=(AxisType.Auto,) * 2)
    S2 = NamedSharding(mesh2, P("data"))
    p2 = jax.tree_util.tree_map(lambda a: jax.device_put(a, NamedSharding(mesh2, P("model"))), PARAMS)

    def loss(p, X):
        return jnp.mean(mj.laplacian(lambda x: mlp(p, x), X) ** 2)

    g_ref = jax.grad(loss)(PARAMS, X)
    with jax.set_mesh(mesh2):
        g = jax.jit(jax.grad(loss))(p2, jax.device_put(X, S2))
        lap2 = jax.jit(lambda p, x: mj.laplacian(lambda y: mlp(p, y), x))(p2, jax.device_put(X, S2))
    res["model-sharded grad"] = {"err": max(float(np.max(np.abs(g[k] - g_ref[k]))) for k in g),
                                 "kept": g["W1"].sharding.is_equivalent_to(p2["W1"].sharding, 2)}  # fmt: skip
    res["model-sharded laplacian"] = check(lap2, one["laplacian"], S2)

    # a batch committed to one device stays there; autotune's device key names a sharded batch's devices
    from multijet.timing import device_name

    on2 = jax.device_put(X, jax.devices()[2])
    out2 = mj.laplacian(f, on2)
    res["committed device kept"] = {"err": check(out2, one["laplacian"], None)["err"],
                                    "kept": out2.devices() == {jax.devices()[2]}}  # fmt: skip
    res["device names"] = {"sharded": device_name(jax.device_put(X, NamedSharding(mesh2, P("data")))),
                           "one": device_name(X)}  # fmt: skip

    # bad input: an axis the mesh does not have, a batch that does not divide
    mesh = jax.make_mesh((4,), ("batch",))
    errors = {}
    for name, call in {
        "unknown axis": lambda: mj.laplacian(f, X, mesh=mesh, batch_axis="data"),
        "indivisible": lambda: mj.laplacian(f, X[:6], mesh=mesh, batch_axis="batch", chunk_size=1),
        "indivisible compile": lambda: mj.compile(mj.Laplacian(), f, X[:1], mesh=mesh, batch_axis="batch")(X[:6]),
        "no mesh": lambda: mj.laplacian(f, X, batch_axis="batch"),
    }.items():
        try:
            call()
            errors[name] = "no error"
        except Exception as e:  # noqa: BLE001 - reported to the test
            errors[name] = f"{type(e).__name__}: {e}"
    res["errors"] = errors
    return res


if __name__ == "__main__":
    print(json.dumps(main()))
