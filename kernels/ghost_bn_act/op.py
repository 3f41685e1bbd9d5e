"""The public op :func:`ghost_bn_act`: input checks, backend dispatch, and the Triton path
registered as ``torch.library`` ops with fake (meta) functions and autograd.

Backends (see :mod:`kernels._common`): ``"eager"`` runs
:func:`~kernels.ghost_bn_act.reference.ghost_bn_act_reference`, ``"compile"`` the same under
``torch.compile``, ``"triton"`` the kernels through three custom ops. (A network whose batch
norm is plain by design can run :func:`~kernels.ghost_bn_act.native.ghost_bn_act_native`
instead of the eager reference: ``model.layers.GhostBNAct(native_eager=True)``.)

Registration (:func:`kernels._common.register_kernel_op`): ``triton_op`` with compiled kernels,
so that a compiled graph launches them from its own code; ``custom_op`` under the interpreter.
  * ``cifar_kernels::ghost_bn_stats`` — passes 1+2; mutates running_mean/running_var in
    place (declared in ``mutates_args``; torch.compile functionalises it) and returns
    mean, rstd, pooled, argmax, none of which is differentiable. PyTorch refuses autograd
    formulas on mutating ops, which is why the statistics are their own op, called on
    ``x.detach()``.
  * ``cifar_kernels::ghost_bn_act_fwd`` — pass 3, functional, with ``register_autograd``.
    Its backward is the full BN backward (including the dependence of the batch stats
    on x), which is right because the wrapper only ever feeds it the stats of the same x.
  * ``cifar_kernels::ghost_bn_act_bwd`` — backward passes 1–3.
"""

from __future__ import annotations

import torch

from kernels._common import compiled, register_kernel_op, resolve_backend
from kernels.ghost_bn_act.launch import (
    _bwd_impl,
    _fwd_impl,
    _is_channels_last,
    _memory_format,
    _pooled_buffers,
    _stats_impl,
    _supported_layout,
)
from kernels.ghost_bn_act.reference import check_ghost_bn_act_inputs, ghost_bn_act_reference

__all__ = ["ghost_bn_act", "ghost_bn_act_bwd_op", "ghost_bn_act_fwd_op", "ghost_bn_stats_op"]


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
    """Ghost batch norm (+ optional max-pool before, + activation after); see
    :mod:`kernels.ghost_bn_act`.

    Args:
        x: float32/float16/bfloat16 (B, C, H, W), contiguous or channels_last.
        bias: float32 (C,), learnable shift.
        running_mean, running_var: float32 (C,), updated in place when ``training``.
        weight: float32 (C,) learnable scale, or None for a frozen scale of 1.
        splits: number of ghost batches; B must be a multiple of it in training.
        pool: 2×2 max-pool before the normalisation.
        act: "celu", "relu", "gelu", "gelu_tanh", "silu" or None.
        alpha: CELU's alpha.
        eps, momentum: as ``torch.nn.BatchNorm2d``.
        training: use batch statistics and update running stats, else use running stats.
        backend: "eager", "compile", "triton" or None/"auto" (see ``kernels._common``).

    Returns:
        Tensor of ``x``'s dtype and memory format, (B, C, H // 2, W // 2) with ``pool`` else
        (B, C, H, W). Differentiable in ``x``, ``bias`` and ``weight``.
    """
    kwargs = dict(
        weight=weight,
        splits=splits,
        pool=pool,
        act=act,
        alpha=float(alpha),
        eps=float(eps),
        momentum=float(momentum),
        training=bool(training),
    )
    check_ghost_bn_act_inputs(x, bias, running_mean, running_var, **kwargs)
    backend = resolve_backend(backend, x.device)
    if backend == "eager":
        return ghost_bn_act_reference(x, bias, running_mean, running_var, **kwargs)
    if backend == "compile":
        return compiled(ghost_bn_act_reference)(x, bias, running_mean, running_var, **kwargs)
    return _ghost_bn_act_triton(x, bias, running_mean, running_var, **kwargs)


# --------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------


ghost_bn_stats_op = register_kernel_op(
    "ghost_bn_stats",
    _stats_impl,
    mutates_args=("running_mean", "running_var"),
    schema="(Tensor x, Tensor(a!) running_mean, Tensor(b!) running_var, int splits, "
    "bool pool, bool save_pool, float eps, float momentum, bool training) "
    "-> (Tensor, Tensor, Tensor, Tensor)",
)
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


def _fwd_op_impl(
    x: torch.Tensor,
    pooled: torch.Tensor,
    argmax: torch.Tensor,
    mean: torch.Tensor,
    rstd: torch.Tensor,
    bias: torch.Tensor,
    weight: torch.Tensor | None,
    pool: bool,
    act: str,
    alpha: float,
    training: bool,
) -> torch.Tensor:
    return _fwd_impl(x, pooled, mean, rstd, bias, weight, pool, act, alpha)


ghost_bn_act_fwd_op = register_kernel_op(
    "ghost_bn_act_fwd",
    _fwd_op_impl,
    mutates_args=(),
    schema="(Tensor x, Tensor pooled, Tensor argmax, Tensor mean, Tensor rstd, Tensor bias, "
    "Tensor? weight, bool pool, str act, float alpha, bool training) -> Tensor",
)
"""Pass 3: y from x (or its pooled copy) and the stats of ``ghost_bn_stats``. Differentiable
in x, bias and weight; ``argmax`` and ``training`` are only kept for the backward."""


@ghost_bn_act_fwd_op.register_fake
def _fwd_fake(x, pooled, argmax, mean, rstd, bias, weight, pool, act, alpha, training):
    x = _supported_layout(x)
    b, c, h, w = x.shape
    if pool:
        h, w = h // 2, w // 2
    return torch.empty(
        (b, c, h, w),
        dtype=x.dtype,
        device=x.device,
        memory_format=_memory_format(_is_channels_last(x)),
    )


ghost_bn_act_bwd_op = register_kernel_op(
    "ghost_bn_act_bwd",
    _bwd_impl,
    mutates_args=(),
    schema="(Tensor dy, Tensor src, Tensor argmax, Tensor mean, Tensor rstd, Tensor bias, "
    "Tensor? weight, bool pool, bool channels_last, str act, float alpha, "
    "bool training, SymInt height, SymInt width) -> (Tensor, Tensor, Tensor)",
)
"""Backward passes 1–3: (dx, dbias, dweight). ``src`` is x, or the pooled values when
``pool`` (then ``argmax`` routes dx); dweight is Σ g·x̂ even when weight is None. ``height``
and ``width`` are x's: with an odd side the pool dropped x's last row/column, so the pooled
shape alone does not give dx's."""


@ghost_bn_act_bwd_op.register_fake
def _bwd_fake(
    dy, src, argmax, mean, rstd, bias, weight, pool, channels_last, act, alpha, training, h, w
):
    b, c = src.shape[:2]
    dx = torch.empty(
        (b, c, h, w),
        dtype=src.dtype,
        device=src.device,
        memory_format=_memory_format(channels_last),
    )
    return dx, bias.new_empty((c,)), bias.new_empty((c,))


def _fwd_setup_context(ctx, inputs, output):
    x, pooled, argmax, mean, rstd, bias, weight, pool, act, alpha, training = inputs
    # With pool only the pooled copy and the argmax bytes are kept: x itself can be freed.
    ctx.save_for_backward(pooled if pool else x, argmax, mean, rstd, bias, weight)
    ctx.pool, ctx.act, ctx.alpha, ctx.training = pool, act, alpha, training
    ctx.channels_last = _is_channels_last(_supported_layout(x))
    ctx.height, ctx.width = x.shape[2], x.shape[3]


def _fwd_backward(ctx, dy):
    src, argmax, mean, rstd, bias, weight = ctx.saved_tensors
    dx, dbias, dweight = ghost_bn_act_bwd_op(
        dy,
        src,
        argmax,
        mean,
        rstd,
        bias,
        weight,
        ctx.pool,
        ctx.channels_last,
        ctx.act,
        ctx.alpha,
        ctx.training,
        ctx.height,
        ctx.width,
    )
    return (
        dx,
        None,
        None,
        None,
        None,
        dbias,
        None if weight is None else dweight,
        None,
        None,
        None,
        None,
    )


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
        x.requires_grad or bias.requires_grad or (weight is not None and weight.requires_grad)
    )
    # Keep the pooled copy whenever it is cheaper (training: N·e/2 < N·e) or the backward
    # will need it; only eval without grad pools on the fly in pass 3.
    save_pool = pool and (training or needs_grad)
    mean, rstd, pooled, argmax = ghost_bn_stats_op(
        x.detach(),
        running_mean,
        running_var,
        splits if training else 1,
        pool,
        save_pool,
        eps,
        momentum,
        training,
    )
    return ghost_bn_act_fwd_op(
        x,
        pooled,
        argmax,
        mean,
        rstd,
        bias,
        weight,
        pool,
        "none" if act is None else act,
        alpha,
        training,
    )
