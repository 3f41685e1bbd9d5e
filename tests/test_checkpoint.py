"""Checkpoints: interrupted-and-resumed runs end bit-identical to uninterrupted ones, saves
are atomic, divergence never overwrites a good checkpoint, and bad checkpoints are refused.

Everything runs on the CPU on a tiny data set (128 training images, batch 32: 4 steps per
epoch, 2 epochs) with a 1/16-width network; interruptions are real signals, delivered from
inside a step (in process) or from outside (to the CLI in a subprocess).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from cifar_archive import make_archive
from tiny_training import TINY_CONFIG, TinyData
from tiny_training import tiny_data as shared_tiny_data

import train.trainer as trainer_module
from train.checkpoint import (
    CheckpointError,
    CheckpointMismatch,
    EpochProgress,
    load_checkpoint,
    run_checkpoint_path,
    save_atomic,
)
from train.cli import EXIT_DATA, EXIT_TERMINATED, EXIT_USAGE, main
from train.config import TrainConfig
from train.report import progress_bar
from train.resume import check_compatible, resume_paths
from train.runtime import Runtime
from train.signals import SELF_SIGNAL_ENV
from train.step import TrainStep
from train.trainer import Trainer, TrainingDiverged, TrainingInterrupted

REPO = Path(__file__).resolve().parent.parent
STEPS_PER_EPOCH = 4
CONFIG = TINY_CONFIG
RUNTIME = Runtime(torch.device("cpu"), "eager", torch.float32, channels_last=False)


def tiny_data(seed: int = 0) -> TinyData:
    return shared_tiny_data(STEPS_PER_EPOCH * CONFIG.batch_size, 64, seed)


DATA = tiny_data()


pytestmark = pytest.mark.usefixtures("one_thread")


def new_trainer(config: TrainConfig = CONFIG, data: TinyData = DATA) -> Trainer:
    """A trainer as a fresh process would build it."""
    return Trainer(config, RUNTIME, data, log=lambda line: None)


def hook_steps(
    monkeypatch,
    *,
    signal_after: int | None = None,
    nan_at: int | None = None,
    signum: int = signal.SIGINT,
) -> None:
    """Make the trainer's steps send ``signum`` to this process right after step number
    ``signal_after`` (counting from 1), and/or feed NaN inputs to step index ``nan_at``."""

    class HookedStep(TrainStep):
        def __call__(self, inputs, labels):
            if self.steps == nan_at:
                inputs = inputs * float("nan")
            out = super().__call__(inputs, labels)
            if self.steps == signal_after:
                os.kill(os.getpid(), signum)
            return out

    monkeypatch.setattr(trainer_module, "TrainStep", HookedStep)


def handlers() -> tuple:
    return signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)


def rows_of(result) -> list[tuple]:
    """What must match between runs: everything but the times."""
    return [
        (r.epoch, r.lr, r.train_loss, r.train_acc, r.test_loss, r.test_acc) for r in result.rows
    ]


def assert_same_state(a: dict, b: dict) -> None:
    """Two checkpoints hold the same model, optimiser, weight average and position."""
    for name, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][name]), name
    for mine, theirs in zip(a["step"]["ema"]["average"], b["step"]["ema"]["average"], strict=True):
        assert torch.equal(mine, theirs)
    assert a["step"]["ema"]["updates"] == b["step"]["ema"]["updates"]
    momentum_a, momentum_b = a["step"]["optimizer"]["state"], b["step"]["optimizer"]["state"]
    assert momentum_a.keys() == momentum_b.keys()
    for key in momentum_a:
        assert torch.equal(momentum_a[key]["momentum_buffer"], momentum_b[key]["momentum_buffer"])
    assert a["step"]["steps"] == b["step"]["steps"]
    assert torch.equal(a["progress"]["generator_state"], b["progress"]["generator_state"])


@dataclass
class Reference:
    result: object
    state: dict[str, torch.Tensor]
    checkpoint: Path


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Reference:
    """The uninterrupted run, checkpointing at every epoch end."""
    path = tmp_path_factory.mktemp("reference") / "run.pt"
    trainer = new_trainer()
    result = trainer.run(0, checkpoint=path)
    state = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    return Reference(result, state, path)


# --------------------------------------------------------------------------- resume
@pytest.mark.parametrize(
    "signal_after, where",
    [
        (7, "in epoch 2 after 3 steps"),  # mid-epoch, between two weight-average updates
        (4, "at the end of epoch 1"),  # the signal lands in the epoch's last step
    ],
)
def test_interrupted_then_resumed_run_is_bit_identical(
    reference, tmp_path, monkeypatch, capsys, signal_after, where
):
    path = tmp_path / "run.pt"
    before = handlers()
    hook_steps(monkeypatch, signal_after=signal_after)
    with pytest.raises(TrainingInterrupted, match=f"SIGINT {where}") as stopped:
        new_trainer().run(0, checkpoint=path)
    assert stopped.value.checkpoint == path and handlers() == before
    saved = torch.load(path, weights_only=True)
    expected_done = signal_after % STEPS_PER_EPOCH
    assert saved["progress"]["batches_done"] == expected_done
    assert saved["step"]["steps"] == signal_after
    monkeypatch.undo()

    trainer = new_trainer()
    resumed = trainer.run(0, checkpoint=path, resume=path)
    assert handlers() == before
    for name, tensor in reference.state.items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name
    assert rows_of(resumed) == rows_of(reference.result)
    assert resumed.test_acc == reference.result.test_acc
    assert_same_state(load_checkpoint(path), load_checkpoint(reference.checkpoint))
    # the times carry on: the resumed run's clock includes what ran before the stop
    assert resumed.train_time >= resumed.rows[0].total_time > 0
    # no progress bar when stderr is not a terminal
    assert capsys.readouterr().err == ""


def test_resuming_a_finished_run_reads_it_back_without_training(reference, monkeypatch):
    def no_training(*args, **kwargs):
        raise AssertionError("a finished run must not train again")

    monkeypatch.setattr(trainer_module.TrainStep, "__call__", no_training)
    trainer = new_trainer()
    result = trainer.run(0, resume=reference.checkpoint)
    assert rows_of(result) == rows_of(reference.result)
    assert result.train_time == reference.result.train_time
    for name, tensor in reference.state.items():
        assert torch.equal(trainer.model.state_dict()[name], tensor), name


def test_checkpoint_loads_with_weights_only(reference):
    saved = torch.load(reference.checkpoint, weights_only=True)
    assert saved["format"] == "resnet9-cifar10-checkpoint" and saved["version"] == 1
    assert saved["config"] == CONFIG.to_dict() and saved["seed"] == 0
    assert saved["progress"]["epoch"] == CONFIG.epochs + 1  # finished
    assert saved["progress"]["generator_state"].dtype == torch.uint8
    assert saved["rng"]["torch"].dtype == torch.uint8
    assert saved["step"]["steps"] == CONFIG.epochs * STEPS_PER_EPOCH
    rows = saved["result"]["rows"]
    assert [row["epoch"] for row in rows] == [1, 2]
    assert rows[-1]["test_acc"] == reference.result.test_acc


def test_run_without_checkpoint_leaves_signals_alone(monkeypatch):
    """Without a checkpoint or a stop request to watch, Ctrl-C keeps raising at once."""
    hook_steps(monkeypatch, signal_after=1)
    with pytest.raises(KeyboardInterrupt):
        new_trainer().run(0)


def test_progress_bar_only_on_a_terminal_and_gone_after(monkeypatch):
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    for stream, drawn in ((io.StringIO(), False), (Terminal(), True)):
        monkeypatch.setattr(sys, "stderr", stream)
        progress = EpochProgress(epoch=2, generator_state=torch.zeros(1), batches_done=1)
        with progress_bar(progress, steps=4) as bar:
            for _ in range(3):
                bar.update()
        text = stream.getvalue()
        assert ("epoch 2" in text and "1/4" in text) == drawn  # drawn from the resume point
        assert text.endswith("\r") or not drawn  # cleared: the table stays clean


# --------------------------------------------------------------------------- atomic saves
def test_failed_save_keeps_the_previous_checkpoint_and_no_temporary_file(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    save_atomic({"weights": torch.arange(3)}, path)
    before = path.read_bytes()

    def disk_full(obj, handle, *args, **kwargs):
        handle.write(b"half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_atomic({"weights": torch.zeros(3)}, path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["run.pt"]
    monkeypatch.undo()
    assert torch.equal(torch.load(path, weights_only=True)["weights"], torch.arange(3))


# --------------------------------------------------------------------------- divergence
def test_divergence_names_the_step_and_keeps_the_last_good_checkpoint(
    reference, tmp_path, monkeypatch
):
    path = tmp_path / "run.pt"
    hook_steps(monkeypatch, nan_at=5)  # the second step of epoch 2
    with pytest.raises(TrainingDiverged, match=r"at step 5 \(epoch 2\).*lower --lr"):
        new_trainer().run(0, checkpoint=path)
    saved = load_checkpoint(path)  # the one written at the end of epoch 1
    assert (saved["progress"]["epoch"], saved["progress"]["batches_done"]) == (2, 0)
    assert all(torch.isfinite(t).all() for t in saved["model"].values())
    reference_epoch1 = reference.result.rows[0]
    assert saved["result"]["rows"][0]["train_loss"] == reference_epoch1.train_loss


def test_interrupted_after_divergence_does_not_save_the_diverged_state(tmp_path, monkeypatch):
    path = tmp_path / "run.pt"
    hook_steps(monkeypatch, nan_at=5, signal_after=6)
    with pytest.raises(TrainingDiverged, match="at step 5"):
        new_trainer().run(0, checkpoint=path)
    saved = load_checkpoint(path)
    assert (saved["progress"]["epoch"], saved["progress"]["batches_done"]) == (2, 0)
    assert saved["step"]["steps"] == STEPS_PER_EPOCH


# --------------------------------------------------------------------------- refusals
def test_resume_refuses_another_configuration_naming_the_fields(reference):
    changed = CONFIG.replace(epochs=3, lr=0.5)
    with pytest.raises(CheckpointMismatch, match="epochs 2 in the checkpoint vs 3 now") as err:
        new_trainer(changed).run(0, resume=reference.checkpoint)
    assert "lr 1.0 in the checkpoint vs 0.5 now" in str(err.value)
    assert "warmup_steps" not in str(err.value)


def test_resume_refuses_another_seed_or_data_set(reference):
    with pytest.raises(CheckpointMismatch, match="run seed 0 in the checkpoint vs 1 now"):
        new_trainer().run(1, resume=reference.checkpoint)
    with pytest.raises(CheckpointMismatch, match="the data set differs"):
        new_trainer(data=tiny_data(seed=1)).run(0, resume=reference.checkpoint)


def test_settings_that_do_not_change_the_run_may_differ(reference):
    saved = load_checkpoint(reference.checkpoint)
    harmless = CONFIG.replace(
        runs=3, json="out.json", eval_every=2, warmup_steps=5, data_dir="/elsewhere", device="auto"
    )
    check_compatible(
        saved, config=harmless, runtime=RUNTIME, data=new_trainer().data_fingerprint, seed=0
    )


def test_corrupt_or_foreign_files_are_refused_clearly(reference, tmp_path):
    whole = reference.checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(whole[: len(whole) // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint at all" * 100)
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, foreign)
    for path in (truncated, garbage):
        with pytest.raises(CheckpointError, match=f"cannot read checkpoint {path}"):
            load_checkpoint(path)
    with pytest.raises(CheckpointError, match="not a checkpoint of this trainer"):
        load_checkpoint(foreign)
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        load_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="cannot read checkpoint"):
        new_trainer().run(0, resume=truncated)


def test_one_checkpoint_per_run_named_by_seed(reference, tmp_path):
    base = tmp_path / "ck.pt"
    assert run_checkpoint_path(base, 7, runs=1) == base
    assert run_checkpoint_path(base, 7, runs=3) == tmp_path / "ck.seed7.pt"
    data = new_trainer().data_fingerprint
    config = CONFIG.replace(runs=2)
    with pytest.raises(CheckpointError, match="no checkpoint to resume at .*ck.seed0.pt"):
        resume_paths(base, [0, 1], config=config, runtime=RUNTIME, data=data)
    shutil.copy(reference.checkpoint, tmp_path / "ck.seed0.pt")
    assert resume_paths(base, [0, 1], config=config, runtime=RUNTIME, data=data) == [
        tmp_path / "ck.seed0.pt",
        None,
    ]  # run 2 had not started: it starts afresh


# --------------------------------------------------------------------------- the CLI
# 16 steps per epoch, 3 epochs.
CLI_FLAGS = (
    "--device",
    "cpu",
    "--width",
    "0.0625",
    "--epochs",
    "3",
    "--batch-size",
    "32",
    "--train-subset",
    "512",
    "--test-subset",
    "128",
    "--eval-every",
    "1",
)


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cifar")
    make_archive(folder)
    return folder


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "train", *args]


@pytest.fixture(scope="module")
def cli_reference(archive_dir, tmp_path_factory) -> Path:
    """The final checkpoint of an uninterrupted CLI run (in this process, like the resume
    below: the interrupted part runs in a subprocess with the same number of threads)."""
    path = tmp_path_factory.mktemp("cli") / "reference.pt"
    assert main(["--data-dir", str(archive_dir), *CLI_FLAGS, "--checkpoint", str(path)]) == 0
    return path


def table_rows(stdout: str) -> list[list[str]]:
    """The cells of the printed table's epoch rows."""
    return [
        line.split() for line in stdout.splitlines() if line.split()[:1] in (["1"], ["2"], ["3"])
    ]


def test_cli_sigterm_mid_epoch_then_resume_matches_the_uninterrupted_run(
    archive_dir, cli_reference, tmp_path, capsys
):
    path = tmp_path / "ck.pt"
    flags = ("--data-dir", str(archive_dir), *CLI_FLAGS)
    # Same thread count as this process: CPU reductions may split differently otherwise.
    # The trainer sends itself SIGTERM right after step 5 of epoch 2 (its test hook): the
    # stop lands there whatever this machine's speed, and takes the path of a signal sent
    # from outside (handler, stop request, save, exit code).
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(torch.get_num_threads()),
        SELF_SIGNAL_ENV: "2:5:SIGTERM",
    }
    process = subprocess.run(
        cli(*flags, "--checkpoint", str(path)),
        cwd=REPO,
        text=True,
        env=env,
        capture_output=True,
        timeout=1800,
    )
    stderr = process.stderr
    assert process.returncode == EXIT_TERMINATED, stderr
    assert "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert "interrupted by SIGTERM" in stderr and f"--resume {path}" in stderr
    assert "in epoch 2 after 5 steps" in stderr
    stopped = load_checkpoint(path)
    assert stopped["progress"]["epoch"] == 2 and stopped["progress"]["batches_done"] == 5

    capsys.readouterr()
    assert main([*flags, "--resume", str(path)]) == 0
    printed = table_rows(capsys.readouterr().out)
    resumed, reference = load_checkpoint(path), load_checkpoint(cli_reference)
    assert_same_state(resumed, reference)
    columns = ("epoch", "lr", "train_loss", "train_acc", "test_loss", "test_acc")
    assert [[row[c] for c in columns] for row in resumed["result"]["rows"]] == [
        [row[c] for c in columns] for row in reference["result"]["rows"]
    ]
    assert [row[0] for row in printed] == ["1", "2", "3"]  # the whole table, reprinted
    assert printed[-1][5] == f"{reference['result']['rows'][-1]['test_acc']:.4f}"


def test_cli_refuses_bad_checkpoints_in_one_line(archive_dir, cli_reference, tmp_path, capsys):
    good = cli_reference
    flags = ("--data-dir", str(archive_dir), *CLI_FLAGS)
    changed = [*flags[:-1], "2"]  # --eval-every 2 may differ ...
    changed[changed.index("--width") + 1] = "0.125"  # ... the width may not
    assert main([*changed, "--resume", str(good)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "width 0.0625 in the checkpoint vs 0.125 now" in err and "eval_every" not in err
    assert len(err.splitlines()) == 1

    broken = tmp_path / "broken.pt"
    broken.write_bytes(good.read_bytes()[:1000])
    assert main([*flags, "--resume", str(broken)]) == EXIT_DATA
    err = capsys.readouterr().err.strip()
    assert f"cannot read checkpoint {broken}" in err and len(err.splitlines()) == 1
