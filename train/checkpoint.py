"""Checkpoints of a training run: what one holds, how a run saves and resumes from it.

A checkpoint is everything a run needs to go on as if it had never stopped, written at
every epoch end and when the run is interrupted between two steps. It is a plain dict that
``torch.load(path, weights_only=True)`` reads (tensors, numbers, strings, lists, dicts):

========================  =================================================================
``format``, ``version``   ``"resnet9-cifar10-checkpoint"``, 1
``config``                ``TrainConfig.to_dict()`` of the run
``runtime``               resolved ``device_type``, ``backend``, ``dtype`` (strings)
``data``                  image counts and a CRC of the labels and a few images
``seed``                  the run's seed
``steps_per_epoch``       batches per epoch
``progress``              the epoch in progress (``epochs + 1`` once finished),
                          ``batches_done`` in it, its partial ``loss_sum`` (float32 tensor)
                          and ``correct`` (int64 tensor), its ``elapsed`` seconds, and the
                          run generator's ``generator_state`` (uint8) *at that epoch's start*
``model``                 the model's ``state_dict``
``step``                  ``TrainStep.state_dict()``: schedule position (``steps``,
                          ``last_lr``), ``first_bad_step``, optimiser state, EMA state
``rng``                   torch's global CPU RNG state (uint8) and CUDA ones (list)
``result``                the run so far: ``seed``, ``rows`` (one dict per finished
                          epoch), ``setup_time``, ``train_time``, ``eval_time``,
                          ``checkpoint_time``
``torch_version``         for the record
========================  =================================================================

Resuming regenerates the epoch's permutation and augmentation choices from the saved
generator state and skips the batches already done, so on the CPU a resumed run ends with
the same weights, bit for bit, as an uninterrupted one.

The file itself (atomic writes, the weights-only read and its refusals) is
:mod:`train.checkpoint_file`; stopping on SIGINT / SIGTERM is :mod:`train.signals`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from train.checkpoint_file import (
    FORMAT,
    VERSION,
    CheckpointError,
    CheckpointMismatch,
    load_checkpoint,
    save_atomic,
)
from train.config import TrainConfig
from train.results import EpochProgress, RunResult
from train.runtime import Runtime

if TYPE_CHECKING:
    from train.data import Cifar10
    from train.step import TrainStep

__all__ = [  # the file-level names are re-exported: callers need one import
    "FORMAT",
    "VERSION",
    "CheckpointError",
    "CheckpointMismatch",
    "EpochProgress",
    "RunCheckpoint",
    "data_fingerprint",
    "finished_run",
    "is_finished",
    "load_checkpoint",
    "make_checkpoint",
    "restore_run",
    "run_checkpoint_path",
    "save_atomic",
]


# ------------------------------------------------------------------------------ paths
def run_checkpoint_path(base: str | os.PathLike, seed: int, runs: int) -> Path:
    """Where run ``seed`` keeps its checkpoint: ``base`` itself for a single run, else
    ``base`` with ``.seed<seed>`` before its suffix (``ck.pt`` → ``ck.seed3.pt``)."""
    base = Path(base)
    if runs == 1:
        return base
    return base.with_name(f"{base.stem}.seed{seed}{base.suffix}")


# ------------------------------------------------------------------------------ progress
# ------------------------------------------------------------------------------ contents
def data_fingerprint(data: Cifar10) -> dict[str, int]:
    """Image counts and a CRC of all labels and the first and last 32 training images: cheap
    (well under a millisecond per MB), and enough to tell another data set or subset."""
    crc = 0
    for tensor in (
        data.train_labels,
        data.test_labels,
        data.train_images[:32],
        data.train_images[-32:],
    ):
        crc = zlib.crc32(tensor.contiguous().cpu().numpy().tobytes(), crc)
    return {
        "train_images": int(data.train_images.shape[0]),
        "test_images": int(data.test_images.shape[0]),
        "crc32": crc,
    }


def runtime_record(runtime: Runtime) -> dict[str, str]:
    """The resolved execution choices that change a run's numbers or random streams."""
    return {
        "device_type": runtime.device.type,
        "backend": runtime.backend,
        "dtype": str(runtime.dtype).replace("torch.", ""),
    }


def rng_states(device: torch.device) -> dict[str, Any]:
    """torch's global RNG states (nothing in a step draws from them today; saved so that
    anything that ever does resumes where it was)."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def make_checkpoint(
    *,
    config: TrainConfig,
    runtime: Runtime,
    data: Mapping[str, int],
    seed: int,
    steps_per_epoch: int,
    progress: EpochProgress,
    model: torch.nn.Module,
    step_state: Mapping[str, Any],
    result: Mapping[str, Any],
) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config.to_dict(),
        "runtime": runtime_record(runtime),
        "data": dict(data),
        "seed": seed,
        "steps_per_epoch": steps_per_epoch,
        "progress": progress.to_dict(),
        "model": model.state_dict(),
        "step": dict(step_state),
        "rng": rng_states(runtime.device),
        "result": dict(result),
        "torch_version": str(torch.__version__),
    }


def is_finished(checkpoint: Mapping[str, Any]) -> bool:
    """Whether the checkpoint holds a run that trained all its epochs."""
    # ceil: a fractional run (9.9 epochs) begins 10 epochs, the last one partial.
    return int(checkpoint["progress"]["epoch"]) > math.ceil(checkpoint["config"]["epochs"])


# ------------------------------------------------------------------------------ checks
class RunCheckpoint:
    """The checkpoint of one run: saves its state at epoch ends and when it stops.

    A save is off the run's clock (its seconds go to ``result.checkpoint_time``) and never
    ends the run: a write that fails (the folder removed, the disk full) is warned about
    once on stderr, recorded in ``failures``, and the run goes on; the checkpoint saved
    before, if any, is still whole.
    """

    def __init__(
        self,
        path: str | os.PathLike | None,
        *,
        config: TrainConfig,
        runtime: Runtime,
        data: Mapping[str, int],
        failures: list[str],
    ) -> None:
        self.path = None if path is None else Path(path)
        self.config, self.runtime, self.data, self.failures = config, runtime, data, failures

    def save(
        self, model: torch.nn.Module, step: TrainStep, result: RunResult, progress: EpochProgress
    ) -> Path | None:
        """Write the run's state; return the path written, or None (no path, or failed)."""
        if self.path is None:
            return None
        start = time.perf_counter()
        payload = make_checkpoint(
            config=self.config,
            runtime=self.runtime,
            data=self.data,
            seed=result.seed,
            steps_per_epoch=step.steps_per_epoch,
            progress=progress,
            model=model,
            step_state=step.state_dict(),
            result=dataclasses.asdict(result),
        )
        try:
            save_atomic(payload, self.path)
        except OSError as error:
            message = (
                f"could not save checkpoint {self.path} ({error.strerror or error}); "
                "a resume starts from the last checkpoint that was saved"
            )
            if not self.failures:
                print(f"warning: {message}; training goes on", file=sys.stderr, flush=True)
            self.failures.append(message)
            return None
        result.checkpoint_time += time.perf_counter() - start
        return self.path


def restore_run(
    saved: Mapping[str, Any],
    *,
    model: torch.nn.Module,
    step: TrainStep,
    generator: torch.Generator,
    result: RunResult,
    device: torch.device,
) -> EpochProgress:
    """Put a saved run back: model, optimiser, weight average, RNG states, the run
    generator at the interrupted epoch's start, and the results so far (``result`` keeps
    this process's setup time on top of the saved times: the data did move and whiten
    again). Returns the epoch progress to continue from."""
    if int(saved["steps_per_epoch"]) != step.steps_per_epoch:
        raise CheckpointMismatch(
            f"the checkpoint has {saved['steps_per_epoch']} steps per epoch; this run "
            f"has {step.steps_per_epoch}"
        )
    model.load_state_dict(saved["model"])
    step.load_state_dict(saved["step"])
    restore_rng_states(saved["rng"])
    progress = EpochProgress.from_dict(saved["progress"], device)
    generator.set_state(progress.generator_state)
    before = RunResult.from_dict(saved["result"])
    result.rows = before.rows
    result.setup_time += before.setup_time
    result.train_time += before.train_time
    result.eval_time, result.checkpoint_time = before.eval_time, before.checkpoint_time
    return progress


def finished_run(saved: Mapping[str, Any], model: torch.nn.Module) -> RunResult:
    """A run the checkpoint holds to the end: its weights loaded, its result; nothing
    retrained."""
    model.load_state_dict(saved["model"])
    return RunResult.from_dict(saved["result"])
