"""Checkpoints of a training run, and stopping cleanly on SIGINT / SIGTERM.

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

Signals: :func:`stop_on_signals` turns SIGINT and SIGTERM into a flag that the step loop
reads between steps (a Python bool, no device sync); a second signal stops at once.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import signal
import tempfile
import threading
import zlib
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from train.config import TrainConfig
from train.runtime import Runtime

if TYPE_CHECKING:
    from train.data import Cifar10

FORMAT = "resnet9-cifar10-checkpoint"
VERSION = 1

_REQUIRED = ("config", "runtime", "data", "seed", "steps_per_epoch", "progress", "model",
             "step", "rng", "result")

#: Configuration fields that do not change the training trajectory, so a resume may
#: differ in them. The device, backend and precision are compared as resolved (``auto``
#: may name the same thing as ``cpu``), in ``runtime``. ``distribute`` only matters under
#: torchrun with several processes, where checkpoints are refused.
RESUME_MAY_DIFFER = frozenset({
    "data_dir", "download", "runs", "json", "warmup_steps", "eval_every", "eval_batch_size",
    "device", "backend", "precision", "distribute",
})


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be read: missing, truncated, corrupt or not ours."""


class CheckpointMismatch(CheckpointError):
    """A readable checkpoint of a different run (configuration, data, seed, device)."""


# ------------------------------------------------------------------------------ paths
def run_checkpoint_path(base: str | os.PathLike, seed: int, runs: int) -> Path:
    """Where run ``seed`` keeps its checkpoint: ``base`` itself for a single run, else
    ``base`` with ``.seed<seed>`` before its suffix (``ck.pt`` → ``ck.seed3.pt``)."""
    base = Path(base)
    if runs == 1:
        return base
    return base.with_name(f"{base.stem}.seed{seed}{base.suffix}")


# ------------------------------------------------------------------------------ progress
@dataclasses.dataclass
class EpochProgress:
    """Where a run stands inside an epoch: what a mid-epoch resume continues from.

    ``generator_state`` is the run generator's state at the *start* of ``epoch``: drawing
    the epoch again from it gives the same permutation and augmentation choices.
    """

    epoch: int
    generator_state: torch.Tensor
    batches_done: int = 0
    loss_sum: torch.Tensor | None = None    # float32 device scalar (summed batch losses)
    correct: torch.Tensor | None = None     # int64 device scalar
    elapsed: float = 0.0                    # seconds of this epoch spent before a resume

    @classmethod
    def begin(cls, epoch: int, generator: torch.Generator,
              device: torch.device) -> EpochProgress:
        """A fresh epoch starting now, with the generator where it stands."""
        return cls(epoch, generator.get_state(), 0,
                   torch.zeros((), device=device),
                   torch.zeros((), dtype=torch.int64, device=device))

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "generator_state": self.generator_state,
                "batches_done": self.batches_done, "loss_sum": self.loss_sum.cpu(),
                "correct": self.correct.cpu(), "elapsed": self.elapsed}

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any], device: torch.device) -> EpochProgress:
        return cls(int(saved["epoch"]), saved["generator_state"], int(saved["batches_done"]),
                   saved["loss_sum"].to(device), saved["correct"].to(device),
                   float(saved["elapsed"]))


# ------------------------------------------------------------------------------ contents
def data_fingerprint(data: Cifar10) -> dict[str, int]:
    """Image counts and a CRC of all labels and the first and last 32 training images: cheap
    (well under a millisecond per MB), and enough to tell another data set or subset."""
    crc = 0
    for tensor in (data.train_labels, data.test_labels, data.train_images[:32],
                   data.train_images[-32:]):
        crc = zlib.crc32(tensor.contiguous().cpu().numpy().tobytes(), crc)
    return {"train_images": int(data.train_images.shape[0]),
            "test_images": int(data.test_images.shape[0]), "crc32": crc}


def runtime_record(runtime: Runtime) -> dict[str, str]:
    """The resolved execution choices that change a run's numbers or random streams."""
    return {"device_type": runtime.device.type, "backend": runtime.backend,
            "dtype": str(runtime.dtype).replace("torch.", "")}


def rng_states(device: torch.device) -> dict[str, Any]:
    """torch's global RNG states (nothing in a step draws from them today; saved so that
    anything that ever does resumes where it was)."""
    cuda = torch.cuda.get_rng_state_all() if device.type == "cuda" else []
    return {"torch": torch.get_rng_state(), "cuda": cuda}


def restore_rng_states(states: Mapping[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    if states["cuda"]:
        torch.cuda.set_rng_state_all(states["cuda"])


def make_checkpoint(*, config: TrainConfig, runtime: Runtime, data: Mapping[str, int],
                    seed: int, steps_per_epoch: int, progress: EpochProgress,
                    model: torch.nn.Module, step_state: Mapping[str, Any],
                    result: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint dict (see the module docstring)."""
    return {
        "format": FORMAT, "version": VERSION,
        "config": config.to_dict(), "runtime": runtime_record(runtime), "data": dict(data),
        "seed": seed, "steps_per_epoch": steps_per_epoch, "progress": progress.to_dict(),
        "model": model.state_dict(), "step": dict(step_state),
        "rng": rng_states(runtime.device), "result": dict(result),
        "torch_version": str(torch.__version__),
    }


def is_finished(checkpoint: Mapping[str, Any]) -> bool:
    """Whether the checkpoint holds a run that trained all its epochs."""
    return int(checkpoint["progress"]["epoch"]) > int(checkpoint["config"]["epochs"])


# ------------------------------------------------------------------------------ disk
def save_atomic(payload: Any, path: str | os.PathLike) -> None:
    """``torch.save`` to a temporary file next to ``path``, then rename it over ``path``.

    The rename is atomic on POSIX and Windows, so ``path`` always holds either the previous
    checkpoint or the new one, never a half-written file, whatever interrupts the write
    (an exception, a second Ctrl-C, a full disk, a killed process); the temporary file is
    removed when the write fails.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = None
    try:
        with tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.",
                                         suffix=".tmp", delete=False) as handle:
            temporary = handle.name
            torch.save(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())   # the data reaches the disk before the rename does
        os.replace(temporary, path)
    except BaseException:
        if temporary is not None:
            with contextlib.suppress(OSError):
                os.unlink(temporary)
        raise


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a checkpoint (tensors on the CPU) and check that it is one of ours.

    Raises :class:`CheckpointError` with the path and the reason.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"no checkpoint at {path}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:    # zip, pickle, EOF and allow-list errors all mean "unusable"
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0][:200]
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or corrupt?): "
                              f"{reason}") from error
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a checkpoint of this trainer")
    if payload.get("version") != VERSION:
        raise CheckpointError(f"{path} is a version {payload.get('version')} checkpoint; this "
                              f"trainer reads version {VERSION}")
    missing = [key for key in _REQUIRED if key not in payload]
    if missing:
        raise CheckpointError(f"checkpoint {path} is incomplete: no {', '.join(missing)}")
    return payload


# ------------------------------------------------------------------------------ checks
def _differences(saved: Mapping[str, Any], current: Mapping[str, Any],
                 ignore: frozenset[str] = frozenset()) -> list[str]:
    keys = sorted((set(saved) | set(current)) - ignore)
    return [f"{key} {saved.get(key)!r} in the checkpoint vs {current.get(key)!r} now"
            for key in keys if saved.get(key) != current.get(key)]


def check_compatible(checkpoint: Mapping[str, Any], *, config: TrainConfig,
                     runtime: Runtime, data: Mapping[str, int], seed: int,
                     path: str | os.PathLike = "the checkpoint") -> None:
    """Refuse to resume a checkpoint of a different run.

    Raises :class:`CheckpointMismatch` naming every field that differs: configuration fields
    that change the run (all but :data:`RESUME_MAY_DIFFER`), the resolved device type,
    backend and precision, the data set, and the seed.
    """
    problems = _differences(checkpoint["config"], config.to_dict(), RESUME_MAY_DIFFER)
    problems += _differences(checkpoint["runtime"], runtime_record(runtime))
    if dict(checkpoint["data"]) != dict(data):
        problems.append(f"the data set differs ({checkpoint['data']} in the checkpoint vs "
                        f"{dict(data)} now)")
    if int(checkpoint["seed"]) != seed:
        problems.append(f"run seed {checkpoint['seed']} in the checkpoint vs {seed} now")
    if problems:
        raise CheckpointMismatch(
            f"{path} was written by a different run: {'; '.join(problems)}. Resume with the "
            "flags of the interrupted run, or start afresh without --resume")


def resume_paths(base: str | os.PathLike, seeds: Sequence[int], *, config: TrainConfig,
                 runtime: Runtime, data: Mapping[str, int]) -> list[Path | None]:
    """For each run's seed, the checkpoint to resume it from (``None``: start it afresh),
    each one read and checked, so that a bad one is reported before any warm-up.

    Raises :class:`CheckpointError` when there is no checkpoint for any of the runs.
    """
    found: list[Path | None] = []
    for seed in seeds:
        path = run_checkpoint_path(base, seed, len(seeds))
        if not path.exists():
            found.append(None)
            continue
        check_compatible(load_checkpoint(path), config=config, runtime=runtime, data=data,
                         seed=seed, path=path)
        found.append(path)
    if not any(found):
        where = run_checkpoint_path(base, seeds[0], len(seeds))
        hint = (" (nor for the other seeds)" if len(seeds) > 1 else
                " (checkpoints of several runs are named by seed, e.g. "
                f"{run_checkpoint_path(base, seeds[0], 2).name}: give the same --runs)")
        raise CheckpointError(f"no checkpoint to resume at {where}{hint}")
    return found


# ------------------------------------------------------------------------------ signals
class StopRequest:
    """Set by SIGINT / SIGTERM, read by the step loop between steps."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    @property
    def name(self) -> str:
        return "a stop request" if self.signal is None else signal.Signals(self.signal).name


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest | None = None,
                    signals: Sequence[int] = (signal.SIGINT, signal.SIGTERM)
                    ) -> Iterator[StopRequest]:
    """While inside, SIGINT and SIGTERM only set ``stop.signal``; the previous handlers come
    back on leaving. A second signal raises :class:`KeyboardInterrupt` at once (for a run
    that does not get to its next step). Outside the main thread, where Python cannot
    install handlers, signals are left alone and ``stop`` is never set by them.
    """
    stop = StopRequest() if stop is None else stop
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.signal = signum

    previous = {number: signal.signal(number, handler) for number in signals}
    try:
        yield stop
    finally:
        for number, old in previous.items():
            # None: a handler installed outside Python, which cannot be put back; the
            # default action is the closest.
            signal.signal(number, signal.SIG_DFL if old is None else old)
