"""What every op family shares: backend choice, input checks, and ahead-of-time specs.

Backends
--------
``"eager"``   the plain-PyTorch reference of the op (obviously right; the tests' yardstick).
``"compile"`` the same reference wrapped in ``torch.compile`` (one cached graph per op).
``"triton"``  the fused Triton kernels, registered as ``torch.library`` custom ops. They need
              a CUDA tensor, or ``TRITON_INTERPRET=1`` set before ``kernels`` is imported
              (Triton's CPU interpreter: slow, for correctness only).
``None`` / ``"auto"`` picks ``"triton"`` for CUDA tensors when Triton is installed and the
``"compile"`` fallback elsewhere. The environment variable ``KERNELS_BACKEND`` overrides auto.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

BACKENDS = ("eager", "compile", "triton")

#: Namespace of every ``torch.library`` op this package registers.
LIBRARY_NAMESPACE = "cifar_kernels"


def interpreting() -> bool:
    """True when Triton's CPU interpreter is on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


# Looked up once at import: a plain constant is also what torch.compile traces best (a
# cached function inside a compiled region makes Dynamo warn and trace through it).
_TRITON_AVAILABLE = importlib.util.find_spec("triton") is not None


def triton_available() -> bool:
    """True when the ``triton`` package can be imported on this machine."""
    return _TRITON_AVAILABLE


if triton_available():
    import triton
    import triton.language as tl
else:  # pragma: no cover - triton is Linux-only; the kernels are then never launched
    from types import SimpleNamespace

    # Just enough for the kernel modules to define their @triton.jit functions.
    triton = SimpleNamespace(jit=lambda fn: fn)
    tl = SimpleNamespace(constexpr=int)


def registers_triton_ops() -> bool:
    """Whether the kernel ops are ``torch.library.triton_op``s (compiled, on a GPU) rather
    than opaque ``custom_op``s (under the interpreter). See :func:`register_kernel_op`."""
    return not interpreting() and triton_available()


def register_kernel_op(
    name: str,
    impl: Callable[..., Any],
    *,
    mutates_args: Iterable[str],
    schema: str | None = None,
) -> Any:
    """Register ``impl`` as the op ``cifar_kernels::<name>`` and return its ``CustomOpDef``
    (``register_fake`` and ``register_autograd`` work on either kind).

    With compiled kernels: a ``torch.library.triton_op``. ``torch.compile`` traces into
    ``impl``, sees each launch (``wrap_triton``, in :mod:`kernels._launch`) and launches the
    kernels from its own generated code: no dispatcher round trip per call and no opaque
    boundary in the graph. Called outside a compiled graph it runs ``impl`` directly. Its
    schema comes from ``impl``'s type hints.

    Under the interpreter: a ``torch.library.custom_op`` with ``schema``. Interpreted kernels
    read their tensors' memory, which a tracer's fake tensors do not have, so the compiler
    must see one opaque op and its fake function instead.
    """
    qualified = f"{LIBRARY_NAMESPACE}::{name}"
    if registers_triton_ops():
        return torch.library.triton_op(qualified, impl, mutates_args=tuple(mutates_args))
    return torch.library.custom_op(qualified, impl, mutates_args=tuple(mutates_args), schema=schema)


def resolve_backend(backend: str | None, device: torch.device) -> str:
    """Turn a requested backend (or ``None``/``"auto"``) into one of :data:`BACKENDS`.

    Raises ``ValueError`` for an unknown name and ``RuntimeError`` when ``"triton"`` cannot
    run on ``device``; both messages say what to do instead.
    """
    if backend in (None, "auto"):
        backend = os.environ.get("KERNELS_BACKEND") or (
            "triton" if device.type == "cuda" and triton_available() else "compile"
        )
    if backend not in BACKENDS:
        raise ValueError(
            f"unknown kernel backend {backend!r}: choose one of {', '.join(BACKENDS)} or 'auto'"
        )
    if backend == "triton":
        if not triton_available():
            raise RuntimeError(
                "backend 'triton' needs the triton package (Linux only): pip install triton, "
                "or use backend 'compile' or 'eager'"
            )
        if device.type != "cuda" and not interpreting():
            raise RuntimeError(
                f"backend 'triton' needs CUDA tensors, got a tensor on {device}: move the data "
                "to a GPU, set TRITON_INTERPRET=1 before importing kernels to run the kernels "
                "on the CPU interpreter (slow), or use backend 'compile' or 'eager'"
            )
    return backend


@functools.cache
def compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    """The ``torch.compile`` fallback of a reference function, built once per function."""
    return torch.compile(fn, dynamic=False)


def check_tensor(
    name: str,
    t: Any,
    *,
    dtypes: Iterable[torch.dtype] | None = None,
    ndim: int | None = None,
    shape: tuple[int | None, ...] | None = None,
    device: torch.device | None = None,
) -> None:
    """Raise a clear ``TypeError``/``ValueError`` when ``t`` is not the tensor an op expects.

    ``shape`` entries of ``None`` match any size.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if dtypes is not None:
        dtypes = tuple(dtypes)
        if t.dtype not in dtypes:
            allowed = ", ".join(str(d).replace("torch.", "") for d in dtypes)
            raise TypeError(f"{name} must have dtype {allowed}; got {str(t.dtype)[6:]}")
    if ndim is not None and t.dim() != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {tuple(t.shape)}")
    if shape is not None:
        ok = t.dim() == len(shape) and all(s is None or s == n for s, n in zip(shape, t.shape))
        if not ok:
            want = "×".join("*" if s is None else str(s) for s in shape)
            raise ValueError(f"{name} must have shape {want}; got {tuple(t.shape)}")
    if device is not None and t.device != device:
        raise ValueError(
            f"{name} is on {t.device} but the op's data is on {device}: move it with .to()"
        )


@dataclass(frozen=True)
class AotSpec:
    """One Triton kernel at one configuration, for ahead-of-time compilation.

    ``signature`` maps every argument of the ``@triton.jit`` function to a Triton type
    string (``"*fp16"``, ``"i32"``, ``"fp32"``) or ``"constexpr"``; ``constexprs`` gives the
    constexpr values. ``divisible_by_16`` names the pointer and integer arguments that the
    launcher guarantees to be multiples of 16 (bytes for pointers): that is what lets the
    compiler emit 128-bit loads, so it must match what the launcher really checks.
    """

    label: str
    kernel: Any
    signature: dict[str, str]
    constexprs: dict[str, Any]
    num_warps: int = 4
    num_stages: int = 3
    divisible_by_16: tuple[str, ...] = field(default_factory=tuple)
