"""The plain-PyTorch ghost BN (+pool, +activation) and the checks every backend runs first.

:func:`ghost_bn_act_reference` is the op written to be obviously right: the ``"eager"``
backend runs it, ``"compile"`` runs it under ``torch.compile``, and the tests hold the
Triton kernels to it. :func:`check_ghost_bn_act_inputs` is what :func:`ghost_bn_act`
validates before dispatching to any backend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels._common import check_tensor

__all__ = ["ACTIVATIONS", "X_DTYPES", "check_ghost_bn_act_inputs", "ghost_bn_act_reference"]

#: The activations after the normalisation: CELU/ReLU (the ResNet9 recipe), exact (erf) and
#: tanh-approximated GELU and SiLU (the airbench family), or None.
ACTIVATIONS = ("celu", "relu", "gelu", "gelu_tanh", "silu", None)
X_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _activation(y: torch.Tensor, act: str | None, alpha: float) -> torch.Tensor:
    if act == "celu":
        return F.celu(y, alpha=alpha)
    if act == "relu":
        return F.relu(y)
    if act == "gelu":
        return F.gelu(y)
    if act == "gelu_tanh":
        return F.gelu(y, approximate="tanh")
    if act == "silu":
        return F.silu(y)
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
    and ``weight`` float32 (C,). ``act`` is one of :data:`ACTIVATIONS` (``alpha`` is CELU's).
    Statistics and the activation are computed in float32; the result has ``x``'s dtype and
    memory format, shape (B, C, H // 2, W // 2) with ``pool`` (odd sizes floored, as
    ``F.max_pool2d``: the last row/column is dropped) else (B, C, H, W).
    """
    if pool:
        x = F.max_pool2d(x, 2)
    batch, channels, height, width = x.shape
    xf = x.float()
    if training:
        groups = xf.reshape(splits, batch // splits, channels, height, width)
        mean = groups.mean(dim=(1, 3, 4), keepdim=True)  # (S, 1, C, 1, 1)
        centred = groups - mean
        # The biased variance by its definition. (Tensor.var over these strided dims is a
        # slow path on the CPU: ~4x the time of the two means, and it dominated a CPU step.)
        var = (centred * centred).mean(dim=(1, 3, 4), keepdim=True)  # (S, 1, C, 1, 1)
        x_hat = (centred * torch.rsqrt(var + eps)).reshape(batch, channels, height, width)
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
    memory_format = (
        torch.channels_last
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
        else torch.contiguous_format
    )
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
    for name, t in (
        ("bias", bias),
        ("running_mean", running_mean),
        ("running_var", running_var),
        ("weight", weight),
    ):
        if t is None:
            continue
        check_tensor(name, t, dtypes=[torch.float32], shape=(channels,), device=x.device)
    if not isinstance(splits, int) or splits < 1:
        raise ValueError(f"splits must be a positive int; got {splits!r}")
    if training and x.shape[0] % splits:
        raise ValueError(
            f"batch size {x.shape[0]} is not divisible by splits={splits}: ghost batch norm "
            "needs equal splits (use a batch that is a multiple of the split count)"
        )
    if pool and (x.shape[2] < 2 or x.shape[3] < 2):
        # Odd sizes are fine (the pool floors, as F.max_pool2d(x, 2)), but a side of 1 would
        # pool to nothing.
        raise ValueError(f"pool=True needs H and W of at least 2; got {tuple(x.shape[2:])}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}; got {act!r}")
    if act == "celu" and not alpha > 0:
        raise ValueError(f"CELU alpha must be positive; got {alpha}")
    if not eps > 0:
        raise ValueError(f"eps must be positive; got {eps}")
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1]; got {momentum}")
