"""The recipe's loss: label smoothing, summed over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothing_loss(logits: torch.Tensor, targets: torch.Tensor,
                         smoothing: float) -> torch.Tensor:
    """(1 − s)·cross-entropy + s·mean over classes of −log p, summed over the batch.

    Summing (not averaging) makes the learning rate a per-example quantity, as in the seed,
    and acts as a fixed loss scale for fp16 gradients.

    Args:
        logits: (B, K) any float dtype; the loss is computed in float32.
        targets: int64 (B,) class indices.
        smoothing: s in [0, 1).

    Returns:
        float32 scalar.
    """
    log_probs = F.log_softmax(logits.float(), dim=-1)
    nll = -log_probs.gather(1, targets[:, None]).squeeze(1)
    uniform = -log_probs.mean(dim=-1)
    return ((1.0 - smoothing) * nll + smoothing * uniform).sum()
