"""From shapes to kernel launches: workspaces, grids and the three passes forward and
backward run through.

The plan (block sizes, tile shapes, chunking) is :mod:`kernels.ghost_bn_act.plan`, shared
with the byte model and the ahead-of-time specs; this module applies it to real tensors.
:func:`_stats_impl`, :func:`_fwd_impl` and :func:`_bwd_impl` are the bodies of the custom ops
registered in :mod:`kernels.ghost_bn_act.op` (arguments already validated there).
"""

from __future__ import annotations

import torch

from kernels._common import interpreting
from kernels._launch import launch
from kernels.ghost_bn_act.plan import (
    _ACT_CODES,
    FIN_BLOCK_C,
    FIN_NUM_WARPS,
    NUM_WARPS,
    TILE,
    TILE_POOL,
    _argmax_vec,
    _bwd_num_warps,
    _cdiv,
    _chunking,
    _finalize_blocks,
    _target_programs,
    _tile_shape,
)
from kernels.ghost_bn_act.triton_kernels import (
    _ghost_bn_act_fwd_finalize_kernel,
    _ghost_bn_act_fwd_kernel,
    _ghost_bn_act_fwd_stats_kernel,
)
from kernels.ghost_bn_act.triton_kernels_bwd import (
    _ghost_bn_act_bwd_finalize_kernel,
    _ghost_bn_act_bwd_kernel,
    _ghost_bn_act_bwd_reduce_kernel,
)

# --------------------------------------------------------------------------------------------
# Tensor layout
# --------------------------------------------------------------------------------------------


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
    if pool and (height < 2 or width < 2):
        raise ValueError(f"pool=True needs H and W of at least 2; got {(height, width)}")
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
        stats_run = _launch_ok(n_chunks, splits, channel_blocks, tiles)
        if training:
            # Filled by the kernel (every program stores its row) unless nothing runs.
            workspace = torch.empty if stats_run else torch.zeros
            partial_sum = workspace(
                (splits, n_chunks, channels), dtype=torch.float32, device=x.device
            )
            partial_sq = workspace(
                (splits, n_chunks, channels), dtype=torch.float32, device=x.device
            )
        if stats_run:
            launch(
                _ghost_bn_act_fwd_stats_kernel,
                (n_chunks, splits, channel_blocks),
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
        launch(
            _ghost_bn_act_fwd_finalize_kernel,
            (_cdiv(channels, FIN_BLOCK_C),),
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
            BLOCK_S=_finalize_blocks(splits)[0],
            BLOCK_K=_finalize_blocks(splits)[1],
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
        launch(
            _ghost_bn_act_fwd_kernel,
            grid,
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
    height: int,
    width: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Backward passes 1–3 → (dx, dbias, dweight).

    ``dy`` (B, C, OH, OW) of src's dtype; ``src`` x (B, C, H, W) or, with ``pool``, the
    pooled values (B, C, H // 2, W // 2); ``argmax`` uint8 of src's shape (pool) else
    anything; ``mean``/``rstd`` fp32 (S, C); ``bias``/``weight`` fp32 (C,). ``height`` and
    ``width`` are x's H and W (odd ones are floored by the pool, so src does not give them).
    dx has x's shape and src's dtype, dbias/dweight fp32 (C,).
    """
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
    expected = (height // 2, width // 2) if pool else (height, width)
    if (out_h, out_w) != expected:
        raise ValueError(
            f"src's spatial size {(out_h, out_w)} does not match x's {(height, width)} "
            f"(pool={pool})"
        )
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
    reduce_runs = _launch_ok(tiles, channel_blocks)
    # Each reduce program stores its whole (split, chunk) row of partials, so the buffers
    # need no fill when the kernel runs (a fill is one more launch per BN site and step);
    # with no tiles (an empty batch) the finalize kernel reads zeros.
    workspace = torch.empty if reduce_runs else torch.zeros
    partial_g = workspace((splits, n_chunks, channels), dtype=torch.float32, device=device)
    partial_gx = workspace((splits, n_chunks, channels), dtype=torch.float32, device=device)
    if reduce_runs:
        launch(
            _ghost_bn_act_bwd_reduce_kernel,
            (n_chunks, splits, channel_blocks),
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
        launch(
            _ghost_bn_act_bwd_finalize_kernel,
            (_cdiv(channels, FIN_BLOCK_C),),
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
            BLOCK_S=_finalize_blocks(splits)[0],
            BLOCK_K=_finalize_blocks(splits)[1],
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
        launch(
            _ghost_bn_act_bwd_kernel,
            grid,
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
            ODD_HW=pool and bool(height % 2 or width % 2),
            ACT=act_code,
            HAS_WEIGHT=has_weight,
            CHANNELS_LAST=channels_last,
            BLOCK_Q=block_q,
            BLOCK_C=block_c,
            ARGMAX_VEC=_argmax_vec(src.element_size(), block_q, block_c, channels_last),
            num_warps=_bwd_num_warps(pool, height, width),
        )
    return dx, dbias, dweight
