"""The ahead-of-time specs of ghost BN: what ``python -m bench.aot`` compiles.

:func:`site_specs` and :func:`aot_specs` turn call sites (:class:`AotSite`: shape, dtype,
activation, scale) into the :class:`~kernels._common.AotSpec` of every kernel a training step
and an eval forward launch there. Which sites to compile is the caller's choice: ``bench.aot``
passes the trainer's BN sites, read from the model. The specs use the launch plan of
:mod:`kernels.ghost_bn_act.plan` (at NOMINAL_SMS SMs), so they compile what a real launch
runs. The byte model is :mod:`kernels.ghost_bn_act.byte_model`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch

from kernels._common import AotSpec
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

__all__ = ["AIRBENCH_SHAPES", "AotSite", "airbench_sites", "aot_specs", "site_specs"]


_TRITON_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


@dataclass(frozen=True)
class AotSite:
    """One ghost-BN call to compile for: x (batch, channels, height, width), channels_last.

    ``dtype`` is x's Triton type name ("fp16", "bf16" or "fp32"); ``act`` a key of
    ``plan._ACT_CODES`` ("celu", "relu", "gelu", "gelu_tanh", "silu" or "none"); ``height``
    and ``width`` may be odd with ``pool`` (floored, as F.max_pool2d); ``has_weight`` a
    learnable scale (else frozen at 1); ``splits`` the ghost splits of a training batch.
    ``name`` starts every label (``ghost_bn_fwd-<name>-c<C>-<dtype>…``).
    """

    name: str
    channels: int
    height: int
    width: int
    pool: bool
    dtype: str
    act: str
    has_weight: bool
    batch: int
    splits: int


def _div16(names_values: dict[str, int]) -> tuple[str, ...]:
    """The integer arguments the JIT would mark divisible by 16 (it tests every int it gets)."""
    return tuple(k for k, v in names_values.items() if v % 16 == 0)


def site_specs(site: AotSite) -> list[AotSpec]:
    """The kernels one training step plus one eval forward run at ``site``, as the launchers
    in :mod:`kernels.ghost_bn_act.launch` would plan them for a GPU of NOMINAL_SMS SMs.

    Every pointer is declared 16-byte aligned, as the trainer's tensors (whole allocations)
    always are; each integer is declared divisible by 16 where it is, as the JIT would.
    """
    channels, height, width, pool = site.channels, site.height, site.width, site.pool
    dt, act, has_weight = site.dtype, site.act, site.has_weight
    batch, splits = site.batch, site.splits
    e = f"*{dt}"
    esize = _TRITON_DTYPES[dt].itemsize
    out_h, out_w = (height // 2, width // 2) if pool else (height, width)
    hw, ohw = height * width, out_h * out_w
    per_split = batch // splits
    tag = f"{site.name}-c{channels}-{dt}"
    specs = []
    # pass 1 (training)
    bq, bc = _tile_shape(channels, ohw, True, TILE_POOL if pool else TILE)
    tiles = per_split * _cdiv(ohw, bq)
    tpp, n_chunks = _chunking(tiles, splits, _cdiv(channels, bc), _target_programs(None), bq)
    ints = dict(C=channels, HW=hw, W=width, OHW=ohw, OW=out_w, G=per_split, tiles_per_prog=tpp)
    specs.append(
        AotSpec(
            f"ghost_bn_fwd_stats-{tag}{'-pool' if pool else ''}",
            _ghost_bn_act_fwd_stats_kernel,
            {
                "x_ptr": e,
                "pooled_ptr": e,
                "argmax_ptr": "*u8",
                "psum_ptr": "*fp32",
                "psq_ptr": "*fp32",
                **{k: "i32" for k in ints},
                "POOL": "constexpr",
                "STATS": "constexpr",
                "SAVE_POOL": "constexpr",
                "CHANNELS_LAST": "constexpr",
                "BLOCK_Q": "constexpr",
                "BLOCK_C": "constexpr",
                "ARGMAX_VEC": "constexpr",
            },
            dict(
                POOL=pool,
                STATS=True,
                SAVE_POOL=pool,
                CHANNELS_LAST=True,
                BLOCK_Q=bq,
                BLOCK_C=bc,
                ARGMAX_VEC=_argmax_vec(esize, bq, bc, True),
            ),
            num_warps=NUM_WARPS,
            divisible_by_16=("x_ptr", "pooled_ptr", "argmax_ptr", "psum_ptr", "psq_ptr")
            + _div16(ints),
        )
    )
    # pass 2, training and eval
    fin_ints = dict(
        C=channels, S=splits, n_chunks=n_chunks, G=per_split, CHW=channels * hw, chan_stride=1
    )
    for training in (True, False):
        # eval launches the finalize with one "split" (the running stats)
        block_s, block_k = _finalize_blocks(splits if training else 1)
        specs.append(
            AotSpec(
                f"ghost_bn_fwd_finalize-{tag}-{'train' if training else 'eval'}",
                _ghost_bn_act_fwd_finalize_kernel,
                {
                    "psum_ptr": "*fp32",
                    "psq_ptr": "*fp32",
                    "x_ptr": e,
                    "mean_ptr": "*fp32",
                    "rstd_ptr": "*fp32",
                    "running_mean_ptr": "*fp32",
                    "running_var_ptr": "*fp32",
                    **{k: "i32" for k in fin_ints},
                    "inv_count": "fp32",
                    "unbias": "fp32",
                    "eps": "fp32",
                    "momentum": "fp32",
                    "TRAINING": "constexpr",
                    "BLOCK_S": "constexpr",
                    "BLOCK_K": "constexpr",
                    "BLOCK_C": "constexpr",
                },
                dict(TRAINING=training, BLOCK_S=block_s, BLOCK_K=block_k, BLOCK_C=FIN_BLOCK_C),
                num_warps=FIN_NUM_WARPS,
                divisible_by_16=(
                    "psum_ptr",
                    "psq_ptr",
                    "x_ptr",
                    "mean_ptr",
                    "rstd_ptr",
                    "running_mean_ptr",
                    "running_var_ptr",
                )
                + _div16({k: v for k, v in fin_ints.items() if k != "chan_stride"}),
            )
        )
    # pass 3: training (normalises the pooled copy / x) and eval without grad (pools x)
    recipe = f"{act}-{'w' if has_weight else 'frozen'}"
    for pool_now, g in ((False, per_split), (True, batch)):
        if pool_now and not pool:
            continue
        bq, bc = _tile_shape(channels, ohw, True, TILE_POOL if pool_now else TILE)
        ints = dict(C=channels, HW=hw, W=width, OHW=ohw, OW=out_w, G=g)
        specs.append(
            AotSpec(
                f"ghost_bn_fwd-{tag}-{recipe}{'-pool' if pool_now else ''}",
                _ghost_bn_act_fwd_kernel,
                {
                    "src_ptr": e,
                    "y_ptr": e,
                    "mean_ptr": "*fp32",
                    "rstd_ptr": "*fp32",
                    "bias_ptr": "*fp32",
                    "weight_ptr": "*fp32",
                    **{k: "i32" for k in ints},
                    "alpha": "fp32",
                    "inv_alpha": "fp32",
                    "POOL": "constexpr",
                    "ACT": "constexpr",
                    "HAS_WEIGHT": "constexpr",
                    "CHANNELS_LAST": "constexpr",
                    "BLOCK_Q": "constexpr",
                    "BLOCK_C": "constexpr",
                },
                dict(
                    POOL=pool_now,
                    ACT=_ACT_CODES[act],
                    HAS_WEIGHT=has_weight,
                    CHANNELS_LAST=True,
                    BLOCK_Q=bq,
                    BLOCK_C=bc,
                ),
                num_warps=NUM_WARPS,
                divisible_by_16=(
                    "src_ptr",
                    "y_ptr",
                    "mean_ptr",
                    "rstd_ptr",
                    "bias_ptr",
                    "weight_ptr",
                )
                + _div16(ints),
            )
        )
    # backward
    bq, bc = _tile_shape(channels, ohw, True, TILE)
    tiles = per_split * _cdiv(ohw, bq)
    tpp, n_chunks = _chunking(tiles, splits, _cdiv(channels, bc), _target_programs(None), bq)
    ints = dict(C=channels, OHW=ohw, G=per_split, tiles_per_prog=tpp)
    specs.append(
        AotSpec(
            f"ghost_bn_bwd_reduce-{tag}-{recipe}",
            _ghost_bn_act_bwd_reduce_kernel,
            {
                "src_ptr": e,
                "dy_ptr": e,
                "mean_ptr": "*fp32",
                "rstd_ptr": "*fp32",
                "bias_ptr": "*fp32",
                "weight_ptr": "*fp32",
                "pg_ptr": "*fp32",
                "pgx_ptr": "*fp32",
                **{k: "i32" for k in ints},
                "inv_alpha": "fp32",
                "ACT": "constexpr",
                "HAS_WEIGHT": "constexpr",
                "CHANNELS_LAST": "constexpr",
                "BLOCK_Q": "constexpr",
                "BLOCK_C": "constexpr",
            },
            dict(
                ACT=_ACT_CODES[act],
                HAS_WEIGHT=has_weight,
                CHANNELS_LAST=True,
                BLOCK_Q=bq,
                BLOCK_C=bc,
            ),
            num_warps=NUM_WARPS,
            divisible_by_16=(
                "src_ptr",
                "dy_ptr",
                "mean_ptr",
                "rstd_ptr",
                "bias_ptr",
                "weight_ptr",
                "pg_ptr",
                "pgx_ptr",
            )
            + _div16(ints),
        )
    )
    fin_ints = dict(C=channels, S=splits, n_chunks=n_chunks)
    specs.append(
        AotSpec(
            f"ghost_bn_bwd_finalize-{tag}",
            _ghost_bn_act_bwd_finalize_kernel,
            {
                "pg_ptr": "*fp32",
                "pgx_ptr": "*fp32",
                "mean_g_ptr": "*fp32",
                "mean_gx_ptr": "*fp32",
                "dbias_ptr": "*fp32",
                "dweight_ptr": "*fp32",
                **{k: "i32" for k in fin_ints},
                "inv_count": "fp32",
                "TRAINING": "constexpr",
                "BLOCK_S": "constexpr",
                "BLOCK_K": "constexpr",
                "BLOCK_C": "constexpr",
            },
            dict(
                TRAINING=True,
                BLOCK_S=_finalize_blocks(splits)[0],
                BLOCK_K=_finalize_blocks(splits)[1],
                BLOCK_C=FIN_BLOCK_C,
            ),
            num_warps=FIN_NUM_WARPS,
            divisible_by_16=(
                "pg_ptr",
                "pgx_ptr",
                "mean_g_ptr",
                "mean_gx_ptr",
                "dbias_ptr",
                "dweight_ptr",
            )
            + _div16(fin_ints),
        )
    )
    bq, bc = _tile_shape(channels, ohw, True, TILE_POOL if pool else TILE)
    ints = dict(C=channels, HW=hw, W=width, OHW=ohw, OW=out_w, G=per_split)
    specs.append(
        AotSpec(
            f"ghost_bn_bwd-{tag}-{recipe}{'-pool' if pool else ''}",
            _ghost_bn_act_bwd_kernel,
            {
                "src_ptr": e,
                "dy_ptr": e,
                "argmax_ptr": "*u8",
                "dx_ptr": e,
                "mean_ptr": "*fp32",
                "rstd_ptr": "*fp32",
                "bias_ptr": "*fp32",
                "weight_ptr": "*fp32",
                "mean_g_ptr": "*fp32",
                "mean_gx_ptr": "*fp32",
                **{k: "i32" for k in ints},
                "inv_alpha": "fp32",
                "POOL": "constexpr",
                "ODD_HW": "constexpr",
                "ACT": "constexpr",
                "HAS_WEIGHT": "constexpr",
                "CHANNELS_LAST": "constexpr",
                "BLOCK_Q": "constexpr",
                "BLOCK_C": "constexpr",
                "ARGMAX_VEC": "constexpr",
            },
            dict(
                POOL=pool,
                ODD_HW=pool and bool(height % 2 or width % 2),
                ACT=_ACT_CODES[act],
                HAS_WEIGHT=has_weight,
                CHANNELS_LAST=True,
                BLOCK_Q=bq,
                BLOCK_C=bc,
                ARGMAX_VEC=_argmax_vec(esize, bq, bc, True),
            ),
            num_warps=_bwd_num_warps(pool, height, width),
            divisible_by_16=(
                "src_ptr",
                "dy_ptr",
                "argmax_ptr",
                "dx_ptr",
                "mean_ptr",
                "rstd_ptr",
                "bias_ptr",
                "weight_ptr",
                "mean_g_ptr",
                "mean_gx_ptr",
            )
            + _div16(ints),
        )
    )
    return specs


#: (name, channels, input size, pool) of the BN sites of the airbench network family: a 2×2
#: whitening conv without padding turns 32×32 into 31×31, then three blocks of widths
#: 64/256/256, each conv → 2×2 max-pool (floored: 31→15, 15→7, 7→3) → BN → act, then
#: conv → BN → act at the pooled size. BN there is plain (one split) with a frozen scale.
AIRBENCH_SHAPES: tuple[tuple[str, int, int, bool], ...] = (
    ("ab_block1_pool", 64, 31, True),
    ("ab_block1", 64, 15, False),
    ("ab_block2_pool", 256, 15, True),
    ("ab_block2", 256, 7, False),
    ("ab_block3_pool", 256, 7, True),
    ("ab_block3", 256, 3, False),
)


def airbench_sites(
    batch: int = 1024,
    dtypes: Iterable[str] = ("fp16", "bf16"),
    acts: Iterable[str] = ("gelu", "silu"),
    has_weight: bool = False,
) -> list[AotSite]:
    """The :class:`AotSite` of every airbench BN site (:data:`AIRBENCH_SHAPES`) for each
    dtype and activation, dtype-major: channels_last, plain BN (``splits=1``) at ``batch``.

    The kernels' constexprs (tile shapes, activation, pool, odd size) do not depend on the
    batch; only the integer arguments' divisibility hints can (``aot_specs`` deduplicates
    what compiles the same).
    """
    return [
        AotSite(name, channels, size, size, pool, dt, act, has_weight, batch, 1)
        for dt in dtypes
        for act in acts
        for name, channels, size, pool in AIRBENCH_SHAPES
    ]


def aot_specs(sites: Iterable[AotSite]) -> list[AotSpec]:
    """:func:`site_specs` of every site, in order, without repeats.

    Two specs are the same compile when kernel, argument types, constexprs and divisibility
    hints agree (the integer values themselves are not compiled in); the first one's label
    is kept.
    """
    specs: dict[tuple, AotSpec] = {}
    for site in sites:
        for spec in site_specs(site):
            key = (
                spec.kernel,
                tuple(sorted(spec.signature.items())),
                tuple(sorted(spec.constexprs.items())),
                tuple(sorted(spec.divisible_by_16)),
            )
            specs.setdefault(key, spec)
    return list(specs.values())
