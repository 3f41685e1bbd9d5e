"""What the augmentation costs, without running it: the bytes it moves and its
ahead-of-time specs.

:func:`augment_bytes` counts the fused kernel's global-memory bytes against the eager
sequence of PyTorch ops; :func:`aot_specs` lists the kernel at the trainer's real
configurations (CIFAR-10's data shape, the recipe's pads, cutouts and dtypes), with the
launch plan of :mod:`kernels.augment.launch`.
"""

from __future__ import annotations

from typing import Any

import torch

from kernels._common import AotSpec
from kernels.augment.launch import _launch_config
from kernels.augment.triton_kernels import _augment_fwd_kernel

__all__ = ["aot_specs", "augment_bytes"]

_ELEMENT_SIZE = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


def augment_bytes(
    batch: int,
    channels: int,
    height: int,
    width: int,
    out_dtype: torch.dtype,
    *,
    pad: int = 4,
    cutout: bool = True,
    index_bytes: int = 8,
) -> dict[str, Any]:
    """Global-memory bytes one batch moves: the fused kernel against eager PyTorch, counted.

    ``fused``: what :func:`_augment_fwd_kernel` reads and writes — each source byte once
    (the source reads are gathers but every byte of the image is used), the per-image
    parameters (index, crop, flip, cutout; ``index_bytes`` per integer, int64 by default)
    and 3·C fp32 statistics, and each output element written once.

    ``eager``: the textbook sequence of separate PyTorch ops, each one a kernel that reads
    its inputs and writes its output in full (no fusion, no caching assumed):
    gather ``data[indices]`` → ``.float()`` → ``F.pad(reflect)`` → per-image crop (a gather
    of the window) → flip → ``- mean`` → ``/ std`` → cutout ``masked_fill`` (with a bool
    (B, H, W) mask) → ``.to(out_dtype)`` → ``.contiguous(memory_format=channels_last)``.
    ``eager_ops`` gives each op's read and write bytes; ``ratio`` is eager total / fused total.
    At B=512, C=3, 32×32, fp16, pad 4: fused 4.74 MB, eager 106.3 MB (22×).
    """
    e = batch * channels * height * width  # elements of the batch
    s = _ELEMENT_SIZE[out_dtype]
    padded = batch * channels * (height + 2 * pad) * (width + 2 * pad)
    params = batch * (index_bytes * (1 + 2 + (2 if cutout else 0)) + 1)  # + flip bool
    fused_read = e + params + 3 * channels * 4
    fused_write = e * s
    ops: dict[str, tuple[int, int]] = {
        "gather": (e + batch * index_bytes, e),
        "to_float32": (e, 4 * e),
        "reflect_pad": (4 * e, 4 * padded) if pad else (0, 0),
        "crop": (4 * e + 2 * batch * index_bytes, 4 * e),
        "flip": (4 * e + batch, 4 * e),
        "sub_mean": (4 * e, 4 * e),
        "div_std": (4 * e, 4 * e),
        "cutout": (
            (4 * e + batch * height * width + 2 * batch * index_bytes, 4 * e) if cutout else (0, 0)
        ),
        "cast": (4 * e, s * e),
        "channels_last": (s * e, s * e),
    }
    eager_read = sum(r for r, _ in ops.values())
    eager_write = sum(w for _, w in ops.values())
    return {
        "fused": {"read": fused_read, "write": fused_write, "total": fused_read + fused_write},
        "eager": {"read": eager_read, "write": eager_write, "total": eager_read + eager_write},
        "eager_ops": {name: {"read": r, "write": w} for name, (r, w) in ops.items() if r or w},
        "ratio": (eager_read + eager_write) / (fused_read + fused_write),
    }


def aot_specs() -> list[AotSpec]:
    """The kernel at the trainer's real configurations (CIFAR-10: C=3, 32×32).

    Training: pad 4, cutout 0 or 8, fp16/bf16 (and fp32 with cutout); evaluation: pad 0, no
    cutout. The batch size (512) only sets the grid, not the compiled code. Parameter
    pointers are int64 (what ``random_augment_params`` and ``randperm`` return). Only
    ``out_ptr`` is declared 16-byte aligned: the launcher allocates it (fresh allocations are
    aligned) and it is the one whose vector width matters; the others are read with scalar
    or byte loads, and the JIT adds the hint by itself whenever a pointer happens to be
    aligned, so declaring fewer hints than it would only makes the AOT code conservative.
    """
    base_sig = {
        "data_ptr": "*u8",
        "indices_ptr": "*i64",
        "crop_ptr": "*i64",
        "flip_ptr": "*u8",
        "cutout_ptr": "*i64",
        "stats_ptr": "*fp32",
    }
    constexpr_names = ("C", "H", "W", "PAD", "CUTOUT", "BLOCK_ROWS", "BLOCK_WC", "BF16_BY_BITS")
    cfg = _launch_config(3, 32, 32)
    out_types = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    configs = [  # (pad, cutout, out dtype)
        (4, 8, torch.float16),
        (4, 0, torch.float16),
        (4, 8, torch.bfloat16),
        (4, 0, torch.bfloat16),
        (4, 8, torch.float32),
        (0, 0, torch.float16),
        (0, 0, torch.bfloat16),
    ]
    specs = []
    for pad, cut, dtype in configs:
        name = out_types[dtype]
        signature = {**base_sig, "out_ptr": f"*{name}", **{n: "constexpr" for n in constexpr_names}}
        constexprs = dict(
            C=3,
            H=32,
            W=32,
            PAD=pad,
            CUTOUT=cut,
            BLOCK_ROWS=cfg["BLOCK_ROWS"],
            BLOCK_WC=cfg["BLOCK_WC"],
            BF16_BY_BITS=False,
        )
        specs.append(
            AotSpec(
                label=f"augment-b512-c3-32x32-pad{pad}-cut{cut}-{name}",
                kernel=_augment_fwd_kernel,
                signature=signature,
                constexprs=constexprs,
                num_warps=cfg["num_warps"],
                divisible_by_16=("out_ptr",),
            )
        )
    return specs
