"""A batch sharded over mesh axes: found on the input or named by the user, kept through the jet program.

Points are independent, so the jet program of a batch sharded over devices is the same program on each
device's rows: no collective is needed, and none may be added. So a sharded batch runs as the per-device
program under ``shard_map``, manual over the batch axes only: each device propagates its own rows (chunked by
``chunk_size`` within them), the parameters stay as the user placed them on the other axes, and the result
is sharded like the batch. This needs ``N`` divisible by the number of shards, which is checked first.

The sharding is read from the input (a concrete array's ``NamedSharding``, or a traced array's type under an
``Explicit`` mesh) or named with ``mesh=``/``batch_axis=``. Inside ``shard_map`` the mesh axes are manual and
each device already holds its own rows: nothing is sharded here.
"""

from __future__ import annotations

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

    def sharding(self, ndim: int) -> NamedSharding:
        lead = self.axes[0] if len(self.axes) == 1 else self.axes
        return NamedSharding(self.mesh, PartitionSpec(lead, *([None] * (ndim - 1))))

    def place(self, x):
        """A concrete ``x`` put on the mesh with the batch's sharding (a traced one is moved by the ``shard_map``)."""
        if isinstance(x, jax.core.Tracer) or jnp.ndim(x) < 2 or isinstance(self.mesh, jax.sharding.AbstractMesh):
            return x
        self.check(x.shape[0])
        return jax.device_put(x, self.sharding(jnp.ndim(x)))

    def per_device(self, fn, consts, X, arrays):
        """``fn(consts, X_local, arrays)`` on each device's rows: ``shard_map`` manual over the batch axes only
        (other mesh axes stay as the user placed the parameters), constants and directions replicated over
        them, every output sharded like the batch."""
        self.check(X.shape[0])
        lead = self.axes[0] if len(self.axes) == 1 else self.axes
        mapped = jax.shard_map(
            fn, mesh=self.mesh, in_specs=(PartitionSpec(), PartitionSpec(lead), PartitionSpec()),
            out_specs=PartitionSpec(lead), axis_names=set(self.axes), check_vma=False,
        )  # fmt: skip  (no collective inside: per-device varying types would check nothing)
        return mapped(consts, X, arrays)

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


def resolve(x, mesh=None, batch_axis=None, check: bool = True) -> BatchSharding | None:
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
    if check and jnp.ndim(x) >= 2:
        found.check(x.shape[0])
    return found
