"""The three backward ``@triton.jit`` kernels of ghost BN, the same shape as the forward
three in :mod:`kernels.ghost_bn_act.triton_kernels`.

:func:`_ghost_bn_act_bwd_reduce_kernel` (pass 1: recompute x̂ and g = dL/dz from the saved
values and dy, per-program partials of Σg and Σg·x̂), :func:`_ghost_bn_act_bwd_finalize_kernel`
(pass 2: dbias, dweight and the per-split means), :func:`_ghost_bn_act_bwd_kernel` (pass 3:
dx, routed through the 2×2 argmax when pooling). They share their @jit helpers with the
forward (:mod:`kernels.ghost_bn_act.triton_helpers`), so both recompute x̂, z and the
activation identically. Grids, block sizes and workspaces are chosen in
:mod:`kernels.ghost_bn_act.plan` and :mod:`kernels.ghost_bn_act.launch`. Each pointer
argument is commented with its dtype and shape; S is the number of ghost splits.
"""

from __future__ import annotations

from kernels._common import tl, triton
from kernels.ghost_bn_act.triton_helpers import (
    _activation_bwd,
    _dropped_edges,
    _grid_2d,
    _normalise,
    _offset_in_image,
    _per_channel,
    _pixel_step,
    _sum_partials,
    _sum_pixels,
    _window_corner,
    _zero_tile,
)

# --------------------------------------------------------------------------------------------
# Backward kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _ghost_bn_act_bwd_reduce_kernel(
    src_ptr,  # *x.dtype  (B, C, OH, OW) the normalised values: x, or pooled when pooling
    dy_ptr,  # *x.dtype  (B, C, OH, OW) grad of y, same layout
    mean_ptr,  # *fp32     (S, C)
    rstd_ptr,  # *fp32     (S, C)
    bias_ptr,  # *fp32     (C,)
    weight_ptr,  # *fp32     (C,) when HAS_WEIGHT
    pg_ptr,  # *fp32     out (S, n_chunks, C) partial Σ g,  g = dL/dz
    pgx_ptr,  # *fp32     out (S, n_chunks, C) partial Σ g·x̂
    C,  # i32 channels
    OHW,  # i32 pixels per image
    G,  # i32 images per split
    tiles_per_prog,  # i32
    inv_alpha,  # fp32 1 / CELU alpha
    ACT: tl.constexpr,  # plan._ACT_CODES, as the forward's
    HAS_WEIGHT: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Backward pass 1; grid and tile walk as ``_ghost_bn_act_fwd_stats_kernel``."""
    chunk = tl.program_id(0)
    split = tl.program_id(1)
    n_chunks = tl.num_programs(0)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    stat = split * C + c
    mean = _per_channel(tl.load(mean_ptr + stat, mask=c_ok, other=0.0), CHANNELS_LAST)
    rstd = _per_channel(tl.load(rstd_ptr + stat, mask=c_ok, other=0.0), CHANNELS_LAST)
    bias = _per_channel(tl.load(bias_ptr + c, mask=c_ok, other=0.0), CHANNELS_LAST)
    weight = bias
    if HAS_WEIGHT:
        weight = _per_channel(tl.load(weight_ptr + c, mask=c_ok, other=0.0), CHANNELS_LAST)
    q_lane = tl.arange(0, BLOCK_Q)
    n_qblocks = tl.cdiv(OHW, BLOCK_Q)
    t_begin = chunk * tiles_per_prog
    t_end = tl.minimum(t_begin + tiles_per_prog, G * n_qblocks)
    acc_g = _zero_tile(BLOCK_Q, BLOCK_C, CHANNELS_LAST)
    acc_gx = _zero_tile(BLOCK_Q, BLOCK_C, CHANNELS_LAST)
    for t in range(t_begin, t_end):
        g_img = t // n_qblocks
        image = (split * G + g_img).to(tl.int64)
        q = (t - g_img * n_qblocks) * BLOCK_Q + q_lane
        q2, c2 = _grid_2d(q, c, CHANNELS_LAST)
        mask = (q2 < OHW) & (c2 < C)
        off = image * C * OHW + _offset_in_image(q2, c2, C, OHW, CHANNELS_LAST)
        v = tl.load(src_ptr + off, mask=mask, other=0.0)
        dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
        xhat, z = _normalise(v, mean, rstd, bias, weight, HAS_WEIGHT)
        g = tl.where(mask, _activation_bwd(dy, z, inv_alpha, ACT), 0.0)
        acc_g += g
        acc_gx += g * xhat
    part = (split * n_chunks + chunk) * C + c
    tl.store(pg_ptr + part, _sum_pixels(acc_g, CHANNELS_LAST), mask=c_ok)
    tl.store(pgx_ptr + part, _sum_pixels(acc_gx, CHANNELS_LAST), mask=c_ok)


@triton.jit
def _ghost_bn_act_bwd_finalize_kernel(
    pg_ptr,  # *fp32 (S, n_chunks, C) partial Σ g
    pgx_ptr,  # *fp32 (S, n_chunks, C) partial Σ g·x̂
    mean_g_ptr,  # *fp32 out (S, C) mean of g per split (0 when not TRAINING)
    mean_gx_ptr,  # *fp32 out (S, C) mean of g·x̂ per split (0 when not TRAINING)
    dbias_ptr,  # *fp32 out (C,) Σ g
    dweight_ptr,  # *fp32 out (C,) Σ g·x̂
    C,  # i32 channels
    S,  # i32 splits
    n_chunks,  # i32 partials per split
    inv_count,  # fp32 1 / elements per (split, channel)
    TRAINING: tl.constexpr,  # the stats depended on x (batch stats): keep the mean terms
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Backward pass 2. Grid (cdiv(C, BLOCK_C),)."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    k_lane = tl.arange(0, BLOCK_K)
    c3 = c[None, None, :]
    dbias = tl.zeros([BLOCK_C], tl.float32)
    dweight = tl.zeros([BLOCK_C], tl.float32)
    for s0 in range(0, S, BLOCK_S):
        s = s0 + tl.arange(0, BLOCK_S)
        s3 = s[:, None, None]
        total_g, total_gx = _sum_partials(
            pg_ptr, pgx_ptr, s3, k_lane, c3, S, n_chunks, C, BLOCK_S, BLOCK_K, BLOCK_C
        )
        dbias += tl.sum(total_g, axis=0)
        dweight += tl.sum(total_gx, axis=0)
        s2 = s[:, None]
        c2 = c[None, :]
        ok2 = (s2 < S) & (c2 < C)
        if TRAINING:
            tl.store(mean_g_ptr + s2 * C + c2, total_g * inv_count, mask=ok2)
            tl.store(mean_gx_ptr + s2 * C + c2, total_gx * inv_count, mask=ok2)
        else:
            tl.store(mean_g_ptr + s2 * C + c2, tl.zeros([BLOCK_S, BLOCK_C], tl.float32), mask=ok2)
            tl.store(mean_gx_ptr + s2 * C + c2, tl.zeros([BLOCK_S, BLOCK_C], tl.float32), mask=ok2)
    tl.store(dbias_ptr + c, dbias, mask=c_ok)
    tl.store(dweight_ptr + c, dweight, mask=c_ok)


@triton.jit
def _ghost_bn_act_bwd_kernel(
    src_ptr,  # *x.dtype  (B, C, OH, OW) the normalised values (x, or pooled)
    dy_ptr,  # *x.dtype  (B, C, OH, OW) grad of y
    argmax_ptr,  # *u8       (B, C, OH, OW) window index, read when POOL
    dx_ptr,  # *x.dtype  out (B, C, H, W) grad of x (OH = H // 2, OW = W // 2 with POOL)
    mean_ptr,  # *fp32     (S, C)
    rstd_ptr,  # *fp32     (S, C)
    bias_ptr,  # *fp32     (C,)
    weight_ptr,  # *fp32     (C,) when HAS_WEIGHT
    mean_g_ptr,  # *fp32     (S, C) mean of g per split (zeros in eval)
    mean_gx_ptr,  # *fp32     (S, C) mean of g·x̂ per split (zeros in eval)
    C,  # i32 channels
    HW,  # i32 pixels of one dx image
    W,  # i32 dx width: x's row stride in pixels (OW = W // 2 with POOL)
    OHW,  # i32 pixels of one src image
    OW,  # i32 src width
    G,  # i32 images per split
    inv_alpha,  # fp32 1 / CELU alpha
    POOL: tl.constexpr,  # scatter through the 2×2 argmax
    ODD_HW: tl.constexpr,  # POOL and x's H or W is odd: zero the row/column the pool dropped
    ACT: tl.constexpr,
    HAS_WEIGHT: tl.constexpr,
    CHANNELS_LAST: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_C: tl.constexpr,
    ARGMAX_VEC: tl.constexpr,  # as in the stats kernel
):
    """Backward pass 3. Grid (B · cdiv(OHW, BLOCK_Q), cdiv(C, BLOCK_C)): one tile each."""
    n_qblocks = tl.cdiv(OHW, BLOCK_Q)
    pid = tl.program_id(0)
    image = pid // n_qblocks
    q = (pid - image * n_qblocks) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    stat = (image // G) * C + c
    mean = _per_channel(tl.load(mean_ptr + stat, mask=c_ok, other=0.0), CHANNELS_LAST)
    rstd = _per_channel(tl.load(rstd_ptr + stat, mask=c_ok, other=0.0), CHANNELS_LAST)
    mean_g = _per_channel(tl.load(mean_g_ptr + stat, mask=c_ok, other=0.0), CHANNELS_LAST)
    mean_gx = _per_channel(tl.load(mean_gx_ptr + stat, mask=c_ok, other=0.0), CHANNELS_LAST)
    bias = _per_channel(tl.load(bias_ptr + c, mask=c_ok, other=0.0), CHANNELS_LAST)
    weight = bias
    scale = rstd
    if HAS_WEIGHT:
        weight = _per_channel(tl.load(weight_ptr + c, mask=c_ok, other=0.0), CHANNELS_LAST)
        scale = rstd * weight
    image = image.to(tl.int64)
    q2, c2 = _grid_2d(q, c, CHANNELS_LAST)
    mask = (q2 < OHW) & (c2 < C)
    off = image * C * OHW + _offset_in_image(q2, c2, C, OHW, CHANNELS_LAST)
    if POOL:
        p2, c2 = _grid_2d(_window_corner(q, OW, W), c, CHANNELS_LAST)
        dst = dx_ptr + image * C * HW + _offset_in_image(p2, c2, C, HW, CHANNELS_LAST)
        step = _pixel_step(C, CHANNELS_LAST)
        if ODD_HW:
            # The floored pool never read x's last row (odd H) / column (odd W): their
            # gradient is zero, written by the windows beside them (the last of each row /
            # column), so here too every element of dx is written exactly once. Done before
            # the arithmetic below so that its masks and addresses are dead by then (with
            # them live, ptxas spilled on sm_90a).
            edge_zero = _zero_tile(BLOCK_Q, BLOCK_C, CHANNELS_LAST).to(dx_ptr.dtype.element_ty)
            right, bottom = _dropped_edges(q, OHW // OW, OW, HW // W, W)
            right2, _ = _grid_2d(right, c, CHANNELS_LAST)
            bottom2, _ = _grid_2d(bottom, c, CHANNELS_LAST)
            tl.store(dst + 2 * step, edge_zero, mask=mask & right2)
            tl.store(dst + (W + 2) * step, edge_zero, mask=mask & right2)
            tl.store(dst + 2 * W * step, edge_zero, mask=mask & bottom2)
            tl.store(dst + (2 * W + 1) * step, edge_zero, mask=mask & bottom2)
            tl.store(dst + (2 * W + 2) * step, edge_zero, mask=mask & right2 & bottom2)
    v = tl.load(src_ptr + off, mask=mask, other=0.0)
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    xhat, z = _normalise(v, mean, rstd, bias, weight, HAS_WEIGHT)
    g = _activation_bwd(dy, z, inv_alpha, ACT)
    # dx̂ = g·w;  dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) = rstd·w·(g − ḡ − x̂·mean(g·x̂))
    dv = (scale * (g - mean_g - xhat * mean_gx)).to(dx_ptr.dtype.element_ty)
    if POOL:
        which = tl.load(argmax_ptr + tl.max_contiguous(off, [1, ARGMAX_VEC]), mask=mask, other=0)
        zero = tl.zeros_like(dv)
        # All four window positions are written, so dx needs no separate zero fill.
        tl.store(dst, tl.where(which == 0, dv, zero), mask=mask)
        tl.store(dst + step, tl.where(which == 1, dv, zero), mask=mask)
        tl.store(dst + W * step, tl.where(which == 2, dv, zero), mask=mask)
        tl.store(dst + (W + 1) * step, tl.where(which == 3, dv, zero), mask=mask)
    else:
        tl.store(
            dx_ptr + image * C * HW + _offset_in_image(q2, c2, C, HW, CHANNELS_LAST), dv, mask=mask
        )
