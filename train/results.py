"""What a run produces: its table rows and result, where it stands inside an epoch, and the
two ways a run ends early.

These records sit apart from the trainer so that the modules that print, save or compare
them (:mod:`train.report`, :mod:`train.checkpoint`, :mod:`train.compare`) need not import
the trainer itself.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch


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
    """One run: its seed, a row per finished epoch, and where its time went (seconds)."""

    seed: int
    rows: list[EpochRow] = field(default_factory=list)
    setup_time: float = 0.0  # data to device + whitening (inside total time)
    train_time: float = 0.0  # the headline: setup + all training steps
    eval_time: float = 0.0  # excluded from train_time
    checkpoint_time: float = 0.0  # writing checkpoints; excluded from train_time

    @property
    def test_acc(self) -> float:
        return self.rows[-1].test_acc

    @property
    def test_loss(self) -> float:
        return self.rows[-1].test_loss

    @classmethod
    def from_dict(cls, saved: dict[str, Any]) -> RunResult:
        """A result from its ``dataclasses.asdict`` form (as checkpoints hold it)."""
        return cls(**{**saved, "rows": [EpochRow(**row) for row in saved["rows"]]})


@dataclasses.dataclass
class EpochProgress:
    """Where a run stands inside an epoch: what a mid-epoch resume continues from.

    ``generator_state`` is the run generator's state at the *start* of ``epoch``: drawing
    the epoch again from it gives the same permutation and augmentation choices.
    """

    epoch: int
    generator_state: torch.Tensor
    batches_done: int = 0
    loss_sum: torch.Tensor | None = None  # float32 device scalar (summed batch losses)
    correct: torch.Tensor | None = None  # int64 device scalar
    elapsed: float = 0.0  # seconds of this epoch spent before a resume

    @classmethod
    def begin(cls, epoch: int, generator: torch.Generator, device: torch.device) -> EpochProgress:
        """A fresh epoch starting now, with the generator where it stands."""
        return cls(
            epoch,
            generator.get_state(),
            0,
            torch.zeros((), device=device),
            torch.zeros((), dtype=torch.int64, device=device),
        )

    def add(self, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        """Count one step: its summed loss and correct predictions (device scalars, added
        in place: no sync)."""
        self.loss_sum += loss_sum
        self.correct += correct
        self.batches_done += 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "generator_state": self.generator_state,
            "batches_done": self.batches_done,
            "loss_sum": self.loss_sum.cpu(),
            "correct": self.correct.cpu(),
            "elapsed": self.elapsed,
        }

    @classmethod
    def from_dict(cls, saved: Mapping[str, Any], device: torch.device) -> EpochProgress:
        return cls(
            int(saved["epoch"]),
            saved["generator_state"],
            int(saved["batches_done"]),
            saved["loss_sum"].to(device),
            saved["correct"].to(device),
            float(saved["elapsed"]),
        )


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; the message names the step and the likely cause."""


class TrainingInterrupted(Exception):
    """A run stopped on request (SIGINT / SIGTERM) after saving what it could.

    Attributes:
        signal_name: ``"SIGINT"`` or ``"SIGTERM"``.
        checkpoint: where the run was saved, or None when nothing was.
    """

    def __init__(
        self, signal_name: str, checkpoint: str | os.PathLike | None, progress: EpochProgress | None
    ) -> None:
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
