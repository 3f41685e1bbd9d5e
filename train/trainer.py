"""The recipe, top to bottom: data on the device, whitening, model, epochs of SGD, evaluation.

A :class:`Trainer` is built once per process: it builds (and, for ``compile``, compiles)
the model, warms everything up on throwaway data before any clock starts, and then runs as
many independent training runs as asked, each from a fresh initialisation and seed, without
recompiling.

What a run's time includes, as the seed counted it: moving the data set to the device,
computing the whitening filters, and every training step (augmentation included). What it
excludes: the one-off compile/autotune warm-up (reported separately), evaluation, and
writing checkpoints.

Fault tolerance (:mod:`train.checkpoint`): with a checkpoint path a run saves its state at
every epoch end, and SIGINT / SIGTERM only ask it to stop; between two steps it saves where
it is inside the epoch and raises :class:`TrainingInterrupted`. A resumed run draws the
interrupted epoch again from the generator state of its start, skips the batches done, and
ends with the weights of an uninterrupted run (bit for bit on the CPU). Its time adds up the
pieces: each process's setup, and every step once.

Data parallelism (``torchrun``, ``--distribute data``; see :mod:`train.distributed`): given a
:class:`~train.distributed.Distributed` with K > 1 ranks, the trainer wraps the training
forward in DistributedDataParallel, augments only its rank's slice of each global batch, builds
the model with the per-rank number of ghost-BN splits, scales the loss by K before backward,
sums the epoch's training metrics over ranks, averages BN running statistics before
evaluating, and evaluates its shard of the test set (sums all-reduced). Checkpoints are
refused there. With K = 1 (or ``--distribute runs``, where each rank trains alone) none of
this happens: no process-group call, no wrapper.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from model.resnet9 import ResNet9, ResNet9Config
from model.whitening import whitening_filters_from_data
from train.batches import AugmentedBatches
from train.checkpoint import (CheckpointMismatch, EpochProgress, StopRequest, check_compatible,
                              data_fingerprint, is_finished, load_checkpoint, make_checkpoint,
                              restore_rng_states, save_atomic, stop_on_signals)
from train.config import CIFAR10_MEAN, CIFAR10_STD, ConfigError, TrainConfig
from train.distributed import (Distributed, all_reduce_min, all_reduce_sum,
                               average_running_stats, broadcast_state, per_rank_batch, rank_range,
                               wrap_ddp)
from train.evaluate import evaluate
from train.presets import data_on_device
from train.runtime import Runtime, compiles_model
from train.step import TrainStep

if TYPE_CHECKING:
    from train.data import Cifar10


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the likely cause."""


class TrainingInterrupted(Exception):
    """A run stopped on request (SIGINT / SIGTERM) after saving what it could.

    Attributes:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        checkpoint: where the run was saved, or None when nothing was.
    """

    def __init__(self, signal_name: str, checkpoint: str | os.PathLike | None,
                 progress: EpochProgress | None) -> None:
        self.signal_name = signal_name
        self.checkpoint = None if progress is None else checkpoint
        if progress is None:
            place = "before the run began"
        elif progress.batches_done == 0:
            place = f"at the end of epoch {progress.epoch - 1}"
        else:
            place = f"in epoch {progress.epoch} after {progress.batches_done} steps"
        saved = "nothing saved" if self.checkpoint is None else f"saved {self.checkpoint}"
        super().__init__(f"interrupted by {signal_name} {place} ({saved})")


@dataclass
class EpochRow:
    """One line of the training table. Test values are None in epochs not evaluated."""

    epoch: int
    lr: float
    train_loss: float
    train_acc: float
    test_loss: float | None
    test_acc: float | None
    epoch_time: float
    total_time: float


@dataclass
class RunResult:
    seed: int
    rows: list[EpochRow] = field(default_factory=list)
    setup_time: float = 0.0          # data to device + whitening (inside total time)
    train_time: float = 0.0          # the headline: setup + all training steps
    eval_time: float = 0.0           # excluded from train_time
    checkpoint_time: float = 0.0     # writing checkpoints; excluded from train_time

    @property
    def test_acc(self) -> float:
        return self.rows[-1].test_acc

    @property
    def test_loss(self) -> float:
        return self.rows[-1].test_loss


def model_config(config: TrainConfig, backend: str, ghost_splits: int | None = None
                 ) -> ResNet9Config:
    """The network the training configuration asks for. ``ghost_splits``: the splits of the
    batch one forward sees (default ``config.ghost_splits``; a data-parallel rank sees
    ``batch_size / K`` images, so fewer splits of the same 32 images)."""
    return ResNet9Config(
        width=config.width, activation=config.activation, celu_alpha=config.celu_alpha,
        ghost_splits=config.ghost_splits if ghost_splits is None else ghost_splits,
        frozen_bn_scale=config.frozen_bn_scale,
        pool_before_bn=config.pool_before_bn, whitening=config.whitening,
        output_scale=config.output_scale, backend=backend)


def _run_result(saved: dict) -> RunResult:
    """A :class:`RunResult` from its ``dataclasses.asdict`` form (as checkpoints hold it)."""
    return RunResult(**{**saved, "rows": [EpochRow(**row) for row in saved["rows"]]})


def _watch_signals(stop: StopRequest | None, saving: bool
                   ) -> contextlib.AbstractContextManager[StopRequest]:
    """SIGINT and SIGTERM become a stop request when someone watches for it (``stop``) or
    there is a checkpoint to save; otherwise they keep their usual effect."""
    if stop is None and not saving:
        return contextlib.nullcontext(StopRequest())
    return stop_on_signals(stop)


@contextlib.contextmanager
def _progress_bar(epoch: int, steps: int, done: int) -> Iterator:
    """A transient per-epoch progress line on stderr, only when stderr is a terminal (the
    table rows on stdout stay clean). It counts steps on the host: no device sync."""
    from tqdm import tqdm

    bar = tqdm(total=steps, initial=done, desc=f"epoch {epoch}", unit="step", leave=False,
               file=sys.stderr, disable=not sys.stderr.isatty(), dynamic_ncols=True)
    try:
        yield bar
    finally:
        bar.close()


def _kernel_backend(runtime: Runtime) -> str:
    """The backend of ``kernels.augment``: the kernels with ``triton``, the reference
    (compiled or not) otherwise."""
    return runtime.backend


class Trainer:
    """Builds the model once, warms up, then trains independent runs.

    Args:
        config: the run's settings (validated).
        runtime: resolved device, backend, dtype.
        data: the data set on the host (uint8 images, int64 labels); subsets already taken.
        log: where progress lines go.
        ctx: the data-parallel group this trainer is one rank of (default: none, one
            process). The runtime's device must be this rank's own.
    Raises:
        ConfigError: the batch does not split into whole ghost-BN splits per rank.
    """

    def __init__(self, config: TrainConfig, runtime: Runtime, data: "Cifar10",
                 log: Callable[[str], None] = print, ctx: Distributed | None = None) -> None:
        self.config, self.runtime, self.data, self.log = config, runtime, data, log
        self.ctx = Distributed() if ctx is None else ctx
        # Images one rank trains on per step (the whole batch in one process).
        self.local_batch = per_rank_batch(config.batch_size, config.ghost_batch, self.ctx)
        self.whitening = None     # the latest run's WhiteningFilters (for plots)
        self.data_fingerprint = data_fingerprint(data)   # what checkpoints are checked against
        self.model = self._new_model(seed=config.seed)
        self.eval_model = copy.deepcopy(self.model).eval()
        compile_it = compiles_model(runtime.backend, runtime.device)
        # The DDP wrapper only where training is data-parallel (the model itself otherwise);
        # torch.compile goes outside it, as DDP's compiled-graph support expects.
        train_module = wrap_ddp(self.model, self.ctx, runtime.device)
        self.train_forward = torch.compile(train_module) if compile_it else train_module
        self.eval_forward = torch.compile(self.eval_model) if compile_it else self.eval_model
        if runtime.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.warmup_time = self._warm_up()

    # ------------------------------------------------------------------ building blocks
    def _new_model(self, seed: int) -> ResNet9:
        torch.manual_seed(seed)
        splits = None
        if self.ctx.enabled:   # this rank's slice of the batch holds fewer splits
            splits = (self.local_batch // self.config.ghost_batch if self.config.ghost_batch
                      else 1)
        model = ResNet9(model_config(self.config, self.runtime.backend, splits))
        model = model.to(self.runtime.device)
        if self.runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _batches(self, images: torch.Tensor, labels: torch.Tensor,
                 generator: torch.Generator) -> AugmentedBatches:
        c = self.config
        return AugmentedBatches(
            images, labels, batch_size=c.batch_size, pad=c.pad, flip=c.flip, cutout=c.cutout,
            mean=CIFAR10_MEAN, std=CIFAR10_STD, dtype=self.runtime.dtype,
            backend=_kernel_backend(self.runtime) if images.device == self.runtime.device
            else "eager", generator=generator, device=self.runtime.device,
            shard=(self.ctx.rank, self.ctx.world_size))

    def _set_whitening(self, images: torch.Tensor) -> None:
        if not self.config.whitening:
            return
        self.whitening = whitening_filters_from_data(
            images, CIFAR10_MEAN, CIFAR10_STD, n_images=self.config.whitening_images,
            eps=self.config.whitening_eps)
        self.model.set_whitening(self.whitening.filters)
        self.eval_model.set_whitening(self.whitening.filters)

    def _evaluate(self, images: torch.Tensor, labels: torch.Tensor, step: TrainStep
                  ) -> tuple[float, float]:
        """Test loss and accuracy of the weight average (or the weights) with flip TTA.

        Data-parallel: each rank evaluates its contiguous share of the test set and the sums
        are all-reduced, after averaging the BN running statistics over ranks. Each rank's
        statistics (and their weight average) come from its own ghost-BN splits and are
        linear in them, so their mean over ranks is what one process would hold."""
        parallel = self.ctx.enabled
        if parallel:   # keeps the training model identical on every rank too
            average_running_stats(self.model)
        if step.ema is not None and step.ema.updates:
            step.ema.copy_to(self.eval_model)
            if parallel:
                average_running_stats(self.eval_model)
        else:
            self.eval_model.load_state_dict(self.model.state_dict())
        count = images.shape[0]
        if parallel:
            share = rank_range(count, self.ctx)
            images, labels = images[share], labels[share]
        result = evaluate(
            self.eval_forward, images, labels, tta=self.config.tta, mean=CIFAR10_MEAN,
            std=CIFAR10_STD, dtype=self.runtime.dtype, backend=_kernel_backend(self.runtime),
            batch_size=self.config.eval_batch_size, smoothing=self.config.label_smoothing,
            autocast=self.runtime.autocast())
        if parallel:
            all_reduce_sum(result.loss_sum, result.correct)
            result.count = count
        return result.read()

    def _should_evaluate(self, epoch: int) -> bool:
        every = self.config.eval_every
        if every is None:
            every = 1 if self.runtime.device.type == "cuda" else 0
        return epoch == self.config.epochs or (every > 0 and epoch % every == 0)

    # ------------------------------------------------------------------ warm-up
    def _warm_up(self) -> float:
        """Compile, autotune and fill caches on throwaway data with the real shapes (the
        data set's size too: the compiled augmentation is specialised to it), so that no
        run's clock pays for them. Returns the seconds it took."""
        nothing_to_warm = self.runtime.device.type == "cpu" and self.runtime.backend == "eager"
        if self.config.warmup_steps == 0 or nothing_to_warm:
            return 0.0
        start = time.perf_counter()
        device, c = self.runtime.device, self.config
        generator = torch.Generator(device=device).manual_seed(12345)

        def throwaway(like: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
            images = torch.randint(0, 256, like.shape, dtype=torch.uint8, device=device,
                                   generator=generator)
            return images, torch.randint(0, 10, labels.shape, device=device,
                                         generator=generator)

        train_images, train_labels = throwaway(self.data.train_images, self.data.train_labels)
        test_images, test_labels = throwaway(self.data.test_images, self.data.test_labels)
        self._set_whitening(train_images)
        step = TrainStep(self.model, self.train_forward, c, self.runtime, steps_per_epoch=1,
                         loss_scale=self.ctx.world_size)
        self.model.train()
        for index, (inputs, targets) in enumerate(
                self._batches(train_images, train_labels, generator)):
            if index == c.warmup_steps:
                break
            step(inputs, targets)
        self._evaluate(test_images, test_labels, step)
        self.runtime.synchronize()
        return time.perf_counter() - start

    # ------------------------------------------------------------------ one run
    def run(self, seed: int, *, checkpoint: str | os.PathLike | None = None,
            resume: str | os.PathLike | None = None, stop: StopRequest | None = None
            ) -> RunResult:
        """Train from a fresh initialisation with ``seed``; log one row per epoch.

        Args:
            checkpoint: save the run's state here at every epoch end and when a stop is
                requested (atomically; see :mod:`train.checkpoint`).
            resume: continue the run saved in this checkpoint instead of starting afresh
                (a finished one is only read back).
            stop: the stop request to watch between steps. With it or ``checkpoint``,
                SIGINT and SIGTERM request a stop for the duration of the run (previous
                handlers restored after); the run then saves and raises
                :class:`TrainingInterrupted`.
        Raises:
            TrainingDiverged, TrainingInterrupted, train.checkpoint.CheckpointError.
        """
        c, rt = self.config, self.runtime
        if self.ctx.enabled and (checkpoint is not None or resume is not None):
            raise ConfigError("checkpoints are not supported with data-parallel training over "
                              "several processes: drop --checkpoint/--resume or run one process")
        saved = self._read_checkpoint(resume, seed) if resume is not None else None
        if saved is not None and is_finished(saved):
            return self._finished_run(saved)
        result = RunResult(seed=seed)
        self.model.load_state_dict(self._new_model(seed).state_dict())
        self.model.train()
        generator = torch.Generator(device=rt.device).manual_seed(seed)

        # The clock starts with the data still on the host, as the seed's did.
        rt.synchronize()
        clock = time.perf_counter()
        # The seed's step before "GPU data" kept the training set on the host and augmented
        # there, moving every batch to the device (the `gpu_data` switch of the presets).
        host_side = not data_on_device(c)
        train_images = self.data.train_images.to("cpu" if host_side else rt.device,
                                                 non_blocking=True)
        train_labels = self.data.train_labels.to("cpu" if host_side else rt.device,
                                                 non_blocking=True)
        test_images = self.data.test_images.to(rt.device, non_blocking=True)
        test_labels = self.data.test_labels.to(rt.device, non_blocking=True)
        self._set_whitening(train_images)
        if host_side:
            generator = torch.Generator().manual_seed(seed)
        if self.ctx.enabled:
            broadcast_state(self.model)
        batches = self._batches(train_images, train_labels, generator)
        step = TrainStep(self.model, self.train_forward, c, rt, steps_per_epoch=len(batches),
                         loss_scale=self.ctx.world_size)
        rt.synchronize()
        result.setup_time = result.train_time = time.perf_counter() - clock
        progress = EpochProgress.begin(1, generator, rt.device)
        if saved is not None:   # pick up where the checkpoint stopped (times add up)
            progress = self._restore(saved, step, generator, result)
        save = functools.partial(self._save_checkpoint, checkpoint, step, result)

        with _watch_signals(stop, checkpoint is not None) as stopping:
            if stopping.requested:          # asked to stop before this run began
                raise TrainingInterrupted(stopping.name, None, None)
            while progress.epoch <= c.epochs:
                self._train_epoch(batches, step, progress, stopping)
                if progress.batches_done < len(batches):       # stopped between two steps
                    self._check_finite(step, progress.epoch)   # never save a diverged state
                    save(progress)
                    raise TrainingInterrupted(stopping.name, checkpoint, progress)
                result.rows.append(self._end_epoch(progress, step, result, test_images,
                                                   test_labels))
                self.log_row(result.rows[-1])
                # The next epoch starts here, with the generator state a resume draws it from;
                # saved only now, after _end_epoch's finite check: never a diverged state.
                progress = EpochProgress.begin(progress.epoch + 1, generator, rt.device)
                save(progress)
                if stopping.requested and progress.epoch <= c.epochs:  # stopped at an epoch end
                    raise TrainingInterrupted(stopping.name, checkpoint, progress)
        return result

    def _train_epoch(self, batches: AugmentedBatches, step: TrainStep,
                     progress: EpochProgress, stop: StopRequest) -> None:
        """The epoch's remaining steps, accumulated into ``progress``; returns early when a
        stop is requested (checked between steps: a Python bool, no device sync)."""
        start = time.perf_counter()
        with _progress_bar(progress.epoch, len(batches), progress.batches_done) as bar:
            for inputs, labels in batches.epoch(start=progress.batches_done):
                step_loss, step_correct = step(inputs, labels)
                progress.loss_sum += step_loss
                progress.correct += step_correct
                progress.batches_done += 1
                bar.update()
                if stop.requested and progress.batches_done < len(batches):
                    break
        self.runtime.synchronize()   # so that the epoch's time covers its work
        progress.elapsed += time.perf_counter() - start

    def _end_epoch(self, progress: EpochProgress, step: TrainStep, result: RunResult,
                   test_images: torch.Tensor, test_labels: torch.Tensor) -> EpochRow:
        """The finished epoch's row: its training metrics (one sync), the divergence check,
        and the evaluation when due (off the clock)."""
        c, epoch = self.config, progress.epoch
        seen = progress.batches_done * c.batch_size
        loss_sum, correct = progress.loss_sum, progress.correct
        if self.ctx.enabled:   # each rank summed its own share of every batch
            loss_sum, correct = loss_sum.clone(), correct.clone()
            all_reduce_sum(loss_sum, correct)
        train_loss = loss_sum.item() / seen
        train_acc = correct.item() / seen
        result.train_time += progress.elapsed
        self._check_finite(step, epoch)
        test_loss = test_acc = None
        if self._should_evaluate(epoch):
            eval_start = time.perf_counter()
            test_loss, test_acc = self._evaluate(test_images, test_labels, step)
            self.model.train()
            result.eval_time += time.perf_counter() - eval_start
        return EpochRow(epoch, step.last_lr * c.batch_size, train_loss, train_acc, test_loss,
                        test_acc, progress.elapsed, result.train_time)

    def _check_finite(self, step: TrainStep, epoch: int) -> None:
        first_bad = step.first_bad_step
        if self.ctx.enabled:
            # The earliest bad step of any rank, so that every rank raises (or none does):
            # a rank that went on alone would wait forever for the others' gradients.
            none = torch.iinfo(torch.int64).max
            first_bad = torch.where(first_bad < 0, none, first_bad)
            all_reduce_min(first_bad)
            first_bad = torch.where(first_bad == none, -1, first_bad)
        bad = int(first_bad.item())
        if bad >= 0:
            raise TrainingDiverged(
                f"the training loss became NaN or infinite at step {bad} (epoch {epoch}): "
                f"the learning rate is probably too high for this setting (peak --lr "
                f"{self.config.lr}, batch {self.config.batch_size}); lower --lr")

    # ------------------------------------------------------------------ checkpoints
    def _save_checkpoint(self, path: str | os.PathLike | None, step: TrainStep,
                         result: RunResult, progress: EpochProgress) -> None:
        """Write the run's state to ``path`` (nothing when None); off the clock."""
        if path is None:
            return
        start = time.perf_counter()
        payload = make_checkpoint(
            config=self.config, runtime=self.runtime, data=self.data_fingerprint,
            seed=result.seed, steps_per_epoch=step.steps_per_epoch, progress=progress,
            model=self.model, step_state=step.state_dict(), result=dataclasses.asdict(result))
        save_atomic(payload, path)
        result.checkpoint_time += time.perf_counter() - start

    def _read_checkpoint(self, path: str | os.PathLike, seed: int) -> dict:
        saved = load_checkpoint(path)
        check_compatible(saved, config=self.config, runtime=self.runtime,
                         data=self.data_fingerprint, seed=seed, path=path)
        return saved

    def _restore(self, saved: dict, step: TrainStep, generator: torch.Generator,
                 result: RunResult) -> EpochProgress:
        """Load the saved model, optimiser, weight average, RNG states and results into this
        run; return the epoch progress to continue from. ``result`` keeps this process's
        setup time on top of the saved times (the data did move and whiten again)."""
        if int(saved["steps_per_epoch"]) != step.steps_per_epoch:
            raise CheckpointMismatch(
                f"the checkpoint has {saved['steps_per_epoch']} steps per epoch; this run "
                f"has {step.steps_per_epoch}")
        self.model.load_state_dict(saved["model"])
        step.load_state_dict(saved["step"])
        restore_rng_states(saved["rng"])
        progress = EpochProgress.from_dict(saved["progress"], self.runtime.device)
        generator.set_state(progress.generator_state)
        before = _run_result(saved["result"])
        result.rows = before.rows
        for row in result.rows:       # the table so far, so that it reads whole
            self.log_row(row)
        result.setup_time += before.setup_time
        result.train_time += before.train_time
        result.eval_time, result.checkpoint_time = before.eval_time, before.checkpoint_time
        return progress

    def _finished_run(self, saved: dict) -> RunResult:
        """A run the checkpoint holds to the end: its weights and table, nothing retrained."""
        self.model.load_state_dict(saved["model"])
        result = _run_result(saved["result"])
        for row in result.rows:
            self.log_row(row)
        return result

    # ------------------------------------------------------------------ output
    def log_row(self, row: EpochRow) -> None:
        from train.report import format_row
        self.log(format_row(row))
