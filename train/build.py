"""What a configuration builds: the network, its whitening filters, the optimiser and the
learning-rate rule that drives it step by step.

One job each, so that :mod:`train.trainer` and :mod:`train.step` read as the recipe:

* :func:`build_network` — :class:`~model.resnet9.ResNet9` (``--network resnet9``, the seed's)
  or :class:`~model.airbench.AirbenchNet` (``--network airbench``);
* :func:`build_whitening` — the fixed patch-whitening filters of that network from data;
* :func:`param_roles` — the parameters by the role an optimiser gives them, for either net;
* :func:`build_optimizer` — the seed's SGD, airbench94's SGD, or Muon + SGD;
* :class:`StepRates` — each step's rates from the configured schedule.

How the optimiser's numbers are read (``--sgd-form``, ``--optimizer``):

* **seed** (the default): ``lr`` is the peak of the schedule per *mean* gradient — the loss is
  summed, so SGD gets ``lr / batch`` — and weight decay ``weight_decay × batch``; BN biases
  at ``lr × bias_lr_mult`` with decay ``÷ bias_wd_div`` (:func:`train.optim.make_optimizer`).
* **airbench** SGD: ``lr`` and ``weight_decay`` per 1024 examples (airbench94: 11.5 and 0.0153),
  Nesterov momentum ``momentum`` (0.85), decoupled decay (the same per-step decay for every
  group at the peak), and per-role rates: BN biases × ``bias_lr_mult`` (64), the head ×
  ``head_lr_mult``, the whitening bias × ``whitening_bias_lr_mult`` (both 1 in airbench94)
  (:func:`train.optim_airbench.airbench94_sgd`).
* **muon**: Muon on the 3×3 conv filters at ``muon_lr`` (momentum ``muon_momentum``,
  ``muon_ns_steps`` Newton–Schulz steps, filters renormalised every
  ``muon_renormalize_every`` steps) and Nesterov SGD (momentum ``momentum``) on the rest at
  airbench94_muon's own per-step rates — BN biases and whitening bias 0.053, head 0.67, the
  last two × their ``*_lr_mult`` — with decoupled decay ``weight_decay / 1024`` per example
  of the batch (airbench94_muon: 2e-6, i.e. ``weight_decay`` 0.002048)
  (:func:`train.optim_airbench.muon_with_sgd`). ``lr`` has no role there.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch
from torch import nn

from train.config import (
    CIFAR10_MEAN,
    CIFAR10_STD,
    TrainConfig,
    airbench_config,
    model_config,
)
from train.optim import make_optimizer, set_learning_rate
from train.optim_airbench import (
    AIRBENCH94_MUON,
    airbench94_sgd,
    muon_with_sgd,
    scale_learning_rates,
)
from train.schedule import (
    PiecewiseLinear,
    airbench_schedule,
    learning_rate,
    linear_decay_schedule,
    recipe_schedule,
    total_steps,
)

if TYPE_CHECKING:
    from model.whitening import WhiteningFilters

__all__ = [
    "StepRates",
    "build_network",
    "build_optimizer",
    "build_whitening",
    "data_parallel_airbench_refusal",
    "param_roles",
    "whitening_bias_steps",
]


# ----------------------------------------------------------------------------- network
def build_network(config: TrainConfig, backend: str, ghost_splits: int | None = None) -> nn.Module:
    """The network ``config.network`` names, on the CPU with fresh weights (seed torch's RNG
    first). ``ghost_splits``: the splits one forward sees (see
    :func:`train.config.model_config`)."""
    if config.network == "airbench":
        from model.airbench import AirbenchNet

        return AirbenchNet(airbench_config(config, backend, ghost_splits))
    from model.resnet9 import ResNet9

    return ResNet9(model_config(config, backend, ghost_splits))


def build_whitening(config: TrainConfig, images: torch.Tensor) -> WhiteningFilters | None:
    """The network's whitening filters from the raw training set ``images`` uint8
    (N, 3, 32, 32) (the first ``whitening_images`` of them), or None when whitening is off:
    ResNet9's 3×3 filters (27, padding 1) or airbench's k×k eigenfilters and their
    negations (24 for k = 2)."""
    if not config.whitening:
        return None
    if config.network == "airbench":
        from model.airbench import airbench_whitening_filters

        return airbench_whitening_filters(
            images, CIFAR10_MEAN, CIFAR10_STD, airbench_config(config, "eager")
        )
    from model.whitening import whitening_filters_from_data

    return whitening_filters_from_data(
        images,
        CIFAR10_MEAN,
        CIFAR10_STD,
        n_images=config.whitening_images,
        eps=config.whitening_eps,
    )


# ----------------------------------------------------------------------------- optimiser
def param_roles(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The trainable parameters by role, for either network: ``filters`` (conv weights),
    ``head`` (the linear layer), ``bn_biases``, ``bn_weights`` (learnable BN scales) and
    ``whiten_bias`` (airbench's whitening bias, listed even while frozen). ResNet9's
    ``weights`` are split by dimension: 4-D conv filters, the 2-D head."""
    groups = model.param_groups()
    if "filters" in groups:  # AirbenchNet names its roles so already
        return {role: list(params) for role, params in groups.items()}
    weights = groups["weights"]
    return {
        "filters": [p for p in weights if p.dim() == 4],
        "head": [p for p in weights if p.dim() != 4],
        "bn_biases": list(groups["bn_biases"]),
        "bn_weights": list(groups["bn_weights"]),
    }


def _seed_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """The seed's two-group split for either network: every weight (filters, head, learnable
    BN scales, the whitening bias) in ``weights``, the BN biases apart."""
    if "weights" in model.param_groups():
        return model.param_groups()
    roles = param_roles(model)
    weights = roles["filters"] + roles["head"] + roles.get("whiten_bias", [])
    return {"weights": weights, "bn_biases": roles["bn_biases"], "bn_weights": roles["bn_weights"]}


def build_optimizer(model: nn.Module, config: TrainConfig, *, fused: bool = False):
    """The optimiser of ``config`` over ``model``'s parameters (see the module docstring).

    ``fused``: fused SGD with each group's rate a device tensor (what a CUDA graph needs);
    Muon's own rate stays a host float whatever this says.
    """
    if config.sgd_form == "seed" and config.optimizer == "sgd":
        return make_optimizer(model, config, fused=fused, groups=_seed_groups(model))
    roles = {role: params for role, params in param_roles(model).items() if params}
    mults = {
        "bn_biases": config.bias_lr_mult,
        "head": config.head_lr_mult,
        "whiten_bias": config.whitening_bias_lr_mult,
    }
    if config.optimizer == "sgd":
        return airbench94_sgd(
            roles,
            batch_size=config.batch_size,
            lr=config.lr,
            weight_decay=config.weight_decay,
            momentum=config.momentum,
            lr_mults=mults,
            fused=fused,
        )
    filters = roles.pop("filters")
    published = AIRBENCH94_MUON["sgd_lrs"]
    sgd_lrs = {
        "whiten_bias": published["whiten_bias"] * config.whitening_bias_lr_mult,
        "bn_biases": published["bn_biases"],
        "bn_weights": published["bn_biases"],  # learnable scales (off in every recipe)
        "head": published["head"] * config.head_lr_mult,
    }
    return muon_with_sgd(
        filters,
        roles,
        batch_size=config.batch_size,
        muon_lr=config.muon_lr,
        muon_momentum=config.muon_momentum,
        ns_steps=config.muon_ns_steps,
        renormalize_every=config.muon_renormalize_every,
        sgd_lrs={role: sgd_lrs[role] for role in roles},
        sgd_momentum=config.momentum,
        decay_per_example=config.weight_decay / 1024,
        fused=fused,
    )


# ----------------------------------------------------------------------------- rates
def whitening_bias_steps(config: TrainConfig, steps_per_epoch: int) -> int | None:
    """Steps the whitening bias trains for (then it is frozen): ``whitening_bias_epochs``
    epochs' worth, rounded up (airbench94: 3 epochs; the 2025 speedrun: 0.19 of an epoch);
    None for a network without one (ResNet9)."""
    if config.network != "airbench":
        return None
    return math.ceil(round(config.whitening_bias_epochs * steps_per_epoch, 9))


class StepRates:
    """Each step's learning rates: :meth:`apply` sets them on the optimiser before step
    ``t`` (0-based count of steps done) and returns the rate shown in the table (``--lr``'s
    units) divided by the batch size (the seed's "per example" rate, as
    :attr:`train.step.TrainStep.last_lr` has always held it).

    * seed SGD: exactly the seed's ``schedule(t / S) / batch`` (:mod:`train.schedule`), each
      group × its ``lr_mult``; shown: ``schedule(t / S)``.
    * airbench forms: a factor ``f(t)`` in [0, 1] of each group's peak rate — the piecewise
      schedule ÷ its peak, airbench94's triangle or the linear decay over the run's steps —
      shown as ``f × lr`` (SGD) or ``f × muon_lr`` (Muon). Under the linear decay the
      whitening bias decays over its own training steps instead (airbench94_muon:
      ``1 − t / T_bias``), reaching 0 where it is frozen.

    Rates are written in place (a fill of each group's device tensor under fused SGD), so a
    CUDA graph replaying the step reads them.
    """

    def __init__(self, config: TrainConfig, steps_per_epoch: int) -> None:
        self.config = config
        self.steps_per_epoch = steps_per_epoch
        self.total = total_steps(config.epochs, steps_per_epoch)
        self.bias_steps = whitening_bias_steps(config, steps_per_epoch)
        self.seed_form = config.sgd_form == "seed" and config.optimizer == "sgd"
        self.peak = config.muon_lr if config.optimizer == "muon" else config.lr
        self.piecewise = recipe_schedule(config)
        self.shape: PiecewiseLinear | None = None
        if config.lr_schedule == "airbench":
            self.shape = airbench_schedule(self.total, config.lr_floor)
        elif config.lr_schedule == "linear_decay":
            self.shape = linear_decay_schedule(self.total, config.lr_floor)

    def factor(self, step: int) -> float:
        """The schedule at ``step`` as a fraction of the peak (airbench forms)."""
        if self.shape is not None:
            return self.shape(step)
        return self.piecewise(step / self.steps_per_epoch) / self.config.lr

    def apply(self, optimizer, step: int) -> float:
        """Set every group's rate for step ``step``; return the shown rate ÷ batch size."""
        if self.seed_form:  # bit for bit the seed's rate (checkpoints hold it)
            per_example = learning_rate(
                self.piecewise, step, self.steps_per_epoch, self.config.batch_size
            )
            set_learning_rate(optimizer, per_example)
            return per_example
        factor = self.factor(step)
        per_group = None
        if self.config.lr_schedule == "linear_decay" and self.bias_steps:
            per_group = {"whiten_bias": max(0.0, 1.0 - step / self.bias_steps)}
        scale_learning_rates(optimizer, factor, per_group)
        return factor * self.peak / self.config.batch_size


def data_parallel_airbench_refusal() -> str:
    """Why ``--network airbench`` is refused with data-parallel training (one line)."""
    return (
        "--network airbench is not supported with data-parallel training over several "
        "processes (freezing its whitening bias mid-run breaks DistributedDataParallel, and "
        "its plain batch norm would see each process's share only): use --distribute runs, "
        "or one process"
    )
