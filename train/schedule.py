"""The piecewise-linear learning-rate schedule, with the flat floor of the EMA step."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from train.config import TrainConfig


@dataclass(frozen=True)
class PiecewiseLinear:
    """Linear interpolation through ``(knots[i], values[i])``, flat beyond both ends.

    ``knots`` are in epochs (fractional epochs allowed) and must increase.
    """

    knots: tuple[float, ...]
    values: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.knots) != len(self.values) or len(self.knots) < 2:
            raise ValueError("a piecewise-linear schedule needs >= 2 knots and one value each")
        if any(b < a for a, b in zip(self.knots, self.knots[1:])):
            raise ValueError(f"schedule knots must not decrease; got {self.knots}")

    def __call__(self, t: float) -> float:
        knots, values = self.knots, self.values
        if t <= knots[0]:
            return values[0]
        for (t0, v0), (t1, v1) in zip(zip(knots, values), zip(knots[1:], values[1:])):
            if t <= t1:
                return v1 if t1 == t0 else v0 + (v1 - v0) * (t - t0) / (t1 - t0)
        return values[-1]


def recipe_schedule(config: TrainConfig) -> PiecewiseLinear:
    """The seed's schedule: 0 → peak over the warm-up, linear down to ``lr_floor``·peak at
    ``epochs − floor``, then flat (the last ``floor`` epochs, for the EMA); warm-up and floor
    default to epochs/5 each, as the seed scaled them.

    For the final recipe (10 epochs): knots (0, 0), (2, 1.0), (8, 0.1), flat at 0.1 to 10.
    """
    peak = config.lr
    knots: Sequence[float] = (0.0, config.warmup, config.epochs - config.floor)
    values: Sequence[float] = (0.0, peak, peak * config.lr_floor)
    if config.floor:
        knots, values = (*knots, float(config.epochs)), (*values, peak * config.lr_floor)
    return PiecewiseLinear(tuple(map(float, knots)), tuple(map(float, values)))


def learning_rate(schedule: PiecewiseLinear, step: int, steps_per_epoch: int,
                  batch_size: int) -> float:
    """SGD's learning rate at ``step``: the schedule at the step's epoch, divided by the batch
    size because the loss is summed over the batch (so the schedule is per example)."""
    return schedule(step / steps_per_epoch) / batch_size
