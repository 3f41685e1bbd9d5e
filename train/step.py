"""One optimisation step of the recipe: forward, summed label-smoothed loss, backward,
Nesterov SGD at the scheduled rate, and the periodic weight-average update.

:meth:`TrainStep.state_dict` holds everything a resumed run needs besides the model's own
weights: the schedule position, the optimiser's momentum, the weight average.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from train.config import TrainConfig
from train.ema import WeightAverage
from train.loss import label_smoothing_loss
from train.optim import make_optimizer, set_learning_rate
from train.runtime import Runtime
from train.schedule import learning_rate, recipe_schedule


class TrainStep:
    """Callable ``step(inputs, labels) -> (loss_sum, correct)`` holding the optimiser state.

    ``forward`` is the model or its ``torch.compile``d / DistributedDataParallel wrapper (same
    parameters). The returned tensors stay on the device: the caller accumulates them and
    reads them once per epoch, so the step loop never waits for the GPU.

    ``loss_scale``: what the loss is multiplied by before ``backward`` (the returned loss is
    not). Data-parallel training over K processes passes K: the recipe's loss is summed over
    the batch while DistributedDataParallel averages the ranks' gradients, so K × the mean of
    the per-rank sums is the gradient of the whole batch's sum, the single-process update.
    """

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[[torch.Tensor], torch.Tensor],
        config: TrainConfig,
        runtime: Runtime,
        steps_per_epoch: int,
        loss_scale: float = 1.0,
    ) -> None:
        self.model, self.forward, self.runtime = model, forward, runtime
        self.loss_scale = loss_scale
        self.optimizer = make_optimizer(model, config, fused=runtime.device.type == "cuda")
        self.schedule = recipe_schedule(config)
        self.steps_per_epoch = steps_per_epoch
        self.batch_size = config.batch_size
        self.smoothing = config.label_smoothing
        self.ema_every = config.ema_every
        self.ema = (
            WeightAverage(model, config.ema_momentum**config.ema_every) if config.ema else None
        )
        self.steps = 0
        self.last_lr = 0.0  # the rate the latest step used (per example)
        # Index of the first step whose loss was not finite (-1: none). Kept on the device
        # so that detecting divergence costs no sync per step.
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=runtime.device)

    @property
    def lr(self) -> float:
        """The learning rate the next step will use (per example)."""
        return learning_rate(self.schedule, self.steps, self.steps_per_epoch, self.batch_size)

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs`` (B, 3, H, W) in the run's dtype, ``labels`` int64 (B,); returns the
        float32 summed loss of these B images (unscaled) and the int64 count of correct
        predictions (device scalars). With data parallelism B is this rank's share."""
        self.last_lr = self.lr
        set_learning_rate(self.optimizer, self.last_lr)
        with self.runtime.autocast():
            logits = self.forward(inputs)
        loss = label_smoothing_loss(logits, labels, self.smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.loss_scale == 1 else loss * self.loss_scale).backward()
        self.optimizer.step()
        bad = ~torch.isfinite(loss.detach()) & (self.first_bad_step < 0)
        self.first_bad_step = torch.where(bad, self.steps, self.first_bad_step)
        self.steps += 1
        if self.ema is not None and self.steps % self.ema_every == 0:
            self.ema.update()
        return loss.detach(), (logits.detach().argmax(dim=1) == labels).sum()

    def state_dict(self) -> dict:
        """Schedule position, optimiser and weight-average state (live tensors: save them
        before the next step). Reads ``first_bad_step`` back: one device sync, so call it
        only when checkpointing."""
        return {
            "steps": self.steps,
            "last_lr": self.last_lr,
            "first_bad_step": int(self.first_bad_step.item()),
            "optimizer": self.optimizer.state_dict(),
            "ema": None if self.ema is None else self.ema.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` of a step built with the same configuration."""
        if (state["ema"] is None) != (self.ema is None):
            raise ValueError("the saved step and this one disagree on the weight average")
        self.steps = int(state["steps"])
        self.last_lr = float(state["last_lr"])
        self.first_bad_step.fill_(int(state["first_bad_step"]))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.optimizer.defaults.get("fused"):
            # A fused optimiser's rates are device tensors; a checkpoint read onto the CPU
            # (or saved by a foreach run) brings them back elsewhere, or as floats.
            device = self.optimizer.param_groups[0]["params"][0].device
            for group in self.optimizer.param_groups:
                group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=device)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
