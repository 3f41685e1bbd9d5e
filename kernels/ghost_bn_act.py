"""Ghost batch norm with optional frozen scale, fused with an optional 2×2 max-pool before it
and an activation after it.

The op, for ``x`` (B, C, H, W):
  1. ``pool=True``: 2×2 max-pool, stride 2 (the seed's "max-pool before BN" site);
  2. training: batch norm with statistics (mean, biased variance) per ghost split of
     B/``splits`` consecutive images; eval: the running statistics;
  3. ``y = x̂ · weight + bias`` where ``weight=None`` means a frozen scale of 1;
  4. ``act``: ``"celu"`` (with ``alpha``), ``"relu"`` or ``None``.
In training the running stats (C entries each) are updated in place with the per-split
statistics averaged over the splits, in PyTorch's momentum convention and with the unbiased
variance; this equals the seed's GhostBatchNorm, which keeps C×splits buffers and averages
them when switching to eval, because the update is linear.
"""

from __future__ import annotations

import functools
from typing import Any

import torch
import torch.nn.functional as F

from kernels._common import (
    LIBRARY_NAMESPACE,
    AotSpec,
    check_tensor,
    compiled,
    interpreting,
    resolve_backend,
    tl,
    triton,
)


__all__ = ["ghost_bn_act", "ghost_bn_act_reference", "ACTIVATIONS", "ghost_bn_act_bytes",
           "aot_specs"]

ACTIVATIONS = ("celu", "relu", None)
X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _activation(y: torch.Tensor, act: str | None, alpha: float) -> torch.Tensor:
    if act == "celu":
        return F.celu(y, alpha=alpha)
    if act == "relu":
        return F.relu(y)
    return y


def ghost_bn_act_reference(
    x: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    splits: int,
    pool: bool = False,
    act: str | None = "celu",
    alpha: float = 0.3,
    eps: float = 1e-5,
    momentum: float = 0.1,
    training: bool = True,
) -> torch.Tensor:
    """Plain-PyTorch ghost BN (+pool, +activation), written to be obviously right.

    ``x`` float32/float16/bfloat16 (B, C, H, W); ``bias``, ``running_mean``, ``running_var``
    and ``weight`` float32 (C,). Statistics are computed in float32; the result has ``x``'s
    dtype and memory format, shape (B, C, H/2, W/2) with ``pool`` else (B, C, H, W).
    """
    if pool:
        x = F.max_pool2d(x, 2)
    batch, channels, height, width = x.shape
    xf = x.float()
    if training:
        groups = xf.reshape(splits, batch // splits, channels, height, width)
        mean = groups.mean(dim=(1, 3, 4), keepdim=True)                 # (S, 1, C, 1, 1)
        centred = groups - mean
        # The biased variance by its definition. (Tensor.var over these strided dims is a
        # slow path on the CPU: ~4x the time of the two means, and it dominated a CPU step.)
        var = (centred * centred).mean(dim=(1, 3, 4), keepdim=True)    # (S, 1, C, 1, 1)
        x_hat = (centred * torch.rsqrt(var + eps)).reshape(batch, channels, height, width)
        with torch.no_grad():
            count = (batch // splits) * height * width
            split_mean = mean.reshape(splits, channels).mean(0)
            split_var = var.reshape(splits, channels).mean(0) * (count / max(count - 1, 1))
            running_mean.lerp_(split_mean, momentum)
            running_var.lerp_(split_var, momentum)
    else:
        x_hat = (xf - running_mean[:, None, None]) * torch.rsqrt(running_var[:, None, None] + eps)
    scale = 1.0 if weight is None else weight[:, None, None]
    y = _activation(x_hat * scale + bias[:, None, None], act, alpha)
    memory_format = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                     and not x.is_contiguous() else torch.contiguous_format)
    return y.to(x.dtype).contiguous(memory_format=memory_format)


def check_ghost_bn_act_inputs(
    x: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    splits: int,
    pool: bool,
    act: str | None,
    alpha: float,
    eps: float,
    momentum: float,
    training: bool,
) -> None:
    """Validate the arguments of :func:`ghost_bn_act`; raise a message naming the culprit."""
    check_tensor("x", x, dtypes=X_DTYPES, ndim=4)
    channels = x.shape[1]
    for name, t in (("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var), ("weight", weight)):
        if t is None:
            continue
        check_tensor(name, t, dtypes=[torch.float32], shape=(channels,), device=x.device)
    if not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive int; got {splits!r}")
    if training and x.shape[0] % splits:
        raise ValueError(
            f"batch size {x.shape[0]} is not divisible by splits={splits}: ghost batch norm "
            "needs equal splits (use a batch that is a multiple of the split count)")
    if pool and (x.shape[2] % 2 or x.shape[3] % 2):
        raise ValueError(f"pool=True needs even H and W; got {tuple(x.shape[2:])}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be 'celu', 'relu' or None; got {act!r}")
    if act == "celu" and not alpha > 0:
        raise ValueError(f"CELU alpha must be positive; got {alpha}")
    if not eps > 0:
        raise ValueError(f"eps must be positive; got {eps}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1]; got {momentum}")


def ghost_bn_act(
    x: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    *,
    weight: torch.Tensor | None = None,
    splits: int,
    pool: bool = False,
    act: str | None = "celu",
    alpha: float = 0.3,
    eps: float = 1e-5,
    momentum: float = 0.1,
    training: bool = True,
    backend: str | None = None,
) -> torch.Tensor:
    """Ghost batch norm (+ optional max-pool before, + activation after); see module docstring.

    Args:
        x: float32/float16/bfloat16 (B, C, H, W), contiguous or channels_last.
        bias: float32 (C,), learnable shift.
        running_mean, running_var: float32 (C,), updated in place when ``training``.
        weight: float32 (C,) learnable scale, or None for a frozen scale of 1.
        splits: number of ghost batches; B must be a multiple of it in training.
        pool: 2×2 max-pool before the normalisation.
        act: "celu", "relu" or None.
        alpha: CELU's alpha.
        eps, momentum: as ``torch.nn.BatchNorm2d``.
        training: use batch statistics and update running stats, else use running stats.
        backend: "eager", "compile", "triton" or None/"auto" (see ``kernels._common``).

    Returns:
        Tensor of ``x``'s dtype and memory format, (B, C, H/2, W/2) with ``pool`` else
        (B, C, H, W). Differentiable in ``x``, ``bias`` and ``weight``.
    """
    kwargs = dict(weight=weight, splits=splits, pool=pool, act=act, alpha=float(alpha),
                  eps=float(eps), momentum=float(momentum), training=bool(training))
    check_ghost_bn_act_inputs(x, bias, running_mean, running_var, **kwargs)
    backend = resolve_backend(backend, x.device)
    if backend == "eager":
        return ghost_bn_act_reference(x, bias, running_mean, running_var, **kwargs)
    if backend == "compile":
        return compiled(ghost_bn_act_reference)(x, bias, running_mean, running_var, **kwargs)
    return _ghost_bn_act_triton(x, bias, running_mean, running_var, **kwargs)


# ============================================================================================
# Triton implementation
# ============================================================================================
#
# Design (memory-bound op: count bytes, touch each byte as few times as possible)
# ---------------------------------------------------------------------------------
# Let N be the elements of x, M those of the normalised tensor (M = N/4 with pool, else N),
# e the bytes of one element of x, S the ghost splits.
#
# Forward, training — three launches:
#   1. ``_ghost_bn_act_fwd_stats_kernel`` reads x once. With pool it takes the 2×2 max in
#      registers and (SAVE_POOL) writes the pooled values (M·e) and the 2-bit window index
#      as one uint8 per pooled element (M bytes); it accumulates per-(split, channel) shifted
#      sums Σ(v−K), Σ(v−K)² in fp32 registers and writes one partial per program to a small
#      (S, n_chunks, C) buffer — no atomics, so the result is deterministic run to run.
#   2. ``_ghost_bn_act_fwd_finalize_kernel`` (a few programs) folds the partials into
#      mean/rstd per (split, channel) and lerps the running stats in place.
#   3. ``_ghost_bn_act_fwd_kernel`` normalises, applies scale/bias/activation, writes y in
#      x's memory format.
#   Why write the pooled tensor instead of re-pooling x in pass 3: re-reading x costs N·e,
#   writing then reading the pooled copy costs 2·(N/4)·e = N·e/2. Keeping it is cheaper
#   even with no backward, and the backward then reads M·e (not N·e) twice and never needs x,
#   so x can be freed after the forward (activation memory drops from N·e to M·e + M bytes).
#   The argmax byte (M bytes written, M read back) is far cheaper than re-reading x (N·e)
#   in the backward to find the winner again. Eval without grad pools on the fly instead
#   (pass 3 reads x directly: N·e + M·e, one launch besides the tiny finalize).
#
# Statistics: fp32 sums of squares cancel catastrophically when |mean| ≫ std. Each
#   (split, channel) shifts by K = x[first image of the split, c, 0, 0], a sample of the same
#   distribution, so |mean−K| is a few std at most and E[(v−K)²] − E[v−K]² loses at most a
#   few bits. Unlike Welford/Chan merging, shifted sums are plain element-wise adds into a
#   register accumulator: the cross-thread reduction happens once per program, not once per
#   tile. Accumulation is fp32 in every thread over its share of the tiles, then a tree sum.
#
# Saved for backward: mean and rstd (S×C fp32 each), bias/weight, and either x (no pool —
#   what any BN backward keeps) or the pooled values + argmax bytes (pool: M·e + M bytes
#   instead of N·e; eager PyTorch keeps x, the pooled tensor and int64 indices).
#   CELU/ReLU derivatives and x̂ are recomputed from those (one FMA chain), never stored.
#
# Backward — three launches, the same shape as the forward:
#   1. ``_ghost_bn_act_bwd_reduce_kernel`` reads v (x or pooled) and dy, recomputes
#      x̂ = (v−mean)·rstd, z = x̂·w + b, g = dy·act'(z) and writes per-program partials of Σg
#      and Σg·x̂.
#   2. ``_ghost_bn_act_bwd_finalize_kernel``: dbias = Σg, dweight = Σg·x̂ over everything,
#      and per (split, channel) the means of g and g·x̂ (zero in eval, where the stats are
#      constants).
#   3. ``_ghost_bn_act_bwd_kernel``: dx = rstd·w·(g − mean(g) − x̂·mean(g·x̂)), routed to the
#      argmax of each 2×2 window with zeros written to the other three (every input element
#      is written exactly once, so dx needs no zero-fill pass).
#
# Layout: a tile is [pixels × channels] of one image. Offsets are written for channels_last
#   (NHWC: channel stride 1) and contiguous NCHW (pixel stride 1) under a constexpr, and the
#   tile is oriented so that the memory-contiguous dimension is always axis 1 — Triton's
#   coalescing then puts consecutive threads (and 16-byte vectors) along it. The trainer
#   runs channels_last, where C (a multiple of 16) gives 128-bit loads; NCHW is supported
#   with vector loads along W when not pooling (stride-2 pairs when pooling). Other strides
#   are copied to contiguous once by the wrapper.
#
# Registration: ``torch.library.custom_op`` ops (not triton_op):
#   * ``cifar_kernels::ghost_bn_stats`` — passes 1+2; mutates running_mean/running_var in
#     place (declared in ``mutates_args``; torch.compile functionalises it) and returns
#     mean, rstd, pooled, argmax, none of which is differentiable. PyTorch refuses autograd
#     formulas on mutating ops, which is why the statistics are their own op, called on
#     ``x.detach()``.
#   * ``cifar_kernels::ghost_bn_act_fwd`` — pass 3, functional, with ``register_autograd``.
#     Its backward is the full BN backward (including the dependence of the batch stats
#     on x), which is right because the wrapper only ever feeds it the stats of the same x.
#   * ``cifar_kernels::ghost_bn_act_bwd`` — backward passes 1–3.


#: Elements per tile of the element-wise and reduction passes (per program iteration).
#: 4096 fp16 over 4 warps = 32 elements = four 16-byte vectors per thread per tensor.
TILE = 4096
#: Pooling kernels hold four input tiles (or do four stores) per output tile: half the tile.
TILE_POOL = 2048
#: Warps per program of the streaming kernels.
NUM_WARPS = 4
#: Block of the finalize kernels: splits × chunks × channels held at once (16 splits in one
#: step, 16 chunks per load so the trainer's ≤64 partials per split take ≤4 dependent loads),
#: over 8 warps: 4 warps need ~170 registers and ptxas spills (sm_90 / sm_80).
FIN_BLOCK_S, FIN_BLOCK_K, FIN_BLOCK_C = 16, 16, 16
FIN_NUM_WARPS = 8
#: Largest channel block of a channels_last tile (one warp spans 256 fp16 = 512 bytes).
MAX_BLOCK_C = 256
#: SM count assumed by :func:`aot_specs` and :func:`ghost_bn_act_bytes` (H100 SXM).
NOMINAL_SMS = 132
#: Reduction programs per SM the chunking aims for (enough bytes in flight per SM).
PROGRAMS_PER_SM = 8
#: Fewest pixel rows a reduction program covers (bounds the partials' traffic).
MIN_ROWS_PER_PROG = 64

_ACT_CODES = {"none": 0, "relu": 1, "celu": 2}


# --------------------------------------------------------------------------------------------
# Small @jit helpers (inlined)
# --------------------------------------------------------------------------------------------


@triton.jit
def _grid_2d(q, c, CHANNELS_LAST: tl.constexpr):
    """Pixel and channel index vectors as a 2-D tile with the contiguous memory dim on axis 1."""
    if CHANNELS_LAST:
        q2 = q[:, None]
        c2 = c[None, :]
    else:
        q2 = q[None, :]
        c2 = c[:, None]
    return q2, c2


@triton.jit
def _per_channel(v, CHANNELS_LAST: tl.constexpr):
    """A (BLOCK_C,) per-channel vector broadcastable against a tile."""
    if CHANNELS_LAST:
        out = v[None, :]
    else:
        out = v[:, None]
    return out


@triton.jit
def _sum_pixels(t, CHANNELS_LAST: tl.constexpr):
    """Sum a tile over its pixel axis → (BLOCK_C,)."""
    if CHANNELS_LAST:
        out = tl.sum(t, axis=0)
    else:
        out = tl.sum(t, axis=1)
    return out


@triton.jit
def _zero_tile(BLOCK_Q: tl.constexpr, BLOCK_C: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    if CHANNELS_LAST:
        out = tl.zeros([BLOCK_Q, BLOCK_C], tl.float32)
    else:
        out = tl.zeros([BLOCK_C, BLOCK_Q], tl.float32)
    return out


@triton.jit
def _offset_in_image(pix, c, C, HW, CHANNELS_LAST: tl.constexpr):
    """Element offset of (channel c, pixel pix) inside one image of HW pixels.

    An image occupies the same C·HW elements in both layouts, so only this part differs.
    """
    if CHANNELS_LAST:
        off = pix * C + c
    else:
        off = c * HW + pix
    return off


@triton.jit
def _pixel_step(C, CHANNELS_LAST: tl.constexpr):
    """Element distance between horizontally adjacent pixels."""
    if CHANNELS_LAST:
        step = C
    else:
        step = 1
    return step


@triton.jit
def _window_corner(q, OW, W):
    """Input pixel index of the top-left corner of pooled pixel q's 2×2 window."""
    oh = q // OW
    return 2 * oh * W + 2 * (q - oh * OW)


@triton.jit
def _max_pool_2x2(v0, v1, v2, v3):
    """Max of a 2×2 window (v0 v1 / v2 v3) and its row-major index, by PyTorch's rule.

    F.max_pool2d (CPU and CUDA, NCHW and NHWC kernels) scans the window row by row and takes
    a value when ``val > max || isnan(val)``: the first maximum wins ties (fp16 ties are
    common) and a NaN wins (the last one). The comparison runs in fp32: exact for every input
    dtype, and Triton's interpreter compares bf16 as raw bits (wrong for negatives).
    Returns the max as fp32 and the index as int32.
    """
    v0 = v0.to(tl.float32)
    v1 = v1.to(tl.float32)
    v2 = v2.to(tl.float32)
    v3 = v3.to(tl.float32)
    take = (v1 > v0) | (v1 != v1)
    m = tl.where(take, v1, v0)
    idx = tl.where(take, 1, 0)
    take = (v2 > m) | (v2 != v2)
    m = tl.where(take, v2, m)
    idx = tl.where(take, 2, idx)
    take = (v3 > m) | (v3 != v3)
    m = tl.where(take, v3, m)
    idx = tl.where(take, 3, idx)
    return m, idx


@triton.jit
def _normalise(v, mean, rstd, bias, weight, HAS_WEIGHT: tl.constexpr):
    """x̂ and z = x̂·w + b in fp32; the forward and the backward use this same sequence, so
    the activation's branch (z > 0) is decided identically in both."""
    xhat = (v.to(tl.float32) - mean) * rstd
    if HAS_WEIGHT:
        z = xhat * weight + bias
    else:
        z = xhat + bias
    return xhat, z


@triton.jit
def _activation_fwd(z, alpha, inv_alpha, ACT: tl.constexpr):
    """ACT 0: identity; 1: ReLU; 2: CELU(alpha) = z if z > 0 else alpha·(exp(z/alpha) − 1)."""
    if ACT == 1:
        out = tl.where(z < 0.0, 0.0, z)  # NaN passes through, as torch.relu
    elif ACT == 2:
        # exp of a large positive z overflows to inf in the discarded branch only: harmless.
        out = tl.where(z > 0.0, z, alpha * (tl.exp(z * inv_alpha) - 1.0))
    else:
        out = z
    return out


@triton.jit
def _activation_bwd(dy, z, inv_alpha, ACT: tl.constexpr):
    """dL/dz from dL/dy, PyTorch's conventions: ReLU passes where z > 0; CELU's slope is 1
    for z > 0 and exp(z/alpha) otherwise (elu_backward on the input)."""
    if ACT == 1:
        g = tl.where(z > 0.0, dy, 0.0)
    elif ACT == 2:
        g = tl.where(z > 0.0, dy, dy * tl.exp(z * inv_alpha))
    else:
        g = dy
    return g


# --------------------------------------------------------------------------------------------
# Forward kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _ghost_bn_act_fwd_stats_kernel(
    x_ptr,          # *x.dtype  x (B, C, H, W), channels_last or contiguous (CHANNELS_LAST)
    pooled_ptr,     # *x.dtype  out (B, C, H/2, W/2) in x's layout, when SAVE_POOL
    argmax_ptr,     # *u8       out (B, C, H/2, W/2): window index 0..3 (row-major), SAVE_POOL
    psum_ptr,       # *fp32     out (S, n_chunks, C): Σ(v − K) per program, when STATS
    psq_ptr,        # *fp32     out (S, n_chunks, C): Σ(v − K)², when STATS
    C,              # i32 channels
    HW,             # i32 H·W, pixels of one input image
    W,              # i32 input width
    OHW,            # i32 pixels of one normalised image (H/2·W/2 with POOL, else HW)
    OW,             # i32 normalised width
    G,              # i32 images per ghost split
    tiles_per_prog,  # i32 tiles of BLOCK_Q pixels × BLOCK_C channels each program reduces
    POOL: tl.constexpr,           # 2×2 max-pool x first
    STATS: tl.constexpr,          # accumulate the shifted sums (training)
    SAVE_POOL: tl.constexpr,      # write pooled values and argmax for pass 3 and backward
    CHANNELS_LAST: tl.constexpr,  # x's layout
    BLOCK_Q: tl.constexpr,        # pixels per tile (power of 2)
    BLOCK_C: tl.constexpr,        # channels per tile (power of 2)
    ARGMAX_VEC: tl.constexpr,     # x elements per 16 bytes (capped by the tile's fast dim)
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
        shift = tl.load(x_ptr + first_image.to(tl.int64) * C * HW
                        + _offset_in_image(0, c, C, HW, CHANNELS_LAST), mask=c_ok, other=0.0)
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
                tl.store(argmax_ptr + tl.max_contiguous(dst, [1, ARGMAX_VEC]), idx.to(tl.uint8),
                         mask=mask)
        else:
            v = tl.load(x_ptr + image * C * HW + _offset_in_image(q2, c2, C, HW, CHANNELS_LAST),
                        mask=mask, other=0.0)
        if STATS:
            d = tl.where(mask, v.to(tl.float32) - shift, 0.0)
            acc_sum += d
            acc_sq += d * d
    if STATS:
        part = (split * n_chunks + chunk) * C + c
        tl.store(psum_ptr + part, _sum_pixels(acc_sum, CHANNELS_LAST), mask=c_ok)
        tl.store(psq_ptr + part, _sum_pixels(acc_sq, CHANNELS_LAST), mask=c_ok)


@triton.jit
def _sum_partials(pa_ptr, pb_ptr, s3, k_lane, c3, S, n_chunks, C, BLOCK_S: tl.constexpr,
                  BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr):
    """Second stage of the deterministic two-stage reductions: add up two (S, n_chunks, C)
    fp32 partial arrays over their chunks for the splits ``s3`` (BLOCK_S, 1, 1) and channels
    ``c3`` (1, 1, BLOCK_C); returns two (BLOCK_S, BLOCK_C) fp32 totals, always in the same
    order (no atomics), so a step's statistics do not depend on scheduling."""
    total_a = tl.zeros([BLOCK_S, BLOCK_C], tl.float32)
    total_b = tl.zeros([BLOCK_S, BLOCK_C], tl.float32)
    for k0 in range(0, n_chunks, BLOCK_K):
        k3 = (k0 + k_lane)[None, :, None]
        ok3 = (s3 < S) & (k3 < n_chunks) & (c3 < C)
        off = (s3 * n_chunks + k3) * C + c3
        total_a += tl.sum(tl.load(pa_ptr + off, mask=ok3, other=0.0), axis=1)
        total_b += tl.sum(tl.load(pb_ptr + off, mask=ok3, other=0.0), axis=1)
    return total_a, total_b


@triton.jit
def _ghost_bn_act_fwd_finalize_kernel(
    psum_ptr,         # *fp32     (S, n_chunks, C) partial Σ(v − K) from pass 1
    psq_ptr,          # *fp32     (S, n_chunks, C) partial Σ(v − K)²
    x_ptr,            # *x.dtype  x, only to reload the shifts K = x[s·G, c, 0, 0]
    mean_ptr,         # *fp32     out (S, C) batch mean per split (running mean in eval)
    rstd_ptr,         # *fp32     out (S, C) 1/sqrt(var + eps)
    running_mean_ptr,  # *fp32    (C,) updated in place when TRAINING
    running_var_ptr,  # *fp32     (C,) updated in place when TRAINING (unbiased variance)
    C,                # i32 channels
    S,                # i32 splits
    n_chunks,         # i32 partials per split
    G,                # i32 images per split
    CHW,              # i32 elements per image of x (C·H·W)
    chan_stride,      # i32 element stride of x's channel dim (1 channels_last, H·W NCHW)
    inv_count,        # fp32 1 / elements per (split, channel)
    unbias,           # fp32 count / (count − 1): biased → unbiased variance
    eps,              # fp32
    momentum,         # fp32 running = running + momentum·(batch − running)
    TRAINING: tl.constexpr,  # batch stats (else mean/rstd from the running stats)
    BLOCK_S: tl.constexpr,   # splits per step
    BLOCK_K: tl.constexpr,   # chunks per step
    BLOCK_C: tl.constexpr,   # channels per program
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
            total, total_sq = _sum_partials(psum_ptr, psq_ptr, s3, k_lane, c3, S, n_chunks, C,
                                            BLOCK_S, BLOCK_K, BLOCK_C)
            s2 = s[:, None]
            c2 = c[None, :]
            ok2 = (s2 < S) & (c2 < C)
            shift = tl.load(x_ptr + (s2 * G).to(tl.int64) * CHW + c2 * chan_stride,
                            mask=ok2, other=0.0).to(tl.float32)
            d = total * inv_count                      # E[v − K]
            mean = shift + d
            var = tl.maximum(total_sq * inv_count - d * d, 0.0)  # biased, as BN normalises
            tl.store(mean_ptr + s2 * C + c2, mean, mask=ok2)
            tl.store(rstd_ptr + s2 * C + c2, tl.rsqrt(var + eps), mask=ok2)
            mean_total += tl.sum(tl.where(ok2, mean, 0.0), axis=0)
            var_total += tl.sum(tl.where(ok2, var, 0.0), axis=0)
        new_mean = mean_total / S
        new_var = var_total / S * unbias
        tl.store(running_mean_ptr + c, running_mean + momentum * (new_mean - running_mean),
                 mask=c_ok)
        tl.store(running_var_ptr + c, running_var + momentum * (new_var - running_var),
                 mask=c_ok)
    else:
        tl.store(mean_ptr + c, running_mean, mask=c_ok)
        tl.store(rstd_ptr + c, tl.rsqrt(running_var + eps), mask=c_ok)


@triton.jit
def _ghost_bn_act_fwd_kernel(
    src_ptr,     # *x.dtype  x (B, C, H, W) when POOL, else the values to normalise
                 #           (B, C, OH, OW): x itself or the pooled copy from pass 1
    y_ptr,       # *x.dtype  out (B, C, OH, OW), same layout as src
    mean_ptr,    # *fp32     (S, C)
    rstd_ptr,    # *fp32     (S, C)
    bias_ptr,    # *fp32     (C,)
    weight_ptr,  # *fp32     (C,) read only when HAS_WEIGHT (else any valid pointer)
    C,           # i32 channels
    HW,          # i32 pixels of one src image when POOL (unused otherwise)
    W,           # i32 src width when POOL (unused otherwise)
    OHW,         # i32 pixels of one output image
    OW,          # i32 output width
    G,           # i32 images per split (B in eval)
    alpha,       # fp32 CELU alpha
    inv_alpha,   # fp32 1 / alpha
    POOL: tl.constexpr,           # pool on the fly (eval without grad: nothing saved)
    ACT: tl.constexpr,            # 0 none, 1 relu, 2 celu
    HAS_WEIGHT: tl.constexpr,     # learnable scale (else frozen at 1)
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
        v, _ = _max_pool_2x2(tl.load(src, mask=mask, other=0.0),
                             tl.load(src + step, mask=mask, other=0.0),
                             tl.load(src + W * step, mask=mask, other=0.0),
                             tl.load(src + (W + 1) * step, mask=mask, other=0.0))
    else:
        v = tl.load(src_ptr + image * C * OHW + _offset_in_image(q2, c2, C, OHW, CHANNELS_LAST),
                    mask=mask, other=0.0)
    _, z = _normalise(v, mean, rstd, bias, weight, HAS_WEIGHT)
    y = _activation_fwd(z, alpha, inv_alpha, ACT)
    dst = y_ptr + image * C * OHW + _offset_in_image(q2, c2, C, OHW, CHANNELS_LAST)
    tl.store(dst, y.to(y_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# Backward kernels
# --------------------------------------------------------------------------------------------


@triton.jit
def _ghost_bn_act_bwd_reduce_kernel(
    src_ptr,     # *x.dtype  (B, C, OH, OW) the normalised values: x, or pooled when pooling
    dy_ptr,      # *x.dtype  (B, C, OH, OW) grad of y, same layout
    mean_ptr,    # *fp32     (S, C)
    rstd_ptr,    # *fp32     (S, C)
    bias_ptr,    # *fp32     (C,)
    weight_ptr,  # *fp32     (C,) when HAS_WEIGHT
    pg_ptr,      # *fp32     out (S, n_chunks, C) partial Σ g,  g = dL/dz
    pgx_ptr,     # *fp32     out (S, n_chunks, C) partial Σ g·x̂
    C,           # i32 channels
    OHW,         # i32 pixels per image
    G,           # i32 images per split
    tiles_per_prog,  # i32
    inv_alpha,   # fp32 1 / CELU alpha
    ACT: tl.constexpr,
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
    pg_ptr,         # *fp32 (S, n_chunks, C) partial Σ g
    pgx_ptr,        # *fp32 (S, n_chunks, C) partial Σ g·x̂
    mean_g_ptr,     # *fp32 out (S, C) mean of g per split (0 when not TRAINING)
    mean_gx_ptr,    # *fp32 out (S, C) mean of g·x̂ per split (0 when not TRAINING)
    dbias_ptr,      # *fp32 out (C,) Σ g
    dweight_ptr,    # *fp32 out (C,) Σ g·x̂
    C,              # i32 channels
    S,              # i32 splits
    n_chunks,       # i32 partials per split
    inv_count,      # fp32 1 / elements per (split, channel)
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
        total_g, total_gx = _sum_partials(pg_ptr, pgx_ptr, s3, k_lane, c3, S, n_chunks, C,
                                          BLOCK_S, BLOCK_K, BLOCK_C)
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
            tl.store(mean_gx_ptr + s2 * C + c2, tl.zeros([BLOCK_S, BLOCK_C], tl.float32),
                     mask=ok2)
    tl.store(dbias_ptr + c, dbias, mask=c_ok)
    tl.store(dweight_ptr + c, dweight, mask=c_ok)


@triton.jit
def _ghost_bn_act_bwd_kernel(
    src_ptr,      # *x.dtype  (B, C, OH, OW) the normalised values (x, or pooled)
    dy_ptr,       # *x.dtype  (B, C, OH, OW) grad of y
    argmax_ptr,   # *u8       (B, C, OH, OW) window index, read when POOL
    dx_ptr,       # *x.dtype  out (B, C, H, W) grad of x (H = 2·OH with POOL)
    mean_ptr,     # *fp32     (S, C)
    rstd_ptr,     # *fp32     (S, C)
    bias_ptr,     # *fp32     (C,)
    weight_ptr,   # *fp32     (C,) when HAS_WEIGHT
    mean_g_ptr,   # *fp32     (S, C) mean of g per split (zeros in eval)
    mean_gx_ptr,  # *fp32     (S, C) mean of g·x̂ per split (zeros in eval)
    C,            # i32 channels
    HW,           # i32 pixels of one dx image
    W,            # i32 dx width
    OHW,          # i32 pixels of one src image
    OW,           # i32 src width
    G,            # i32 images per split
    inv_alpha,    # fp32 1 / CELU alpha
    POOL: tl.constexpr,  # scatter through the 2×2 argmax
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
    v = tl.load(src_ptr + off, mask=mask, other=0.0)
    dy = tl.load(dy_ptr + off, mask=mask, other=0.0).to(tl.float32)
    xhat, z = _normalise(v, mean, rstd, bias, weight, HAS_WEIGHT)
    g = _activation_bwd(dy, z, inv_alpha, ACT)
    # dx̂ = g·w;  dx = rstd·(dx̂ − mean(dx̂) − x̂·mean(dx̂·x̂)) = rstd·w·(g − ḡ − x̂·mean(g·x̂))
    dv = (scale * (g - mean_g - xhat * mean_gx)).to(dx_ptr.dtype.element_ty)
    if POOL:
        which = tl.load(argmax_ptr + tl.max_contiguous(off, [1, ARGMAX_VEC]), mask=mask, other=0)
        p2, c2 = _grid_2d(_window_corner(q, OW, W), c, CHANNELS_LAST)
        dst = dx_ptr + image * C * HW + _offset_in_image(p2, c2, C, HW, CHANNELS_LAST)
        step = _pixel_step(C, CHANNELS_LAST)
        zero = tl.zeros_like(dv)
        # All four window positions are written, so dx needs no separate zero fill.
        tl.store(dst, tl.where(which == 0, dv, zero), mask=mask)
        tl.store(dst + step, tl.where(which == 1, dv, zero), mask=mask)
        tl.store(dst + W * step, tl.where(which == 2, dv, zero), mask=mask)
        tl.store(dst + (W + 1) * step, tl.where(which == 3, dv, zero), mask=mask)
    else:
        tl.store(dx_ptr + image * C * HW + _offset_in_image(q2, c2, C, HW, CHANNELS_LAST), dv,
                 mask=mask)


# --------------------------------------------------------------------------------------------
# Launch planning (shared by the launchers, aot_specs and ghost_bn_act_bytes)
# --------------------------------------------------------------------------------------------


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


def _tile_shape(channels: int, pixels: int, channels_last: bool, tile: int) -> tuple[int, int]:
    """(BLOCK_Q, BLOCK_C) of a tile of ≤ ``tile`` elements.

    channels_last: channels are contiguous, so take as many as possible (up to
    MAX_BLOCK_C) — with C a multiple of 8 every thread gets whole 16-byte vectors — and fill
    the tile with pixels (consecutive pixels are C elements apart, so rows of a tile are
    contiguous too). NCHW: pixels are contiguous; take them first.
    """
    if channels_last:
        block_c = min(_next_pow2(channels), MAX_BLOCK_C, tile)
        block_q = max(1, min(_next_pow2(pixels), tile // block_c))
    else:
        block_q = min(_next_pow2(pixels), tile)
        block_c = max(1, min(_next_pow2(channels), tile // block_q))
    return block_q, block_c


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _target_programs(device: torch.device | None) -> int:
    """How many programs a reduction pass should have in all.

    On a GPU: PROGRAMS_PER_SM per SM, so every SM keeps several programs' loads in flight.
    Under the interpreter each program costs ~3 ms, so only a few — still more than one per
    split and channel block when the tensor allows, which exercises the two-stage reduction.
    """
    if device is not None and device.type == "cuda":
        return PROGRAMS_PER_SM * _sm_count(device.index if device.index is not None
                                           else torch.cuda.current_device())
    if device is None:
        return PROGRAMS_PER_SM * NOMINAL_SMS
    return 4


def _chunking(tiles_per_split: int, splits: int, channel_blocks: int, target_programs: int,
              block_q: int) -> tuple[int, int]:
    """(tiles_per_prog, n_chunks) for a reduction pass over ``splits × channel_blocks``.

    Each program writes 2 × BLOCK_C fp32 partials for tiles_per_prog · BLOCK_Q · BLOCK_C
    elements it reads; at least MIN_ROWS_PER_PROG pixel rows per program keep that overhead
    ≤ 8 / (64 · e) (6 % for fp16, and L2-resident) when the images are tiny (res3: 4×4).
    """
    wanted = max(1, target_programs // max(1, splits * channel_blocks))
    tiles_per_prog = max(1, _cdiv(tiles_per_split, wanted), _cdiv(MIN_ROWS_PER_PROG, block_q))
    tiles_per_prog = min(tiles_per_prog, max(1, tiles_per_split))
    return tiles_per_prog, max(1, _cdiv(tiles_per_split, tiles_per_prog))


def _argmax_vec(element_size: int, block_q: int, block_c: int, channels_last: bool) -> int:
    """x elements per 16-byte vector, capped by the tile's contiguous dimension."""
    return max(1, min(16 // element_size, block_c if channels_last else block_q))


def _is_channels_last(x: torch.Tensor) -> bool:
    """Kernel layout of x: channels_last unless x is (also) plain contiguous — the same rule
    as the reference's output format, and the only ambiguity (C == 1 or H·W == 1) is one
    where both layouts are the same memory."""
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


def _supported_layout(x: torch.Tensor) -> torch.Tensor:
    """x itself when contiguous or channels_last; otherwise a contiguous copy (one extra pass,
    only for exotic strides — the trainer's tensors never take it)."""
    if x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last):
        return x
    return x.contiguous()


def _memory_format(channels_last: bool) -> torch.memory_format:
    return torch.channels_last if channels_last else torch.contiguous_format


def _launch_ok(*grid: int) -> bool:
    return all(g > 0 for g in grid)


# --------------------------------------------------------------------------------------------
# Op implementations (run the kernels)
# --------------------------------------------------------------------------------------------


def _require_kernel_device(t: torch.Tensor) -> None:
    if t.device.type != "cuda" and not interpreting():
        raise RuntimeError(
            f"the Triton ghost_bn_act kernels need CUDA tensors, got {t.device}: set "
            "TRITON_INTERPRET=1 before importing kernels to run them on the CPU interpreter")


def _pooled_buffers(x: torch.Tensor, save: bool,
                    channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if not save:
        return x.new_empty((0,)), x.new_empty((0,), dtype=torch.uint8)
    b, c, h, w = x.shape
    fmt = _memory_format(channels_last)
    return (torch.empty((b, c, h // 2, w // 2), dtype=x.dtype, device=x.device,
                        memory_format=fmt),
            torch.empty((b, c, h // 2, w // 2), dtype=torch.uint8, device=x.device,
                        memory_format=fmt))


def _stats_impl(x: torch.Tensor, running_mean: torch.Tensor, running_var: torch.Tensor,
                splits: int, pool: bool, save_pool: bool, eps: float, momentum: float,
                training: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _require_kernel_device(x)
    if not (running_mean.is_contiguous() and running_var.is_contiguous()):
        raise ValueError("running_mean and running_var must be contiguous: they are updated in "
                         "place by the kernel")
    x = _supported_layout(x)
    channels_last = _is_channels_last(x)
    batch, channels, height, width = x.shape
    if pool and (height % 2 or width % 2):
        raise ValueError(f"pool=True needs even H and W; got {(height, width)}")
    splits = splits if training else 1
    if splits < 1 or batch % splits:
        raise ValueError(f"batch {batch} is not divisible by splits={splits}")
    out_h, out_w = (height // 2, width // 2) if pool else (height, width)
    per_split = batch // splits
    mean = torch.empty((splits, channels), dtype=torch.float32, device=x.device)
    rstd = torch.empty_like(mean)
    pooled, argmax = _pooled_buffers(x, pool and save_pool, channels_last)
    count = per_split * out_h * out_w
    n_chunks = 1
    partial_sum = partial_sq = mean  # placeholders when pass 1 accumulates nothing
    if training or (pool and save_pool):
        tile = TILE_POOL if pool else TILE
        block_q, block_c = _tile_shape(channels, out_h * out_w, channels_last, tile)
        channel_blocks = _cdiv(channels, block_c)
        tiles = per_split * _cdiv(out_h * out_w, block_q)
        tiles_per_prog, n_chunks = _chunking(tiles, splits, channel_blocks,
                                             _target_programs(x.device), block_q)
        if training:
            partial_sum = torch.empty((splits, n_chunks, channels), dtype=torch.float32,
                                      device=x.device)
            partial_sq = torch.empty_like(partial_sum)
        if _launch_ok(n_chunks, splits, channel_blocks, tiles):
            _ghost_bn_act_fwd_stats_kernel[(n_chunks, splits, channel_blocks)](
                x, pooled if pool and save_pool else x,
                argmax if pool and save_pool else running_mean,
                partial_sum, partial_sq,
                channels, height * width, width, out_h * out_w, out_w, per_split,
                tiles_per_prog,
                POOL=pool, STATS=training, SAVE_POOL=pool and save_pool,
                CHANNELS_LAST=channels_last, BLOCK_Q=block_q, BLOCK_C=block_c,
                ARGMAX_VEC=_argmax_vec(x.element_size(), block_q, block_c, channels_last),
                num_warps=NUM_WARPS)
    if _launch_ok(channels):
        _ghost_bn_act_fwd_finalize_kernel[(_cdiv(channels, FIN_BLOCK_C),)](
            partial_sum, partial_sq, x, mean, rstd, running_mean, running_var,
            channels, splits, n_chunks, per_split, channels * height * width,
            1 if channels_last else height * width,
            1.0 / max(count, 1), count / max(count - 1, 1), eps, momentum,
            TRAINING=training, BLOCK_S=FIN_BLOCK_S, BLOCK_K=FIN_BLOCK_K, BLOCK_C=FIN_BLOCK_C,
            num_warps=FIN_NUM_WARPS)
    return mean, rstd, pooled, argmax


def _fwd_impl(x: torch.Tensor, pooled: torch.Tensor, mean: torch.Tensor, rstd: torch.Tensor,
              bias: torch.Tensor, weight: torch.Tensor | None, pool: bool, act: str,
              alpha: float) -> torch.Tensor:
    _require_kernel_device(x)
    x = _supported_layout(x)
    channels_last = _is_channels_last(x)
    batch, channels, height, width = x.shape
    out_h, out_w = (height // 2, width // 2) if pool else (height, width)
    pool_now = pool and pooled.numel() == 0
    src = pooled if pool and not pool_now else x
    bias = bias.contiguous()
    weight = None if weight is None else weight.contiguous()
    splits = mean.shape[0]
    if batch % splits:
        raise ValueError(f"batch {batch} is not divisible by the {splits} splits of mean")
    y = torch.empty((batch, channels, out_h, out_w), dtype=x.dtype, device=x.device,
                    memory_format=_memory_format(channels_last))
    block_q, block_c = _tile_shape(channels, out_h * out_w, channels_last,
                                   TILE_POOL if pool_now else TILE)
    grid = (batch * _cdiv(out_h * out_w, block_q), _cdiv(channels, block_c))
    if _launch_ok(*grid):
        _ghost_bn_act_fwd_kernel[grid](
            src, y, mean, rstd, bias, bias if weight is None else weight,
            channels, height * width, width, out_h * out_w, out_w, batch // splits,
            alpha, 1.0 / alpha,
            POOL=pool_now, ACT=_ACT_CODES[act], HAS_WEIGHT=weight is not None,
            CHANNELS_LAST=channels_last, BLOCK_Q=block_q, BLOCK_C=block_c,
            num_warps=NUM_WARPS)
    return y


def _bwd_impl(dy: torch.Tensor, src: torch.Tensor, argmax: torch.Tensor, mean: torch.Tensor,
              rstd: torch.Tensor, bias: torch.Tensor, weight: torch.Tensor | None, pool: bool,
              channels_last: bool, act: str, alpha: float,
              training: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _require_kernel_device(src)
    if pool and (src.dim() != 4 or argmax.shape != src.shape):
        raise RuntimeError("ghost_bn_act backward with pool needs the pooled values and argmax "
                           "saved by the forward (it ran with save_pool=False)")
    bias = bias.contiguous()
    weight = None if weight is None else weight.contiguous()
    fmt = _memory_format(channels_last)
    src = src.contiguous(memory_format=fmt)
    # Autograd may hand over any strides (an expanded ones tensor from .sum(), say).
    dy = dy.to(src.dtype).contiguous(memory_format=fmt)
    batch, channels, out_h, out_w = src.shape
    height, width = (2 * out_h, 2 * out_w) if pool else (out_h, out_w)
    splits = mean.shape[0]
    per_split = batch // splits
    count = per_split * out_h * out_w
    has_weight = weight is not None
    act_code = _ACT_CODES[act]
    device = src.device

    block_q, block_c = _tile_shape(channels, out_h * out_w, channels_last, TILE)
    channel_blocks = _cdiv(channels, block_c)
    tiles = per_split * _cdiv(out_h * out_w, block_q)
    tiles_per_prog, n_chunks = _chunking(tiles, splits, channel_blocks, _target_programs(device),
                                         block_q)
    partial_g = torch.zeros((splits, n_chunks, channels), dtype=torch.float32, device=device)
    partial_gx = torch.zeros_like(partial_g)
    if _launch_ok(tiles, channel_blocks):
        _ghost_bn_act_bwd_reduce_kernel[(n_chunks, splits, channel_blocks)](
            src, dy, mean, rstd, bias, bias if weight is None else weight,
            partial_g, partial_gx, channels, out_h * out_w, per_split, tiles_per_prog,
            1.0 / alpha,
            ACT=act_code, HAS_WEIGHT=has_weight, CHANNELS_LAST=channels_last,
            BLOCK_Q=block_q, BLOCK_C=block_c, num_warps=NUM_WARPS)

    mean_g = torch.empty((splits, channels), dtype=torch.float32, device=device)
    mean_gx = torch.empty_like(mean_g)
    dbias = torch.empty((channels,), dtype=torch.float32, device=device)
    dweight = torch.empty_like(dbias)
    if _launch_ok(channels):
        _ghost_bn_act_bwd_finalize_kernel[(_cdiv(channels, FIN_BLOCK_C),)](
            partial_g, partial_gx, mean_g, mean_gx, dbias, dweight,
            channels, splits, n_chunks, 1.0 / max(count, 1),
            TRAINING=training, BLOCK_S=FIN_BLOCK_S, BLOCK_K=FIN_BLOCK_K, BLOCK_C=FIN_BLOCK_C,
            num_warps=FIN_NUM_WARPS)

    dx = torch.empty((batch, channels, height, width), dtype=src.dtype, device=device,
                     memory_format=fmt)
    block_q, block_c = _tile_shape(channels, out_h * out_w, channels_last,
                                   TILE_POOL if pool else TILE)
    grid = (batch * _cdiv(out_h * out_w, block_q), _cdiv(channels, block_c))
    if _launch_ok(*grid):
        _ghost_bn_act_bwd_kernel[grid](
            src, dy, argmax if pool else mean, dx, mean, rstd, bias,
            bias if weight is None else weight, mean_g, mean_gx,
            channels, height * width, width, out_h * out_w, out_w, per_split, 1.0 / alpha,
            POOL=pool, ACT=act_code, HAS_WEIGHT=has_weight, CHANNELS_LAST=channels_last,
            BLOCK_Q=block_q, BLOCK_C=block_c,
            ARGMAX_VEC=_argmax_vec(src.element_size(), block_q, block_c, channels_last),
            num_warps=NUM_WARPS)
    return dx, dbias, dweight


# --------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------

_NS = LIBRARY_NAMESPACE

ghost_bn_stats_op = torch.library.custom_op(
    f"{_NS}::ghost_bn_stats", _stats_impl, mutates_args=("running_mean", "running_var"),
    schema="(Tensor x, Tensor(a!) running_mean, Tensor(b!) running_var, int splits, "
           "bool pool, bool save_pool, float eps, float momentum, bool training) "
           "-> (Tensor, Tensor, Tensor, Tensor)")
"""Passes 1–2: (mean, rstd, pooled, argmax); running stats lerped in place in training.

mean/rstd are (S, C) fp32 (S = splits in training, 1 in eval: then they come from the
running stats). pooled (x's dtype and layout) and argmax (uint8) are (B, C, H/2, W/2) when
``pool and save_pool``, else empty. No autograd: call it on ``x.detach()``."""


@ghost_bn_stats_op.register_fake
def _stats_fake(x, running_mean, running_var, splits, pool, save_pool, eps, momentum, training):
    x = _supported_layout(x)
    splits = splits if training else 1
    channels = x.shape[1]
    mean = x.new_empty((splits, channels), dtype=torch.float32)
    pooled, argmax = _pooled_buffers(x, pool and save_pool, _is_channels_last(x))
    return mean, torch.empty_like(mean), pooled, argmax


def _fwd_op_impl(x, pooled, argmax, mean, rstd, bias, weight, pool, act, alpha, training):
    return _fwd_impl(x, pooled, mean, rstd, bias, weight, pool, act, alpha)


ghost_bn_act_fwd_op = torch.library.custom_op(
    f"{_NS}::ghost_bn_act_fwd", _fwd_op_impl, mutates_args=(),
    schema="(Tensor x, Tensor pooled, Tensor argmax, Tensor mean, Tensor rstd, Tensor bias, "
           "Tensor? weight, bool pool, str act, float alpha, bool training) -> Tensor")
"""Pass 3: y from x (or its pooled copy) and the stats of ``ghost_bn_stats``. Differentiable
in x, bias and weight; ``argmax`` and ``training`` are only kept for the backward."""


@ghost_bn_act_fwd_op.register_fake
def _fwd_fake(x, pooled, argmax, mean, rstd, bias, weight, pool, act, alpha, training):
    x = _supported_layout(x)
    b, c, h, w = x.shape
    if pool:
        h, w = h // 2, w // 2
    return torch.empty((b, c, h, w), dtype=x.dtype, device=x.device,
                       memory_format=_memory_format(_is_channels_last(x)))


def _bwd_op_impl(dy, src, argmax, mean, rstd, bias, weight, pool, channels_last, act, alpha,
                 training):
    return _bwd_impl(dy, src, argmax, mean, rstd, bias, weight, pool, channels_last, act,
                     alpha, training)


ghost_bn_act_bwd_op = torch.library.custom_op(
    f"{_NS}::ghost_bn_act_bwd", _bwd_op_impl, mutates_args=(),
    schema="(Tensor dy, Tensor src, Tensor argmax, Tensor mean, Tensor rstd, Tensor bias, "
           "Tensor? weight, bool pool, bool channels_last, str act, float alpha, "
           "bool training) -> (Tensor, Tensor, Tensor)")
"""Backward passes 1–3: (dx, dbias, dweight). ``src`` is x, or the pooled values when
``pool`` (then ``argmax`` routes dx); dweight is Σ g·x̂ even when weight is None."""


@ghost_bn_act_bwd_op.register_fake
def _bwd_fake(dy, src, argmax, mean, rstd, bias, weight, pool, channels_last, act, alpha,
              training):
    b, c, h, w = src.shape
    if pool:
        h, w = 2 * h, 2 * w
    dx = torch.empty((b, c, h, w), dtype=src.dtype, device=src.device,
                     memory_format=_memory_format(channels_last))
    return dx, bias.new_empty((c,)), bias.new_empty((c,))


def _fwd_setup_context(ctx, inputs, output):
    x, pooled, argmax, mean, rstd, bias, weight, pool, act, alpha, training = inputs
    # With pool only the pooled copy and the argmax bytes are kept: x itself can be freed.
    ctx.save_for_backward(pooled if pool else x, argmax, mean, rstd, bias, weight)
    ctx.pool, ctx.act, ctx.alpha, ctx.training = pool, act, alpha, training
    ctx.channels_last = _is_channels_last(_supported_layout(x))


def _fwd_backward(ctx, dy):
    src, argmax, mean, rstd, bias, weight = ctx.saved_tensors
    dx, dbias, dweight = ghost_bn_act_bwd_op(dy, src, argmax, mean, rstd, bias, weight, ctx.pool,
                                             ctx.channels_last, ctx.act, ctx.alpha, ctx.training)
    return (dx, None, None, None, None, dbias, None if weight is None else dweight,
            None, None, None, None)


ghost_bn_act_fwd_op.register_autograd(_fwd_backward, setup_context=_fwd_setup_context)


def _ghost_bn_act_triton(
    x: torch.Tensor,
    bias: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    *,
    weight: torch.Tensor | None,
    splits: int,
    pool: bool,
    act: str | None,
    alpha: float,
    eps: float,
    momentum: float,
    training: bool,
) -> torch.Tensor:
    """The Triton path of :func:`ghost_bn_act` (arguments already validated)."""
    x = _supported_layout(x)
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or bias.requires_grad or (weight is not None and weight.requires_grad))
    # Keep the pooled copy whenever it is cheaper (training: N·e/2 < N·e) or the backward
    # will need it; only eval without grad pools on the fly in pass 3.
    save_pool = pool and (training or needs_grad)
    mean, rstd, pooled, argmax = ghost_bn_stats_op(
        x.detach(), running_mean, running_var, splits if training else 1, pool, save_pool,
        eps, momentum, training)
    return ghost_bn_act_fwd_op(x, pooled, argmax, mean, rstd, bias, weight, pool,
                               "none" if act is None else act, alpha, training)


# --------------------------------------------------------------------------------------------
# Bytes moved: fused kernels vs the eager sequence of PyTorch ops
# --------------------------------------------------------------------------------------------


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

    ``shape`` is x's (B, C, H, W). Returns ``{"triton": int, "eager": int, "ratio": float,
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
    m = n // 4 if pool else n
    oh, ow = (h // 2, w // 2) if pool else (h, w)
    s = splits if training else 1
    params = (2 if learnable_scale else 1) * c * f32  # bias (+ weight)
    tr: dict[str, int] = {}

    save_pool = pool and (training or backward)
    if training or save_pool:
        tile = TILE_POOL if pool else TILE
        bq, bc = _tile_shape(c, oh * ow, True, tile)
        _, chunks = _chunking((b // s) * _cdiv(oh * ow, bq), s, _cdiv(c, bc),
                              _target_programs(None), bq)
        part = 2 * s * chunks * c * f32 if training else 0
        tr["fwd_stats"] = n * e + (m * e + m if save_pool else 0) + part
        tr["fwd_finalize"] = part + (s * c * e if training else 0) + 2 * s * c * f32 + (
            4 if training else 2) * c * f32
    else:
        tr["fwd_finalize"] = 2 * c * f32 + 2 * c * f32
    tr["fwd"] = (m * e if save_pool or not pool else n * e) + m * e + 2 * s * c * f32 + params
    if backward:
        bq, bc = _tile_shape(c, oh * ow, True, TILE)
        _, chunks = _chunking((b // s) * _cdiv(oh * ow, bq), s, _cdiv(c, bc),
                              _target_programs(None), bq)
        part = 2 * s * chunks * c * f32
        tr["bwd_reduce"] = 2 * m * e + part + 2 * s * c * f32 + params
        tr["bwd_finalize"] = part + 2 * s * c * f32 + 2 * c * f32
        tr["bwd"] = 2 * m * e + (m if pool else 0) + n * e + 4 * s * c * f32 + params

    ea: dict[str, int] = {}
    if pool:
        ea["max_pool2d"] = n * e + m * e + m * 8
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
    return {"triton": triton_total, "eager": eager_total,
            "ratio": eager_total / triton_total,
            "triton_detail": tr, "eager_detail": ea}


# --------------------------------------------------------------------------------------------
# Ahead-of-time specs
# --------------------------------------------------------------------------------------------

#: The trainer's BN sites at width 1: (name, C, H, W, pool) of the conv output x.
TRAINER_SITES: tuple[tuple[str, int, int, int, bool], ...] = (
    ("prep", 64, 32, 32, False),
    ("layer1", 128, 32, 32, True),
    ("res1", 128, 16, 16, False),
    ("layer2", 256, 16, 16, True),
    ("layer3", 512, 8, 8, True),
    ("res3", 512, 4, 4, False),
)
TRAINER_BATCH, TRAINER_SPLITS = 512, 16
_TRITON_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def _div16(names_values: dict[str, int]) -> tuple[str, ...]:
    """The integer arguments the JIT would mark divisible by 16 (it tests every int it gets)."""
    return tuple(k for k, v in names_values.items() if v % 16 == 0)


def _site_specs(site: str, channels: int, height: int, width: int, pool: bool, dt: str,
                act: str, has_weight: bool, batch: int, splits: int) -> list[AotSpec]:
    """The kernels one training step plus one eval forward run at one site."""
    e = f"*{dt}"
    esize = _TRITON_DTYPES[dt].itemsize
    pointers = lambda *names: tuple(names)  # noqa: E731 - every pointer we pass is ≥16-B aligned
    out_h, out_w = (height // 2, width // 2) if pool else (height, width)
    hw, ohw = height * width, out_h * out_w
    per_split = batch // splits
    tag = f"{site}-c{channels}-{dt}"
    specs = []
    # pass 1 (training)
    bq, bc = _tile_shape(channels, ohw, True, TILE_POOL if pool else TILE)
    tiles = per_split * _cdiv(ohw, bq)
    tpp, n_chunks = _chunking(tiles, splits, _cdiv(channels, bc), _target_programs(None), bq)
    ints = dict(C=channels, HW=hw, W=width, OHW=ohw, OW=out_w, G=per_split, tiles_per_prog=tpp)
    specs.append(AotSpec(
        f"ghost_bn_fwd_stats-{tag}{'-pool' if pool else ''}", _ghost_bn_act_fwd_stats_kernel,
        {"x_ptr": e, "pooled_ptr": e, "argmax_ptr": "*u8", "psum_ptr": "*fp32",
         "psq_ptr": "*fp32", **{k: "i32" for k in ints}, "POOL": "constexpr",
         "STATS": "constexpr", "SAVE_POOL": "constexpr", "CHANNELS_LAST": "constexpr",
         "BLOCK_Q": "constexpr", "BLOCK_C": "constexpr", "ARGMAX_VEC": "constexpr"},
        dict(POOL=pool, STATS=True, SAVE_POOL=pool, CHANNELS_LAST=True, BLOCK_Q=bq, BLOCK_C=bc,
             ARGMAX_VEC=_argmax_vec(esize, bq, bc, True)),
        num_warps=NUM_WARPS,
        divisible_by_16=pointers("x_ptr", "pooled_ptr", "argmax_ptr", "psum_ptr", "psq_ptr")
        + _div16(ints)))
    # pass 2, training and eval
    fin_ints = dict(C=channels, S=splits, n_chunks=n_chunks, G=per_split,
                    CHW=channels * hw, chan_stride=1)
    for training in (True, False):
        specs.append(AotSpec(
            f"ghost_bn_fwd_finalize-{tag}-{'train' if training else 'eval'}",
            _ghost_bn_act_fwd_finalize_kernel,
            {"psum_ptr": "*fp32", "psq_ptr": "*fp32", "x_ptr": e, "mean_ptr": "*fp32",
             "rstd_ptr": "*fp32", "running_mean_ptr": "*fp32", "running_var_ptr": "*fp32",
             **{k: "i32" for k in fin_ints}, "inv_count": "fp32", "unbias": "fp32",
             "eps": "fp32", "momentum": "fp32", "TRAINING": "constexpr", "BLOCK_S": "constexpr",
             "BLOCK_K": "constexpr", "BLOCK_C": "constexpr"},
            dict(TRAINING=training, BLOCK_S=FIN_BLOCK_S, BLOCK_K=FIN_BLOCK_K,
                 BLOCK_C=FIN_BLOCK_C),
            num_warps=FIN_NUM_WARPS,
            divisible_by_16=pointers("psum_ptr", "psq_ptr", "x_ptr", "mean_ptr", "rstd_ptr",
                                     "running_mean_ptr", "running_var_ptr")
            + _div16({k: v for k, v in fin_ints.items() if k != "chan_stride"})))
    # pass 3: training (normalises the pooled copy / x) and eval without grad (pools x)
    recipe = f"{act}-{'w' if has_weight else 'frozen'}"
    for pool_now, g in ((False, per_split), (True, batch)):
        if pool_now and not pool:
            continue
        bq, bc = _tile_shape(channels, ohw, True, TILE_POOL if pool_now else TILE)
        ints = dict(C=channels, HW=hw, W=width, OHW=ohw, OW=out_w, G=g)
        specs.append(AotSpec(
            f"ghost_bn_fwd-{tag}-{recipe}{'-pool' if pool_now else ''}", _ghost_bn_act_fwd_kernel,
            {"src_ptr": e, "y_ptr": e, "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
             "bias_ptr": "*fp32", "weight_ptr": "*fp32", **{k: "i32" for k in ints},
             "alpha": "fp32", "inv_alpha": "fp32", "POOL": "constexpr", "ACT": "constexpr",
             "HAS_WEIGHT": "constexpr", "CHANNELS_LAST": "constexpr", "BLOCK_Q": "constexpr",
             "BLOCK_C": "constexpr"},
            dict(POOL=pool_now, ACT=_ACT_CODES[act], HAS_WEIGHT=has_weight, CHANNELS_LAST=True,
                 BLOCK_Q=bq, BLOCK_C=bc),
            num_warps=NUM_WARPS,
            divisible_by_16=pointers("src_ptr", "y_ptr", "mean_ptr", "rstd_ptr", "bias_ptr",
                                     "weight_ptr") + _div16(ints)))
    # backward
    bq, bc = _tile_shape(channels, ohw, True, TILE)
    tiles = per_split * _cdiv(ohw, bq)
    tpp, n_chunks = _chunking(tiles, splits, _cdiv(channels, bc), _target_programs(None), bq)
    ints = dict(C=channels, OHW=ohw, G=per_split, tiles_per_prog=tpp)
    specs.append(AotSpec(
        f"ghost_bn_bwd_reduce-{tag}-{recipe}", _ghost_bn_act_bwd_reduce_kernel,
        {"src_ptr": e, "dy_ptr": e, "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
         "bias_ptr": "*fp32", "weight_ptr": "*fp32", "pg_ptr": "*fp32", "pgx_ptr": "*fp32",
         **{k: "i32" for k in ints}, "inv_alpha": "fp32", "ACT": "constexpr",
         "HAS_WEIGHT": "constexpr", "CHANNELS_LAST": "constexpr", "BLOCK_Q": "constexpr",
         "BLOCK_C": "constexpr"},
        dict(ACT=_ACT_CODES[act], HAS_WEIGHT=has_weight, CHANNELS_LAST=True, BLOCK_Q=bq,
             BLOCK_C=bc),
        num_warps=NUM_WARPS,
        divisible_by_16=pointers("src_ptr", "dy_ptr", "mean_ptr", "rstd_ptr", "bias_ptr",
                                 "weight_ptr", "pg_ptr", "pgx_ptr") + _div16(ints)))
    fin_ints = dict(C=channels, S=splits, n_chunks=n_chunks)
    specs.append(AotSpec(
        f"ghost_bn_bwd_finalize-{tag}", _ghost_bn_act_bwd_finalize_kernel,
        {"pg_ptr": "*fp32", "pgx_ptr": "*fp32", "mean_g_ptr": "*fp32", "mean_gx_ptr": "*fp32",
         "dbias_ptr": "*fp32", "dweight_ptr": "*fp32", **{k: "i32" for k in fin_ints},
         "inv_count": "fp32", "TRAINING": "constexpr", "BLOCK_S": "constexpr",
         "BLOCK_K": "constexpr", "BLOCK_C": "constexpr"},
        dict(TRAINING=True, BLOCK_S=FIN_BLOCK_S, BLOCK_K=FIN_BLOCK_K, BLOCK_C=FIN_BLOCK_C),
        num_warps=FIN_NUM_WARPS,
        divisible_by_16=pointers("pg_ptr", "pgx_ptr", "mean_g_ptr", "mean_gx_ptr", "dbias_ptr",
                                 "dweight_ptr") + _div16(fin_ints)))
    bq, bc = _tile_shape(channels, ohw, True, TILE_POOL if pool else TILE)
    ints = dict(C=channels, HW=hw, W=width, OHW=ohw, OW=out_w, G=per_split)
    specs.append(AotSpec(
        f"ghost_bn_bwd-{tag}-{recipe}{'-pool' if pool else ''}", _ghost_bn_act_bwd_kernel,
        {"src_ptr": e, "dy_ptr": e, "argmax_ptr": "*u8", "dx_ptr": e, "mean_ptr": "*fp32",
         "rstd_ptr": "*fp32", "bias_ptr": "*fp32", "weight_ptr": "*fp32",
         "mean_g_ptr": "*fp32", "mean_gx_ptr": "*fp32", **{k: "i32" for k in ints},
         "inv_alpha": "fp32", "POOL": "constexpr", "ACT": "constexpr",
         "HAS_WEIGHT": "constexpr", "CHANNELS_LAST": "constexpr", "BLOCK_Q": "constexpr",
         "BLOCK_C": "constexpr", "ARGMAX_VEC": "constexpr"},
        dict(POOL=pool, ACT=_ACT_CODES[act], HAS_WEIGHT=has_weight, CHANNELS_LAST=True,
             BLOCK_Q=bq, BLOCK_C=bc, ARGMAX_VEC=_argmax_vec(esize, bq, bc, True)),
        num_warps=NUM_WARPS,
        divisible_by_16=pointers("src_ptr", "dy_ptr", "argmax_ptr", "dx_ptr", "mean_ptr",
                                 "rstd_ptr", "bias_ptr", "weight_ptr", "mean_g_ptr",
                                 "mean_gx_ptr") + _div16(ints)))
    return specs


def aot_specs(full: bool = False) -> list[AotSpec]:
    """Every ghost-BN kernel at the trainer's configurations (channels_last, batch 512,
    16 splits; the chunking assumes NOMINAL_SMS), deduplicated.

    Default (~70 specs, ~1 s each to compile per arch): all six sites at width 1 in fp16 and
    bf16 with the final recipe (CELU, frozen scale) plus ReLU with a learnable scale in fp16
    — every kernel, both dtypes, pool and no pool, both activations, both weight modes, train
    and eval. ``full=True`` is the whole cross product, width 0.25 (C/4) included (~290
    specs; every one of them compiled without spills when this was written).
    """
    combos: list[tuple[float, str, str, bool]] = []
    if full:
        combos = [(w, dt, act, hw) for w in (1.0, 0.25) for dt in ("fp16", "bf16")
                  for act in ("celu", "relu") for hw in (False, True)]
    else:
        combos = [(1.0, "fp16", "celu", False), (1.0, "bf16", "celu", False),
                  (1.0, "fp16", "relu", True)]
    specs: dict[tuple, AotSpec] = {}
    for width, dt, act, has_weight in combos:
        for site, channels, height, w, pool in TRAINER_SITES:
            c = max(1, round(channels * width))
            for spec in _site_specs(site, c, height, w, pool, dt, act, has_weight,
                                    TRAINER_BATCH, TRAINER_SPLITS):
                key = (spec.kernel, tuple(sorted(spec.signature.items())),
                       tuple(sorted(spec.constexprs.items())), tuple(sorted(spec.divisible_by_16)))
                specs.setdefault(key, spec)
    return list(specs.values())
