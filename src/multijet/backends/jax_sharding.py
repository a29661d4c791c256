"""A batch sharded over mesh axes: found on the input or named by the user, kept through the jet program.

Points are independent, so the jet program of a batch sharded over devices is the same program on each
device's rows: no collective is needed, and none may be added. Two things could add one, and are handled here:

- chunking by points (``chunk_size``) reshapes the batch into ``(chunks, chunk, D)``; chunks taken across the
  shards would move rows between devices, so chunks are taken *within* each shard (``(S, N/S, D)``, the shard
  axis vmapped and kept sharded), which needs ``N`` divisible by the ``S`` shards;
- the result is constrained to the batch's sharding (``P(axes)`` on its leading axis), so the output stays
  where its rows were computed.

The sharding is read from the input (a concrete array's ``NamedSharding``, or a traced array's type under an
``Explicit`` mesh) or named with ``mesh=``/``batch_axis=``. Inside ``shard_map`` the mesh axes are manual and
each device already holds its own rows: nothing is sharded here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec

__all__ = ["BatchSharding", "resolve", "from_type"]


@dataclass(frozen=True)
class BatchSharding:
    """The batch axis sharded over ``axes`` of ``mesh`` (``size`` shards)."""

    mesh: Any
    axes: tuple[str, ...]

    @property
    def size(self) -> int:
        shape = dict(self.mesh.shape)
        n = 1
        for a in self.axes:
            n *= shape[a]
        return n

    @property
    def explicit(self) -> bool:
        types = dict(zip(self.mesh.axis_names, self.mesh.axis_types, strict=True))
        return all(types[a] == jax.sharding.AxisType.Explicit for a in self.axes)

    def sharding(self, ndim: int) -> NamedSharding:
        lead = self.axes[0] if len(self.axes) == 1 else self.axes
        return NamedSharding(self.mesh, PartitionSpec(lead, *([None] * (ndim - 1))))

    def context(self):
        """The mesh as the context mesh while the jet program is traced, where none is set and the axes are
        ``Explicit``: primitives whose sharding rules read the context mesh (``lu`` under ``slogdet``) then
        find it, as they do inside ``jax.set_mesh``."""
        current = jax.sharding.get_abstract_mesh()
        if not self.explicit or current.axis_names:
            return contextlib.nullcontext()
        mesh = self.mesh if isinstance(self.mesh, jax.sharding.AbstractMesh) else self.mesh.abstract_mesh
        return jax.sharding.use_abstract_mesh(mesh)

    def place(self, x):
        """A concrete ``x`` put on the mesh with the batch's sharding (a traced one is left to :meth:`constrain`)."""
        if isinstance(x, jax.core.Tracer) or jnp.ndim(x) < 2 or isinstance(self.mesh, jax.sharding.AbstractMesh):
            return x
        self.check(x.shape[0])
        return jax.device_put(x, self.sharding(jnp.ndim(x)))

    def constrain(self, a):
        """``a`` with its leading axis sharded like the batch."""
        if a is None or jnp.ndim(a) == 0:
            return a
        s = self.sharding(jnp.ndim(a))
        return jax.sharding.reshard(a, s) if self.explicit else jax.lax.with_sharding_constraint(a, s)

    def split(self, X):
        """``(N, D) → (S, N/S, D)``: each device's rows along the (sharded) first axis."""
        N = X.shape[0]
        self.check(N)
        shape = (self.size, N // self.size, *X.shape[1:])
        if self.explicit:
            return jnp.reshape(X, shape, out_sharding=self.sharding(len(shape)))
        return self.constrain(jnp.reshape(X, shape))

    def merge(self, a):
        """``(S, N/S, …) → (N, …)``, sharded like the batch."""
        shape = (a.shape[0] * a.shape[1], *a.shape[2:])
        if self.explicit:
            return jnp.reshape(a, shape, out_sharding=self.sharding(len(shape)))
        return self.constrain(jnp.reshape(a, shape))

    def check(self, N: int) -> None:
        if N % self.size:
            names = ", ".join(repr(a) for a in self.axes)
            raise ValueError(
                f"a batch of {N} points does not divide over mesh axis {names} ({self.size} devices): every device "
                f"takes N/{self.size} points; pad the batch to a multiple of {self.size} or use another mesh axis"
            )


def _axes(entry) -> tuple[str, ...]:
    return (entry,) if isinstance(entry, str) else tuple(entry)


def from_type(x) -> BatchSharding | None:
    """The batch sharding a (concrete or traced) array carries on its leading axis, if any."""
    sh = None
    if isinstance(x, jax.Array) and not isinstance(x, jax.core.Tracer):
        sh = getattr(x, "sharding", None)
    if not isinstance(sh, NamedSharding):
        try:
            sh = jax.typeof(x).sharding
        except Exception:  # noqa: BLE001 - no sharding in the type (older JAX, plain numpy input)
            return None
    if not isinstance(sh, NamedSharding) or not sh.spec or sh.spec[0] is None or jnp.ndim(x) < 2:
        return None
    found = BatchSharding(sh.mesh, _axes(sh.spec[0]))
    return None if _manual(found.mesh, found.axes) else found


def _manual(mesh, axes) -> bool:
    types = dict(zip(mesh.axis_names, getattr(mesh, "axis_types", ()) or (), strict=False))
    return any(types.get(a) == jax.sharding.AxisType.Manual for a in axes)


def resolve(x, mesh=None, batch_axis=None) -> BatchSharding | None:
    """The batch sharding to keep: named by ``mesh``/``batch_axis``, else the one ``x`` carries (or None).

    ``mesh`` defaults to the mesh of ``x``'s sharding, then to the context mesh (``jax.set_mesh``);
    ``batch_axis`` (a mesh axis name or a tuple of them) defaults to the mesh's only axis."""
    if mesh is None and batch_axis is None:
        return from_type(x)
    if batch_axis is not None and not (
        isinstance(batch_axis, str) or (isinstance(batch_axis, tuple) and batch_axis and all(isinstance(a, str)
                                                                                             for a in batch_axis))
    ):  # fmt: skip
        raise TypeError(f"batch_axis must be a mesh axis name or a tuple of names, got {batch_axis!r}")
    if mesh is None:
        carried = from_type(x)
        mesh = carried.mesh if carried is not None else jax.sharding.get_abstract_mesh()
        if not mesh.axis_names:
            raise ValueError(
                f"batch_axis={batch_axis!r} names a mesh axis, but there is no mesh: pass mesh=, place x with a "
                "NamedSharding, or call inside `with jax.set_mesh(mesh):`"
            )
    if not hasattr(mesh, "axis_names") or not hasattr(mesh, "shape"):
        raise TypeError(f"mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    if batch_axis is None:
        if len(mesh.axis_names) != 1:
            raise ValueError(
                f"the mesh has axes {tuple(mesh.axis_names)}: name the one(s) the batch is sharded over with "
                "batch_axis="
            )
        batch_axis = mesh.axis_names[0]
    axes = _axes(batch_axis)
    unknown = [a for a in axes if a not in mesh.axis_names]
    if unknown:
        raise ValueError(
            f"mesh axis {unknown[0]!r} does not exist: the mesh has axes {tuple(mesh.axis_names)}"
        )
    if _manual(mesh, axes) or _manual(jax.sharding.get_abstract_mesh(), axes):  # inside shard_map: each
        return None  # device runs on its own rows already
    found = BatchSharding(mesh, axes)
    if jnp.ndim(x) >= 2:
        found.check(x.shape[0])
    return found
