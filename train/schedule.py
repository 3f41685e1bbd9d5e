"""The learning-rate schedules: the seed's piecewise-linear one with the flat floor of the EMA
step, airbench94's triangle and airbench94_muon's linear decay; and how fractional epochs
count their steps.

Fractional epochs, as airbench94 counts them: a run of ``epochs`` (9.9) with ``S`` batches per
epoch takes ``T = ceil(epochs · S)`` steps over ``ceil(epochs)`` epochs, the last one stopping
after ``T − (ceil(epochs) − 1) · S`` steps (:func:`total_steps`, :func:`steps_in_epoch`).
"""

from __future__ import annotations

import bisect
import math
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


#: airbench94's triangle: the rate starts at this fraction of the peak ...
AIRBENCH_START = 0.2
#: ... and peaks after this fraction of the steps (``int(0.23 · T)``), then falls linearly
#: to ``lr_floor`` of the peak at the last step (airbench94: 0.07).
AIRBENCH_PEAK_AT = 0.23


def total_steps(epochs: float, steps_per_epoch: int) -> int:
    """Steps of a run of ``epochs`` (fractional allowed): ``ceil(epochs · steps_per_epoch)``,
    at least 1. The product is rounded to 9 decimals first, so that a float artefact
    (7.6 · 5 = 37.99999…) neither adds nor loses a step."""
    return max(1, math.ceil(round(epochs * steps_per_epoch, 9)))


def steps_in_epoch(epoch: int, epochs: float, steps_per_epoch: int) -> int:
    """Steps that (1-based) ``epoch`` runs: ``steps_per_epoch`` for every epoch but a partial
    last one, which runs what remains of :func:`total_steps`; 0 past the end."""
    done_before = (epoch - 1) * steps_per_epoch
    return max(0, min(steps_per_epoch, total_steps(epochs, steps_per_epoch) - done_before))


def airbench_schedule(total: int, floor: float) -> PiecewiseLinear:
    """airbench94's learning-rate factor over *steps*: linear from :data:`AIRBENCH_START` at
    step 0 to 1 at step ``int(0.23 · total)``, then linear to ``floor`` at step ``total``."""
    peak_step = float(int(AIRBENCH_PEAK_AT * total))
    return PiecewiseLinear((0.0, peak_step, float(total)), (AIRBENCH_START, 1.0, floor))


def linear_decay_schedule(total: int, floor: float) -> PiecewiseLinear:
    """airbench94_muon's learning-rate factor over *steps*: 1 at step 0, linear to ``floor``
    (airbench94_muon: 0) at step ``total``."""
    return PiecewiseLinear((0.0, float(total)), (1.0, floor))
