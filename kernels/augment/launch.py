"""From a batch to one kernel launch: the tile and warp count for an image size, the cached
statistics tensor, the checks the kernel itself relies on, and the launch.

:func:`_launch_config` is the launch plan; the launcher and the ahead-of-time specs
(:mod:`kernels.augment.specs`) both call it, so the specs compile what a real launch runs.
:func:`_augment_launch` is the body of the custom op registered in :mod:`kernels.augment.op`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch

from kernels._common import check_tensor, interpreting, triton
from kernels._launch import launch
from kernels.augment.reference import OUT_DTYPES
from kernels.augment.triton_kernels import _augment_fwd_kernel

#: Largest output tile (elements) one program holds: 4096 = one 32×32×3 CIFAR image padded
#: to 32×128, i.e. 32 elements (four 8-element row vectors) per thread at 4 warps.
TILE = 4096
#: Warps per program for a full tile; smaller tiles get fewer (at least 256 elements a warp).
MAX_WARPS = 4


def _launch_config(channels: int, height: int, width: int) -> dict[str, int]:
    """Tile and warp count for an image size; shared by the launcher and :func:`aot_specs`."""
    block_wc = triton.next_power_of_2(channels * width)
    block_rows = min(triton.next_power_of_2(height), max(1, TILE // block_wc))
    tile = block_rows * block_wc
    return dict(
        BLOCK_ROWS=block_rows, BLOCK_WC=block_wc, num_warps=max(1, min(MAX_WARPS, tile // 256))
    )


@functools.lru_cache(maxsize=16)
def _stats_tensor(
    mean: tuple[float, ...], std: tuple[float, ...], device: torch.device
) -> torch.Tensor:
    """mean, std and RN(1/std) as one fp32 (3, C) device tensor, built once per (values,
    device).

    Cached so the steady state does no host→device copy (and stays capturable in a CUDA
    graph once warmed up). mean and std round to fp32 exactly as ``torch.tensor(mean,
    dtype=torch.float32)`` in the reference; the reciprocal is an IEEE fp32 division of the
    rounded std, i.e. the correctly rounded reciprocal the kernel's division step needs.
    """
    stats = torch.tensor([mean, std], dtype=torch.float32)
    return torch.cat([stats, 1.0 / stats[1:]]).to(device)


def _check_launch(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    cutout_size: int,
    pad: int,
    out_dtype: torch.dtype,
) -> None:
    """What the kernel itself relies on, checked from metadata and Python ints only (no
    device sync), so it also runs when the caller passed ``validate=False``. The parameter
    *values* are not read back here; the kernel clamps its gather coordinates, so bad crops
    give wrong pixels rather than out-of-bounds reads."""
    check_tensor("data", data, dtypes=[torch.uint8], ndim=4)
    ints = [torch.int32, torch.int64]
    check_tensor("indices", indices, dtypes=ints, ndim=1, device=data.device)
    batch = indices.shape[0]
    check_tensor("crop", crop, dtypes=ints, shape=(batch, 2), device=data.device)
    check_tensor("flip", flip, dtypes=[torch.bool], shape=(batch,), device=data.device)
    check_tensor("cutout", cutout, dtypes=ints, shape=(batch, 2), device=data.device)
    if not data.is_contiguous():
        raise ValueError("data must be contiguous (N, C, H, W) uint8: call .contiguous() once")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16; got {out_dtype}")
    _, _, height, width = data.shape
    if not 0 <= pad < min(height, width):
        raise ValueError(
            f"pad must be in [0, {min(height, width) - 1}] for reflect padding; got {pad}"
        )
    if not 0 <= cutout_size <= min(height, width):
        raise ValueError(f"cutout_size must be in [0, {min(height, width)}]; got {cutout_size}")


def _augment_launch(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    cutout_size: int,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Allocate the channels_last output and launch :func:`_augment_fwd_kernel` once."""
    _check_launch(data, indices, crop, flip, cutout, cutout_size, pad, out_dtype)
    _, channels, height, width = data.shape
    batch = indices.shape[0]
    # (B, H, W, C) contiguous, seen as (B, C, H, W): channels_last. A fresh allocation is
    # 16-byte aligned (the caching allocator hands out 512-byte blocks), which with the
    # constexpr row length lets the compiler use 16-byte stores.
    out = torch.empty((batch, height, width, channels), dtype=out_dtype, device=data.device)
    if batch == 0:
        return out.permute(0, 3, 1, 2)
    # Parameter tensors: no-ops when already contiguous (the trainer's slices are); the
    # kernel reads int32 or int64 as given (see the design notes on why not convert).
    indices, crop, cutout = indices.contiguous(), crop.contiguous(), cutout.contiguous()
    flip_u8 = flip.contiguous().view(torch.uint8)
    stats = _stats_tensor(tuple(map(float, mean)), tuple(map(float, std)), data.device)
    cfg = _launch_config(channels, height, width)
    grid = (batch * triton.cdiv(height, cfg["BLOCK_ROWS"]),)
    launch(
        _augment_fwd_kernel,
        grid,
        data,
        indices,
        crop,
        flip_u8,
        cutout,
        stats,
        out,
        C=channels,
        H=height,
        W=width,
        PAD=pad,
        CUTOUT=cutout_size,
        BLOCK_ROWS=cfg["BLOCK_ROWS"],
        BLOCK_WC=cfg["BLOCK_WC"],
        BF16_BY_BITS=interpreting(),
        num_warps=cfg["num_warps"],
    )
    return out.permute(0, 3, 1, 2)
