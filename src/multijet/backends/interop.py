"""What the rest of multijet needs to know about a framework's arrays, in one place per framework.

Converting NumPy input, reading results back, waiting for device work, naming devices, recognising a
framework-native program: the public modules (api, compare, autotune, the CLI, timing) ask the
:class:`Interop` of a backend instead of branching on framework names. Frameworks are found through
``sys.modules`` or imported when their backend is used, never by ``import multijet``.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from ..errors import BackendError

__all__ = ["Interop", "INTEROPS", "interop", "owner", "to_numpy", "sync", "native_program_backend"]


def _module_root(x: Any) -> str:
    return type(x).__module__.split(".")[0]


class Interop:
    """NumPy arrays (and the default for an array-API backend registered without its own interop)."""

    roots: tuple[str, ...] = ("numpy",)

    def owns(self, x: Any) -> bool:
        return _module_root(x) in self.roots

    def from_numpy(self, arr: np.ndarray) -> tuple[Any, Callable[[Any], np.ndarray]]:
        return arr, np.asarray

    def to_numpy(self, a: Any) -> np.ndarray:
        return np.asarray(a)

    def cast(self, x: Any, dtype: str) -> Any:
        return np.asarray(x).astype(dtype)

    def like(self, arr: np.ndarray, x: Any) -> Any:
        """``arr`` as an array of ``x``'s kind, dtype and device."""
        return np.asarray(arr, dtype=x.dtype)

    def sync(self, obj: Any) -> None:
        """Wait for asynchronous device work behind ``obj``."""

    def device_name(self, x: Any) -> str | None:
        """An accelerator's name when ``x`` lives on one (None: the CPU)."""
        return None

    def devices(self) -> list[str]:
        return ["cpu"]

    def owns_program(self, f: Any) -> bool:
        """Whether ``f`` is a program of this framework only (e.g. a torch ``nn.Module``)."""
        return False

    def program_dtype(self, f: Any) -> str | None:
        return None

    def program_id(self, f: Any) -> str | None:
        return None

    def config(self) -> dict[str, Any]:
        """Settings that change results or timings (part of the autotune cache key)."""
        return {}

    @contextlib.contextmanager
    def precision(self, dtype: str) -> Iterator[None]:
        """Make ``dtype`` available for one evaluation (JAX's x64 switch), without changing global state."""
        yield


class TorchInterop(Interop):
    roots = ("torch",)

    def from_numpy(self, arr):
        import torch

        return torch.as_tensor(arr), self.to_numpy

    def to_numpy(self, a):
        return a.detach().cpu().numpy()

    def cast(self, x, dtype):
        import torch

        return x.to(getattr(torch, dtype))

    def like(self, arr, x):
        import torch

        return torch.as_tensor(arr).to(dtype=x.dtype, device=x.device)

    def sync(self, obj):
        if getattr(obj, "is_cuda", False):
            import torch

            torch.cuda.synchronize(obj.device)

    def device_name(self, x):
        device = getattr(x, "device", None)
        kind = getattr(device, "type", "cpu")
        if kind == "cuda":
            import torch

            return f"cuda: {torch.cuda.get_device_name(device)}"
        return None if kind in ("cpu", "meta") else str(kind)  # xpu, mps, …

    def devices(self):
        import torch

        devs = [f"cpu ({torch.get_num_threads()} threads)"]
        if torch.cuda.is_available():
            devs += [f"cuda:{i} {torch.cuda.get_device_name(i)}" for i in range(torch.cuda.device_count())]
        return devs

    def owns_program(self, f):
        torch = sys.modules.get("torch")
        return torch is not None and isinstance(f, torch.nn.Module)

    def program_dtype(self, f):
        if not self.owns_program(f):
            return None
        p = next(iter(f.parameters()), None)
        if p is not None and p.is_floating_point():
            return str(p.dtype).replace("torch.", "")
        return None

    def program_id(self, f):
        if not self.owns_program(f):
            return None
        shapes = [tuple(p.shape) for p in f.parameters()]
        return f"{type(f).__module__}.{type(f).__qualname__}{shapes}"


class JaxInterop(Interop):
    roots = ("jax", "jaxlib")

    def owns(self, x):
        if _module_root(x) in self.roots:
            return True
        jax = sys.modules.get("jax")
        return jax is not None and _module_root(x) not in ("numpy", "builtins") and isinstance(x, jax.Array)

    def from_numpy(self, arr):
        import jax
        import jax.numpy as jnp

        if arr.dtype == np.float64 and not jax.config.jax_enable_x64:
            raise BackendError(
                "x is float64 but JAX runs in float32 unless x64 is enabled: call "
                "jax.config.update('jax_enable_x64', True) first, or pass float32"
            )
        return jnp.asarray(arr), np.asarray

    def cast(self, x, dtype):
        return x.astype(dtype)

    def like(self, arr, x):
        import jax.numpy as jnp

        return jnp.asarray(arr, dtype=x.dtype)

    def sync(self, obj):
        obj.block_until_ready()

    def device_name(self, x):
        devices = getattr(x, "devices", None)
        try:
            devs = list(devices()) if callable(devices) else []
        except Exception:  # noqa: BLE001 - a tracer has no devices
            devs = []
        if not devs:
            return None
        dev, n = devs[0], len(devs)
        over = f" ×{n}" if n > 1 else ""  # a batch sharded over n devices
        if dev.platform != "cpu":
            return f"{dev.platform}: {dev.device_kind}{over}"
        return f"cpu: {n} host devices" if n > 1 else None

    def devices(self):
        import jax

        return [f"{d.platform}:{d.id} {d.device_kind}" for d in jax.devices()]

    def config(self):
        jax = sys.modules.get("jax")
        x64 = (
            bool(jax.config.jax_enable_x64)
            if jax is not None
            else os.environ.get("JAX_ENABLE_X64", "").lower() in ("1", "true", "yes")
        )
        return {"jax_x64": x64}

    @contextlib.contextmanager
    def precision(self, dtype):
        import jax

        if dtype != "float64" or jax.config.jax_enable_x64:
            yield
            return
        enable = getattr(jax, "enable_x64", None)
        if enable is not None:
            with enable(True):
                yield
            return
        jax.config.update("jax_enable_x64", True)  # pragma: no cover - old JAX without the context manager
        try:
            yield
        finally:
            jax.config.update("jax_enable_x64", False)


#: backend name → its interop (a registered backend without one gets NumPy's)
INTEROPS: dict[str, Interop] = {"numpy": Interop(), "torch": TorchInterop(), "jax": JaxInterop()}


def interop(name: str) -> Interop:
    return INTEROPS.get(name, INTEROPS["numpy"])


def owner(x: Any) -> str:
    """The backend whose arrays ``x`` is (NumPy for anything no other backend claims)."""
    for name, io in INTEROPS.items():
        if name != "numpy" and io.owns(x):
            return name
    return "numpy"


def to_numpy(a: Any) -> np.ndarray:
    """Any backend's result as a NumPy array."""
    return interop(owner(a)).to_numpy(a)


def sync(obj: Any) -> Any:
    """Wait for asynchronous device work behind ``obj`` (and the items of a tuple or list); returns it."""
    if isinstance(obj, tuple | list):
        for o in obj:
            sync(o)
        return obj
    if obj is not None:
        interop(owner(obj)).sync(obj)
    return obj


def native_program_backend(f: Any) -> str | None:
    """The backend that owns the program ``f`` itself (a torch ``nn.Module``), if any."""
    for name, io in INTEROPS.items():
        if io.owns_program(f):
            return name
    return None
