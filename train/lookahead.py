"""Lookahead as airbench94 does it: a slow copy of the weights pulled towards the fast ones
every ``every`` steps, after which the fast weights restart from the slow ones.

airbench94 (legacy/airbench94.py), in its order, after optimiser step ``t`` (1-based count
of steps done, ``T`` the run's total):

* if ``t % 5 == 0``: ``slow ← slow + (1 − d)·(fast − slow)`` (a lerp), then
  ``fast ← slow``, with the decay ``d = 0.95⁵ · (t/T)³``;
* if ``t >= T``: the same with ``d = 1``, i.e. ``fast ← slow`` (slow unchanged): the run ends
  on the slow weights.

``d`` grows from 0 (early on the slow copy simply follows: lookahead is off) to 0.95⁵ ≈ 0.77
at the end. The tensors are every floating-point entry of the model's ``state_dict``:
parameters (frozen ones too, where the lerp is a no-op) *and* the BN running statistics;
integer buffers (``num_batches_tracked``) are left alone. The slow copies keep each tensor's
dtype, as airbench's ``clone()`` does.

Everything is in place, with foreach ops over all tensors and the decay a host float
computed from host step counts: no device sync, no ``.item()``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

#: airbench94's lookahead decay at the end of the run: 0.95 per step over the 5-step interval.
AIRBENCH_LOOKAHEAD_BASE = 0.95**5


def lookahead_decay(
    step: int, total_steps: int, *, base: float = AIRBENCH_LOOKAHEAD_BASE, power: float = 3.0
) -> float:
    """The decay at (1-based) step ``step`` of ``total_steps``: ``base · (step/total)^power``
    (airbench94: ``0.95⁵ · (t/T)³``)."""
    if total_steps <= 0:
        raise ValueError(f"total_steps must be positive; got {total_steps}")
    if not 0 <= step <= total_steps:
        raise ValueError(f"step must lie in [0, {total_steps}]; got {step}")
    return base * (step / total_steps) ** power


class Lookahead:
    """Slow copies of ``tensors`` and the in-place lookahead update.

    Args:
        tensors: the fast tensors, updated in place (floating point, any dtype/device; for
            a module use :meth:`from_module`). They must stay the same tensor objects for the
            whole run (``load_state_dict`` into the model is fine, replacing them is not).
        total_steps: ``T``, the run's number of optimiser steps.
        every: the interval ``k`` in steps (airbench94: 5).
        base, power: the decay schedule (:func:`lookahead_decay`).
        names: optional names of the tensors, kept for ``state_dict``.

    How the trainer calls it: build it once the model is initialised (and its whitening set),
    then after every optimiser step call ``lookahead.after_step(t)`` with ``t`` the number of
    steps done so far (1, 2, …, T): it updates on multiples of ``every`` and, at ``t >= T``,
    leaves the model on the slow weights. The EMA, if any, is a separate thing (airbench94
    has no EMA); evaluation then uses the model's weights as they are.
    """

    def __init__(
        self,
        tensors: Sequence[torch.Tensor],
        *,
        total_steps: int,
        every: int = 5,
        base: float = AIRBENCH_LOOKAHEAD_BASE,
        power: float = 3.0,
        names: Sequence[str] | None = None,
    ) -> None:
        if every < 1:
            raise ValueError(f"the lookahead interval must be >= 1; got {every}")
        if total_steps < 1:
            raise ValueError(f"total_steps must be positive; got {total_steps}")
        if any(not t.is_floating_point() for t in tensors):
            raise TypeError("lookahead keeps slow copies of floating-point tensors only")
        if names is not None and len(names) != len(tensors):
            raise ValueError(f"{len(names)} names for {len(tensors)} tensors")
        self.fast = [t.detach() for t in tensors]  # aliases: in-place updates reach the model
        self.slow = [t.detach().clone() for t in tensors]
        self.names = list(names) if names is not None else [str(i) for i in range(len(tensors))]
        self.total_steps, self.every, self.base, self.power = total_steps, every, base, power
        self.finished = False

    @classmethod
    def from_module(cls, module: nn.Module, **kwargs) -> Lookahead:
        """Over every floating-point entry of ``module.state_dict()`` (parameters and BN
        running statistics), as airbench94; ``kwargs`` as for the constructor."""
        state = module.state_dict()
        names = [n for n, t in state.items() if t.is_floating_point()]
        return cls([state[n] for n in names], names=names, **kwargs)

    def decay(self, step: int) -> float:
        """The decay this schedule uses at ``step`` (:func:`lookahead_decay`)."""
        return lookahead_decay(step, self.total_steps, base=self.base, power=self.power)

    @torch.no_grad()
    def update(self, decay: float) -> None:
        """``slow ← lerp(slow, fast, 1 − decay)``, then ``fast ← slow``: two foreach ops."""
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"the lookahead decay must be in [0, 1]; got {decay}")
        if decay < 1.0:  # decay 1 leaves slow as it is: only the reset remains
            torch._foreach_lerp_(self.slow, self.fast, 1.0 - decay)
        torch._foreach_copy_(self.fast, self.slow)

    def after_step(self, step: int) -> None:
        """Call after optimiser step ``step`` (1-based count of steps done): the scheduled
        update on multiples of ``every``, and at ``step >= total_steps`` the final reset of
        the fast weights to the slow ones (once; later calls do nothing)."""
        if self.finished:
            return
        if step % self.every == 0:
            self.update(self.decay(min(step, self.total_steps)))
        if step >= self.total_steps:
            self.finish()

    def finish(self) -> None:
        """End the run on the slow weights: ``fast ← slow`` (airbench's ``update(decay=1)``)."""
        self.update(1.0)
        self.finished = True

    def state_dict(self) -> dict:
        """The slow copies (the tensors themselves, by name) and the schedule."""
        return {
            "slow": dict(zip(self.names, self.slow)),
            "total_steps": self.total_steps,
            "every": self.every,
            "base": self.base,
            "power": self.power,
            "finished": self.finished,
        }

    def load_state_dict(self, state: dict) -> None:
        """Copy saved slow tensors into this one's (same names, shapes, dtypes)."""
        slow = state["slow"]
        if list(slow) != self.names:
            raise ValueError("the saved lookahead state holds other tensors than this one")
        for mine, saved in zip(self.slow, slow.values()):
            mine.copy_(saved)
        self.total_steps, self.every = int(state["total_steps"]), int(state["every"])
        self.base, self.power = float(state["base"]), float(state["power"])
        self.finished = bool(state["finished"])
