"""The recipe's loss: label smoothing, summed over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothing_loss(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float
) -> torch.Tensor:
    """(1 − s)·cross-entropy + s·mean over classes of −log p, summed over the batch.

    This is PyTorch's own label-smoothed cross-entropy with ``reduction="sum"``. Summing
    (not averaging) makes the learning rate a per-example quantity, as in the seed, and acts
    as a fixed loss scale for fp16 gradients.

    Args:
        logits: (B, K) any float dtype; the loss is computed in float32 (the logits of an
            autocast forward are fp16/bf16, too coarse for a sum over the batch).
        targets: int64 (B,) class indices.
        smoothing: s in [0, 1).

    Returns:
        float32 scalar.
    """
    return F.cross_entropy(logits.float(), targets, label_smoothing=smoothing, reduction="sum")
