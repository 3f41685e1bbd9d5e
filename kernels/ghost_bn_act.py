"""Ghost batch norm with optional frozen scale, fused with an optional 2×2 max-pool before it
and an activation after it.

The op, for ``x`` (B, C, H, W):
  1. ``pool=True``: 2×2 max-pool, stride 2 (the seed's "max-pool before BN" site);
  2. training: batch norm with statistics (mean, biased variance) per ghost split of
     B/``splits`` consecutive images; eval: the running statistics;
  3. ``y = x̂ · weight + bias`` where ``weight=None`` means a frozen scale of 1;
  4. ``act``: ``"celu"`` (with ``alpha``), ``"relu"`` or ``None``.
In training the running stats (C entries each) are updated in place with the per-split
statistics averaged over the splits, in PyTorch's momentum convention and with the unbiased
variance; this equals the seed's GhostBatchNorm, which keeps C×splits buffers and averages
them when switching to eval, because the update is linear.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._common import check_tensor, compiled, resolve_backend

__all__ = ["ghost_bn_act", "ghost_bn_act_reference", "ACTIVATIONS"]

ACTIVATIONS = ("celu", "relu", None)
X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _activation(y: torch.Tensor, act: str | None, alpha: float) -> torch.Tensor:
    if act == "celu":
        return F.celu(y, alpha=alpha)
    if act == "relu":
        return F.relu(y)
    return y


def ghost_bn_act_reference(
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
    """Plain-PyTorch ghost BN (+pool, +activation), written to be obviously right.

    ``x`` float32/float16/bfloat16 (B, C, H, W); ``bias``, ``running_mean``, ``running_var``
    and ``weight`` float32 (C,). Statistics are computed in float32; the result has ``x``'s
    dtype and memory format, shape (B, C, H/2, W/2) with ``pool`` else (B, C, H, W).
    """
    if pool:
        x = F.max_pool2d(x, 2)
    batch, channels, height, width = x.shape
    xf = x.float()
    if training:
        groups = xf.reshape(splits, batch // splits, channels, height, width)
        mean = groups.mean(dim=(1, 3, 4), keepdim=True)                 # (S, 1, C, 1, 1)
        var = groups.var(dim=(1, 3, 4), unbiased=False, keepdim=True)  # (S, 1, C, 1, 1)
        x_hat = ((groups - mean) * torch.rsqrt(var + eps)).reshape(batch, channels, height, width)
        with torch.no_grad():
            count = (batch // splits) * height * width
            split_mean = mean.reshape(splits, channels).mean(0)
            split_var = var.reshape(splits, channels).mean(0) * (count / max(count - 1, 1))
            running_mean.lerp_(split_mean, momentum)
            running_var.lerp_(split_var, momentum)
    else:
        x_hat = (xf - running_mean[:, None, None]) * torch.rsqrt(running_var[:, None, None] + eps)
    scale = 1.0 if weight is None else weight[:, None, None]
    y = _activation(x_hat * scale + bias[:, None, None], act, alpha)
    memory_format = (torch.channels_last if x.is_contiguous(memory_format=torch.channels_last)
                     and not x.is_contiguous() else torch.contiguous_format)
    return y.to(x.dtype).contiguous(memory_format=memory_format)


def check_ghost_bn_act_inputs(
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
) -> None:
    """Validate the arguments of :func:`ghost_bn_act`; raise a message naming the culprit."""
    check_tensor("x", x, dtypes=X_DTYPES, ndim=4)
    channels = x.shape[1]
    for name, t in (("bias", bias), ("running_mean", running_mean),
                    ("running_var", running_var), ("weight", weight)):
        if t is None:
            continue
        check_tensor(name, t, dtypes=[torch.float32], shape=(channels,), device=x.device)
    if not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive int; got {splits!r}")
    if training and x.shape[0] % splits:
        raise ValueError(
            f"batch size {x.shape[0]} is not divisible by splits={splits}: ghost batch norm "
            "needs equal splits (use a batch that is a multiple of the split count)")
    if pool and (x.shape[2] % 2 or x.shape[3] % 2):
        raise ValueError(f"pool=True needs even H and W; got {tuple(x.shape[2:])}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be 'celu', 'relu' or None; got {act!r}")
    if act == "celu" and not alpha > 0:
        raise ValueError(f"CELU alpha must be positive; got {alpha}")
    if not eps > 0:
        raise ValueError(f"eps must be positive; got {eps}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1]; got {momentum}")


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
    """Ghost batch norm (+ optional max-pool before, + activation after); see module docstring.

    Args:
        x: float32/float16/bfloat16 (B, C, H, W), contiguous or channels_last.
        bias: float32 (C,), learnable shift.
        running_mean, running_var: float32 (C,), updated in place when ``training``.
        weight: float32 (C,) learnable scale, or None for a frozen scale of 1.
        splits: number of ghost batches; B must be a multiple of it in training.
        pool: 2×2 max-pool before the normalisation.
        act: "celu", "relu" or None.
        alpha: CELU's alpha.
        eps, momentum: as ``torch.nn.BatchNorm2d``.
        training: use batch statistics and update running stats, else use running stats.
        backend: "eager", "compile", "triton" or None/"auto" (see ``kernels._common``).

    Returns:
        Tensor of ``x``'s dtype and memory format, (B, C, H/2, W/2) with ``pool`` else
        (B, C, H, W). Differentiable in ``x``, ``bias`` and ``weight``.
    """
    kwargs = dict(weight=weight, splits=splits, pool=pool, act=act, alpha=float(alpha),
                  eps=float(eps), momentum=float(momentum), training=bool(training))
    check_ghost_bn_act_inputs(x, bias, running_mean, running_var, **kwargs)
    backend = resolve_backend(backend, x.device)
    if backend == "eager":
        return ghost_bn_act_reference(x, bias, running_mean, running_var, **kwargs)
    if backend == "compile":
        return compiled(ghost_bn_act_reference)(x, bias, running_mean, running_var, **kwargs)
    return _ghost_bn_act_triton(x, bias, running_mean, running_var, **kwargs)


def _ghost_bn_act_triton(x, bias, running_mean, running_var, **kwargs) -> torch.Tensor:
    raise NotImplementedError("the Triton ghost BN kernels are being written (issue 3)")
