"""The small ``@triton.jit`` helpers the ghost-BN kernels share; Triton inlines every one.

Three kinds: layout (a tile is [pixels × channels] of one image, oriented so that the
memory-contiguous dimension is axis 1 for channels_last and NCHW alike: :func:`_grid_2d`,
:func:`_per_channel`, :func:`_sum_pixels`, :func:`_zero_tile`, :func:`_offset_in_image`,
:func:`_pixel_step`), the 2×2 window (:func:`_window_corner`, :func:`_dropped_edges`,
:func:`_max_pool_2x2`), and
the arithmetic the forward and the backward must do identically (:func:`_normalise`,
:func:`_activation_fwd`, :func:`_activation_bwd`, :func:`_gelu_tanh_parts`,
:func:`_sum_partials`). They live apart
from the kernels in :mod:`kernels.ghost_bn_act.triton_kernels` only to keep each file short.
"""

from __future__ import annotations

from kernels._common import tl, triton


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
    """Input pixel index of the top-left corner of pooled pixel q's 2×2 window.

    OW = W // 2 is the pooled width and W the *input* width (the row stride in pixels): with
    an odd W the pool floors as F.max_pool2d does, no window reaches the last column, and
    rows of x are still W pixels apart.
    """
    oh = q // OW
    return 2 * oh * W + 2 * (q - oh * OW)


@triton.jit
def _dropped_edges(q, OH, OW, H, W):
    """For pooled pixels q: (right, bottom) int1 vectors, true where q's window is the last
    of its row and x has an odd W (so the column right of the window, which no window
    covers, lies beside it), resp. the last of its column and x has an odd H."""
    oh = q // OW
    ow = q - oh * OW
    # Both sides of each & are vectors: Triton's interpreter (3.9) rejects a store mask made
    # of a vector & a scalar comparison. The column 2·ow + 2 exists only when W is odd.
    right = (ow == OW - 1) & (2 * ow + 2 < W)
    bottom = (oh == OH - 1) & (2 * oh + 2 < H)
    return right, bottom


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


# Globals a @jit function reads must be constexprs.
#: 1/sqrt(2) and 1/sqrt(2π), for the exact GELU and its slope.
_INV_SQRT2 = tl.constexpr(0.7071067811865476)
_INV_SQRT_2PI = tl.constexpr(0.3989422804014327)
#: sqrt(2/π) and the cubic coefficient of the tanh-approximated GELU (PyTorch's constants).
_SQRT_2_OVER_PI = tl.constexpr(0.7978845608028654)
_GELU_TANH_CUBIC = tl.constexpr(0.044715)


@triton.jit
def _gelu_tanh_parts(z):
    """sigmoid(2u) and du/dz for the tanh GELU, u = sqrt(2/π)·(z + 0.044715·z³).

    0.5·(1 + tanh(u)) = sigmoid(2u): one exp, and no tanh (which Triton's core language does
    not offer across 3.6–3.9); it saturates to 0 or 1 for large |u| instead of overflowing.
    """
    z2 = z * z
    u = _SQRT_2_OVER_PI * (z + _GELU_TANH_CUBIC * z2 * z)
    du = _SQRT_2_OVER_PI * (1.0 + 3.0 * _GELU_TANH_CUBIC * z2)
    return tl.sigmoid(2.0 * u), du


@triton.jit
def _activation_fwd(z, alpha, inv_alpha, ACT: tl.constexpr):
    """The activation of fp32 ``z`` (the codes of ``plan._ACT_CODES``), as PyTorch's:
    0 identity; 1 ReLU; 2 CELU(alpha) = z if z > 0 else alpha·(exp(z/alpha) − 1);
    3 exact GELU z·Φ(z) = z·(1 + erf(z/√2))/2; 4 tanh GELU z·(1 + tanh(u))/2;
    5 SiLU z·sigmoid(z)."""
    if ACT == 1:
        out = tl.where(z < 0.0, 0.0, z)  # NaN passes through, as torch.relu
    elif ACT == 2:
        # exp of a large positive z overflows to inf in the discarded branch only: harmless.
        out = tl.where(z > 0.0, z, alpha * (tl.exp(z * inv_alpha) - 1.0))
    elif ACT == 3:
        out = 0.5 * z * (1.0 + tl.erf(z * _INV_SQRT2))
    elif ACT == 4:
        s, _ = _gelu_tanh_parts(z)
        out = z * s
    elif ACT == 5:
        out = z * tl.sigmoid(z)
    else:
        out = z
    return out


@triton.jit
def _activation_bwd(dy, z, inv_alpha, ACT: tl.constexpr):
    """dL/dz from dL/dy (fp32), PyTorch's conventions: ReLU passes where z > 0; CELU's slope
    is 1 for z > 0 and exp(z/alpha) otherwise (elu_backward on the input); exact GELU's is
    Φ(z) + z·φ(z); tanh GELU's s + 2·z·s·(1 − s)·du/dz with s = sigmoid(2u) (the tanh form
    0.5·(1 + t) + 0.5·z·(1 − t²)·du/dz rewritten with t = 2s − 1); SiLU's s·(1 + z·(1 − s))
    with s = sigmoid(z)."""
    if ACT == 1:
        g = tl.where(z > 0.0, dy, 0.0)
    elif ACT == 2:
        g = tl.where(z > 0.0, dy, dy * tl.exp(z * inv_alpha))
    elif ACT == 3:
        cdf = 0.5 * (1.0 + tl.erf(z * _INV_SQRT2))
        pdf = _INV_SQRT_2PI * tl.exp(-0.5 * z * z)
        g = dy * (cdf + z * pdf)
    elif ACT == 4:
        s, du = _gelu_tanh_parts(z)
        g = dy * (s + 2.0 * z * (s * (1.0 - s)) * du)
    elif ACT == 5:
        s = tl.sigmoid(z)
        g = dy * (s * (1.0 + z * (1.0 - s)))
    else:
        g = dy
    return g


@triton.jit
def _sum_partials(
    pa_ptr,
    pb_ptr,
    s3,
    k_lane,
    c3,
    S,
    n_chunks,
    C,
    BLOCK_S: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_C: tl.constexpr,
):
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
