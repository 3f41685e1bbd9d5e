"""From shapes to kernel launches: block sizes, chunking, workspaces, and the three passes
forward and backward run through.

:func:`_tile_shape` and :func:`_chunking` are the launch plan; the launchers here, the byte
model and the ahead-of-time specs (:mod:`kernels.ghost_bn_act.specs`) all call them, so the
bytes counted and the code compiled ahead of time are those of a real launch.
:func:`_stats_impl`, :func:`_fwd_impl` and :func:`_bwd_impl` are the bodies of the custom ops
registered in :mod:`kernels.ghost_bn_act.op` (arguments already validated there).
"""

from __future__ import annotations

import functools

import torch

from kernels._common import interpreting
from kernels.ghost_bn_act.triton_kernels import (
    _ghost_bn_act_bwd_finalize_kernel,
    _ghost_bn_act_bwd_kernel,
    _ghost_bn_act_bwd_reduce_kernel,
    _ghost_bn_act_fwd_finalize_kernel,
    _ghost_bn_act_fwd_kernel,
    _ghost_bn_act_fwd_stats_kernel,
)

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
#: SM count assumed with no device at hand (AOT specs, :func:`ghost_bn_act_bytes`): H100 SXM.
NOMINAL_SMS = 132
#: Reduction programs per SM the chunking aims for (enough bytes in flight per SM).
PROGRAMS_PER_SM = 8
#: Fewest pixel rows a reduction program covers (bounds the partials' traffic).
MIN_ROWS_PER_PROG = 64

_ACT_CODES = {"none": 0, "relu": 1, "celu": 2}


# --------------------------------------------------------------------------------------------
# Launch planning (shared by the launchers, the AOT specs and ghost_bn_act_bytes)
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
        return PROGRAMS_PER_SM * _sm_count(
            device.index if device.index is not None else torch.cuda.current_device()
        )
    if device is None:
        return PROGRAMS_PER_SM * NOMINAL_SMS
    return 4


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
            "TRITON_INTERPRET=1 before importing kernels to run them on the CPU interpreter"
        )


def _pooled_buffers(
    x: torch.Tensor, save: bool, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    if not save:
        return x.new_empty((0,)), x.new_empty((0,), dtype=torch.uint8)
    b, c, h, w = x.shape
    fmt = _memory_format(channels_last)
    return (
        torch.empty((b, c, h // 2, w // 2), dtype=x.dtype, device=x.device, memory_format=fmt),
        torch.empty((b, c, h // 2, w // 2), dtype=torch.uint8, device=x.device, memory_format=fmt),
    )


def _stats_impl(
    x: torch.Tensor,
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    splits: int,
    pool: bool,
    save_pool: bool,
    eps: float,
    momentum: float,
    training: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    _require_kernel_device(x)
    if not (running_mean.is_contiguous() and running_var.is_contiguous()):
        raise ValueError(
            "running_mean and running_var must be contiguous: they are updated in "
            "place by the kernel"
        )
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
        tiles_per_prog, n_chunks = _chunking(
            tiles, splits, channel_blocks, _target_programs(x.device), block_q
        )
        if training:
            partial_sum = torch.empty(
                (splits, n_chunks, channels), dtype=torch.float32, device=x.device
            )
            partial_sq = torch.empty_like(partial_sum)
        if _launch_ok(n_chunks, splits, channel_blocks, tiles):
            _ghost_bn_act_fwd_stats_kernel[(n_chunks, splits, channel_blocks)](
                x,
                pooled if pool and save_pool else x,
                argmax if pool and save_pool else running_mean,
                partial_sum,
                partial_sq,
                channels,
                height * width,
                width,
                out_h * out_w,
                out_w,
                per_split,
                tiles_per_prog,
                POOL=pool,
                STATS=training,
                SAVE_POOL=pool and save_pool,
                CHANNELS_LAST=channels_last,
                BLOCK_Q=block_q,
                BLOCK_C=block_c,
                ARGMAX_VEC=_argmax_vec(x.element_size(), block_q, block_c, channels_last),
                num_warps=NUM_WARPS,
            )
    if _launch_ok(channels):
        _ghost_bn_act_fwd_finalize_kernel[(_cdiv(channels, FIN_BLOCK_C),)](
            partial_sum,
            partial_sq,
            x,
            mean,
            rstd,
            running_mean,
            running_var,
            channels,
            splits,
            n_chunks,
            per_split,
            channels * height * width,
            1 if channels_last else height * width,
            1.0 / max(count, 1),
            count / max(count - 1, 1),
            eps,
            momentum,
            TRAINING=training,
            BLOCK_S=FIN_BLOCK_S,
            BLOCK_K=FIN_BLOCK_K,
            BLOCK_C=FIN_BLOCK_C,
            num_warps=FIN_NUM_WARPS,
        )
    return mean, rstd, pooled, argmax


def _fwd_impl(
    x: torch.Tensor,
    pooled: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor | None,
    pool: bool,
    act: str,
    alpha: float,
) -> torch.Tensor:
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
    y = torch.empty(
        (batch, channels, out_h, out_w),
        dtype=x.dtype,
        device=x.device,
        memory_format=_memory_format(channels_last),
    )
    block_q, block_c = _tile_shape(
        channels, out_h * out_w, channels_last, TILE_POOL if pool_now else TILE
    )
    grid = (batch * _cdiv(out_h * out_w, block_q), _cdiv(channels, block_c))
    if _launch_ok(*grid):
        _ghost_bn_act_fwd_kernel[grid](
            src,
            y,
            mean,
            rstd,
            bias,
            bias if weight is None else weight,
            channels,
            height * width,
            width,
            out_h * out_w,
            out_w,
            batch // splits,
            alpha,
            1.0 / alpha,
            POOL=pool_now,
            ACT=_ACT_CODES[act],
            HAS_WEIGHT=weight is not None,
            CHANNELS_LAST=channels_last,
            BLOCK_Q=block_q,
            BLOCK_C=block_c,
            num_warps=NUM_WARPS,
        )
    return y


def _bwd_impl(
    dy: torch.Tensor,
    src: torch.Tensor,
    argmax: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor | None,
    pool: bool,
    channels_last: bool,
    act: str,
    alpha: float,
    training: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _require_kernel_device(src)
    if pool and (src.dim() != 4 or argmax.shape != src.shape):
        raise RuntimeError(
            "ghost_bn_act backward with pool needs the pooled values and argmax "
            "saved by the forward (it ran with save_pool=False)"
        )
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
    tiles_per_prog, n_chunks = _chunking(
        tiles, splits, channel_blocks, _target_programs(device), block_q
    )
    partial_g = torch.zeros((splits, n_chunks, channels), dtype=torch.float32, device=device)
    partial_gx = torch.zeros_like(partial_g)
    if _launch_ok(tiles, channel_blocks):
        _ghost_bn_act_bwd_reduce_kernel[(n_chunks, splits, channel_blocks)](
            src,
            dy,
            mean,
            rstd,
            bias,
            bias if weight is None else weight,
            partial_g,
            partial_gx,
            channels,
            out_h * out_w,
            per_split,
            tiles_per_prog,
            1.0 / alpha,
            ACT=act_code,
            HAS_WEIGHT=has_weight,
            CHANNELS_LAST=channels_last,
            BLOCK_Q=block_q,
            BLOCK_C=block_c,
            num_warps=NUM_WARPS,
        )

    mean_g = torch.empty((splits, channels), dtype=torch.float32, device=device)
    mean_gx = torch.empty_like(mean_g)
    dbias = torch.empty((channels,), dtype=torch.float32, device=device)
    dweight = torch.empty_like(dbias)
    if _launch_ok(channels):
        _ghost_bn_act_bwd_finalize_kernel[(_cdiv(channels, FIN_BLOCK_C),)](
            partial_g,
            partial_gx,
            mean_g,
            mean_gx,
            dbias,
            dweight,
            channels,
            splits,
            n_chunks,
            1.0 / max(count, 1),
            TRAINING=training,
            BLOCK_S=FIN_BLOCK_S,
            BLOCK_K=FIN_BLOCK_K,
            BLOCK_C=FIN_BLOCK_C,
            num_warps=FIN_NUM_WARPS,
        )

    dx = torch.empty(
        (batch, channels, height, width), dtype=src.dtype, device=device, memory_format=fmt
    )
    block_q, block_c = _tile_shape(
        channels, out_h * out_w, channels_last, TILE_POOL if pool else TILE
    )
    grid = (batch * _cdiv(out_h * out_w, block_q), _cdiv(channels, block_c))
    if _launch_ok(*grid):
        _ghost_bn_act_bwd_kernel[grid](
            src,
            dy,
            argmax if pool else mean,
            dx,
            mean,
            rstd,
            bias,
            bias if weight is None else weight,
            mean_g,
            mean_gx,
            channels,
            height * width,
            width,
            out_h * out_w,
            out_w,
            per_split,
            1.0 / alpha,
            POOL=pool,
            ACT=act_code,
            HAS_WEIGHT=has_weight,
            CHANNELS_LAST=channels_last,
            BLOCK_Q=block_q,
            BLOCK_C=block_c,
            ARGMAX_VEC=_argmax_vec(src.element_size(), block_q, block_c, channels_last),
            num_warps=NUM_WARPS,
        )
    return dx, dbias, dweight
