"""What ghost BN moves, without running it: :func:`ghost_bn_act_bytes` counts the DRAM bytes
of the Triton kernels against the eager sequence of PyTorch ops.

It follows the launch plan of :mod:`kernels.ghost_bn_act.plan` (at NOMINAL_SMS SMs), so the
partials it counts are those a real launch writes.
"""

from __future__ import annotations

from typing import Any

import torch

from kernels.ghost_bn_act.plan import (
    TILE,
    TILE_POOL,
    _cdiv,
    _chunking,
    _target_programs,
    _tile_shape,
)

__all__ = ["ghost_bn_act_bytes"]


def ghost_bn_act_bytes(
    shape: tuple[int, int, int, int],
    dtype: torch.dtype,
    pool: bool,
    training: bool,
    backward: bool,
    *,
    splits: int = 16,
    learnable_scale: bool = True,
    act: str | None = "celu",
) -> dict[str, Any]:
    """Counted DRAM bytes of one call (forward, plus backward when ``backward``).

    ``shape`` is x's (B, C, H, W); with ``pool`` odd H or W are floored (the normalised
    tensor is (B, C, H // 2, W // 2)). Returns ``{"triton": int, "eager": int, "ratio": float,
    "triton_detail": {kernel: bytes}, "eager_detail": {op: bytes}}``; every tensor a kernel
    reads or writes counts once (per-channel parameters included; re-reads that hit L2 do
    not). ``training`` with ``backward`` is the trainer's step; eval with ``backward``
    counts the (rare) eval-mode backward.

    The eager model is the PyTorch op sequence of the seed's ghost BN site: F.max_pool2d
    (CUDA computes int64 indices even without grad), F.batch_norm on each split (torch.split
    views in, torch.cat out) without affine, ``* weight`` (learnable only), ``+ bias``, the
    activation; backward: each op's backward kernel, dbias/dweight as separate reductions,
    split's backward as a cat. BN counts two reads of its input (statistics, then normalise)
    in training, as PyTorch's and cuDNN's kernels do; cuDNN's backward reads (dy, x) twice.
    """
    b, c, h, w = shape
    e = torch.empty((), dtype=dtype).element_size()
    f32 = 4
    n = b * c * h * w
    # The pool floors odd sides (F.max_pool2d's rule): M = B·C·⌊H/2⌋·⌊W/2⌋, and a pooling
    # pass loads only the 4·M elements of the windows — x's last row/column are never read
    # (the dropped column's pixels are whole C-element runs channels_last, so whole sectors
    # are skipped too). dx still has all N elements: the dropped ones are written as zeros.
    oh, ow = (h // 2, w // 2) if pool else (h, w)
    m = b * c * oh * ow
    x_read = 4 * m if pool else n
    s = splits if training else 1
    params = (2 if learnable_scale else 1) * c * f32  # bias (+ weight)
    tr: dict[str, int] = {}

    save_pool = pool and (training or backward)
    if training or save_pool:
        tile = TILE_POOL if pool else TILE
        bq, bc = _tile_shape(c, oh * ow, True, tile)
        _, chunks = _chunking(
            (b // s) * _cdiv(oh * ow, bq), s, _cdiv(c, bc), _target_programs(None), bq
        )
        part = 2 * s * chunks * c * f32 if training else 0
        tr["fwd_stats"] = x_read * e + (m * e + m if save_pool else 0) + part
        tr["fwd_finalize"] = (
            part
            + (s * c * e if training else 0)
            + 2 * s * c * f32
            + (4 if training else 2) * c * f32
        )
    else:
        tr["fwd_finalize"] = 2 * c * f32 + 2 * c * f32
    tr["fwd"] = (m * e if save_pool or not pool else x_read * e) + m * e + 2 * s * c * f32 + params
    if backward:
        bq, bc = _tile_shape(c, oh * ow, True, TILE)
        _, chunks = _chunking(
            (b // s) * _cdiv(oh * ow, bq), s, _cdiv(c, bc), _target_programs(None), bq
        )
        part = 2 * s * chunks * c * f32
        tr["bwd_reduce"] = 2 * m * e + part + 2 * s * c * f32 + params
        tr["bwd_finalize"] = part + 2 * s * c * f32 + 2 * c * f32
        tr["bwd"] = 2 * m * e + (m if pool else 0) + n * e + 4 * s * c * f32 + params

    ea: dict[str, int] = {}
    if pool:
        ea["max_pool2d"] = x_read * e + m * e + m * 8
    if training:
        ea["batch_norm"] = 3 * m * e + 2 * s * c * f32
        if s > 1:
            ea["cat"] = 2 * m * e
    else:
        ea["batch_norm"] = 2 * m * e
    if learnable_scale:
        ea["mul_weight"] = 2 * m * e + c * f32
    ea["add_bias"] = 2 * m * e + c * f32
    if act is not None:
        ea[f"{act}"] = 2 * m * e
    if backward:
        if act is not None:
            ea[f"{act}_backward"] = 3 * m * e
        ea["bias_grad_sum"] = m * e + c * f32
        if learnable_scale:
            ea["mul_backward"] = 2 * m * e + 3 * m * e + m * e  # g·w; g·x̂ then its sum
        if s > 1:
            ea["cat_backward"] = 2 * m * e  # split's backward concatenates the per-split grads
        ea["batch_norm_backward"] = (5 if training else 3) * m * e + 2 * s * c * f32
        if pool:
            ea["max_pool2d_backward"] = m * e + m * 8 + n * e
    triton_total, eager_total = sum(tr.values()), sum(ea.values())
    return {
        "triton": triton_total,
        "eager": eager_total,
        "ratio": eager_total / triton_total,
        "triton_detail": tr,
        "eager_detail": ea,
    }
