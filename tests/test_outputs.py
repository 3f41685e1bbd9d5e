"""Nothing a run produces is lost: output paths are checked and locked before the data loads,
and a write that still fails at the end puts the results where the message says.

The trainer itself is replaced where only the checks before it matter; the checkpoint test
trains a tiny network for real.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from unittest import mock

import pytest
import torch
from test_cli_inputs import DATA, ReachedTraining, small_data

import train.checkpoint as checkpoint_module
import train.cli as cli
import train.report as report_module
import train.trainer as trainer_module
from train.cli import EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, main
from train.outputs import OutputLocks, check_output_file, lock_path
from train.trainer import EpochRow, RunResult

REPO = Path(__file__).resolve().parent.parent


def never_load(config):
    raise AssertionError("the data was loaded before the output paths were checked")


def refuse_training(*args, **kwargs):
    raise ReachedTraining


def run_cli(argv: list[str], *, load=never_load, trainer=refuse_training) -> int:
    with (
        mock.patch.object(cli, "load_data", load),
        mock.patch.object(trainer_module, "Trainer", trainer),
    ):
        try:
            # --full: no CPU-sized subset; a batch the small data set holds
            return main([*argv, "--device", "cpu", "--full", "--batch-size", "64"])
        except ReachedTraining:
            return EXIT_OK


def one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


# --------------------------------------------------------------------------- checked first
def test_json_naming_a_folder_is_refused_before_the_data_loads(tmp_path, capsys):
    assert run_cli(["--json", str(tmp_path)]) == EXIT_USAGE
    assert f"--json {tmp_path} is a folder" in one_error_line(capsys)


def test_json_in_a_folder_nothing_can_be_written_to_is_refused(capsys):
    assert run_cli(["--json", "/proc/x.json"]) == EXIT_USAGE
    assert "--json /proc/x.json: cannot write in /proc" in one_error_line(capsys)


def test_plot_naming_an_existing_file_is_refused(tmp_path, capsys):
    existing = tmp_path / "plots"
    existing.write_text("not a folder")
    assert run_cli(["--plot", str(existing)]) == EXIT_USAGE
    assert f"--plot {existing} is a file; name a folder" in one_error_line(capsys)


def test_checkpoint_under_a_regular_file_is_refused(tmp_path, capsys):
    regular = tmp_path / "file"
    regular.write_text("x")
    assert run_cli(["--checkpoint", str(regular / "sub" / "ck.pt")]) == EXIT_USAGE
    assert f"{regular} is a file, not a folder" in one_error_line(capsys)


def test_each_runs_checkpoint_is_checked(tmp_path, capsys):
    (tmp_path / "ck.seed1.pt").mkdir()  # run 2's file would be this folder
    assert run_cli(["--runs", "2", "--checkpoint", str(tmp_path / "ck.pt")]) == EXIT_USAGE
    assert "ck.seed1.pt is a folder" in one_error_line(capsys)


def as_unprivileged_user() -> list[str] | None:
    """The command prefix that runs a process without root's right to write anywhere (None
    when this machine cannot do that): nothing as an ordinary user, ``setpriv`` to the
    ``nobody`` account as root."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        return None
    prefix = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    probe = subprocess.run(
        [*prefix, sys.executable, "-c", "import train.outputs"], cwd=REPO, capture_output=True
    )
    return prefix if probe.returncode == 0 else None


def test_checkpoint_in_a_read_only_folder_is_refused_before_any_work():
    prefix = as_unprivileged_user()
    if prefix is None:
        pytest.skip(
            "root writes into read-only folders, and no other user can run this "
            "Python here (setpriv missing or the interpreter not readable)"
        )
    folder = Path(tempfile.mkdtemp(dir="/tmp"))
    try:
        folder.chmod(0o555)
        result = subprocess.run(
            [
                *prefix,
                sys.executable,
                "-m",
                "train",
                "--device",
                "cpu",
                "--data-dir",
                str(folder / "no-data"),
                "--checkpoint",
                str(folder / "ck.pt"),
            ],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=1800,
        )
    finally:
        folder.chmod(0o755)
        folder.rmdir()
    assert result.returncode == EXIT_USAGE, result.stderr
    assert result.stderr.strip() == (
        f"error: --checkpoint {folder / 'ck.pt'}: cannot write in {folder} (Permission "
        "denied); name a path in a folder you can write to"
    )


def test_writable_paths_pass_and_missing_folders_are_not_created_by_the_check(tmp_path):
    target = tmp_path / "new" / "deeper" / "out.json"
    assert check_output_file(target, "--json") == target
    assert not (tmp_path / "new").exists()


def test_compare_json_naming_a_folder_is_refused_before_any_run(tmp_path, capsys):
    code = run_cli(["compare", "--a", "", "--b", "", "--runs", "2", "--json", str(tmp_path)])
    assert code == EXIT_USAGE
    assert f"--json {tmp_path} is a folder" in one_error_line(capsys)


# --------------------------------------------------------------------------- locks
HOLDER = """
import sys
from train.outputs import OutputLocks
locks = OutputLocks()
locks.acquire(sys.argv[1], "--json")
print("locked", flush=True)
sys.stdin.read()          # hold the lock until the test closes our stdin (or kills us)
"""


def start_holder(path: Path) -> subprocess.Popen:
    """Another process holding the lock on ``path``; returns once it says it holds it."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline().strip() == "locked"
    return holder


def test_a_second_run_on_the_same_path_is_refused_naming_it(tmp_path, capsys):
    path = tmp_path / "results.json"
    holder = start_holder(path)
    try:
        assert run_cli(["--json", str(path)], load=lambda c: DATA) == EXIT_USAGE
        err = one_error_line(capsys)
        assert f"--json {path} is being written by another run (process {holder.pid})" in err
    finally:
        holder.stdin.close()
        holder.wait()
    assert run_cli(["--json", str(path)], load=lambda c: DATA) == EXIT_OK  # released
    assert not lock_path(path).exists()  # and this run removed its lock file


def test_a_crashed_holder_leaves_no_stale_lock(tmp_path):
    path = tmp_path / "ck.pt"
    holder = start_holder(path)
    holder.kill()  # no clean-up code runs
    holder.wait()
    assert lock_path(path).exists()  # the file is left behind ...
    with OutputLocks() as locks:  # ... but the OS dropped the lock
        locks.acquire(path, "--checkpoint")


# --------------------------------------------------------------------------- at the end
def fake_trainer(config, runtime, data, log=print, ctx=None):
    """A trainer whose runs finish at once with a fixed result."""

    class Finished:
        warmup_time = 0.0
        whitening = None
        save_failures: list[str] = []

        def run(self, seed, **kwargs):
            row = EpochRow(1, 0.1, 2.0, 0.3, 1.9, 0.35, 1.0, 1.0)
            return RunResult(seed=seed, rows=[row], train_time=1.0)

    return Finished()


def test_a_json_write_that_fails_at_the_end_puts_the_results_in_the_temp_folder(
    tmp_path, monkeypatch, capsys
):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    target = tmp_path / "out" / "results.json"
    real_write = report_module.write_json

    def disk_full(path, *args, **kwargs):
        if Path(path) == target:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, *args, **kwargs)

    monkeypatch.setattr(report_module, "write_json", disk_full)
    code = run_cli(
        ["--json", str(target), "--seed", "7"], load=lambda c: DATA, trainer=fake_trainer
    )
    assert code == EXIT_OUTPUT
    err = one_error_line(capsys)
    assert f"could not write --json {target} (No space left on device)" in err
    rescued = list((tmp_path / "tmp").glob("resnet9-results-*.json"))
    assert len(rescued) == 1 and f"the results are in {rescued[0]}" in err
    record = json.loads(rescued[0].read_text())
    assert record["runs"][0]["seed"] == 7 and record["runs"][0]["test_acc"] == 0.35


def test_a_checkpoint_save_that_fails_mid_run_warns_once_and_the_run_finishes(
    tmp_path, monkeypatch, capsys
):
    calls = []

    def failing_save(payload, path):
        calls.append(path)
        raise OSError(errno.ENOENT, "No such file or directory")

    monkeypatch.setattr(checkpoint_module, "save_atomic", failing_save)
    data = small_data(train=64, test=32)
    out = tmp_path / "r.json"
    with mock.patch.object(cli, "load_data", lambda config: data):
        code = main(
            [
                "--device",
                "cpu",
                "--width",
                "0.0625",
                "--epochs",
                "2",
                "--batch-size",
                "32",
                "--train-subset",
                "64",
                "--warmup-steps",
                "0",
                "--json",
                str(out),
                "--checkpoint",
                str(tmp_path / "ck.pt"),
            ]
        )
    captured = capsys.readouterr()
    assert code == EXIT_OUTPUT and len(calls) == 2  # one save per epoch, both failed
    warnings = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and "could not save checkpoint" in warnings[0]
    assert "2 checkpoint save(s) failed" in captured.err
    assert len(json.loads(out.read_text())["runs"][0]["epochs"]) == 2  # the numbers: on disk
    assert torch.isfinite(torch.tensor(json.loads(out.read_text())["runs"][0]["test_acc"]))
