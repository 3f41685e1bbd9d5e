"""Batched augmentation: gather + reflect-pad crop + flip + cutout + normalise + cast.

Everything between the uint8 data set held on the device and the network's input, in one
op. Random choices are drawn by the caller as per-image parameter tensors
(:func:`random_augment_params`), so the op itself is deterministic and every image gets its
own crop, flip and cutout (the seed's code shared one choice among up to 200 groups).

Coordinates, exactly:
  * the source image is ``data[indices[b]]``, reflect-padded by ``pad`` pixels on each side
    (as ``F.pad(mode="reflect")``);
  * output pixel ``(i, j)`` before flipping reads padded pixel ``(crop[b,0] + i, crop[b,1] + j)``;
    with ``flip[b]`` the output row is mirrored: ``out[..., i, j] = unflipped[..., i, W-1-j]``;
  * cutout zeroes output pixels ``cutout[b,0] <= i < cutout[b,0]+cutout_size`` and
    ``cutout[b,1] <= j < cutout[b,1]+cutout_size`` (output coordinates, after flipping), after
    normalisation, on every channel;
  * ``out = (x - mean[c]) / std[c]`` on the 0–255 scale, cast to ``out_dtype``, returned
    channels_last (memory order B, H, W, C).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
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


__all__ = ["aot_specs", "augment", "augment_bytes", "augment_reference",
           "random_augment_params"]

OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def random_augment_params(
    batch: int,
    *,
    pad: int,
    cutout_size: int,
    height: int = 32,
    width: int = 32,
    flip: bool = True,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one independent crop, flip and cutout choice per image.

    Returns ``crop`` int64 (batch, 2) uniform in [0, 2·pad], ``flip`` bool (batch,) with
    probability ½ (all False when ``flip=False``), and ``cutout`` int64 (batch, 2) uniform over
    the top-left corners that keep the square inside the image (zeros when ``cutout_size=0``).
    """
    if not 0 <= cutout_size <= min(height, width):
        raise ValueError(f"cutout_size must be in [0, {min(height, width)}]; got {cutout_size}")
    kw = dict(device=device, generator=generator)
    crop = torch.randint(0, 2 * pad + 1, (batch, 2), **kw)
    flips = torch.randint(0, 2, (batch,), **kw).bool() if flip else torch.zeros(
        batch, dtype=torch.bool, device=device)
    if cutout_size:
        corner_y = torch.randint(0, height - cutout_size + 1, (batch,), **kw)
        corner_x = torch.randint(0, width - cutout_size + 1, (batch,), **kw)
        cutout = torch.stack([corner_y, corner_x], dim=1)
    else:
        cutout = torch.zeros(batch, 2, dtype=torch.int64, device=device)
    return crop, flips, cutout


def augment_reference(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    *,
    cutout_size: int,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Plain-PyTorch augmentation, written to be obviously right (see the module docstring).

    ``data`` uint8 (N, C, H, W); ``indices`` int (B,); ``crop`` int (B, 2); ``flip`` bool (B,);
    ``cutout`` int (B, 2). Returns ``out_dtype`` (B, C, H, W) in channels_last memory order.
    """
    _, channels, height, width = data.shape
    images = data[indices.long()].float()
    if pad:
        images = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    batch = images.shape[0]
    rows = crop[:, 0:1].long() + torch.arange(height, device=data.device)   # (B, H)
    cols = crop[:, 1:2].long() + torch.arange(width, device=data.device)    # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(batch, device=data.device)[:, None, None]
    patches = images.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=data.device)
    std_t = torch.tensor(std, dtype=torch.float32, device=data.device)
    out = (patches - mean_t) / std_t
    if cutout_size:
        i = torch.arange(height, device=data.device)
        j = torch.arange(width, device=data.device)
        in_rows = (i >= cutout[:, 0:1]) & (i < cutout[:, 0:1] + cutout_size)   # (B, H)
        in_cols = (j >= cutout[:, 1:2]) & (j < cutout[:, 1:2] + cutout_size)   # (B, W)
        hole = in_rows[:, :, None, None] & in_cols[:, None, :, None]
        out = out.masked_fill(hole, 0.0)
    # (B, H, W, C) contiguous is exactly channels_last storage of (B, C, H, W).
    return out.to(out_dtype).permute(0, 3, 1, 2)


def check_augment_inputs(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    *,
    cutout_size: int,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
) -> None:
    """Validate the arguments of :func:`augment`; raise a message naming the culprit."""
    check_tensor("data", data, dtypes=[torch.uint8], ndim=4)
    _, channels, height, width = data.shape
    ints = [torch.int32, torch.int64]
    check_tensor("indices", indices, dtypes=ints, ndim=1, device=data.device)
    batch = indices.shape[0]
    check_tensor("crop", crop, dtypes=ints, shape=(batch, 2), device=data.device)
    check_tensor("flip", flip, dtypes=[torch.bool], shape=(batch,), device=data.device)
    check_tensor("cutout", cutout, dtypes=ints, shape=(batch, 2), device=data.device)
    if not data.is_contiguous():
        raise ValueError("data must be contiguous (N, C, H, W) uint8: call .contiguous() once")
    if not 0 <= pad < min(height, width):
        raise ValueError(f"pad must be in [0, {min(height, width) - 1}] for reflect padding; got {pad}")
    if not 0 <= cutout_size <= min(height, width):
        raise ValueError(f"cutout_size must be in [0, {min(height, width)}]; got {cutout_size}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std need one value per channel ({channels}); got {len(mean)} and {len(std)}")
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive; got {list(std)}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16; got {out_dtype}")
    # Range checks read the parameters back; they are small (B·5 values) and catch an
    # out-of-bounds read before any kernel makes one.
    if batch:
        if indices.min() < 0 or indices.max() >= data.shape[0]:
            raise ValueError(f"indices must lie in [0, {data.shape[0] - 1}]")
        if crop.min() < 0 or crop.max() > 2 * pad:
            raise ValueError(f"crop offsets must lie in [0, 2·pad] = [0, {2 * pad}]")
        if cutout_size and (cutout.min() < 0 or cutout[:, 0].max() > height - cutout_size
                            or cutout[:, 1].max() > width - cutout_size):
            raise ValueError(
                f"cutout corners must keep the {cutout_size}×{cutout_size} square inside the "
                f"{height}×{width} image")


def augment(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    *,
    cutout_size: int,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
    backend: str | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Augment a batch drawn from a uint8 data set on the device; see the module docstring.

    Args:
        data: uint8 (N, C, H, W), contiguous, the whole data set.
        indices: int32/int64 (B,), which images form the batch.
        crop: int32/int64 (B, 2), (row, col) offset of the window in the padded image,
            each in [0, 2·pad].
        flip: bool (B,), mirror left-right.
        cutout: int32/int64 (B, 2), (row, col) of the cutout square's top-left corner.
        cutout_size: side of the cutout square; 0 turns cutout off.
        pad: reflect padding in pixels.
        mean, std: C floats each, on the 0–255 scale.
        out_dtype: float32, float16 or bfloat16.
        backend: "eager", "compile", "triton" or None/"auto" (see ``kernels._common``).
        validate: check ranges of the parameter tensors (reads them back to the host: turn
            off inside a step loop once the caller is known to be right).

    Returns:
        ``out_dtype`` (B, C, H, W) tensor in channels_last memory order.
    """
    kwargs = dict(cutout_size=cutout_size, pad=pad, mean=tuple(map(float, mean)),
                  std=tuple(map(float, std)), out_dtype=out_dtype)
    if validate:
        check_augment_inputs(data, indices, crop, flip, cutout, **kwargs)
    backend = resolve_backend(backend, data.device)
    if backend == "eager":
        return augment_reference(data, indices, crop, flip, cutout, **kwargs)
    if backend == "compile":
        return compiled(augment_reference)(data, indices, crop, flip, cutout, **kwargs)
    return _augment_triton(data, indices, crop, flip, cutout, **kwargs)


# ============================================================================================
# Triton implementation
# ============================================================================================
#
# Design (a memory-bound op, so it is judged by bytes moved and by how wide the stores are):
#
# * One program per (image, block of rows); at CIFAR size (32×32×3) a program is one whole
#   image, so the grid is just B programs. The output tile is 2-D: [BLOCK_ROWS, BLOCK_WC],
#   rows of the image × the flattened (W, C) run of one output row. In channels_last memory
#   an output row *is* a contiguous run of W·C elements (96 at CIFAR size), so every thread
#   holds 8 consecutive elements of one row and writes them with one 16-byte store (fp16/bf16)
#   or two (fp32). BLOCK_WC is the next power of two (128 for 96): a quarter of the lanes are
#   masked off, which costs issue slots but no memory traffic (at CIFAR size W·C = 96 is a
#   multiple of 8, so the mask is constant over each 8-element vector and the stores stay
#   16 bytes wide: STG.E.128 in the SASS, see :func:`aot_specs`).
# * The source (c, h, w) of an output element splits into a per-column part (channel c =
#   col % C, output column j = col // C → flip → crop → reflect → c·H·W + w) and a per-row
#   part (output row i → crop → reflect → h·W). Each is computed once on a 1-D vector and
#   broadcast, so per element only "row part + column part", the gather, normalise, cutout
#   select and cast remain; the integer divisions by C are by a constexpr (mul-shift).
# * Reflect padding is index arithmetic on those vectors (-k → k, n-1+k → n-1-k; pad < n
#   is checked, so one reflection suffices); the padded image never exists anywhere.
# * The uint8 source reads are byte gathers: 3 KB per image, touched once from DRAM and then
#   served by L1/L2 (a warp covers two output rows: six 32-byte source row segments).
# * Normalisation must equal ``(x - mean) / std`` bit for bit (PyTorch divides with IEEE
#   rounding on CPU and CUDA). A plain multiply by r = 1/std is off by one ulp for about a
#   quarter of the values; ``tl.div_rn`` is exact but costs ~10 instructions per element
#   (MUFU.RCP + Newton steps + FCHK + a slow-path branch), about 40% of the kernel's issue
#   slots. Instead: q0 = a·r, rem = fma(-q0, std, a) (exact), q = fma(rem, r, q0), with
#   r = RN(1/std) computed once on the host — Markstein's correction, which yields the
#   correctly rounded quotient when r is the correctly rounded reciprocal and q0 is within an
#   ulp (no over/underflow here: |a| <= 255 and std is a normal positive number). Checked
#   exhaustively over x in 0..255 for 800k random (mean, std) pairs (0 mismatches; the plain
#   multiply had 26%) and on 10M random fp32 pairs. 3 FP instructions per element.
# * The per-image parameters (index, crop, flip, cutout) are 6 scalar loads per program, in
#   whatever integer type the caller has (int64 from torch.randint/randperm): converting them
#   to int32 on the host side would cost three extra kernel launches per batch, far more than
#   the 41 bytes per image they are.
#
# Bytes per batch of B images (E = B·C·H·W elements): read E uint8 + B·(8+16+1+16) parameter
# bytes (int64) + 3·C·4 bytes of mean/std/(1/std); write E·sizeof(out_dtype). Nothing else.
# :func:`augment_bytes` counts this against the eager sequence of PyTorch ops.

#: Largest output tile (elements) one program holds: 4096 = one 32×32×3 CIFAR image padded
#: to 32×128, i.e. 32 elements (four 8-element row vectors) per thread at 4 warps.
TILE = 4096
#: Warps per program for a full tile; smaller tiles get fewer (at least 256 elements a warp).
MAX_WARPS = 4

_ELEMENT_SIZE = {torch.float32: 4, torch.float16: 2, torch.bfloat16: 2}


@triton.jit
def _reflect(x, n: tl.constexpr, PAD: tl.constexpr):
    """Map a coordinate of the reflect-padded axis (already shifted by -PAD) into [0, n-1].

    ``x`` int32 vector in [-PAD, n-1+PAD] for valid parameters: -k → k and n-1+k → n-1-k
    (``F.pad(mode="reflect")``, which needs PAD < n, so one reflection is enough). The final
    clamp changes nothing for valid input; it keeps the gather inside the source image even
    when a caller passed out-of-range crops with ``validate=False``.
    """
    if PAD > 0:
        x = tl.abs(x)
        x = tl.where(x > n - 1, 2 * (n - 1) - x, x)
    return tl.minimum(tl.maximum(x, 0), n - 1)


@triton.jit
def _divide(a, d, r):
    """IEEE-rounded ``a / d`` given ``r = RN(1/d)``, in three FP instructions (fp32).

    Markstein's correction step (see the design notes): the residual of the first estimate
    is exact in an FMA, and one more FMA rounds the corrected quotient correctly. Valid when
    nothing over- or underflows, which holds for |a| <= 255 and a normal positive ``d``.
    """
    q = a * r
    rem = tl.fma(-q, d, a)
    return tl.fma(rem, r, q)


@triton.jit
def _round_to_bf16(y):
    """fp32 → bf16 with round-to-nearest-even done on the bits (finite inputs).

    Only used under Triton's CPU interpreter, whose fp32 → bf16 cast truncates (triton 3.9);
    on the GPU the ordinary cast is the hardware's cvt.rn.bf16.f32, the same rounding.
    """
    bits = y.to(tl.uint32, bitcast=True)
    bits = bits + (0x7FFF + ((bits >> 16) & 1))
    return (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)


@triton.jit
def _augment_fwd_kernel(
    data_ptr,     # *u8  (N, C, H, W) contiguous: the whole data set
    indices_ptr,  # *i32|*i64 (B,) contiguous: data-set index of each batch image
    crop_ptr,     # *i32|*i64 (B, 2) contiguous: (row, col) window offset in the padded image
    flip_ptr,     # *u8  (B,): nonzero mirrors the image left-right (a bool tensor viewed as u8)
    cutout_ptr,   # *i32|*i64 (B, 2) contiguous: cutout square (row, col); unused if CUTOUT=0
    stats_ptr,    # *fp32 (3, C) contiguous: mean[c], std[c], RN(1/std[c]); 0-255 scale
    out_ptr,      # *fp32|*fp16|*bf16 (B, H, W, C) contiguous = channels_last (B, C, H, W)
    C: tl.constexpr,           # channels
    H: tl.constexpr,           # image height (input and output)
    W: tl.constexpr,           # image width (input and output)
    PAD: tl.constexpr,         # reflect padding in pixels, 0 <= PAD < min(H, W)
    CUTOUT: tl.constexpr,      # side of the cutout square; 0 compiles cutout out
    BLOCK_ROWS: tl.constexpr,  # output rows per program (power of two)
    BLOCK_WC: tl.constexpr,    # next power of two >= W*C: one output row, flattened (W, C)
    BF16_BY_BITS: tl.constexpr,  # round fp32 → bf16 by bit arithmetic (interpreter only)
):
    """One program writes BLOCK_ROWS output rows of one image (see the design notes above).

    Grid: (B · cdiv(H, BLOCK_ROWS),). Program ``pid`` handles image ``pid // row_tiles`` and
    output rows ``(pid % row_tiles) · BLOCK_ROWS + [0, BLOCK_ROWS)``.
    """
    ROW_TILES: tl.constexpr = (H + BLOCK_ROWS - 1) // BLOCK_ROWS
    pid = tl.program_id(0)
    b = pid // ROW_TILES
    row0 = (pid % ROW_TILES) * BLOCK_ROWS

    # ---- per-image parameters: a handful of scalar loads ------------------------------
    src = tl.load(indices_ptr + b).to(tl.int64)
    crop_y = tl.load(crop_ptr + 2 * b).to(tl.int32)
    crop_x = tl.load(crop_ptr + 2 * b + 1).to(tl.int32)
    flipped = tl.load(flip_ptr + b) != 0
    # int64 base offsets: N·C·H·W and B·H·W·C may pass 2^31 for big data sets and batches;
    # everything inside one image stays int32.
    img_ptr = data_ptr + src * (C * H * W)
    out_img_ptr = out_ptr + b.to(tl.int64) * (H * W * C)

    # ---- per-column vectors over the flattened (W, C) output row ------------------------
    col = tl.arange(0, BLOCK_WC)
    col_ok = col < W * C
    j = col // C                      # output column (after flipping)
    c = col - j * C                   # channel
    j_src = tl.where(flipped, W - 1 - j, j)          # the unflipped column it shows
    w = _reflect(crop_x + j_src - PAD, W, PAD)       # source column in the unpadded image
    col_off = c * (H * W) + w
    # tl.full, not tl.zeros: under TRITON_INTERPRET=1 calling a @jit function of
    # triton.language.standard (tl.zeros, tl.cdiv, ...) leaves triton.language.core patched
    # with the interpreter's builtins for the rest of the process (triton 3.9), which then
    # breaks a later ahead-of-time triton.compile of any kernel in the same process.
    mean = tl.full([BLOCK_WC], 0.0, dtype=tl.float32)
    std = tl.full([BLOCK_WC], 1.0, dtype=tl.float32)
    rcp = tl.full([BLOCK_WC], 1.0, dtype=tl.float32)
    for k in tl.static_range(C):      # 3·C scalar loads, selected per column
        mean = tl.where(c == k, tl.load(stats_ptr + k), mean)
        std = tl.where(c == k, tl.load(stats_ptr + C + k), std)
        rcp = tl.where(c == k, tl.load(stats_ptr + 2 * C + k), rcp)

    # ---- per-row vectors ------------------------------------------------------------------
    i = row0 + tl.arange(0, BLOCK_ROWS)  # output row
    row_ok = i < H
    h = _reflect(crop_y + i - PAD, H, PAD)             # source row in the unpadded image
    row_off = h * W

    # ---- per element: gather, normalise, cutout, cast, one contiguous store ---------------
    # The gather needs no mask: _reflect clamps rows and columns and c < C always, so even
    # the padding lanes (col >= W*C, rows >= H) read some in-bounds source byte; only the
    # store is masked. Saves the per-element predicate work on the load side.
    x = tl.load(img_ptr + (row_off[:, None] + col_off[None, :]))
    a = x.to(tl.float32) - mean[None, :]
    y = _divide(a, std[None, :], rcp[None, :])
    if CUTOUT > 0:
        cut_y = tl.load(cutout_ptr + 2 * b).to(tl.int32)
        cut_x = tl.load(cutout_ptr + 2 * b + 1).to(tl.int32)
        in_rows = (i >= cut_y) & (i < cut_y + CUTOUT)
        in_cols = (j >= cut_x) & (j < cut_x + CUTOUT)
        y = tl.where(in_rows[:, None] & in_cols[None, :], 0.0, y)
    if BF16_BY_BITS and out_ptr.dtype.element_ty == tl.bfloat16:
        y_out = _round_to_bf16(y)
    else:
        y_out = y.to(out_ptr.dtype.element_ty)
    mask = row_ok[:, None] & col_ok[None, :]
    tl.store(out_img_ptr + (i[:, None] * (W * C) + col[None, :]), y_out, mask=mask)


def _launch_config(channels: int, height: int, width: int) -> dict[str, int]:
    """Tile and warp count for an image size; shared by the launcher and :func:`aot_specs`."""
    block_wc = triton.next_power_of_2(channels * width)
    block_rows = min(triton.next_power_of_2(height), max(1, TILE // block_wc))
    tile = block_rows * block_wc
    return dict(BLOCK_ROWS=block_rows, BLOCK_WC=block_wc,
                num_warps=max(1, min(MAX_WARPS, tile // 256)))


@functools.lru_cache(maxsize=16)
def _stats_tensor(mean: tuple[float, ...], std: tuple[float, ...],
                  device: torch.device) -> torch.Tensor:
    """mean, std and RN(1/std) as one fp32 (3, C) device tensor, built once per (values,
    device).

    Cached so the steady state does no host→device copy (and stays capturable in a CUDA
    graph once warmed up). mean and std round to fp32 exactly as ``torch.tensor(mean,
    dtype=torch.float32)`` in the reference; the reciprocal is an IEEE fp32 division of the
    rounded std, i.e. the correctly rounded reciprocal the kernel's division step needs.
    """
    stats = torch.tensor([mean, std], dtype=torch.float32)
    return torch.cat([stats, 1.0 / stats[1:]]).to(device)


def _check_launch(data: torch.Tensor, indices: torch.Tensor, crop: torch.Tensor,
                  flip: torch.Tensor, cutout: torch.Tensor, cutout_size: int, pad: int,
                  out_dtype: torch.dtype) -> None:
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
        raise ValueError(f"pad must be in [0, {min(height, width) - 1}] for reflect padding; "
                         f"got {pad}")
    if not 0 <= cutout_size <= min(height, width):
        raise ValueError(f"cutout_size must be in [0, {min(height, width)}]; got {cutout_size}")


def _augment_launch(data: torch.Tensor, indices: torch.Tensor, crop: torch.Tensor,
                    flip: torch.Tensor, cutout: torch.Tensor, cutout_size: int, pad: int,
                    mean: Sequence[float], std: Sequence[float],
                    out_dtype: torch.dtype) -> torch.Tensor:
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
    _augment_fwd_kernel[grid](
        data, indices, crop, flip_u8, cutout, stats, out,
        C=channels, H=height, W=width, PAD=pad, CUTOUT=cutout_size,
        BLOCK_ROWS=cfg["BLOCK_ROWS"], BLOCK_WC=cfg["BLOCK_WC"],
        BF16_BY_BITS=interpreting(), num_warps=cfg["num_warps"],
    )
    return out.permute(0, 3, 1, 2)


# ``torch.library.custom_op`` (not ``triton_op``, which cannot be traced while interpreting):
# torch.compile and the dispatcher see one opaque op with a fake (meta) implementation.
# No ``register_autograd``: every input is data or an integer parameter (uint8, int, bool —
# none can require grad) and the output is the start of the graph, so there is no gradient
# to define; autograd treats the output as a leaf.
@torch.library.custom_op(f"{LIBRARY_NAMESPACE}::augment", mutates_args=())
def _augment_op(data: torch.Tensor, indices: torch.Tensor, crop: torch.Tensor,
                flip: torch.Tensor, cutout: torch.Tensor, cutout_size: int, pad: int,
                mean: list[float], std: list[float], out_dtype: torch.dtype) -> torch.Tensor:
    """``cifar_kernels::augment``: the fused Triton augmentation (see :func:`augment`)."""
    return _augment_launch(data, indices, crop, flip, cutout, cutout_size, pad, mean, std,
                           out_dtype)


@_augment_op.register_fake
def _augment_fake(data: torch.Tensor, indices: torch.Tensor, crop: torch.Tensor,
                  flip: torch.Tensor, cutout: torch.Tensor, cutout_size: int, pad: int,
                  mean: list[float], std: list[float], out_dtype: torch.dtype) -> torch.Tensor:
    _, channels, height, width = data.shape
    out = data.new_empty((indices.shape[0], height, width, channels), dtype=out_dtype)
    return out.permute(0, 3, 1, 2)


def _augment_triton(data: torch.Tensor, indices: torch.Tensor, crop: torch.Tensor,
                    flip: torch.Tensor, cutout: torch.Tensor, *, cutout_size: int, pad: int,
                    mean: Sequence[float], std: Sequence[float],
                    out_dtype: torch.dtype) -> torch.Tensor:
    """The ``backend="triton"`` path of :func:`augment`: one launch of the custom op."""
    return _augment_op(data, indices, crop, flip, cutout, int(cutout_size), int(pad),
                       [float(m) for m in mean], [float(s) for s in std], out_dtype)


# ============================================================================================
# Counted bytes and ahead-of-time specs
# ============================================================================================


def augment_bytes(batch: int, channels: int, height: int, width: int, out_dtype: torch.dtype,
                  *, pad: int = 4, cutout: bool = True, index_bytes: int = 8) -> dict[str, Any]:
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
    e = batch * channels * height * width          # elements of the batch
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
        "cutout": ((4 * e + batch * height * width + 2 * batch * index_bytes, 4 * e)
                   if cutout else (0, 0)),
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
    base_sig = {"data_ptr": "*u8", "indices_ptr": "*i64", "crop_ptr": "*i64",
                "flip_ptr": "*u8", "cutout_ptr": "*i64", "stats_ptr": "*fp32"}
    constexpr_names = ("C", "H", "W", "PAD", "CUTOUT", "BLOCK_ROWS", "BLOCK_WC",
                       "BF16_BY_BITS")
    cfg = _launch_config(3, 32, 32)
    out_types = {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}
    configs = [  # (pad, cutout, out dtype)
        (4, 8, torch.float16), (4, 0, torch.float16),
        (4, 8, torch.bfloat16), (4, 0, torch.bfloat16),
        (4, 8, torch.float32),
        (0, 0, torch.float16), (0, 0, torch.bfloat16),
    ]
    specs = []
    for pad, cut, dtype in configs:
        name = out_types[dtype]
        signature = {**base_sig, "out_ptr": f"*{name}",
                     **{n: "constexpr" for n in constexpr_names}}
        constexprs = dict(C=3, H=32, W=32, PAD=pad, CUTOUT=cut, BLOCK_ROWS=cfg["BLOCK_ROWS"],
                          BLOCK_WC=cfg["BLOCK_WC"], BF16_BY_BITS=False)
        specs.append(AotSpec(
            label=f"augment-b512-c3-32x32-pad{pad}-cut{cut}-{name}",
            kernel=_augment_fwd_kernel, signature=signature, constexprs=constexprs,
            num_warps=cfg["num_warps"], divisible_by_16=("out_ptr",)))
    return specs
