"""An eager ghost BN (+pool, +activation) on PyTorch's own batch norm where that computes the
same thing, the reference elsewhere: what a network whose batch norm is plain by design (the
airbench family) runs instead of the eager reference.

Why not the reference everywhere: written out, the normalisation is about a dozen tensor ops
forward (means, centring, square, rsqrt, scale, shift) and as many backward, each a pass
over the activations. ``F.batch_norm`` is one op each way (oneDNN's on the CPU, cuDNN's on a
GPU). Plain batch norm (one split) and evaluation (running statistics, any splits) are exactly what
it computes, so those take it; training with ghost splits keeps the reference, whose
statistics per split ``F.batch_norm`` could only give after copying the splits into channels.

The same numbers as the reference, to rounding (``tests/test_ghost_bn_act.py``): batch
statistics over (B, H, W), the biased variance in the normalisation, the unbiased one
(count / (count − 1)) lerped into ``running_var`` with weight ``momentum``, all in float32
whatever ``x``'s dtype, the result in ``x``'s dtype and memory format. The rounding is not the
reference's: PyTorch's CPU backward accumulates its per-channel sums in one pass, and its dx
lands within about 1e-5 of float64 (relative to its largest value) where the reference's,
summed pairwise, lands within about 1e-6. That is why ResNet9's ghost BN keeps the reference
even where a data-parallel rank's share is a single split: its two-process tests hold a
rank's steps to the single-process steps to 1e-5, which needs the same arithmetic on both.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.ghost_bn_act.reference import (
    _activation,
    check_ghost_bn_act_inputs,
    ghost_bn_act_reference,
)

__all__ = ["ghost_bn_act_native"]


def ghost_bn_act_native(
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
    """[2×2 max-pool →] batch norm → activation with ``F.batch_norm`` when ``splits`` is 1
    or not ``training``; :func:`ghost_bn_act_reference` otherwise. Arguments, shapes and
    dtypes as the reference's: ``x`` float32/float16/bfloat16 (B, C, H, W); ``bias``,
    ``running_mean``, ``running_var``, ``weight`` float32 (C,). Checked as the op's inputs are."""
    options = dict(
        weight=weight,
        splits=splits,
        pool=pool,
        act=act,
        alpha=alpha,
        eps=eps,
        momentum=momentum,
        training=training,
    )
    check_ghost_bn_act_inputs(x, bias, running_mean, running_var, **options)
    if training and splits != 1:
        return ghost_bn_act_reference(x, bias, running_mean, running_var, **options)
    if pool:
        x = F.max_pool2d(x, 2)
    normalised = F.batch_norm(
        x.float(),
        running_mean,
        running_var,
        weight=weight,
        bias=bias,
        training=training,
        momentum=momentum,
        eps=eps,
    )
    y = _activation(normalised, act, alpha)
    channels_last = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    return y.to(x.dtype).contiguous(memory_format=memory_format)
