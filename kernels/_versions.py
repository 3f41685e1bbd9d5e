"""The supported torch/Triton range, and the one place that branches on their versions.

Supported: torch >= :data:`MIN_TORCH`, Triton >= :data:`MIN_TRITON` (also in
``pyproject.toml`` and the README). The kernels use only Triton APIs present across that
range; what differs between versions is the CPU *interpreter* the tests run them through,
never the compiled GPU code (the ahead-of-time compile of every kernel succeeds on the oldest
Triton too). The two interpreter differences that matter here, found with Triton 3.6 beside
torch 2.13:

* **Loop bounds.** Before Triton 3.7 the interpreter turns a tensor used as a ``range``
  bound into an int with ``int(array)`` on a one-element 1-D array. NumPy 2.4 made that an
  error ("only 0-dimensional arrays can be converted to Python scalars"); NumPy 1.25–2.3
  only warn. The ghost-BN statistics and backward-reduce kernels loop over
  ``range(t_begin, t_end)``, so Triton 3.6's interpreter needs NumPy < 2.4. The kernels are
  right: the compiled loop has dynamic bounds, and the same kernels pass under Triton 3.6's
  interpreter with NumPy 2.3.
* **Fused multiply-add.** Before Triton 3.9 the interpreter computes ``tl.fma(a, b, c)`` as
  ``a * b + c`` in fp32, rounding twice. The augmentation kernel divides by the standard
  deviation with an FMA correction step (Markstein) that is exactly rounded only with a real
  FMA, which every GPU has; under an older interpreter its outputs are within 1 ulp of the
  reference instead of equal to it.

One compiled-code difference too: the block sizes and warp counts were tuned with Triton 3.9,
where every ahead-of-time spec compiles with no spills. Triton 3.6's compiler spills a few
bytes in some of them (spill stores/loads: the fp16/bf16 augmentation specs 4/4 B on sm_80
and sm_90a, the layer-3 finalize kernels on sm_90a up to 24/20 B); they compile and run, and
the AOT tests allow :func:`aot_spill_allowance` bytes (stores plus loads) there.
"""

from __future__ import annotations

import importlib.metadata
import re

import numpy as np
import torch

#: The oldest versions the project supports (and CI tests against).
MIN_TORCH = (2, 11)
MIN_TRITON = (3, 6)
#: The Triton the kernels' launch configurations were tuned with (the pinned CPU build's).
TUNED_TRITON = (3, 9)


def version_tuple(text: str) -> tuple[int, int]:
    """(major, minor) of a version string such as ``"2.13.0+cpu"`` or ``"3.6.0"``."""
    match = re.match(r"(\d+)\.(\d+)", text)
    if match is None:
        raise ValueError(f"not a version: {text!r}")
    return int(match[1]), int(match[2])


def _installed(package: str) -> tuple[int, int] | None:
    try:
        return version_tuple(importlib.metadata.version(package))
    except importlib.metadata.PackageNotFoundError:
        return None


TORCH_VERSION = version_tuple(torch.__version__)
TRITON_VERSION = _installed("triton")  # None: Triton is not installed (not Linux)
NUMPY_VERSION = version_tuple(np.__version__)


def interpreter_fma_is_exact(triton_version: tuple[int, int] | None = TRITON_VERSION) -> bool:
    """Whether Triton's interpreter rounds ``tl.fma`` once, as the GPU does (Triton >= 3.9)."""
    return triton_version is not None and triton_version >= (3, 9)


def interpreter_problem(
    triton_version: tuple[int, int] | None = TRITON_VERSION,
    numpy_version: tuple[int, int] = NUMPY_VERSION,
) -> str | None:
    """Why Triton's interpreter cannot run these kernels with the installed versions (one
    line saying what to install), or None when it can."""
    if triton_version is not None and triton_version < (3, 7) and numpy_version >= (2, 4):
        return (
            f"Triton {triton_version[0]}.{triton_version[1]}'s interpreter cannot run the "
            f"ghost_bn_act kernels with NumPy {numpy_version[0]}.{numpy_version[1]} (it "
            "converts loop bounds with int() on 1-D arrays, an error since NumPy 2.4): "
            "install 'numpy<2.4' or 'triton>=3.7' (compiled GPU kernels are not affected)"
        )
    return None


def unsupported_versions(
    torch_version: tuple[int, int] = TORCH_VERSION,
    triton_version: tuple[int, int] | None = TRITON_VERSION,
) -> list[str]:
    """One line per installed package older than the supported range (empty when fine)."""
    problems = []
    if torch_version < MIN_TORCH:
        problems.append(
            f"torch {torch_version[0]}.{torch_version[1]} is older than the supported "
            f"{MIN_TORCH[0]}.{MIN_TORCH[1]}: install torch>={MIN_TORCH[0]}.{MIN_TORCH[1]}"
        )
    if triton_version is not None and triton_version < MIN_TRITON:
        problems.append(
            f"triton {triton_version[0]}.{triton_version[1]} is older than the supported "
            f"{MIN_TRITON[0]}.{MIN_TRITON[1]}: install triton>={MIN_TRITON[0]}.{MIN_TRITON[1]}"
        )
    return problems


def aot_spill_allowance(triton_version: tuple[int, int] | None = TRITON_VERSION) -> int:
    """Bytes of register spills (stores plus loads) an ahead-of-time compile may show: none
    with the Triton the kernels were tuned with or newer; 48 with an older supported one
    (Triton 3.6: at most 24 + 20 = 44)."""
    if triton_version is not None and triton_version >= TUNED_TRITON:
        return 0
    return 48
