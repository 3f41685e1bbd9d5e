"""One optimisation step of the recipe: forward, summed label-smoothed loss, backward,
the optimiser at the scheduled rates (:mod:`train.build`), and what runs between steps: the
periodic weight-average update, airbench's lookahead, and freezing airbench's whitening bias
once its training steps are done.

:meth:`TrainStep.state_dict` holds everything a resumed run needs besides the model's own
weights: the schedule position, the optimiser's momentum, the weight average, the lookahead's
slow weights (the whitening bias's frozen state follows from the step count).

With CUDA graphs (:mod:`train.graphs`) the step's device work is captured once per run, after
:data:`EAGER_STEPS_BEFORE_CAPTURE` uncaptured steps, and replayed from then on; the weight
average gets its own small graph.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from train.build import StepRates, build_optimizer, whitening_bias_steps
from train.config import TrainConfig
from train.ema import WeightAverage
from train.graphs import (
    GraphBackend,
    GraphCaptureError,
    StaticStep,
    default_backend,
    largest_difference,
    restore,
    snapshot,
)
from train.lookahead import Lookahead
from train.loss import label_smoothing_loss
from train.runtime import Runtime
from train.schedule import total_steps

#: Uncaptured steps of each run before its capture: the optimiser creates its momentum
#: buffers on its first step (a first step that a graph would replay forever).
EAGER_STEPS_BEFORE_CAPTURE = 2
#: How far a replayed step may drift from an uncaptured one on the same batch (relative to
#: each tensor's size): the same kernels in the same order, so in practice 0.
REPLAY_TOLERANCE = 1e-4


class TrainStep:
    """Callable ``step(inputs, labels) -> (loss_sum, correct)`` holding the optimiser state.

    ``forward`` is the model or its ``torch.compile``d / DistributedDataParallel wrapper (same
    parameters). The returned tensors stay on the device: the caller accumulates them and
    reads them once per epoch, so the step loop never waits for the GPU. With a captured
    graph they are the graph's own outputs, overwritten by the next step: use them (or
    clone them) before calling the step again.

    ``loss_scale``: what the loss is multiplied by before ``backward`` (the returned loss is
    not). Data-parallel training over K processes passes K: the recipe's loss is summed over
    the batch while DistributedDataParallel averages the ranks' gradients, so K × the mean of
    the per-rank sums is the gradient of the whole batch's sum, the single-process update.

    ``graphs``: ``"off"``, or ``"auto"``/``"on"`` resolved by
    :func:`train.graphs.resolve_graph_mode`: capture the step (after
    ``capture_after`` uncaptured ones; the trainer's warm-up passes more steps than it runs and
    captures with :meth:`check_capture`). A capture that fails falls back to
    uncaptured steps with one line to ``log`` under ``"auto"`` and raises
    :class:`~train.graphs.GraphCaptureError` under ``"on"``. ``graph_backend``: how to
    capture (default: CUDA graphs on the step's device).
    """

    def __init__(
        self,
        model: nn.Module,
        forward: Callable[[torch.Tensor], torch.Tensor],
        config: TrainConfig,
        runtime: Runtime,
        steps_per_epoch: int,
        loss_scale: float = 1.0,
        graphs: str = "off",
        graph_backend: GraphBackend | None = None,
        log: Callable[[str], None] = print,
        capture_after: int = EAGER_STEPS_BEFORE_CAPTURE,
    ) -> None:
        self.model, self.forward, self.runtime = model, forward, runtime
        self.loss_scale = loss_scale
        self.graphs, self.log, self.capture_after = graphs, log, capture_after
        self._graph_backend = graph_backend
        self.steps_per_epoch = steps_per_epoch
        self.total_steps = total_steps(config.epochs, steps_per_epoch)
        # airbench's whitening bias trains for its first steps only; a model reused from a
        # previous run (or the warm-up) may have it frozen: this run starts it trainable.
        self.bias_steps = whitening_bias_steps(config, steps_per_epoch)
        self._sync_whitening_bias(steps=0)
        # Fused SGD keeps each group's rate in a device tensor, which a graph reads at replay.
        fused = runtime.device.type == "cuda" or graphs != "off"
        self.optimizer = build_optimizer(model, config, fused=fused)
        self.rates = StepRates(config, steps_per_epoch)
        self.batch_size = config.batch_size
        self.smoothing = config.label_smoothing
        self.ema_every = config.ema_every
        self.ema = (
            WeightAverage(model, config.ema_momentum**config.ema_every) if config.ema else None
        )
        # Lookahead's slow weights start from the model as it is now (initialised, whitened).
        self.lookahead = (
            Lookahead.from_module(model, total_steps=self.total_steps, every=config.lookahead_every)
            if config.lookahead
            else None
        )
        self.steps = 0
        self.last_lr = 0.0  # the rate the latest step used (per example)
        device = runtime.device
        # The step index on the device, for what the step itself records (a graph cannot
        # read the Python counter, which it would bake in at capture).
        self.step_index = torch.zeros((), dtype=torch.int64, device=device)
        # Index of the first step whose loss was not finite (-1: none). Kept on the device
        # so that detecting divergence costs no sync per step.
        self.first_bad_step = torch.full((), -1, dtype=torch.int64, device=device)
        self._step_graph: StaticStep | None = None
        self._ema_graph = None
        self._uncaptured = 0  # uncaptured steps since the state was last (re)built
        self.replay_gap: float | None = None  # what check_capture measured

    @property
    def whitening_bias_frozen(self) -> bool:
        """Whether the model's whitening bias is frozen now (False for ResNet9: none)."""
        return bool(getattr(self.model, "whitening_bias_frozen", False))

    def _sync_whitening_bias(self, steps: int) -> bool:
        """Freeze the whitening bias once ``steps`` reach its training steps (trainable
        before); return whether that changed anything. A change changes what the step
        computes (no gradient for the bias, nor for the first conv's input), so a captured
        graph is dropped and captured again."""
        if self.bias_steps is None:
            return False
        frozen = steps >= self.bias_steps
        if frozen == self.whitening_bias_frozen:
            return False
        self.model.freeze_whitening_bias(frozen)
        self.drop_graph()
        return True

    @property
    def captured(self) -> bool:
        """Whether steps are replayed from a graph now."""
        return self._step_graph is not None

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``inputs`` (B, 3, H, W) in the run's dtype, ``labels`` int64 (B,); returns the
        float32 summed loss of these B images (unscaled) and the int64 count of correct
        predictions (device scalars). With data parallelism B is this rank's share."""
        # In place (a fill of each group's device tensor under fused SGD): what a replay reads.
        self.last_lr = self.rates.apply(self.optimizer, self.steps)
        if self.graphs != "off" and self._step_graph is None:
            if self._uncaptured >= self.capture_after:
                self._try_capture(inputs, labels)
        graph = self._step_graph
        if graph is not None and graph.matches(inputs, labels):
            loss, correct = graph(inputs, labels)
        else:
            loss, correct = self._uncaptured_step(inputs, labels)
        self.steps += 1
        if self.ema is not None and self.steps % self.ema_every == 0:
            if self._ema_graph is not None:
                self._ema_graph.replay()
                self.ema.updates += 1
            else:
                self.ema.update()
        if self.lookahead is not None:  # on the host's count: foreach ops, no sync
            self.lookahead.after_step(self.steps)
        self._sync_whitening_bias(self.steps)
        return loss, correct

    # ------------------------------------------------------------------ the device work
    def _device_step(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Everything a step does on the device, reading only device state: what a graph
        captures. Returns (loss, correct) as in :meth:`__call__`."""
        # No autocast weight cache: each weight is cast once per forward anyway, and a cache
        # entry made during a capture would outlive it.
        with self.runtime.autocast(cache=False):
            logits = self.forward(inputs)
        loss = label_smoothing_loss(logits, labels, self.smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        (loss if self.loss_scale == 1 else loss * self.loss_scale).backward()
        self.optimizer.step()
        loss = loss.detach()
        bad = ~torch.isfinite(loss) & (self.first_bad_step < 0)
        self.first_bad_step.copy_(torch.where(bad, self.step_index, self.first_bad_step))
        self.step_index.add_(1)
        return loss, (logits.detach().argmax(dim=1) == labels).sum()

    def _uncaptured_step(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        self._uncaptured += 1
        if self.graphs == "off":
            return self._device_step(inputs, labels)
        with self._backend().warm_up_context():  # the steps before a capture
            return self._device_step(inputs, labels)

    # ------------------------------------------------------------------ capture
    def _backend(self) -> GraphBackend:
        if self._graph_backend is None:
            self._graph_backend = default_backend(self.runtime.device)
        return self._graph_backend

    def _state_tensors(self) -> list[torch.Tensor]:
        """Every tensor a step changes in place: weights and BN buffers, momentum, the
        step's counters, the weight average."""
        tensors = list(self.model.state_dict(keep_vars=False).values())
        optimizer_state = getattr(self.optimizer, "state", {})  # (Muon is never captured)
        for group in self.optimizer.param_groups:
            for param in group["params"]:
                buffer = optimizer_state.get(param, {}).get("momentum_buffer")
                if buffer is not None:
                    tensors.append(buffer)
        tensors += [self.first_bad_step, self.step_index]
        if self.ema is not None:
            tensors += self.ema.average
        return tensors

    def _capture(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        """Capture the step (and the weight-average update) on this batch's shapes. The state
        is as before afterwards: a backend may run the work while it records it."""
        state = self._state_tensors()
        saved = snapshot(state)
        backend = self._backend()
        try:
            self._step_graph = StaticStep(self._device_step, inputs, labels, backend)
            if self.ema is not None:
                self._ema_graph, _ = backend.capture(self.ema.lerp)
        except Exception:
            self._step_graph = self._ema_graph = None
            raise
        finally:
            restore(state, saved)

    def _try_capture(self, inputs: torch.Tensor, labels: torch.Tensor) -> None:
        try:
            self._capture(inputs, labels)
        except Exception as error:  # any failure of a capture means: run uncaptured
            self._give_up(f"capturing the step failed ({type(error).__name__}: {error})")

    def _give_up(self, why: str) -> None:
        if self.graphs == "on":
            raise GraphCaptureError(f"--cuda-graphs on: {why}; use --cuda-graphs auto or off")
        self.log(f"CUDA graphs off: {why}; steps run uncaptured")
        self.graphs = "off"

    def check_capture(self, inputs: torch.Tensor, labels: torch.Tensor) -> bool:
        """Capture, then replay once against an uncaptured step on the same batch from the
        same state: the same loss and state within :data:`REPLAY_TOLERANCE`. Returns whether
        steps are captured from now on; a failure or a disagreement falls back (``auto``) or
        raises (``on``). Needs one uncaptured step before it (the optimiser's state).

        The check leaves the state one step on, as one step would."""
        if self.graphs == "off":
            return False
        state = self._state_tensors()
        start = snapshot(state)
        with self._backend().warm_up_context():
            loss, _ = self._device_step(inputs, labels)
        uncaptured = snapshot(state) + [loss.clone()]
        restore(state, start)
        try:
            self._capture(inputs, labels)
        except Exception as error:
            self._give_up(f"capturing the step failed ({type(error).__name__}: {error})")
            return False
        loss, _ = self._step_graph(inputs, labels)  # type: ignore[misc]
        gap = self.replay_gap = largest_difference(uncaptured, snapshot(state) + [loss])
        if gap > REPLAY_TOLERANCE:
            self._step_graph = self._ema_graph = None
            restore(state, uncaptured[:-1])
            self._give_up(
                f"a replay differs from an uncaptured step by {gap:.3g} (relative; "
                f"tolerance {REPLAY_TOLERANCE:g})"
            )
            return False
        return True

    # ------------------------------------------------------------------ checkpoints
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
            "lookahead": None if self.lookahead is None else self.lookahead.state_dict(),
        }

    def load_state_dict(self, state: dict) -> None:
        """Continue from :meth:`state_dict` of a step built with the same configuration."""
        if (state["ema"] is None) != (self.ema is None):
            raise ValueError("the saved step and this one disagree on the weight average")
        saved_lookahead = state.get("lookahead")  # absent from checkpoints before lookahead
        if (saved_lookahead is None) != (self.lookahead is None):
            raise ValueError("the saved step and this one disagree on the lookahead")
        self.steps = int(state["steps"])
        self.last_lr = float(state["last_lr"])
        self.first_bad_step.fill_(int(state["first_bad_step"]))
        self.step_index.fill_(self.steps)
        self.optimizer.load_state_dict(state["optimizer"])
        # Muon + SGD is a CombinedOptimizer: each torch optimiser inside it on its own.
        for optimizer in getattr(self.optimizer, "optimizers", [self.optimizer]):
            if getattr(optimizer, "defaults", {}).get("fused"):
                # A fused optimiser's rates are device tensors; a checkpoint read onto the
                # CPU (or saved by a foreach run) brings them back elsewhere, or as floats.
                device = optimizer.param_groups[0]["params"][0].device
                for group in optimizer.param_groups:
                    group["lr"] = torch.as_tensor(group["lr"], dtype=torch.float32, device=device)
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        if self.lookahead is not None:
            self.lookahead.load_state_dict(saved_lookahead)
        self._sync_whitening_bias(self.steps)
        # The optimiser's state tensors are new objects: a graph would update the old ones.
        self.drop_graph()

    def drop_graph(self) -> None:
        """Forget the captured graphs; the step captures again after ``capture_after``
        uncaptured steps. Call it whenever what the step does changes shape (a parameter
        frozen or unfrozen, new optimiser state tensors): a graph replays what it recorded."""
        self._step_graph = self._ema_graph = None
        self._uncaptured = 0
