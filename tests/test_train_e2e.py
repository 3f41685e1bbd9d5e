"""The trainer end to end on the CPU: the CLI on a synthetic archive, bad inputs at the
command line, eager vs torch.compile on the same batch, and one real-data run."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from cifar_archive import make_archive, truncate

from train.cli import main
from train.config import CIFAR10_MEAN, CIFAR10_STD, TrainConfig
from train.loss import label_smoothing_loss
from train.runtime import Runtime
from train.trainer import model_config

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cifar")
    make_archive(folder)
    return folder


# Seconds before a subprocess counts as hung: a guard against hangs, not a time limit (a
# slow or busy machine must not fail a run that would finish).
HANG_S = 1800


def run_cli(
    *args: str, env: dict | None = None, timeout: int = HANG_S
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "train", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


# --------------------------------------------------------------------------- CLI happy path
def test_cli_trains_on_synthetic_archive_and_writes_json(archive_dir, tmp_path):
    out = tmp_path / "result.json"
    result = run_cli(
        "--data-dir",
        str(archive_dir),
        "--device",
        "cpu",
        "--width",
        "0.125",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--train-subset",
        "1024",
        "--test-subset",
        "256",
        "--runs",
        "2",
        "--eval-every",
        "1",
        "--json",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    # every CPU-sized setting was given explicitly, so nothing was filled in silently
    assert "CPU-sized configuration" not in result.stdout
    assert any(line.startswith("device: CPU") for line in lines)
    header = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "lr"])
    first_row = lines[header + 1].split()
    assert lines[header].split() == [
        "epoch",
        "lr",
        "train",
        "loss",
        "train",
        "acc",
        "test",
        "loss",
        "test",
        "acc",
        "epoch",
        "s",
        "total",
        "s",
    ]
    assert first_row[0] == "1" and len(first_row) == 8  # every column filled
    assert "runs reached 94%" in result.stdout and "95% CI, n=2" in result.stdout
    assert "time includes: data to device, whitening filters" in result.stdout
    record = json.loads(out.read_text())
    assert record["config"]["epochs"] == 2 and record["config"]["runs"] == 2
    assert record["environment"]["torch"] == torch.__version__
    assert record["environment"]["device"].startswith("CPU")
    assert len(record["runs"]) == 2 and len(record["runs"][0]["epochs"]) == 2
    assert {"mean", "std", "min", "max"} <= set(record["summary"]["test_acc"])
    # it learned: chance is 10% (std 1.9 points on 256 images); two short epochs of 16
    # steps measured 38% here
    assert record["summary"]["test_acc"]["mean"] > 0.2


# --------------------------------------------------------------------------- CLI bad inputs
def test_cli_reports_truncated_archive_in_one_line(tmp_path):
    make_archive(tmp_path, corrupt=truncate("data_batch_3.bin", 1234))
    result = run_cli("--data-dir", str(tmp_path), "--device", "cpu", "--epochs", "1")
    assert result.returncode == 3
    err = result.stderr.strip()
    assert "data_batch_3.bin" in err and "Traceback" not in err
    assert len(err.splitlines()) == 1


def test_cli_missing_data_without_network_says_where_to_put_it(tmp_path):
    result = run_cli("--data-dir", str(tmp_path / "nowhere"), "--device", "cpu", "--no-download")
    assert result.returncode == 3
    assert "nowhere" in result.stderr and "Traceback" not in result.stderr


def test_cli_nan_loss_stops_with_the_step_and_exit_code_4(archive_dir):
    """A learning rate far too high makes the loss infinite: one line naming the step and
    the likely cause, exit code 4 (not a traceback, not a silently finished run)."""
    result = run_cli(
        "--data-dir",
        str(archive_dir),
        "--device",
        "cpu",
        "--width",
        "0.125",
        "--epochs",
        "2",
        "--batch-size",
        "64",
        "--train-subset",
        "256",
        "--test-subset",
        "64",
        "--lr",
        "1e9",
    )  # the top of the range
    assert result.returncode == 4, result.stderr
    err = result.stderr.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1
    assert "NaN or infinite at step" in err and "--lr" in err


def test_cli_cuda_without_gpu_is_a_clear_error(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU; the no-GPU message cannot be provoked here")
    assert main(["--device", "cuda", "--epochs", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "--device cuda" in err and "--device cpu" in err  # what failed, what to do


def test_cli_triton_on_cpu_refuses_triton_interpret_0(archive_dir):
    """--backend triton --device cpu with TRITON_INTERPRET=0 set by the user: the CLI does
    not override the user's setting, it refuses with exit code 2 and says what to set."""
    result = run_cli(
        "--data-dir",
        str(archive_dir),
        "--device",
        "cpu",
        "--backend",
        "triton",
        "--width",
        "0.0625",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--no-tta",
        env={"TRITON_INTERPRET": "0"},
    )
    # TRITON_INTERPRET=0 in the environment must be refused with advice, not ignored.
    assert result.returncode == 2 and "TRITON_INTERPRET=1" in result.stderr


def test_cli_triton_on_cpu_trains_through_the_interpreter(archive_dir, tmp_path):
    """The issue's check: ``--backend triton --device cpu`` trains a tiny subset with the
    Triton kernels under the interpreter (the CLI turns it on), end to end (~40 s)."""
    out = tmp_path / "triton.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "train",
            "--data-dir",
            str(archive_dir),
            "--device",
            "cpu",
            "--backend",
            "triton",
            "--width",
            "0.0625",
            "--epochs",
            "1",
            "--batch-size",
            "32",
            "--train-subset",
            "64",
            "--test-subset",
            "32",
            "--no-tta",
            "--warmup-steps",
            "0",
            "--json",
            str(out),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=HANG_S,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    assert record["environment"]["backend"] == "triton"
    assert record["environment"]["triton_interpreter"] is True
    triton_epoch = record["runs"][0]["epochs"][0]
    # The same run through the eager reference ops: the kernels train alike (measured: the
    # same train loss to the last digit, the test loss within 1e-6).
    eager_out = tmp_path / "eager.json"
    eager = run_cli(
        "--data-dir",
        str(archive_dir),
        "--device",
        "cpu",
        "--backend",
        "eager",
        "--width",
        "0.0625",
        "--epochs",
        "1",
        "--batch-size",
        "32",
        "--train-subset",
        "64",
        "--test-subset",
        "32",
        "--no-tta",
        "--warmup-steps",
        "0",
        "--json",
        str(eager_out),
    )
    assert eager.returncode == 0, eager.stderr
    eager_epoch = json.loads(eager_out.read_text())["runs"][0]["epochs"][0]
    assert triton_epoch["train_loss"] == pytest.approx(eager_epoch["train_loss"], rel=1e-4)
    assert triton_epoch["test_loss"] == pytest.approx(eager_epoch["test_loss"], rel=1e-4)
    assert abs(triton_epoch["test_acc"] - eager_epoch["test_acc"]) <= 1 / 32  # argmax ties


# --------------------------------------------------------------------------- eager vs compile
@pytest.mark.slow
def test_eager_and_compile_give_the_same_loss_and_gradients():
    """The same model and batch through eager PyTorch and torch.compile (inductor)."""
    from model.resnet9 import ResNet9
    from model.whitening import whitening_filters_from_data

    config = TrainConfig(width=0.125, batch_size=64)
    runtime = Runtime(torch.device("cpu"), "eager", torch.float32, channels_last=False)
    torch.manual_seed(0)
    eager = ResNet9(model_config(config, runtime.backend))
    images = torch.randint(0, 256, (64, 3, 32, 32), dtype=torch.uint8)
    eager.set_whitening(whitening_filters_from_data(images, CIFAR10_MEAN, CIFAR10_STD).filters)
    compiled_model = copy.deepcopy(eager)
    compiled = torch.compile(compiled_model)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    inputs = (images.float() - mean) / std
    labels = torch.randint(0, 10, (64,))
    losses, grads = [], []
    for model, forward in ((eager, eager), (compiled_model, compiled)):
        loss = label_smoothing_loss(forward(inputs), labels, 0.2)
        loss.backward()
        losses.append(loss.detach())
        grads.append([p.grad for p in model.parameters() if p.grad is not None])
    torch.testing.assert_close(losses[1], losses[0], rtol=1e-4, atol=1e-3)
    for g_compiled, g_eager in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_compiled, g_eager, rtol=1e-3, atol=1e-3)
    for name, buf in eager.named_buffers():
        torch.testing.assert_close(
            dict(compiled_model.named_buffers())[name], buf, rtol=1e-4, atol=1e-5
        )


@pytest.mark.slow
def test_eager_and_compile_backends_both_train_alike(archive_dir, tmp_path):
    """``--backend compile`` trains end to end like ``--backend eager`` (same seed, data and
    settings): the same first-epoch loss up to compiled rounding, and the same accuracy
    within noise. The compile is warm-up, reported apart from the run's time. Test accuracy
    after two short epochs depends on the CPU's rounding (the peak learning rate amplifies
    it): an earlier machine measured 0.996 eager vs 1.000 compiled; this one (AMD EPYC,
    AVX2) 0.371 vs 0.598, the same 0.371 with the code before this session. So test accuracy
    only has to show that both learned (chance is 0.1, std 1.9 points on 256 images), and
    "alike" is judged on the training loss and accuracy."""
    records = {}
    for backend in ("eager", "compile"):
        out = tmp_path / f"{backend}.json"
        result = run_cli(
            "--data-dir",
            str(archive_dir),
            "--device",
            "cpu",
            "--backend",
            backend,
            "--width",
            "0.125",
            "--epochs",
            "2",
            "--batch-size",
            "64",
            "--train-subset",
            "1024",
            "--test-subset",
            "256",
            "--json",
            str(out),
        )
        assert result.returncode == 0, result.stderr
        records[backend] = json.loads(out.read_text())
    eager, compiled = records["eager"], records["compile"]
    assert compiled["environment"]["backend"] == "compile"
    # both warm up before the clock (eager too: a first call's one-off costs), apart
    assert compiled["warmup_time"] > 0 and eager["warmup_time"] > 0
    first_loss = {k: r["runs"][0]["epochs"][0]["train_loss"] for k, r in records.items()}
    assert first_loss["compile"] == pytest.approx(first_loss["eager"], abs=0.05)
    acc = {k: r["summary"]["test_acc"]["mean"] for k, r in records.items()}
    assert min(acc.values()) > 0.2  # both learned (chance is 0.1)
    # The same training within noise: the last epoch's training accuracy (an average over
    # 1,024 images, steadier than two short epochs' test accuracy). Measured here: 0.923
    # eager vs 0.937 compiled.
    train_acc = {k: r["runs"][0]["epochs"][-1]["train_acc"] for k, r in records.items()}
    assert min(train_acc.values()) > 0.5
    assert train_acc["compile"] == pytest.approx(train_acc["eager"], abs=0.05)


# --------------------------------------------------------------------------- real data
REAL_DATA = os.environ.get("CIFAR10_DIR")
real_data = pytest.mark.skipif(
    not REAL_DATA,
    reason="set CIFAR10_DIR to a CIFAR-10 binary copy "
    "(CI points it at ../shared/cifar10) to run the real-data check",
)


def two_real_data_runs(out: Path, what: str, *flags: str) -> dict:
    """Two runs (seeds 0 and 1) of ``flags`` on the CPU with the real data; the --json
    record, after checking that both ran, and one line of what they reached."""
    result = run_cli("--device", "cpu", *flags, "--runs", "2", "--json", str(out))
    assert result.returncode == 0, result.stderr
    record = json.loads(out.read_text())
    print(
        f"{what}: mean test accuracy {record['summary']['test_acc']['mean']:.4f} over 2 runs, "
        f"{record['runs'][0]['train_time']:.1f} s of training each"
    )
    assert len(record["runs"]) == 2
    return record


@pytest.mark.slow
@real_data
def test_real_data_quick_run_reaches_recipe_accuracy(tmp_path):
    """The issue's CPU check: width 0.25, 10,000 training images, 5 epochs, batch 128, as
    the mean of two runs (seeds 0 and 1): averaging halves the scatter of a single seed.

    Measured on ../shared/cifar10 with 2 CPU cores, eager (2026-11-28), seeds 0/1/2:
    0.6552 / 0.6958 / 0.6998 test accuracy in 61-76 s of training each (before a change of
    float rounding in the BN reference, 0.6708 / 0.6847 / 0.6975; another CPU gave 0.6931
    for seed 0): single runs scatter by about 1.6 points. A plain reimplementation of the
    recipe (bench/plain_recipe.py) measured 0.6763 at these settings. The threshold on the
    two-run mean sits about four points under our mean of 0.685.
    """
    flags = ("--width", "0.25", "--train-subset", "10000", "--epochs", "5", "--batch-size", "128")
    record = two_real_data_runs(tmp_path / "quick.json", "real-data quick run", *flags)
    assert record["summary"]["test_acc"]["mean"] > 0.64


@pytest.mark.slow
@real_data
def test_real_data_airbench94_at_the_cpu_ladders_first_rung(tmp_path):
    """The airbench family at a reduced budget: the airbench94 preset at the CPU ladder's
    first rung (width 0.25, 10,000 training images, 5 epochs, batch 256; six-view TTA), as
    the mean of two runs (seeds 0 and 1), given as flags so that nothing is measured.

    Measured on ../shared/cifar10 with 2 CPU cores (AMD EPYC, AVX2), eager, fp32
    (2026-12-02, side A of the README's lookahead compare), seeds 0-3: 0.6860 / 0.6864 /
    0.6833 / 0.6907, mean 0.6866; seeds 0 and 1 average 0.6862. The threshold on the
    two-run mean sits about 3.7 points under the four-run mean.
    """
    from train.cpu_default import CPU_LADDER

    flags = CPU_LADDER[0].flags().split()
    what = "real-data airbench94 first rung"
    record = two_real_data_runs(tmp_path / "airbench.json", what, *flags)
    config = record["config"]
    assert (config["network"], config["width"], config["tta"]) == ("airbench", 0.25, "multiview")
    assert record["summary"]["test_acc"]["mean"] > 0.65
