"""The recipe, top to bottom: data on the device, whitening, model, epochs of SGD, evaluation.

The network, its whitening, the optimiser and its rates come from the configuration through
:mod:`train.build` (the seed's ResNet9 and SGD by default; airbench's net, SGD, Muon,
lookahead and the whitening bias's freezing with the airbench presets). A fractional number
of epochs (airbench94's 9.9) runs ``ceil(epochs)`` epochs, the last one stopping after its
share of the steps (:func:`train.schedule.steps_in_epoch`); its row says so by its epoch
number and time like any other.

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
refused there, and so is ``--network airbench``: freezing its whitening bias mid-run breaks
DistributedDataParallel's gradient hooks, and its plain batch norm would see each process's
share of the batch only. With K = 1 (or ``--distribute runs``, where each rank trains alone)
none of this happens: no process-group call, no wrapper.
"""

from __future__ import annotations

import copy
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import nn

from train.batches import AugmentedBatches
from train.build import build_network, build_whitening, data_parallel_airbench_refusal
from train.checkpoint import (
    EpochProgress,
    RunCheckpoint,
    data_fingerprint,
    finished_run,
    is_finished,
    restore_run,
)
from train.config import (  # model_config: re-exported for the tests and bench
    CIFAR10_MEAN,
    CIFAR10_STD,
    ConfigError,
    TrainConfig,
    model_config,  # noqa: F401
)
from train.distributed import (
    Distributed,
    all_reduce_min,
    all_reduce_sum,
    average_running_stats,
    broadcast_state,
    per_rank_batch,
    rank_range,
    wrap_ddp,
)
from train.evaluate import evaluate
from train.graphs import resolve_graph_mode
from train.report import format_row, progress_bar
from train.results import EpochRow, RunResult, TrainingDiverged, TrainingInterrupted
from train.resume import read_for_resume
from train.runtime import Runtime, compiles_model
from train.schedule import steps_in_epoch
from train.signals import StopRequest, self_signal_from_environment, watch_signals
from train.step import TrainStep
from train.warmup import warm_up

if TYPE_CHECKING:
    from train.data import Cifar10


class RunData(NamedTuple):
    """One run's data where it trains: the training set on the device (on the host when
    ``gpu_data`` is off), the test set on the device."""

    train_images: torch.Tensor  # uint8 (N, 3, 32, 32)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor  # uint8 (M, 3, 32, 32)
    test_labels: torch.Tensor  # int64 (M,)


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

    def __init__(
        self,
        config: TrainConfig,
        runtime: Runtime,
        data: Cifar10,
        log: Callable[[str], None] = print,
        ctx: Distributed | None = None,
    ) -> None:
        self.config, self.runtime, self.data, self.log = config, runtime, data, log
        self.ctx = Distributed() if ctx is None else ctx
        if self.ctx.enabled and config.network == "airbench":
            raise ConfigError(data_parallel_airbench_refusal())
        # Images one rank trains on per step (the whole batch in one process).
        self.local_batch = per_rank_batch(config.batch_size, config.ghost_batch, self.ctx)
        self.whitening = None  # the latest run's WhiteningFilters (for plots)
        self.data_fingerprint = data_fingerprint(data)  # what checkpoints are checked against
        self.save_failures: list[str] = []  # checkpoint writes that failed (reported once)
        self._signal_at = self_signal_from_environment()
        # Whether steps are captured in CUDA graphs; the warm-up checks a capture and turns
        # this "off" (with one line) if it fails under "auto".
        self.graph_mode = resolve_graph_mode(config.cuda_graphs, runtime.device, self.ctx.enabled)
        if self.graph_mode == "auto" and config.warmup_steps == 0:
            log("CUDA graphs off: --warmup-steps 0 leaves no warm-up to check a capture in")
            self.graph_mode = "off"
        if self.graph_mode != "off" and config.optimizer == "muon":
            # Muon's rate is a host float: a graph would replay the captured step's rate.
            log("CUDA graphs off: --optimizer muon keeps its learning rate on the host")
            self.graph_mode = "off"
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
        self.warmup_time = warm_up(self)

    # ------------------------------------------------------------------ building blocks
    def _new_model(self, seed: int) -> nn.Module:
        torch.manual_seed(seed)
        splits = None
        if self.ctx.enabled:  # this rank's slice of the batch holds fewer splits
            splits = self.local_batch // self.config.ghost_batch if self.config.ghost_batch else 1
        model = build_network(self.config, self.runtime.backend, splits)
        model = model.to(self.runtime.device)
        if self.runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def _batches(
        self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator
    ) -> AugmentedBatches:
        c = self.config
        return AugmentedBatches(
            images,
            labels,
            batch_size=c.batch_size,
            pad=c.pad,
            flip=c.flip,
            cutout=c.cutout,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            dtype=self.runtime.dtype,
            backend=self.runtime.backend if images.device == self.runtime.device else "eager",
            generator=generator,
            device=self.runtime.device,
            shard=(self.ctx.rank, self.ctx.world_size),
            jitter=(c.jitter, c.jitter) if c.jitter else None,
        )

    def _set_whitening(self, images: torch.Tensor) -> None:
        whitening = build_whitening(self.config, images)
        if whitening is None:
            return
        self.whitening = whitening
        self.model.set_whitening(self.whitening.filters)
        self.eval_model.set_whitening(self.whitening.filters)

    def _evaluate(
        self, images: torch.Tensor, labels: torch.Tensor, step: TrainStep
    ) -> tuple[float, float]:
        """Test loss and accuracy of the weight average (or the weights) with the configured
        test-time augmentation (the seed's flip TTA by default).

        Data-parallel: each rank evaluates its contiguous share of the test set and the sums
        are all-reduced, after averaging the BN running statistics over ranks. Each rank's
        statistics (and their weight average) come from its own ghost-BN splits and are
        linear in them, so their mean over ranks is what one process would hold."""
        parallel = self.ctx.enabled
        if parallel:  # keeps the training model identical on every rank too
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
            self.eval_forward,
            images,
            labels,
            tta=self.config.tta,
            tta_fraction=self.config.tta_fraction,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            dtype=self.runtime.dtype,
            backend=self.runtime.backend,
            batch_size=self.config.eval_batch_size,
            smoothing=self.config.label_smoothing,
            autocast=self.runtime.autocast(),
        )
        if parallel:
            all_reduce_sum(result.loss_sum, result.correct)
            result.count = count
        return result.read()

    def _should_evaluate(self, epoch: int) -> bool:
        every = self.config.eval_every
        if every is None:
            every = 1 if self.runtime.device.type == "cuda" else 0
        return epoch == self.config.epoch_count or (every > 0 and epoch % every == 0)

    # ------------------------------------------------------------------ one run
    def run(
        self,
        seed: int,
        *,
        checkpoint: str | os.PathLike | None = None,
        resume: str | os.PathLike | None = None,
        stop: StopRequest | None = None,
    ) -> RunResult:
        """Train from a fresh initialisation with ``seed``; log one row per epoch.

        The recipe, in its order; the clock runs from the data still on the host through
        the last step, evaluation and checkpoints excluded (see the module docstring).

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
        saved = self._saved_run(resume, seed, checkpoint)
        if saved is not None and is_finished(saved):
            return self._logged(finished_run(saved, self.model))
        result = RunResult(seed=seed)
        saver = RunCheckpoint(
            checkpoint,
            config=c,
            runtime=rt,
            data=self.data_fingerprint,
            failures=self.save_failures,
        )
        self._fresh_model(seed)  # the network, initialised off the clock

        clock = self._start_clock()  # the clock starts
        data, generator = self._data_to_device(seed)  # data to the device
        self._set_whitening(data.train_images)  # whitening filters
        batches = self._batches(data.train_images, data.train_labels, generator)
        step = TrainStep(
            self.model,
            self.train_forward,
            c,
            rt,
            steps_per_epoch=len(batches),
            loss_scale=self.ctx.world_size,
            graphs=self.graph_mode,
            log=self.log,
        )  # SGD, schedule, EMA (captured in a CUDA graph after its first steps)
        result.setup_time = result.train_time = self._read_clock(clock)
        progress = EpochProgress.begin(1, generator, rt.device)
        if saved is not None:  # pick up where the checkpoint stopped (times add up)
            progress = restore_run(
                saved,
                model=self.model,
                step=step,
                generator=generator,
                result=result,
                device=rt.device,
            )
            self._logged(result)

        with watch_signals(stop, checkpoint is not None) as stopping:
            if stopping.requested:  # asked to stop before this run began
                raise TrainingInterrupted(stopping.name, None, None)
            while progress.epoch <= c.epoch_count:  # for each epoch (the last maybe partial)
                steps = steps_in_epoch(progress.epoch, c.epochs, len(batches))
                clock = self._start_clock()
                with progress_bar(progress, steps) as bar:
                    # number: the 0-based epoch, which the alternating flip goes by (so a
                    # resumed epoch shows each image the way the uninterrupted one did)
                    epoch = batches.epoch(start=progress.batches_done, number=progress.epoch - 1)
                    for inputs, labels in epoch:
                        progress.add(*step(inputs, labels))  # one step per batch
                        bar.update()
                        stop = self._stop_between_steps(stopping, progress, steps)
                        if stop or progress.batches_done >= steps:
                            break
                progress.elapsed += self._read_clock(clock)  # the steps' time
                if progress.batches_done < steps:  # stopped mid-epoch
                    self._check_finite(step, progress.epoch)  # never save divergence
                    raise TrainingInterrupted(
                        stopping.name, saver.save(self.model, step, result, progress), progress
                    )
                result.train_time += progress.elapsed  # the clock stops
                result.rows.append(self._end_epoch(progress, step, result, data))  # evaluation
                self.log_row(result.rows[-1])
                # The next epoch starts here, with the generator state a resume draws it from;
                # saved only now, after _end_epoch's finite check: never a diverged state.
                progress = EpochProgress.begin(progress.epoch + 1, generator, rt.device)
                saved_to = saver.save(self.model, step, result, progress)
                if stopping.requested and progress.epoch <= c.epoch_count:  # at an epoch end
                    raise TrainingInterrupted(stopping.name, saved_to, progress)
        return result

    # ------------------------------------------------------------------ the run's pieces
    def _start_clock(self) -> float:
        self.runtime.synchronize()  # work queued before is not this interval's
        return time.perf_counter()

    def _read_clock(self, start: float) -> float:
        self.runtime.synchronize()  # the interval covers its device work
        return time.perf_counter() - start

    def _saved_run(
        self, resume: str | os.PathLike | None, seed: int, checkpoint: str | os.PathLike | None
    ) -> dict | None:
        """The checkpoint to resume, read and checked against this run (None: afresh)."""
        if self.ctx.enabled and (checkpoint is not None or resume is not None):
            raise ConfigError(
                "checkpoints are not supported with data-parallel training over "
                "several processes: drop --checkpoint/--resume or run one process"
            )
        if resume is None:
            return None
        return read_for_resume(
            resume, config=self.config, runtime=self.runtime, data=self.data_fingerprint, seed=seed
        )

    def _data_to_device(self, seed: int) -> tuple[RunData, torch.Generator]:
        """The data set where the run trains, and the run's generator (seeded) where the
        augmentation draws its choices. The seed's step before "GPU data" kept the training
        set on the host and augmented there, moving every batch (``gpu_data`` off)."""
        rt = self.runtime
        train_device = rt.device if self.config.gpu_data else torch.device("cpu")
        data = RunData(
            self.data.train_images.to(train_device, non_blocking=True),
            self.data.train_labels.to(train_device, non_blocking=True),
            self.data.test_images.to(rt.device, non_blocking=True),
            self.data.test_labels.to(rt.device, non_blocking=True),
        )
        return data, torch.Generator(device=train_device).manual_seed(seed)

    def _fresh_model(self, seed: int) -> None:
        """The training model's weights from a fresh initialisation with ``seed`` (the same
        on every rank)."""
        self.model.load_state_dict(self._new_model(seed).state_dict())
        self.model.train()
        if self.ctx.enabled:
            broadcast_state(self.model)

    def _stop_between_steps(
        self, stopping: StopRequest, progress: EpochProgress, steps: int
    ) -> bool:
        """Whether to leave the epoch after the step just done: a stop was requested (a
        Python bool, no device sync) and steps remain."""
        if self._signal_at is not None and self._signal_at[:2] == (
            progress.epoch,
            progress.batches_done,
        ):
            os.kill(os.getpid(), self._signal_at[2])  # the test hook (train.signals)
        return stopping.requested and progress.batches_done < steps

    def _end_epoch(
        self, progress: EpochProgress, step: TrainStep, result: RunResult, data: RunData
    ) -> EpochRow:
        """The finished epoch's row: its training metrics (one sync), the divergence check,
        and the evaluation when due (off the clock)."""
        c, epoch = self.config, progress.epoch
        seen = progress.batches_done * c.batch_size
        loss_sum, correct = progress.loss_sum, progress.correct
        if self.ctx.enabled:  # each rank summed its own share of every batch
            loss_sum, correct = loss_sum.clone(), correct.clone()
            all_reduce_sum(loss_sum, correct)
        train_loss = loss_sum.item() / seen
        train_acc = correct.item() / seen
        self._check_finite(step, epoch)
        test_loss = test_acc = None
        if self._should_evaluate(epoch):
            eval_start = time.perf_counter()
            test_loss, test_acc = self._evaluate(data.test_images, data.test_labels, step)
            self.model.train()
            result.eval_time += time.perf_counter() - eval_start
        return EpochRow(
            epoch,
            step.last_lr * c.batch_size,
            train_loss,
            train_acc,
            test_loss,
            test_acc,
            progress.elapsed,
            result.train_time,
        )

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
                f"{self.config.lr}, batch {self.config.batch_size}); lower --lr"
            )

    # ------------------------------------------------------------------ output
    def log_row(self, row: EpochRow) -> None:
        self.log(format_row(row))

    def _logged(self, result: RunResult) -> RunResult:
        """``result``, after logging its rows (a resumed run's table so far, whole)."""
        for row in result.rows:
            self.log_row(row)
        return result
