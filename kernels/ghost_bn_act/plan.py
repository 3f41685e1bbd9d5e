"""The launch plan of ghost BN: block sizes, tile shapes and how a reduction is chunked.

Pure arithmetic on shapes (no tensors, no kernels), so the three users agree by calling the
same code: the launchers (:mod:`kernels.ghost_bn_act.launch`), the byte model
(:mod:`kernels.ghost_bn_act.byte_model`) and the ahead-of-time specs
(:mod:`kernels.ghost_bn_act.specs`) — the bytes counted and the code compiled ahead of time
are those of a real launch. Every function of shapes is cached (``functools.cache``): a
launch at a shape seen before looks its plan up instead of recomputing it. With no device
at hand (``_target_programs(None)``) the plan assumes a GPU of NOMINAL_SMS SMs.
"""

from __future__ import annotations

import functools

import torch

#: Elements per tile of the element-wise and reduction passes (per program iteration).
#: 4096 fp16 over 4 warps = 32 elements = four 16-byte vectors per thread per tensor.
TILE = 4096
#: Pooling kernels hold four input tiles (or do four stores) per output tile: half the tile.
TILE_POOL = 2048
#: Warps per program of the streaming kernels.
NUM_WARPS = 4
#: Warps of the backward pass-3 kernel when it pools an odd H or W: its five extra stores
#: (the dropped row/column's zeros) made ptxas spill a few bytes on sm_90a at 4 warps
#: (GELU, C=256); 8 warps halve the elements per thread (still one 16-byte vector each).
ODD_POOL_BWD_NUM_WARPS = 8
#: Block of the finalize kernels: splits × chunks × channels held at once (16 splits in one
#: step, 16 chunks per load so the trainer's ≤64 partials per split take ≤4 dependent loads),
#: over 8 warps: 4 warps need ~170 registers and ptxas spills (sm_90 / sm_80). Plain BN
#: takes PLAIN_FIN_BLOCK_K chunks per load instead (:func:`_finalize_blocks`).
FIN_BLOCK_S, FIN_BLOCK_K, FIN_BLOCK_C = 16, 16, 16
PLAIN_FIN_BLOCK_K = 64
FIN_NUM_WARPS = 8
#: Largest channel block of a channels_last tile (one warp spans 256 fp16 = 512 bytes).
MAX_BLOCK_C = 256
#: SM count assumed with no device at hand (AOT specs, :func:`ghost_bn_act_bytes`): H100 SXM.
NOMINAL_SMS = 132
#: Reduction programs per SM the chunking aims for (enough bytes in flight per SM).
PROGRAMS_PER_SM = 8
#: Fewest pixel rows a reduction program covers (bounds the partials' traffic).
MIN_ROWS_PER_PROG = 64

#: The ACT constexpr of the kernels (see ``triton_helpers._act``).
_ACT_CODES = {"none": 0, "relu": 1, "celu": 2, "gelu": 3, "gelu_tanh": 4, "silu": 5}


def _next_pow2(n: int) -> int:
    return 1 << max(0, int(n) - 1).bit_length()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


@functools.cache
def _finalize_blocks(splits: int) -> tuple[int, int]:
    """(BLOCK_S, BLOCK_K) of a finalize launch over ``splits`` splits.

    Plain BN (one split: the airbench family, and every eval launch) would leave 15 of 16
    split lanes idle, so it takes (1, PLAIN_FIN_BLOCK_K) instead: at batch 1024 it has ~1000
    partials per channel, folded in 16 dependent loads rather than 64, and its (1, BLOCK_C)
    totals need fewer registers (the (16, 16) block spilled with S = 1 on sm_90a; 256 chunks
    per load spilled in the backward finalize, 64 compile clean on sm_80 and sm_90a).
    """
    if splits == 1:
        return 1, PLAIN_FIN_BLOCK_K
    return FIN_BLOCK_S, FIN_BLOCK_K


@functools.cache
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
        return PROGRAMS_PER_SM * _sm_count(
            device.index if device.index is not None else torch.cuda.current_device()
        )
    if device is None:
        return PROGRAMS_PER_SM * NOMINAL_SMS
    return 4


@functools.cache
def _chunking(
    tiles_per_split: int, splits: int, channel_blocks: int, target_programs: int, block_q: int
) -> tuple[int, int]:
    """(tiles_per_prog, n_chunks) for a reduction pass over ``splits × channel_blocks``.

    Each program writes 2 × BLOCK_C fp32 partials for tiles_per_prog · BLOCK_Q · BLOCK_C
    elements it reads; at least MIN_ROWS_PER_PROG pixel rows per program keep that overhead
    ≤ 8 / (64 · e) (6 % for fp16, and L2-resident) when the images are tiny (res3: 4×4).
    """
    wanted = max(1, target_programs // max(1, splits * channel_blocks))
    tiles_per_prog = max(1, _cdiv(tiles_per_split, wanted), _cdiv(MIN_ROWS_PER_PROG, block_q))
    tiles_per_prog = min(tiles_per_prog, max(1, tiles_per_split))
    return tiles_per_prog, max(1, _cdiv(tiles_per_split, tiles_per_prog))


@functools.cache
def _bwd_num_warps(pool: bool, height: int, width: int) -> int:
    """Warps of the backward pass-3 kernel (see ODD_POOL_BWD_NUM_WARPS)."""
    return ODD_POOL_BWD_NUM_WARPS if pool and (height % 2 or width % 2) else NUM_WARPS


@functools.cache
def _argmax_vec(element_size: int, block_q: int, block_c: int, channels_last: bool) -> int:
    """x elements per 16-byte vector, capped by the tile's contiguous dimension."""
    return max(1, min(16 // element_size, block_c if channels_last else block_q))
