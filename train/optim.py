"""Nesterov SGD with the recipe's two parameter groups."""

from __future__ import annotations

import torch
from torch import nn

from train.config import TrainConfig


def make_optimizer(
    model: nn.Module,
    config: TrainConfig,
    fused: bool = False,
    groups: dict[str, list[nn.Parameter]] | None = None,
) -> torch.optim.SGD:
    """SGD over two groups: conv/linear weights and learnable BN scales (weight decay
    5e-4 × batch; the seed grouped by ``'bias' in name``), and the BN biases, whose learning
    rate is ×``bias_lr_mult`` and weight decay ÷``bias_wd_div``
    (×64 and ÷64 in the final recipe: frozen scales of 1 stand for 1/4, so the biases'
    effective step is 4² larger, plus another ×4 the seed found helpful).

    Each group carries ``lr_mult``; :func:`set_learning_rate` applies it.

    ``fused``: one fused kernel for the whole update (``fused=True``) with each group's
    learning rate a 0-d tensor on the parameters' device, set in place every step: no host
    value is baked into the update (what a CUDA graph needs) and the step launches one kernel
    per group instead of a handful of foreach ones. The trainer asks for it on a GPU; without
    it, foreach SGD with float learning rates (the CPU default, where the fused kernel gains
    nothing).

    ``groups``: ``{"weights", "bn_biases", "bn_weights": [parameters]}`` (default:
    ``model.param_groups()``, ResNet9's roles; :func:`train.build.build_optimizer` passes
    airbench's net regrouped so).
    """
    groups = model.param_groups() if groups is None else groups
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
    param_groups = [g for g in param_groups if g["params"]]
    if not fused:
        return torch.optim.SGD(
            param_groups, lr=0.0, momentum=config.momentum, nesterov=config.nesterov, foreach=True
        )
    device = param_groups[0]["params"][0].device
    for group in param_groups:
        group["lr"] = torch.zeros((), dtype=torch.float32, device=device)
    return torch.optim.SGD(
        param_groups,
        lr=torch.zeros((), dtype=torch.float32, device=device),
        momentum=config.momentum,
        nesterov=config.nesterov,
        fused=True,
    )


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's learning rate to ``lr × lr_mult``: a host float, or written into the
    group's device tensor in place (a fill from a host scalar: no device sync)."""
    for group in optimizer.param_groups:
        value = lr * group["lr_mult"]
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value
