"""What a run produces: its table rows and result, and the two ways a run ends early.

These records sit apart from the trainer so that the modules that print, save or compare
them (:mod:`train.report`, :mod:`train.checkpoint`, :mod:`train.compare`) need not import
the trainer itself.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from train.checkpoint import EpochProgress


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
