"""Checkpoint and JSON files on disk: refusals in our own words, each difference of a resumed
run named once, atomic writes that leave no temporary files and respect the umask, and saves
that a signal cannot tear.

Checkpoints here are small dicts written with ``save_atomic`` (or planted by hand); the
command line runs in subprocesses on a synthetic archive with a tiny network. Signals are
real ones, sent by the process to itself at a known point of a write (from inside the
pickling of the payload or the write callback), so every test is deterministic.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import pytest
import torch
from cifar_archive import make_archive
from tiny_training import TINY_CLI_FLAGS

from train.checkpoint import (
    FORMAT,
    VERSION,
    CheckpointError,
    CheckpointMismatch,
    load_checkpoint,
    runtime_record,
    save_atomic,
)
from train.config import TrainConfig
from train.resume import check_compatible
from train.runtime import Runtime
from train.signals import stop_on_signals

REPO = Path(__file__).resolve().parent.parent
RUNTIME = Runtime(torch.device("cpu"), "eager", torch.float32, channels_last=False)
ADVICE = (
    "give --resume a checkpoint this trainer wrote (--checkpoint), or start afresh without --resume"
)
TINY = TINY_CLI_FLAGS


def temporaries(folder: Path) -> list[str]:
    """Names in ``folder`` that look like anyone's temporary file."""
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".tmp"))


def ours(n: int) -> dict:
    """A small payload in the checkpoint format (only what load_checkpoint checks)."""
    return {
        "format": FORMAT,
        "version": VERSION,
        "config": {},
        "runtime": {},
        "data": {},
        "seed": 0,
        "steps_per_epoch": 1,
        "progress": {},
        "model": {"w": torch.full((4,), n)},
        "step": {},
        "rng": {},
        "result": {},
        "n": n,
    }


# --------------------------------------------------------------------------- hostile files
class Custom:
    """Some class of someone else's: torch.save pickles it by reference."""

    def __init__(self) -> None:
        self.weights = torch.ones(2)


class MakesFolder:
    """Unpickling this would run ``os.mkdir(marker)``: the proof that something ran."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def write_damaged(path: Path) -> None:
    """A valid checkpoint with bytes of its pickle flipped: the zip's checksum no longer
    matches (torch itself would not notice a flip in a tensor's bytes)."""
    save_atomic(ours(1), path)
    raw = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith("/data.pkl"))
    # Local header: 30 bytes, the name, then its own extra field (the central one differs).
    name_length = int.from_bytes(raw[info.header_offset + 26 : info.header_offset + 28], "little")
    extra_length = int.from_bytes(raw[info.header_offset + 28 : info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_length + extra_length
    raw[start + 2 : start + 10] = b"\xfe" * 8
    path.write_bytes(bytes(raw))


def plant(kind: str, folder: Path) -> tuple[Path, str]:
    """A file of ``kind`` and the reason load_checkpoint must give for it."""
    path = folder / f"{kind}.pt"
    marker = folder / "ran"
    if kind == "truncated":
        save_atomic(ours(1), folder / "whole.pt")
        whole = (folder / "whole.pt").read_bytes()
        path.write_bytes(whole[: len(whole) // 2])
        reason = (
            "it is truncated or damaged (a zip file whose directory at the end is "
            "missing or unreadable, e.g. an interrupted copy)"
        )
    elif kind == "garbage":
        path.write_bytes(b"not a checkpoint at all" * 100)
        reason = "it is not a checkpoint of this trainer (not a PyTorch file at all)"
    elif kind == "empty":
        path.write_bytes(b"")
        reason = "it is empty (0 bytes), not a checkpoint of this trainer"
    elif kind in ("bare-pickle-2", "bare-pickle-4"):
        path.write_bytes(pickle.dumps(MakesFolder(marker), protocol=int(kind[-1])))
        reason = "it is a bare Python pickle, not a checkpoint of this trainer (left unread)"
    elif kind == "custom-class":
        torch.save({"model": Custom()}, path)
        reason = (
            f"it holds objects this trainer never writes ({__name__}.Custom), so it "
            "is not one of its checkpoints; the safe loader refused them and nothing in "
            "the file ran"
        )
    elif kind == "reduce-in-torch-file":
        torch.save({"format": FORMAT, "model": MakesFolder(marker)}, path)
        reason = (
            f"it holds objects this trainer never writes ({os.mkdir.__module__}.mkdir), "
            "so it is not one of its checkpoints; the safe loader refused them and "
            "nothing in the file ran"
        )
    elif kind == "other-zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("notes/readme.txt", "hello")
        reason = "it is a zip file but not a PyTorch one, so not a checkpoint of this trainer"
    elif kind == "damaged":
        write_damaged(path)  # torch.save into a file object names the zip's folder "archive"
        reason = (
            "it is damaged (the checksum of archive/data.pkl does not match its "
            "contents, e.g. a corrupted copy)"
        )
    else:
        raise AssertionError(kind)
    return path, reason


KINDS = (
    "truncated",
    "garbage",
    "empty",
    "bare-pickle-2",
    "bare-pickle-4",
    "custom-class",
    "reduce-in-torch-file",
    "other-zip",
    "damaged",
)


@pytest.mark.parametrize("kind", KINDS)
def test_unusable_file_is_refused_in_our_own_words(tmp_path, capfd, kind):
    path, reason = plant(kind, tmp_path)
    capfd.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(CheckpointError) as error:
            load_checkpoint(path)
    message = str(error.value)
    assert message == f"cannot read checkpoint {path}: {reason}; {ADVICE}"
    # Nothing of torch's advice (weights_only=False runs the file), no terminal codes, no
    # warnings around it, nothing in the file executed.
    assert "weights_only" not in message and "\x1b" not in message
    assert error.value.__cause__ is None and error.value.__suppress_context__
    assert [str(w.message) for w in caught] == []
    assert capfd.readouterr() == ("", "")
    assert not (tmp_path / "ran").exists()


def test_a_folder_is_not_a_checkpoint(tmp_path):
    with pytest.raises(
        CheckpointError,
        match=rf"^{tmp_path} is a folder, not a checkpoint: "
        r"name the checkpoint file itself$",
    ):
        load_checkpoint(tmp_path)


def test_foreign_torch_file_says_what_to_do(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save({"state_dict": {"w": torch.ones(2)}}, path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    assert str(error.value) == (
        f"{path} is not a checkpoint of this trainer (a PyTorch file "
        f"without its format mark); {ADVICE}"
    )


# --------------------------------------------------------------------------- differences
def saved_run(config: TrainConfig, seed: int) -> dict:
    """What check_compatible reads of a checkpoint of run ``seed`` under ``config``."""
    return {
        "config": config.to_dict(),
        "runtime": runtime_record(RUNTIME),
        "data": {"train_images": 128, "test_images": 64, "crc32": 7},
        "seed": seed,
    }


def mismatch(saved: dict, config: TrainConfig, seed: int) -> str:
    with pytest.raises(CheckpointMismatch) as error:
        check_compatible(
            saved, config=config, runtime=RUNTIME, data=saved["data"], seed=seed, path="ck.pt"
        )
    return str(error.value)


def test_a_new_seed_is_one_difference_not_two():
    message = mismatch(saved_run(TrainConfig(seed=1), 1), TrainConfig(seed=2), 2)
    assert message == (
        "ck.pt was written by a different run: seed 1 in the checkpoint vs 2 "
        "now. Resume with the flags of the interrupted run, or start afresh "
        "without --resume"
    )


def test_with_several_runs_each_seed_difference_is_named_once():
    # Run 2 of --seed 0 --runs 3 has seed 2; --seed 1 makes it seed 3: one difference.
    message = mismatch(saved_run(TrainConfig(seed=0, runs=3), 2), TrainConfig(seed=1, runs=3), 3)
    assert message.count(" in the checkpoint vs ") == 1
    assert "seed 0 in the checkpoint vs 1 now" in message and "run seed" not in message
    # Same --seed, another run of it: only the run's seed differs, and is named.
    message = mismatch(saved_run(TrainConfig(seed=0, runs=3), 0), TrainConfig(seed=0, runs=3), 1)
    assert message.count(" in the checkpoint vs ") == 1
    assert "run seed 0 in the checkpoint vs 1 now" in message
    # A new --seed *and* another run index: two real differences, each named once.
    message = mismatch(saved_run(TrainConfig(seed=0, runs=3), 0), TrainConfig(seed=5, runs=3), 7)
    assert message.count(" in the checkpoint vs ") == 2
    assert "seed 0 in the checkpoint vs 5 now" in message
    assert "run seed 0 in the checkpoint vs 7 now" in message


# --------------------------------------------------------------------------- atomic writes
def test_stale_temporaries_of_a_killed_save_are_removed_by_the_next(tmp_path):
    """A save killed outright (SIGKILL: nothing can clean up) leaves its temporary file; the
    next save of the same checkpoint removes it."""
    path = tmp_path / "run.pt"
    save_atomic(ours(0), path)
    script = (
        "import os, signal, sys, torch\n"
        "from train.checkpoint import save_atomic\n"
        "class Kill:\n"
        "    def __reduce_ex__(self, protocol):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "save_atomic({'w': torch.ones(100), 'kill': Kill()}, sys.argv[1])\n"
    )
    killed = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=REPO,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL
    left = temporaries(tmp_path)
    assert len(left) == 1 and left[0].startswith(".run.pt.")
    assert load_checkpoint(path)["n"] == 0  # the previous one, untouched

    save_atomic(ours(1), path)
    assert temporaries(tmp_path) == []
    assert load_checkpoint(path)["n"] == 1


def test_only_our_own_temporaries_of_that_target_are_removed(tmp_path):
    path = tmp_path / "run.pt"
    stale = [".run.pt.abcd_123.tmp", ".run.pt.zzzzzzzz.tmp"]
    kept = [
        ".run.pt.abc.tmp",  # not our random part
        ".other.pt.abcdefgh.tmp",  # another target's
        "run.pt.abcdefgh.tmp",  # no leading dot
        "tmpabcdefgh.tmp",  # tempfile's default naming (e.g. someone else's)
        ".run.pt.abcdefgh.tmp.keep",
    ]
    for name in stale + kept:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / ".run.pt.folder__.tmp").mkdir()  # our pattern, but a folder: left alone
    save_atomic(ours(1), path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["run.pt", ".run.pt.folder__.tmp", *kept]
    )


def run_result(seed: int = 0, **row: object):
    """A finished one-epoch run (``row``: fields of its EpochRow to change)."""
    from train.trainer import EpochRow, RunResult

    fields = {
        "epoch": 1,
        "lr": 0.1,
        "train_loss": 1.0,
        "train_acc": 0.5,
        "test_loss": 1.0,
        "test_acc": 0.5,
        "epoch_time": 1.0,
        "total_time": 1.0,
        **row,
    }
    return RunResult(seed=seed, rows=[EpochRow(**fields)], train_time=1.0)


def test_checkpoint_and_json_get_the_umask_like_any_output(tmp_path):
    from train.report import write_json

    for umask, expected in ((0o022, 0o644), (0o002, 0o664), (0o077, 0o600)):
        folder = tmp_path / oct(umask)
        old = os.umask(umask)
        try:
            save_atomic(ours(1), folder / "run.pt")
            write_json(folder / "out.json", TrainConfig(), RUNTIME, [run_result()], 0.0)
        finally:
            os.umask(old)
        assert (folder / "run.pt").stat().st_mode & 0o777 == expected, oct(umask)
        assert (folder / "out.json").stat().st_mode & 0o777 == expected, oct(umask)
        assert json.loads((folder / "out.json").read_text())["runs"][0]["test_acc"] == 0.5


def test_json_that_cannot_be_written_keeps_the_previous_file_and_no_temporary(tmp_path):
    from train.report import write_json

    path = tmp_path / "out.json"
    good = run_result()
    write_json(path, TrainConfig(), RUNTIME, [good], 0.0)
    before = path.read_bytes()
    broken = run_result(1, lr=object())  # json cannot encode it (only the table has it)
    with pytest.raises((TypeError, ValueError)):
        write_json(path, TrainConfig(), RUNTIME, [good, broken], 0.0)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.json"]


# --------------------------------------------------------------------------- signals
class SignalWhilePickled:
    """A tensor that, while torch.save pickles it (the temporary file open, the zip writer
    started), sends ``signum`` to this process; it unpickles as the plain tensor."""

    def __init__(self, value: torch.Tensor, signum: int) -> None:
        self.value, self.signum = value, signum

    def __reduce_ex__(self, protocol):
        os.kill(os.getpid(), self.signum)
        return self.value.__reduce_ex__(protocol)


def test_ctrl_c_during_a_save_takes_effect_once_the_checkpoint_is_complete(tmp_path):
    path = tmp_path / "run.pt"
    save_atomic(ours(0), path)
    with stop_on_signals() as stop:
        # A first Ctrl-C arriving mid-save: recorded as the stop request once it is done.
        payload = {**ours(1), "extra": SignalWhilePickled(torch.arange(1000), signal.SIGINT)}
        save_atomic(payload, path)
        assert stop.requested and stop.name == "SIGINT"
        assert load_checkpoint(path)["n"] == 1
        # The second one (the run's stop already requested) interrupts: after the save.
        payload = {**ours(2), "extra": SignalWhilePickled(torch.arange(1000), signal.SIGINT)}
        with pytest.raises(KeyboardInterrupt):
            save_atomic(payload, path)
    saved = load_checkpoint(path)
    assert saved["n"] == 2 and torch.equal(saved["extra"], torch.arange(1000))
    assert temporaries(tmp_path) == []


def test_ctrl_c_between_two_writes_of_the_bytes_waits_for_the_end(tmp_path, monkeypatch):
    """The signal lands inside the write callback itself (where torch's zip writer turned it
    into a long RuntimeError): the default SIGINT handler's KeyboardInterrupt comes after
    the file is complete, and the handler is the default one again."""
    path = tmp_path / "run.pt"
    path.write_bytes(b"previous")

    def write_in_two_halves(obj, handle, *args, **kwargs) -> None:
        handle.write(b"first half, ")
        os.kill(os.getpid(), signal.SIGINT)
        handle.write(b"second half")

    monkeypatch.setattr(torch, "save", write_in_two_halves)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({}, path)
    assert path.read_bytes() == b"first half, second half"
    assert temporaries(tmp_path) == []
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_failed_write_under_a_signal_is_cleaned_up_and_then_interrupted(tmp_path, monkeypatch):
    """A write that fails while a Ctrl-C is held back: nothing left, the previous file kept,
    the failure kept as the context, and the Ctrl-C still arrives."""
    path = tmp_path / "run.pt"
    path.write_bytes(b"previous")

    def disk_full_after_ctrl_c(obj, handle, *args, **kwargs) -> None:
        handle.write(b"half")
        os.kill(os.getpid(), signal.SIGINT)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full_after_ctrl_c)
    with pytest.raises(KeyboardInterrupt) as error:
        save_atomic({}, path)
    assert isinstance(error.value.__context__, OSError)
    assert path.read_bytes() == b"previous" and temporaries(tmp_path) == []


def test_sigterm_during_a_save_ends_the_process_after_the_checkpoint_is_complete(tmp_path):
    """Without the trainer's handlers SIGTERM ends the process at once; during a save it
    ends it as soon as the checkpoint is complete, never leaving half a file."""
    path = tmp_path / "run.pt"
    save_atomic(ours(0), path)
    script = (
        "import os, signal, sys, torch\n"
        "from train.checkpoint import save_atomic\n"
        "class Term:\n"
        "    def __reduce_ex__(self, protocol):\n"
        "        os.kill(os.getpid(), signal.SIGTERM)\n"
        "        return torch.arange(5).__reduce_ex__(protocol)\n"
        "save_atomic({'format': 'resnet9-cifar10-checkpoint', 'n': 1, 'extra': Term()},\n"
        "            sys.argv[1])\n"
        "print('still running')\n"
    )
    run = subprocess.run(
        [sys.executable, "-c", script, str(path)],
        cwd=REPO,
        text=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        timeout=120,
        check=False,
    )
    assert run.returncode == -signal.SIGTERM, run.stderr
    assert "still running" not in run.stdout
    saved = torch.load(path, weights_only=True)
    assert saved["n"] == 1 and torch.equal(saved["extra"], torch.arange(5))
    assert temporaries(tmp_path) == []


# --------------------------------------------------------------------------- the CLI
@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cifar")
    make_archive(folder)
    return folder


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train", *TINY, *args],
        cwd=REPO,
        text=True,
        capture_output=True,
        timeout=600,
        check=False,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.mark.parametrize("kind", ["custom-class", "truncated"])
def test_cli_refuses_an_unusable_checkpoint_in_one_line_with_exit_3(archive_dir, tmp_path, kind):
    path, reason = plant(kind, tmp_path)
    run = cli("--data-dir", str(archive_dir), "--resume", str(path))
    assert run.returncode == 3, run.stderr
    assert run.stderr == f"error: cannot read checkpoint {path}: {reason}; {ADVICE}\n"
    assert not (tmp_path / "ran").exists()


def test_cli_names_a_new_seed_once_with_exit_2(archive_dir, tmp_path):
    path = tmp_path / "ck.pt"
    trained = cli("--data-dir", str(archive_dir), "--checkpoint", str(path))
    assert trained.returncode == 0, trained.stderr
    run = cli("--data-dir", str(archive_dir), "--seed", "1", "--resume", str(path))
    assert run.returncode == 2, run.stderr
    assert run.stderr == (
        f"error: {path} was written by a different run: seed 0 in the "
        "checkpoint vs 1 now. Resume with the flags of the interrupted run, "
        "or start afresh without --resume\n"
    )
