"""The plain reimplementation of the recipe (``bench/plain_recipe.py``), the independent
baseline the trainer is timed against: its pieces against explicit references, its data
loader on synthetic archives, and one tiny end-to-end run."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from cifar_archive import make_archive, synthetic_cifar, truncate, write_batches

from bench import plain_recipe as plain

REPO = Path(__file__).resolve().parent.parent
RECORDS = 200  # per file: 1,000 training and 200 test images


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plain-cifar")
    make_archive(folder, records_per_file=RECORDS)
    return folder


# ------------------------------------------------------------------------ independence
def test_imports_nothing_from_the_project():
    tree = ast.parse((REPO / "bench" / "plain_recipe.py").read_text())
    roots = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "no relative imports"
            roots.add(node.module.split(".")[0])
    assert roots <= {
        "__future__",
        "argparse",
        "copy",
        "json",
        "os",
        "sys",
        "tarfile",
        "time",
        "zlib",
        "pathlib",
        "numpy",
        "torch",
    }, roots


# ------------------------------------------------------------------------------ pieces
def test_label_smoothing_loss_matches_torch():
    logits = torch.randn(37, 10, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 10, (37,))
    ours = plain.label_smoothing_loss(logits, targets, 0.2)
    ref = F.cross_entropy(logits, targets, label_smoothing=0.2, reduction="sum")
    torch.testing.assert_close(ours, ref)
    (g_ours,) = torch.autograd.grad(ours, logits)
    (g_ref,) = torch.autograd.grad(ref, logits)
    torch.testing.assert_close(g_ours, g_ref)


def test_lr_schedule_knots():
    assert plain.lr_knots(10) == ([0.0, 2.0, 8.0, 10.0], [0.0, 1.0, 0.1, 0.1])
    knots = plain.lr_knots(5)
    assert knots == ([0.0, 1.0, 4.0, 5.0], [0.0, 1.0, 0.1, 0.1])
    for epoch, want in [
        (0, 0.0),
        (0.5, 0.5),
        (1, 1.0),
        (2.5, 1 - 0.9 * 1.5 / 3),
        (4, 0.1),
        (4.7, 0.1),
        (5, 0.1),
    ]:
        assert plain.lr_at(epoch, knots) == pytest.approx(want)


def test_ghost_batch_norm_matches_a_per_split_loop():
    splits, channels = 3, 5
    bn = plain.GhostBatchNorm(channels, splits)
    with torch.no_grad():
        bn.bias.copy_(torch.randn(channels))
    x = torch.randn(splits * 32, channels, 4, 4) * 3 + 1
    mean, var = torch.zeros(splits, channels), torch.ones(splits, channels)
    want = torch.empty_like(x)
    for k in range(splits):  # split k holds images k, k + splits, k + 2·splits, ...
        want[k::splits] = F.batch_norm(
            x[k::splits], mean[k], var[k], None, bn.bias, True, 0.1, 1e-5
        )
    got = bn(x)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(bn.running_mean.view(splits, channels), mean)
    torch.testing.assert_close(bn.running_var.view(splits, channels), var)
    # every split is normalised on its own: per-split channel means equal the bias
    torch.testing.assert_close(got[1::splits].mean((0, 2, 3)), bn.bias.detach(), atol=1e-5, rtol=0)
    # eval: the running stats averaged over the splits, scale frozen at 1
    bn.eval()
    torch.testing.assert_close(
        bn(x), F.batch_norm(x, mean.mean(0), var.mean(0), None, bn.bias, False, 0.0, 1e-5)
    )
    assert [name for name, _ in bn.named_parameters()] == ["bias"]


def test_augment_is_a_per_image_crop_and_flip():
    images = torch.randn(6, 3, 32, 32)
    padded = F.pad(images, (4, 4, 4, 4), mode="reflect")
    index = torch.tensor([5, 0, 3, 3, 1, 2, 4, 5, 0, 1, 2, 3])
    generator = torch.Generator().manual_seed(7)
    replay = torch.Generator().manual_seed(7)
    out = plain.augment(padded, index, generator)
    n = len(index)
    dy = torch.randint(0, 9, (n, 1), generator=replay)
    dx = torch.randint(0, 9, (n, 1), generator=replay)
    flip = torch.randint(0, 2, (n, 1), generator=replay).bool()
    assert flip.any() and not flip.all()
    for i in range(n):
        y, x = int(dy[i]), int(dx[i])
        want = padded[index[i], :, y : y + 32, x : x + 32]
        torch.testing.assert_close(out[i], want.flip(2) if flip[i] else want)
    cut = plain.augment(padded, index, torch.Generator().manual_seed(7), cutout=5)
    zeros = (cut == 0).all(1).sum((1, 2))
    assert (zeros >= 25).all()  # a 5×5 square of every image is zeroed


def test_whitening_filters_whiten_the_patches():
    images = torch.randn(40, 3, 32, 32).cumsum(3) / 4  # correlated neighbours
    filters = plain.whitening_filters(images, eps=1e-2)
    assert filters.shape == (27, 3, 3, 3)
    patches = F.unfold(images, 3).transpose(1, 2).reshape(-1, 27).double()
    cov = patches.T @ patches / (len(patches) - 1)
    eigenvalues = torch.linalg.eigvalsh(cov).flip(0)
    w = filters.reshape(27, 27).double()
    whitened = w @ cov @ w.T  # = diag(λ / (λ + eps)), eigenvalues descending
    torch.testing.assert_close(
        whitened, torch.diag(eigenvalues / (eigenvalues + 1e-2)), atol=1e-4, rtol=1e-4
    )


def test_ema_is_zero_started_and_bias_corrected():
    model = plain.ResNet9(width=0.0625, splits=1)
    ema = plain.EMA(model, rho=0.99**5)
    assert ema.model(model) is model  # no update yet: the live weights
    ema.update(model)  # one update reads back the weights
    for (name, a), b in zip(ema.model(model).state_dict().items(), model.state_dict().values()):
        torch.testing.assert_close(a, b, msg=name)
    first = model.linear.weight.detach().clone()
    with torch.no_grad():
        model.linear.weight.add_(1.0)
    ema.update(model)
    rho = 0.99**5
    want = (rho * (1 - rho) * first + (1 - rho) * (first + 1)) / (1 - rho**2)
    torch.testing.assert_close(ema.model(model).linear.weight, want)


def test_model_shapes_and_trainable_parameters():
    model = plain.ResNet9(width=0.25, splits=2)
    assert model.widths == [16, 32, 64, 128]
    assert model(torch.randn(64, 3, 32, 32)).shape == (64, 10)
    names = [name for name, _ in model.named_parameters()]
    assert "whiten" not in names and not any(n.endswith("bn.weight") for n in names)
    assert all(
        m.bias is None for m in model.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))
    )


# -------------------------------------------------------------------------------- data
def test_loads_the_archive_and_the_folder_alike(archive_dir, tmp_path):
    truth = synthetic_cifar(RECORDS)
    folder = write_batches(tmp_path, records_per_file=RECORDS)
    for where in (archive_dir, archive_dir / "cifar-10-binary.tar.gz", tmp_path, folder):
        train_x, train_y, test_x, test_y = plain.load_cifar10(where)
        assert (train_x == truth.train_images).all() and (train_y == truth.train_labels).all()
        assert (test_x == truth.test_images).all() and (test_y == truth.test_labels).all()
        assert test_x.flags.writeable and train_x.flags.writeable


def test_data_errors_are_one_line(tmp_path, capsys):
    make_archive(
        tmp_path / "cut", records_per_file=RECORDS, corrupt=truncate("data_batch_3.bin", 1234)
    )
    cases = [
        (["--data-dir", str(tmp_path / "nowhere")], "does not exist"),
        (["--data-dir", str(tmp_path / "cut")], "data_batch_3.bin"),
        (["--data-dir", str(tmp_path)], "holds neither"),
    ]
    for args, message in cases:
        assert plain.main(args) == 3
        err = capsys.readouterr().err.strip()
        assert message in err and len(err.splitlines()) == 1, err


# --------------------------------------------------------------------------- end to end
def test_tiny_run_writes_json(archive_dir, tmp_path, capsys):
    out = tmp_path / "plain.json"
    code = plain.main(
        [
            "--data-dir",
            str(archive_dir),
            "--width",
            "0.125",
            "--train-subset",
            "320",
            "--test-subset",
            "128",
            "--epochs",
            "1",
            "--batch-size",
            "64",
            "--json",
            str(out),
        ]
    )
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].startswith("epoch  1  train loss") and lines[-1].startswith("test acc")
    record = json.loads(out.read_text())
    assert {
        "test_acc",
        "train_seconds",
        "eval_seconds",
        "load_seconds",
        "process_seconds",
        "epochs",
        "config",
    } <= record.keys()
    # a count of the 128 test images, the one printed, after the one EMA update of 5 steps
    assert (record["test_acc"] * 128).is_integer() and record["ema_updates"] == 1
    assert lines[-1].startswith(f"test acc {record['test_acc']:.4f} ")
    assert record["train_images"] == 320 and record["test_images"] == 128
    assert 0 < record["train_seconds"] < record["process_seconds"]
    assert len(record["epochs"]) == 1 and record["epochs"][0]["seconds"] > 0


def test_cli_entry_point_without_data_directory():
    env = {k: v for k, v in os.environ.items() if k != "CIFAR10_DIR"}
    result = subprocess.run(
        [sys.executable, "-m", "bench.plain_recipe"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )  # a guard against a hang, not a time limit
    assert result.returncode == 3
    assert result.stderr.strip() == (
        "plain_recipe: error: no data directory: pass --data-dir or set CIFAR10_DIR"
    )
