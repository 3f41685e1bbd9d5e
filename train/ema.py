"""Exponential moving average of the weights, used for evaluation."""

from __future__ import annotations

import torch
from torch import nn


class WeightAverage:
    """EMA of every floating-point parameter and buffer of ``model``.

    The average starts at zero and is divided by ``1 − ρᵗ`` when read (Adam-style bias
    correction). The seed started from a copy of the initial weights instead; in a short run
    (e.g. 95 steps at batch 128 → 19 updates) that copy still dominates the average and
    evaluates as a nearly random model. With bias correction the first update already
    reads back the current weights, and after the full recipe's ~190 updates at
    ρ = 0.99⁵ the correction factor differs from 1 by ρ¹⁹⁰ ≈ 7·10⁻⁵, so the full recipe is
    unchanged.
    """

    def __init__(self, model: nn.Module, rho: float) -> None:
        if not 0.0 < rho < 1.0:
            raise ValueError(f"EMA rho must be in (0, 1); got {rho}")
        self.rho = rho
        self.names = [n for n, t in model.state_dict().items() if t.is_floating_point()]
        self._sources = [model.state_dict()[n] for n in self.names]
        self.average = [torch.zeros_like(t, dtype=torch.float32) for t in self._sources]
        self.updates = 0

    @torch.no_grad()
    def update(self) -> None:
        """average ← ρ·average + (1 − ρ)·current (all on the device, no sync)."""
        self.lerp()
        self.updates += 1

    @torch.no_grad()
    def lerp(self) -> None:
        """The device half of :meth:`update` (what a CUDA graph captures): the average moves,
        the host's count of updates does not."""
        sources = [s.float() for s in self._sources]
        torch._foreach_lerp_(self.average, sources, 1.0 - self.rho)

    @property
    def correction(self) -> float:
        """1 / (1 − ρᵗ): what undoes the zero start after t updates."""
        return 1.0 / (1.0 - self.rho**self.updates)

    @torch.no_grad()
    def copy_to(self, target: nn.Module) -> None:
        """Write the bias-corrected average into ``target`` (a model of the same structure)."""
        if self.updates == 0:
            raise RuntimeError(
                "the weight average has no updates yet: train for "
                "at least one averaging interval before evaluating it"
            )
        state = target.state_dict()
        corrected = torch._foreach_mul(self.average, self.correction)
        for name, value in zip(self.names, corrected):
            state[name].copy_(value)

    def state_dict(self) -> dict:
        return {"average": self.average, "updates": self.updates, "rho": self.rho}

    def load_state_dict(self, state: dict) -> None:
        for mine, saved in zip(self.average, state["average"]):
            mine.copy_(saved)
        self.updates = int(state["updates"])
