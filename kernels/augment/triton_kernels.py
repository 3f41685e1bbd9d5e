"""The ``@triton.jit`` augmentation kernel, :func:`_augment_fwd_kernel`, and its inlined
helpers: reflect indexing, the correctly rounded division, and bf16 rounding for the
interpreter. Why it is built this way is in the package docstring (:mod:`kernels.augment`);
the tile and grid are chosen in :mod:`kernels.augment.launch`.
"""

from __future__ import annotations

from kernels._common import tl, triton


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
    data_ptr,  # *u8  (N, C, H, W) contiguous: the whole data set
    indices_ptr,  # *i32|*i64 (B,) contiguous: data-set index of each batch image
    crop_ptr,  # *i32|*i64 (B, 2) contiguous: (row, col) window offset in the padded image
    flip_ptr,  # *u8  (B,): nonzero mirrors the image left-right (a bool tensor viewed as u8)
    cutout_ptr,  # *i32|*i64 (B, 2) contiguous: cutout square (row, col); unused if CUTOUT=0
    stats_ptr,  # *fp32 (3, C) contiguous: mean[c], std[c], RN(1/std[c]); 0-255 scale
    out_ptr,  # *fp32|*fp16|*bf16 (B, H, W, C) contiguous = channels_last (B, C, H, W)
    C: tl.constexpr,  # channels
    H: tl.constexpr,  # image height (input and output)
    W: tl.constexpr,  # image width (input and output)
    PAD: tl.constexpr,  # reflect padding in pixels, 0 <= PAD < min(H, W)
    CUTOUT: tl.constexpr,  # side of the cutout square; 0 compiles cutout out
    BLOCK_ROWS: tl.constexpr,  # output rows per program (power of two)
    BLOCK_WC: tl.constexpr,  # next power of two >= W*C: one output row, flattened (W, C)
    BF16_BY_BITS: tl.constexpr,  # round fp32 → bf16 by bit arithmetic (interpreter only)
):
    """One program writes BLOCK_ROWS output rows of one image (design: :mod:`kernels.augment`).

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
    j = col // C  # output column (after flipping)
    c = col - j * C  # channel
    j_src = tl.where(flipped, W - 1 - j, j)  # the unflipped column it shows
    w = _reflect(crop_x + j_src - PAD, W, PAD)  # source column in the unpadded image
    col_off = c * (H * W) + w
    # tl.full, not tl.zeros: under TRITON_INTERPRET=1 calling a @jit function of
    # triton.language.standard (tl.zeros, tl.cdiv, ...) leaves triton.language.core patched
    # with the interpreter's builtins for the rest of the process (triton 3.9), which then
    # breaks a later ahead-of-time triton.compile of any kernel in the same process.
    mean = tl.full([BLOCK_WC], 0.0, dtype=tl.float32)
    std = tl.full([BLOCK_WC], 1.0, dtype=tl.float32)
    rcp = tl.full([BLOCK_WC], 1.0, dtype=tl.float32)
    for k in tl.static_range(C):  # 3·C scalar loads, selected per column
        mean = tl.where(c == k, tl.load(stats_ptr + k), mean)
        std = tl.where(c == k, tl.load(stats_ptr + C + k), std)
        rcp = tl.where(c == k, tl.load(stats_ptr + 2 * C + k), rcp)

    # ---- per-row vectors ------------------------------------------------------------------
    i = row0 + tl.arange(0, BLOCK_ROWS)  # output row
    row_ok = i < H
    h = _reflect(crop_y + i - PAD, H, PAD)  # source row in the unpadded image
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
