"""The plain-PyTorch augmentation, the parameters it takes, and the checks every backend
runs first.

:func:`random_augment_params` draws the per-image crop, flip and cutout choices (the only
randomness: the op itself is deterministic given them). :func:`augment_reference` is the op
written to be obviously right: the ``"eager"`` backend runs it, ``"compile"`` runs it under
``torch.compile``, and the tests hold the Triton kernel to it bit for bit.
:func:`check_augment_inputs` is what :func:`augment` validates (``validate=True``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from kernels._common import check_tensor

__all__ = ["OUT_DTYPES", "augment_reference", "check_augment_inputs", "random_augment_params"]


OUT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def random_augment_params(
    batch: int,
    *,
    pad: int,
    cutout_size: int,
    height: int = 32,
    width: int = 32,
    flip: bool = True,
    device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw one independent crop, flip and cutout choice per image.

    Returns ``crop`` int64 (batch, 2) uniform in [0, 2·pad], ``flip`` bool (batch,) with
    probability ½ (all False when ``flip=False``), and ``cutout`` int64 (batch, 2) uniform over
    the top-left corners that keep the square inside the image (zeros when ``cutout_size=0``).
    """
    if not 0 <= cutout_size <= min(height, width):
        raise ValueError(f"cutout_size must be in [0, {min(height, width)}]; got {cutout_size}")
    kw = dict(device=device, generator=generator)
    crop = torch.randint(0, 2 * pad + 1, (batch, 2), **kw)
    flips = (
        torch.randint(0, 2, (batch,), **kw).bool()
        if flip
        else torch.zeros(batch, dtype=torch.bool, device=device)
    )
    if cutout_size:
        corner_y = torch.randint(0, height - cutout_size + 1, (batch,), **kw)
        corner_x = torch.randint(0, width - cutout_size + 1, (batch,), **kw)
        cutout = torch.stack([corner_y, corner_x], dim=1)
    else:
        cutout = torch.zeros(batch, 2, dtype=torch.int64, device=device)
    return crop, flips, cutout


def augment_reference(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    *,
    cutout_size: int,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Plain-PyTorch augmentation, written to be obviously right (see the module docstring).

    ``data`` uint8 (N, C, H, W); ``indices`` int (B,); ``crop`` int (B, 2); ``flip`` bool (B,);
    ``cutout`` int (B, 2). Returns ``out_dtype`` (B, C, H, W) in channels_last memory order.
    """
    _, channels, height, width = data.shape
    images = data[indices.long()].float()
    if pad:
        images = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    batch = images.shape[0]
    rows = crop[:, 0:1].long() + torch.arange(height, device=data.device)  # (B, H)
    cols = crop[:, 1:2].long() + torch.arange(width, device=data.device)  # (B, W)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    b = torch.arange(batch, device=data.device)[:, None, None]
    patches = images.permute(0, 2, 3, 1)[b, rows[:, :, None], cols[:, None, :]]  # (B, H, W, C)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=data.device)
    std_t = torch.tensor(std, dtype=torch.float32, device=data.device)
    out = (patches - mean_t) / std_t
    if cutout_size:
        i = torch.arange(height, device=data.device)
        j = torch.arange(width, device=data.device)
        in_rows = (i >= cutout[:, 0:1]) & (i < cutout[:, 0:1] + cutout_size)  # (B, H)
        in_cols = (j >= cutout[:, 1:2]) & (j < cutout[:, 1:2] + cutout_size)  # (B, W)
        hole = in_rows[:, :, None, None] & in_cols[:, None, :, None]
        out = out.masked_fill(hole, 0.0)
    # (B, H, W, C) contiguous is exactly channels_last storage of (B, C, H, W).
    return out.to(out_dtype).permute(0, 3, 1, 2)


def check_augment_inputs(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    *,
    cutout_size: int,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
) -> None:
    """Validate the arguments of :func:`augment`; raise a message naming the culprit."""
    check_tensor("data", data, dtypes=[torch.uint8], ndim=4)
    _, channels, height, width = data.shape
    ints = [torch.int32, torch.int64]
    check_tensor("indices", indices, dtypes=ints, ndim=1, device=data.device)
    batch = indices.shape[0]
    check_tensor("crop", crop, dtypes=ints, shape=(batch, 2), device=data.device)
    check_tensor("flip", flip, dtypes=[torch.bool], shape=(batch,), device=data.device)
    check_tensor("cutout", cutout, dtypes=ints, shape=(batch, 2), device=data.device)
    if not data.is_contiguous():
        raise ValueError("data must be contiguous (N, C, H, W) uint8: call .contiguous() once")
    if not 0 <= pad < min(height, width):
        raise ValueError(
            f"pad must be in [0, {min(height, width) - 1}] for reflect padding; got {pad}"
        )
    if not 0 <= cutout_size <= min(height, width):
        raise ValueError(f"cutout_size must be in [0, {min(height, width)}]; got {cutout_size}")
    if len(mean) != channels or len(std) != channels:
        raise ValueError(
            f"mean and std need one value per channel ({channels}); got {len(mean)} and {len(std)}"
        )
    if any(s <= 0 for s in std):
        raise ValueError(f"std values must be positive; got {list(std)}")
    if out_dtype not in OUT_DTYPES:
        raise TypeError(f"out_dtype must be float32, float16 or bfloat16; got {out_dtype}")
    # Range checks read the parameters back; they are small (B·5 values) and catch an
    # out-of-bounds read before any kernel makes one.
    if batch:
        if indices.min() < 0 or indices.max() >= data.shape[0]:
            raise ValueError(f"indices must lie in [0, {data.shape[0] - 1}]")
        if crop.min() < 0 or crop.max() > 2 * pad:
            raise ValueError(f"crop offsets must lie in [0, 2·pad] = [0, {2 * pad}]")
        if cutout_size and (
            cutout.min() < 0
            or cutout[:, 0].max() > height - cutout_size
            or cutout[:, 1].max() > width - cutout_size
        ):
            raise ValueError(
                f"cutout corners must keep the {cutout_size}×{cutout_size} square inside the "
                f"{height}×{width} image"
            )
