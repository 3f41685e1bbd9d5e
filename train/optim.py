"""Nesterov SGD with the recipe's two parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from train.config import TrainConfig


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.SGD:
    """SGD over two groups: conv/linear weights and learnable BN scales (weight decay
    5e-4 × batch; the seed grouped by ``'bias' in name``), and the BN biases, whose learning
    rate is ×``bias_lr_mult`` and weight decay ÷``bias_wd_div``
    (×64 and ÷64 in the final recipe: frozen scales of 1 stand for 1/4, so the biases'
    effective step is 4² larger, plus another ×4 the seed found helpful).

    Each group carries ``lr_mult``; :func:`set_learning_rate` applies it.
    """
    groups = model.param_groups()
    weight_decay = config.weight_decay * config.batch_size
    param_groups = [
        {
            "params": groups["weights"] + groups["bn_weights"],
            "weight_decay": weight_decay,
            "lr_mult": 1.0,
        },
        {
            "params": groups["bn_biases"],
            "weight_decay": weight_decay / config.bias_wd_div,
            "lr_mult": config.bias_lr_mult,
        },
    ]
    return torch.optim.SGD(
        [g for g in param_groups if g["params"]],
        lr=0.0,
        momentum=config.momentum,
        nesterov=config.nesterov,
        foreach=True,
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr × lr_mult`` (a host float: no device sync)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_mult"]
