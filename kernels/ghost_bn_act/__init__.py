"""Ghost batch norm with optional frozen scale, fused with an optional 2×2 max-pool before it
and an activation after it.

The op, for ``x`` (B, C, H, W):
  1. ``pool=True``: 2×2 max-pool, stride 2 (the seed's "max-pool before BN" site). Odd H or
     W are floored as ``F.max_pool2d(x, 2)`` does: the last row/column is dropped (the
     airbench family's 2×2 whitening without padding gives 31×31 → 15, 15 → 7, 7 → 3), and
     its gradient is zero;
  2. training: batch norm with statistics (mean, biased variance) per ghost split of
     B/``splits`` consecutive images (``splits=1``: plain BN); eval: the running statistics;
  3. ``y = x̂ · weight + bias`` where ``weight=None`` means a frozen scale of 1;
  4. ``act``: ``"celu"`` (with ``alpha``), ``"relu"``, ``"gelu"`` (exact, erf form),
     ``"gelu_tanh"`` (``F.gelu(approximate="tanh")``), ``"silu"`` or ``None``; computed in
     fp32 whatever x's dtype.
In training the running stats (C entries each) are updated in place with the per-split
statistics averaged over the splits, in PyTorch's momentum convention and with the unbiased
variance; this equals the seed's GhostBatchNorm, which keeps C×splits buffers and averages
them when switching to eval, because the update is linear.

Where each job lives: ``reference.py`` the plain-PyTorch op and the input checks;
``triton_kernels.py`` the three forward kernels and ``triton_kernels_bwd.py`` the three
backward ones (``triton_helpers.py`` the @jit helpers both inline); ``plan.py`` the launch
plan (block sizes, tile shapes, chunking) and ``launch.py`` the launches that apply it;
``op.py`` :func:`ghost_bn_act` itself, its backends and the ``torch.library`` ops with their
autograd; ``byte_model.py`` the counted bytes and ``specs.py`` the ahead-of-time specs.

Design (memory-bound op: count bytes, touch each byte as few times as possible)
-------------------------------------------------------------------------------
Let N be the elements of x, M those of the normalised tensor (M = B·C·⌊H/2⌋·⌊W/2⌋ with
pool, N/4 for even sizes; else N), e the bytes of one element of x, S the ghost splits.

Forward, training — three launches:
  1. ``_ghost_bn_act_fwd_stats_kernel`` reads x once. With pool it takes the 2×2 max in
     registers and (SAVE_POOL) writes the pooled values (M·e) and the 2-bit window index
     as one uint8 per pooled element (M bytes); it accumulates per-(split, channel) shifted
     sums Σ(v−K), Σ(v−K)² in fp32 registers and writes one partial per program to a small
     (S, n_chunks, C) buffer — no atomics, so the result is deterministic run to run.
  2. ``_ghost_bn_act_fwd_finalize_kernel`` (a few programs) folds the partials into
     mean/rstd per (split, channel) and lerps the running stats in place.
  3. ``_ghost_bn_act_fwd_kernel`` normalises, applies scale/bias/activation, writes y in
     x's memory format.
  Why write the pooled tensor instead of re-pooling x in pass 3: re-reading x costs N·e,
  writing then reading the pooled copy costs 2·(N/4)·e = N·e/2. Keeping it is cheaper
  even with no backward, and the backward then reads M·e (not N·e) twice and never needs x,
  so x can be freed after the forward (activation memory drops from N·e to M·e + M bytes).
  The argmax byte (M bytes written, M read back) is far cheaper than re-reading x (N·e)
  in the backward to find the winner again. Eval without grad pools on the fly instead
  (pass 3 reads x directly: N·e + M·e, one launch besides the tiny finalize).

Statistics: fp32 sums of squares cancel catastrophically when |mean| ≫ std. Each
  (split, channel) shifts by K = x[first image of the split, c, 0, 0], a sample of the same
  distribution, so |mean−K| is a few std at most and E[(v−K)²] − E[v−K]² loses at most a
  few bits. Unlike Welford/Chan merging, shifted sums are plain element-wise adds into a
  register accumulator: the cross-thread reduction happens once per program, not once per
  tile. Accumulation is fp32 in every thread over its share of the tiles, then a tree sum.

Saved for backward: mean and rstd (S×C fp32 each), bias/weight, and either x (no pool —
  what any BN backward keeps) or the pooled values + argmax bytes (pool: M·e + M bytes
  instead of N·e; eager PyTorch keeps x, the pooled tensor and int64 indices).
  The activation's derivative and x̂ are recomputed from those (an FMA chain, plus one
  exp/erf for CELU/GELU/SiLU), never stored.

Backward — three launches, the same shape as the forward:
  1. ``_ghost_bn_act_bwd_reduce_kernel`` reads v (x or pooled) and dy, recomputes
     x̂ = (v−mean)·rstd, z = x̂·w + b, g = dy·act'(z) and writes per-program partials of Σg
     and Σg·x̂.
  2. ``_ghost_bn_act_bwd_finalize_kernel``: dbias = Σg, dweight = Σg·x̂ over everything,
     and per (split, channel) the means of g and g·x̂ (zero in eval, where the stats are
     constants).
  3. ``_ghost_bn_act_bwd_kernel``: dx = rstd·w·(g − mean(g) − x̂·mean(g·x̂)), routed to the
     argmax of each 2×2 window with zeros written to the other three; with an odd H/W the
     last window of each row/column also writes the zeros of the dropped column/row beside
     it (ODD_HW), so every input element is written exactly once and dx needs no zero-fill
     pass. The backward op is told x's H and W: the pooled shape does not give them.

Layout: a tile is [pixels × channels] of one image. Offsets are written for channels_last
  (NHWC: channel stride 1) and contiguous NCHW (pixel stride 1) under a constexpr, and the
  tile is oriented so that the memory-contiguous dimension is always axis 1 — Triton's
  coalescing then puts consecutive threads (and 16-byte vectors) along it. The trainer
  runs channels_last, where C (a multiple of 16) gives 128-bit loads; NCHW is supported
  with vector loads along W when not pooling (stride-2 pairs when pooling). Other strides
  are copied to contiguous once by the wrapper.
"""

from kernels.ghost_bn_act.byte_model import ghost_bn_act_bytes
from kernels.ghost_bn_act.native import ghost_bn_act_native
from kernels.ghost_bn_act.op import (
    ghost_bn_act,
    ghost_bn_act_bwd_op,
    ghost_bn_act_fwd_op,
    ghost_bn_stats_op,
)
from kernels.ghost_bn_act.reference import (
    ACTIVATIONS,
    check_ghost_bn_act_inputs,
    ghost_bn_act_reference,
)
from kernels.ghost_bn_act.specs import AIRBENCH_SHAPES, AotSite, airbench_sites, aot_specs

__all__ = [
    "ACTIVATIONS",
    "AIRBENCH_SHAPES",
    "AotSite",
    "airbench_sites",
    "aot_specs",
    "check_ghost_bn_act_inputs",
    "ghost_bn_act",
    "ghost_bn_act_bwd_op",
    "ghost_bn_act_bytes",
    "ghost_bn_act_fwd_op",
    "ghost_bn_act_native",
    "ghost_bn_act_reference",
    "ghost_bn_stats_op",
]
