"""The piecewise-linear learning-rate schedule, with the flat floor of the EMA step."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass

from train.config import TrainConfig


@dataclass(frozen=True)
class PiecewiseLinear:
    """Linear interpolation through ``(knots[i], values[i])``, flat beyond both ends.

    ``knots`` are in epochs (fractional epochs allowed) and must not decrease.

    This is ``numpy.interp`` up to rounding, but deliberately not ``numpy.interp`` itself:
    numpy evaluates ``slope·(t − t0) + v0`` where this evaluates ``v0 + (v1 − v0)·(t − t0) /
    (t1 − t0)``, and the two round differently in the last bit for about a fifth of the
    steps of the recipe's schedules. For about 1% of the steps that bit survives into the
    float32 learning rate SGD applies (and into the printed lr column, e.g. 0.45625 rounds
    to 0.4562 or 0.4563), so switching would change the runs' figures. The two also differ
    at a repeated knot: a warm-up of 0 epochs gives knots (0, 0, ...), where this returns
    ``values[0]`` (lr 0 at step 0) and numpy the value after the jump.
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
        # The first knot at or after t closes t's segment; as knots[0] < t, that knot has
        # index >= 1 and the segment's start lies strictly before t, so t0 < t1 (a repeated
        # knot is never a segment of its own here).
        i = bisect.bisect_left(knots, t)
        if i == len(knots):
            return values[-1]
        t0, t1, v0, v1 = knots[i - 1], knots[i], values[i - 1], values[i]
        return v0 + (v1 - v0) * (t - t0) / (t1 - t0)


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


def learning_rate(
    schedule: PiecewiseLinear, step: int, steps_per_epoch: int, batch_size: int
) -> float:
    """SGD's learning rate at ``step``: the schedule at the step's epoch, divided by the batch
    size because the loss is summed over the batch (so the schedule is per example)."""
    return schedule(step / steps_per_epoch) / batch_size
