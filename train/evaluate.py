"""Test-set evaluation, with test-time augmentation: none, the left-right flip (the seed's),
airbench94's six weighted views, or the selective variant (:mod:`train.tta`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

import kernels
from train.loss import label_smoothing_loss
from train.tta import Render, View, multiview_logits, selective_logits, tta_mode


@dataclass
class Evaluation:
    """Summed loss and correct count over the test set, still on the device."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    count: int

    def read(self) -> tuple[float, float]:
        """(mean loss, accuracy): one device sync."""
        return self.loss_sum.item() / self.count, self.correct.item() / self.count


def tta_logits(
    model: nn.Module, inputs: torch.Tensor, flipped: torch.Tensor | None
) -> torch.Tensor:
    """Logits of ``inputs``, averaged with those of their mirror images when given.

    ``inputs`` and ``flipped``: (B, 3, H, W) network inputs; returns float32 (B, K).
    """
    logits = model(inputs).float()
    if flipped is None:
        return logits
    return (logits + model(flipped).float()) / 2


def kernel_render(images: torch.Tensor, indices: torch.Tensor, **augment_options) -> Render:
    """The :data:`~train.tta.Render` that makes each view of the test images ``indices``
    (int64 (B,)) straight from the uint8 set ``images`` (N, 3, H, W) with the augmentation
    kernel: a reflect-pad of 1 and a crop at ``1 + shift`` give the shifted window, the
    kernel's flip mirrors it after the shift (as :func:`train.tta.view_of` does), and the
    normalisation and cast are the same as the plain batch's. ``augment_options``: the
    ``mean``, ``std``, ``out_dtype``, ``backend`` and ``validate`` of :func:`kernels.augment`.
    """

    def render(view: View, rows: torch.Tensor | None) -> torch.Tensor:
        chosen = indices if rows is None else indices[rows]
        count, device = chosen.shape[0], chosen.device
        crop = torch.full((count, 2), 1 + view.shift, dtype=torch.int64, device=device)
        flip = torch.full((count,), view.flip, dtype=torch.bool, device=device)
        no_cutout = torch.zeros(count, 2, dtype=torch.int64, device=device)
        return kernels.augment(
            images, chosen, crop, flip, no_cutout, cutout_size=0, pad=1, **augment_options
        )

    return render


@torch.no_grad()
def evaluate(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    tta: bool | str,
    mean: Sequence[float],
    std: Sequence[float],
    dtype: torch.dtype,
    backend: str,
    batch_size: int,
    smoothing: float,
    autocast,
    tta_fraction: float = 0.25,
) -> Evaluation:
    """Evaluate ``model`` (already in eval mode) on uint8 ``images`` (N, 3, H, W) and int64
    ``labels`` (N,) on the device. The loss is the training objective (label-smoothed) per
    image, so train and test losses compare directly.

    ``tta``: ``True``/"flip" (mean of each image's and its mirror's logits, the mirror made by
    the augmentation kernel), ``False``/"none", "multiview" (airbench94's six views) or
    "selective" (flip TTA, plus the six views for the least-confident ``tta_fraction`` of
    each batch of ``batch_size``: choose a batch size that divides the test set for the
    fraction to hold over the whole set, e.g. 2000 or 1000 of 10,000). Every view is made by
    the augmentation kernel from the uint8 images (:func:`kernel_render`).
    """
    mode = tta_mode(tta)
    count = images.shape[0]
    device = images.device
    loss_sum = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.int64)
    for start in range(0, count, batch_size):
        indices = torch.arange(start, min(start + batch_size, count), device=device)
        n = indices.shape[0]
        no_crop = torch.zeros(n, 2, dtype=torch.int64, device=device)
        no_flip = torch.zeros(n, dtype=torch.bool, device=device)
        options = dict(mean=mean, std=std, out_dtype=dtype, backend=backend, validate=False)
        render = kernel_render(images, indices, **options)
        common = dict(cutout_size=0, pad=0, **options)
        with autocast:
            if mode == "multiview":
                logits = multiview_logits(model, None, render=render)
            else:
                inputs = kernels.augment(images, indices, no_crop, no_flip, no_crop, **common)
                flipped = (
                    kernels.augment(images, indices, no_crop, ~no_flip, no_crop, **common)
                    if mode in ("flip", "selective")
                    else None
                )
                logits = tta_logits(model, inputs, flipped)
                if mode == "selective":
                    logits = selective_logits(
                        model, inputs, tta_fraction, base=logits, render=render
                    )
        target = labels[indices]
        loss_sum += label_smoothing_loss(logits, target, smoothing)
        correct += (logits.argmax(dim=1) == target).sum()
    return Evaluation(loss_sum, correct, count)
