"""The three forward ``@triton.jit`` kernels of ghost BN (the backward three are in
:mod:`kernels.ghost_bn_act.triton_kernels_bwd`).

:func:`_ghost_bn_act_fwd_stats_kernel` (pass 1: read x once, pool, per-program partial sums),
:func:`_ghost_bn_act_fwd_finalize_kernel` (pass 2: fold them into mean/rstd, lerp the running
stats), :func:`_ghost_bn_act_fwd_kernel` (pass 3: normalise, scale, bias, activation).
Why the work is cut this way is in the package docstring (:mod:`kernels.ghost_bn_act`);
grids, block sizes and workspaces are chosen in :mod:`kernels.ghost_bn_act.plan` and
:mod:`kernels.ghost_bn_act.launch`. Each pointer argument is commented with its dtype and
shape; S is the number of ghost splits.
"""

from __future__ import annotations

from kernels._common import tl, triton
from kernels.ghost_bn_act.triton_helpers import (
    _activation_fwd,
    _grid_2d,
    _max_pool_2x2,
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
# Forward kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _ghost_bn_act_fwd_stats_kernel(
    x_ptr,  # *x.dtype  x (B, C, H, W), channels_last or contiguous (CHANNELS_LAST)
    pooled_ptr,  # *x.dtype  out (B, C, H // 2, W // 2) in x's layout, when SAVE_POOL
    argmax_ptr,  # *u8       out (B, C, H // 2, W // 2): window index 0..3 (row-major)
    psum_ptr,  # *fp32     out (S, n_chunks, C): Σ(v − K) per program, when STATS
    psq_ptr,  # *fp32     out (S, n_chunks, C): Σ(v − K)², when STATS
    C,  # i32 channels
    HW,  # i32 H·W, pixels of one input image
    W,  # i32 input width: x's row stride in pixels (odd with a floored pool)
    OHW,  # i32 pixels of one normalised image ((H // 2)·(W // 2) with POOL, else HW)
    OW,  # i32 normalised width
    G,  # i32 images per ghost split
    tiles_per_prog,  # i32 tiles of BLOCK_Q pixels × BLOCK_C channels each program reduces
    POOL: tl.constexpr,  # 2×2 max-pool x first
    STATS: tl.constexpr,  # accumulate the shifted sums (training)
    SAVE_POOL: tl.constexpr,  # write pooled values and argmax for pass 3 and backward
    CHANNELS_LAST: tl.constexpr,  # x's layout
    BLOCK_Q: tl.constexpr,  # pixels per tile (power of 2)
    BLOCK_C: tl.constexpr,  # channels per tile (power of 2)
    ARGMAX_VEC: tl.constexpr,  # x elements per 16 bytes (capped by the tile's fast dim)
):
    """Pass 1. Grid (n_chunks, S, cdiv(C, BLOCK_C)): program (k, s, cb) walks tiles
    [k·tiles_per_prog, (k+1)·tiles_per_prog) of split s — tile t is image s·G + t // n_qb,
    pixel block t % n_qb — so the reduction needs no atomics and is deterministic."""
    chunk = tl.program_id(0)
    split = tl.program_id(1)
    n_chunks = tl.num_programs(0)
    c = tl.program_id(2) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    q_lane = tl.arange(0, BLOCK_Q)
    n_qblocks = tl.cdiv(OHW, BLOCK_Q)
    t_begin = chunk * tiles_per_prog
    t_end = tl.minimum(t_begin + tiles_per_prog, G * n_qblocks)
    first_image = split * G
    if STATS:
        # Shift K per (split, channel): x[first image, c, 0, 0]; pass 2 reloads the same value.
        shift = tl.load(
            x_ptr
            + first_image.to(tl.int64) * C * HW
            + _offset_in_image(0, c, C, HW, CHANNELS_LAST),
            mask=c_ok,
            other=0.0,
        )
        shift = _per_channel(shift.to(tl.float32), CHANNELS_LAST)
        acc_sum = _zero_tile(BLOCK_Q, BLOCK_C, CHANNELS_LAST)
        acc_sq = _zero_tile(BLOCK_Q, BLOCK_C, CHANNELS_LAST)
    for t in range(t_begin, t_end):
        g = t // n_qblocks
        image = (first_image + g).to(tl.int64)
        q = (t - g * n_qblocks) * BLOCK_Q + q_lane
        q2, c2 = _grid_2d(q, c, CHANNELS_LAST)
        mask = (q2 < OHW) & (c2 < C)
        if POOL:
            p2, c2 = _grid_2d(_window_corner(q, OW, W), c, CHANNELS_LAST)
            src = x_ptr + image * C * HW + _offset_in_image(p2, c2, C, HW, CHANNELS_LAST)
            step = _pixel_step(C, CHANNELS_LAST)
            v0 = tl.load(src, mask=mask, other=0.0)
            v1 = tl.load(src + step, mask=mask, other=0.0)
            v2 = tl.load(src + W * step, mask=mask, other=0.0)
            v3 = tl.load(src + (W + 1) * step, mask=mask, other=0.0)
            v, idx = _max_pool_2x2(v0, v1, v2, v3)
            if SAVE_POOL:
                dst = image * C * OHW + _offset_in_image(q2, c2, C, OHW, CHANNELS_LAST)
                tl.store(pooled_ptr + dst, v.to(pooled_ptr.dtype.element_ty), mask=mask)
                # Cap the byte store's vector at x's 16-byte vector so the whole tile keeps
                # one register layout (else a shared-memory layout conversion every tile).
                tl.store(
                    argmax_ptr + tl.max_contiguous(dst, [1, ARGMAX_VEC]),
                    idx.to(tl.uint8),
                    mask=mask,
                )
        else:
            v = tl.load(
                x_ptr + image * C * HW + _offset_in_image(q2, c2, C, HW, CHANNELS_LAST),
                mask=mask,
                other=0.0,
            )
        if STATS:
            d = tl.where(mask, v.to(tl.float32) - shift, 0.0)
            acc_sum += d
            acc_sq += d * d
    if STATS:
        part = (split * n_chunks + chunk) * C + c
        tl.store(psum_ptr + part, _sum_pixels(acc_sum, CHANNELS_LAST), mask=c_ok)
        tl.store(psq_ptr + part, _sum_pixels(acc_sq, CHANNELS_LAST), mask=c_ok)


@triton.jit
def _ghost_bn_act_fwd_finalize_kernel(
    psum_ptr,  # *fp32     (S, n_chunks, C) partial Σ(v − K) from pass 1
    psq_ptr,  # *fp32     (S, n_chunks, C) partial Σ(v − K)²
    x_ptr,  # *x.dtype  x, only to reload the shifts K = x[s·G, c, 0, 0]
    mean_ptr,  # *fp32     out (S, C) batch mean per split (running mean in eval)
    rstd_ptr,  # *fp32     out (S, C) 1/sqrt(var + eps)
    running_mean_ptr,  # *fp32    (C,) updated in place when TRAINING
    running_var_ptr,  # *fp32     (C,) updated in place when TRAINING (unbiased variance)
    C,  # i32 channels
    S,  # i32 splits
    n_chunks,  # i32 partials per split
    G,  # i32 images per split
    CHW,  # i32 elements per image of x (C·H·W)
    chan_stride,  # i32 element stride of x's channel dim (1 channels_last, H·W NCHW)
    inv_count,  # fp32 1 / elements per (split, channel)
    unbias,  # fp32 count / (count − 1): biased → unbiased variance
    eps,  # fp32
    momentum,  # fp32 running = running + momentum·(batch − running)
    TRAINING: tl.constexpr,  # batch stats (else mean/rstd from the running stats)
    BLOCK_S: tl.constexpr,  # splits per step
    BLOCK_K: tl.constexpr,  # chunks per step
    BLOCK_C: tl.constexpr,  # channels per program
):
    """Pass 2. Grid (cdiv(C, BLOCK_C),): each program owns BLOCK_C channels for every split,
    so it can also average over splits for the running stats without another launch."""
    c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    running_mean = tl.load(running_mean_ptr + c, mask=c_ok, other=0.0)
    running_var = tl.load(running_var_ptr + c, mask=c_ok, other=1.0)
    if TRAINING:
        k_lane = tl.arange(0, BLOCK_K)
        c3 = c[None, None, :]
        mean_total = tl.zeros([BLOCK_C], tl.float32)
        var_total = tl.zeros([BLOCK_C], tl.float32)
        for s0 in range(0, S, BLOCK_S):
            s = s0 + tl.arange(0, BLOCK_S)
            s3 = s[:, None, None]
            total, total_sq = _sum_partials(
                psum_ptr, psq_ptr, s3, k_lane, c3, S, n_chunks, C, BLOCK_S, BLOCK_K, BLOCK_C
            )
            s2 = s[:, None]
            c2 = c[None, :]
            ok2 = (s2 < S) & (c2 < C)
            shift = tl.load(
                x_ptr + (s2 * G).to(tl.int64) * CHW + c2 * chan_stride, mask=ok2, other=0.0
            ).to(tl.float32)
            d = total * inv_count  # E[v − K]
            mean = shift + d
            var = tl.maximum(total_sq * inv_count - d * d, 0.0)  # biased, as BN normalises
            tl.store(mean_ptr + s2 * C + c2, mean, mask=ok2)
            tl.store(rstd_ptr + s2 * C + c2, tl.rsqrt(var + eps), mask=ok2)
            mean_total += tl.sum(tl.where(ok2, mean, 0.0), axis=0)
            var_total += tl.sum(tl.where(ok2, var, 0.0), axis=0)
        new_mean = mean_total / S
        new_var = var_total / S * unbias
        tl.store(
            running_mean_ptr + c, running_mean + momentum * (new_mean - running_mean), mask=c_ok
        )
        tl.store(running_var_ptr + c, running_var + momentum * (new_var - running_var), mask=c_ok)
    else:
        tl.store(mean_ptr + c, running_mean, mask=c_ok)
        tl.store(rstd_ptr + c, tl.rsqrt(running_var + eps), mask=c_ok)


@triton.jit
def _ghost_bn_act_fwd_kernel(
    src_ptr,  # *x.dtype  x (B, C, H, W) when POOL, else the values to normalise
    #           (B, C, OH, OW): x itself or the pooled copy from pass 1
    y_ptr,  # *x.dtype  out (B, C, OH, OW), same layout as src
    mean_ptr,  # *fp32     (S, C)
    rstd_ptr,  # *fp32     (S, C)
    bias_ptr,  # *fp32     (C,)
    weight_ptr,  # *fp32     (C,) read only when HAS_WEIGHT (else any valid pointer)
    C,  # i32 channels
    HW,  # i32 pixels of one src image when POOL (unused otherwise)
    W,  # i32 src width when POOL (unused otherwise)
    OHW,  # i32 pixels of one output image
    OW,  # i32 output width
    G,  # i32 images per split (B in eval)
    alpha,  # fp32 CELU alpha (unused by the other activations)
    inv_alpha,  # fp32 1 / alpha
    POOL: tl.constexpr,  # pool on the fly (eval without grad: nothing saved)
    ACT: tl.constexpr,  # 0 none, 1 relu, 2 celu, 3 gelu, 4 gelu_tanh, 5 silu (plan._ACT_CODES)
    HAS_WEIGHT: tl.constexpr,  # learnable scale (else frozen at 1)
    CHANNELS_LAST: tl.constexpr,
    BLOCK_Q: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
    """Pass 3. Grid (B · cdiv(OHW, BLOCK_Q), cdiv(C, BLOCK_C)): one tile per program."""
    n_qblocks = tl.cdiv(OHW, BLOCK_Q)
    pid = tl.program_id(0)
    image = pid // n_qblocks
    q = (pid - image * n_qblocks) * BLOCK_Q + tl.arange(0, BLOCK_Q)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = c < C
    stat = (image // G) * C + c
    mean = _per_channel(tl.load(mean_ptr + stat, mask=c_ok, other=0.0), CHANNELS_LAST)
    rstd = _per_channel(tl.load(rstd_ptr + stat, mask=c_ok, other=0.0), CHANNELS_LAST)
    bias = _per_channel(tl.load(bias_ptr + c, mask=c_ok, other=0.0), CHANNELS_LAST)
    weight = bias
    if HAS_WEIGHT:
        weight = _per_channel(tl.load(weight_ptr + c, mask=c_ok, other=0.0), CHANNELS_LAST)
    image = image.to(tl.int64)
    q2, c2 = _grid_2d(q, c, CHANNELS_LAST)
    mask = (q2 < OHW) & (c2 < C)
    if POOL:
        p2, c2 = _grid_2d(_window_corner(q, OW, W), c, CHANNELS_LAST)
        src = src_ptr + image * C * HW + _offset_in_image(p2, c2, C, HW, CHANNELS_LAST)
        step = _pixel_step(C, CHANNELS_LAST)
        v, _ = _max_pool_2x2(
            tl.load(src, mask=mask, other=0.0),
            tl.load(src + step, mask=mask, other=0.0),
            tl.load(src + W * step, mask=mask, other=0.0),
            tl.load(src + (W + 1) * step, mask=mask, other=0.0),
        )
    else:
        v = tl.load(
            src_ptr + image * C * OHW + _offset_in_image(q2, c2, C, OHW, CHANNELS_LAST),
            mask=mask,
            other=0.0,
        )
    _, z = _normalise(v, mean, rstd, bias, weight, HAS_WEIGHT)
    y = _activation_fwd(z, alpha, inv_alpha, ACT)
    dst = y_ptr + image * C * OHW + _offset_in_image(q2, c2, C, OHW, CHANNELS_LAST)
    tl.store(dst, y.to(y_ptr.dtype.element_ty), mask=mask)
