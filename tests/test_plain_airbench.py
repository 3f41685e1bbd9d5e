"""The plain reimplementation of the airbench94 recipe (``bench/plain_airbench.py``), the
independent yardstick of the trainer's ``--preset airbench94``, and the side-by-side step
timer (``bench/airbench_step.py``).

The pieces are checked against references written here (numpy patches and eigenvectors,
``F.pad`` crops, ``F.conv2d``, the formulas of RECIPE.md); the network, a ten-step run and
the schedule against the project's own :class:`model.airbench.AirbenchNet`,
:class:`train.step.TrainStep` and :mod:`train.schedule` (the tests may import the project;
the module under test may not); the data loader and one tiny run on synthetic archives
(``tests/cifar_archive.py``); the step timer's table at a tiny size (no time thresholds).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from cifar_archive import make_archive, synthetic_cifar, truncate, write_batches

from bench import plain_airbench as plain

# Tiny networks: one thread is as fast, and far faster on a busy 2-core machine.
pytestmark = pytest.mark.usefixtures("one_thread")

REPO = Path(__file__).resolve().parent.parent
RECORDS = 100  # per file: 500 training and 100 test images
TINY_WIDTH = 0.125  # widths 8/32/32


@pytest.fixture(scope="module")
def archive_dir(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("plain-airbench-cifar")
    make_archive(folder, records_per_file=RECORDS)
    return folder


@pytest.fixture(scope="module")
def project() -> None:
    """The project's trainer and benchmarks imported once (several seconds on 2 cores,
    the kernels with them), so that the tests comparing with them time their own work."""
    import bench.workloads  # noqa: F401
    import train.step  # noqa: F401


def project_step(width: float, batch: int, steps_per_epoch: int = 50_000 // 8):
    """The trainer's airbench94 step (eager, fp32, NCHW), its model built as the step
    benchmarks build it (random whitening filters), for epochs of ``steps_per_epoch`` steps
    (9.9 epochs in all; the whitening bias trains for 3 epochs' steps)."""
    from bench.shapes import StepShape
    from bench.workloads import build_model, runtime_for, train_config
    from train.step import TrainStep

    shape = StepShape(width, batch, preset="airbench94")
    runtime = runtime_for(torch.device("cpu"), "eager", torch.float32, channels_last=False)
    model = build_model(shape, "eager", runtime)
    return TrainStep(model, model, train_config(shape), runtime, steps_per_epoch)


def plain_copy_of(project_model: torch.nn.Module, width: float) -> plain.Net:
    """A plain net at ``width`` holding ``project_model``'s weights, buffers and whitening
    filters: the two state dicts list the same tensors in the same order (shapes checked)."""
    model = plain.build_model(width)
    ours, theirs = model.state_dict(), project_model.state_dict()
    assert [tuple(v.shape) for v in ours.values()] == [tuple(v.shape) for v in theirs.values()]
    model.load_state_dict(dict(zip(ours, theirs.values())))
    return model


# ------------------------------------------------------------------------ independence
def test_imports_nothing_from_the_project():
    """Only torch, numpy and the standard library: no module of the project, no relative
    import."""
    nodes = list(ast.walk(ast.parse((REPO / "bench" / "plain_airbench.py").read_text())))
    froms = [n for n in nodes if isinstance(n, ast.ImportFrom)]
    assert all(n.level == 0 for n in froms), "no relative imports"
    names = [a.name for n in nodes if isinstance(n, ast.Import) for a in n.names]
    top = {name.partition(".")[0] for name in names + [n.module for n in froms]}
    allowed = {"numpy", "torch", "__future__", "argparse", "collections", "json", "math"}
    allowed |= {"os", "pathlib", "sys", "tarfile", "time", "zlib"}
    assert top <= allowed, top - allowed


# ------------------------------------------------------------------------------ pieces
def numpy_patches(images: np.ndarray) -> np.ndarray:
    """Every 2×2 patch of ``images`` (N, 3, H, W) as rows of 12 in (channel, row, column)
    order, by slicing (no unfold)."""
    _, c, h, w = images.shape
    cols = [
        images[:, ch, dy : h - 1 + dy, dx : w - 1 + dx].reshape(-1)
        for ch in range(c)
        for dy in (0, 1)
        for dx in (0, 1)
    ]
    return np.stack(cols, axis=1)


def test_whitening_filters_whiten_the_patches():
    rng = np.random.default_rng(0)
    images = rng.standard_normal((30, 3, 12, 12)).cumsum(3) / 3 + 0.2  # correlated, off-centre
    filters = plain.whitening_filters(torch.from_numpy(images).float(), eps=5e-4)
    assert filters.shape == (24, 3, 2, 2) and filters.dtype == torch.float32
    torch.testing.assert_close(filters[12:], -filters[:12], rtol=0, atol=0)  # exact negations
    x = numpy_patches(images)
    cov = x.T @ x / (len(x) - 1)  # un-centred, as the recipe
    eigenvalues, eigenvectors = np.linalg.eigh(cov)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    w = filters[:12].reshape(12, 12).double().numpy()
    # each filter is its eigenvector (up to sign) over sqrt(lambda + eps), by descending lambda
    cosine = np.abs(np.sum(w * eigenvectors.T, axis=1)) / np.linalg.norm(w, axis=1)
    np.testing.assert_allclose(cosine, 1, atol=1e-5)
    np.testing.assert_allclose(
        np.linalg.norm(w, axis=1), 1 / np.sqrt(eigenvalues + 5e-4), rtol=1e-5
    )
    # the whitened patches' second moment: diag(lambda / (lambda + eps)), ~identity
    whitened = w @ cov @ w.T
    np.testing.assert_allclose(
        whitened, np.diag(eigenvalues / (eigenvalues + 5e-4)), atol=2e-5, rtol=1e-4
    )
    assert np.allclose(np.diag(whitened), 1, atol=0.05)


def test_dirac_init_makes_the_conv_an_identity_on_its_first_channels():
    x = torch.randn(2, 5, 6, 6)
    widening = plain.dirac_conv(5, 8)
    with torch.no_grad():
        torch.testing.assert_close(widening(x)[:, :5], x)
        assert widening.weight[5:].abs().sum() > 0  # the rest keep PyTorch's default init
        narrowing = plain.dirac_conv(5, 3)
        torch.testing.assert_close(narrowing(x), x[:, :3])
    assert widening.bias is None and widening.padding == (1, 1)


def test_alternating_flips_mirror_every_image_on_odd_epochs():
    start = torch.rand(200) < 0.5
    assert start.any() and not start.all()
    epochs = [plain.alternating_flips(start, e) for e in range(5)]
    for e, flags in enumerate(epochs):
        assert flags.dtype == torch.bool
        assert torch.equal(flags, start if e % 2 == 0 else ~start)
    for a, b in zip(epochs, epochs[1:]):
        assert torch.equal(a, ~b)  # over two epochs running, every image both ways


def test_translate_is_a_per_image_reflect_padded_crop_and_flip():
    images = torch.randn(5, 3, 32, 32)
    padded = F.pad(images, (2, 2, 2, 2), mode="reflect")
    index = torch.tensor([4, 0, 2, 2, 1, 3, 4, 0])
    dy = torch.tensor([0, 4, 2, 1, 3, 0, 4, 2])
    dx = torch.tensor([4, 0, 2, 3, 1, 4, 4, 0])
    flip = torch.tensor([True, False, True, False, True, False, False, True])
    out = plain.translate_and_flip(padded, index, dy, dx, flip)
    assert out.shape == (8, 3, 32, 32) and out.is_contiguous()
    for i in range(len(index)):
        ref = F.pad(images[index[i] : index[i] + 1], (2, 2, 2, 2), mode="reflect")[0]
        want = ref[:, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32]
        torch.testing.assert_close(out[i], want.flip(-1) if flip[i] else want, rtol=0, atol=0)


def test_tta_views_and_weights():
    assert sum(weight for _, _, weight in plain.TTA_VIEWS) == pytest.approx(1.0)
    assert {(s, m) for s, m, _ in plain.TTA_VIEWS} == {(s, m) for s in (-1, 0, 1) for m in (0, 1)}
    x = torch.randn(2, 3, 6, 7)
    views = plain.tta_views(x)

    def reflect(i: int, n: int) -> int:
        return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)

    for (view, weight), (shift, mirrored, want_weight) in zip(views, plain.TTA_VIEWS):
        rows = [reflect(i + shift, 6) for i in range(6)]
        cols = [reflect(j + shift, 7) for j in range(7)]
        want = x[:, :, rows][:, :, :, cols]
        torch.testing.assert_close(view, want.flip(-1) if mirrored else want, rtol=0, atol=0)
        assert weight == want_weight
    # a network that ignores its input gets its own logits back
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 32 * 32, 10))
    with torch.no_grad():
        model[1].weight.zero_()
    images, labels = torch.randn(4, 3, 32, 32), torch.full((4,), int(model[1].bias.argmax()))
    assert plain.evaluate(model, images, labels) == 1.0


def test_lr_factor_knots_and_the_projects_schedule(project):
    from train.schedule import airbench_schedule

    assert plain.lr_factor(0, 100) == pytest.approx(0.2)
    assert plain.lr_factor(23, 100) == pytest.approx(1.0)
    assert plain.lr_factor(100, 100) == pytest.approx(0.07)
    assert plain.lr_factor(10, 100) == pytest.approx(0.2 + 0.8 * 10 / 23)
    for total in (1, 2, 4, 5, 13, 97, 961):
        schedule = airbench_schedule(total, 0.07)
        for step in range(total + 1):
            assert plain.lr_factor(step, total) == pytest.approx(schedule(step), abs=1e-12)


def test_optimizer_rates_and_decoupled_decay():
    model = plain.build_model(TINY_WIDTH)
    optimizer = plain.make_optimizer(model, batch_size=1024)
    groups = {g["name"]: g for g in optimizer.param_groups}
    base = 11.5 / (1024 * (1 + 1 / 0.15))  # airbench94: 1.4648e-3 per example
    assert base == pytest.approx(1.4648e-3, rel=1e-4)
    want = {"filters": base, "head": base, "bn_biases": 64 * base, "whiten_bias": base}
    assert {name: g["lr"] for name, g in groups.items()} == pytest.approx(want)
    for g in groups.values():  # the same decay per step for every group at the peak
        assert g["lr"] * g["weight_decay"] == pytest.approx(0.0153 / (1 + 1 / 0.15))
        assert g["momentum"] == 0.85 and g["nesterov"]
    trainable = {id(p) for p in model.parameters()}
    grouped = [id(p) for g in optimizer.param_groups for p in g["params"]]
    assert sorted(grouped) == sorted(trainable)  # every parameter once
    plain.set_rates(optimizer, 0.5)
    assert groups["bn_biases"]["lr"] == pytest.approx(32 * base)


def test_lookahead_pulls_and_resets_on_schedule():
    model = torch.nn.Linear(3, 2)
    lookahead = plain.Lookahead(model, total=12)
    start = model.weight.detach().clone()
    for step in range(1, 5):  # no update between the multiples of 5
        with torch.no_grad():
            model.weight.add_(1.0)
        lookahead.after_step(step)
    torch.testing.assert_close(model.weight.detach(), start + 4)
    with torch.no_grad():
        model.weight.add_(1.0)
    lookahead.after_step(5)
    decay = 0.95**5 * (5 / 12) ** 3
    slow = start + (1 - decay) * 5
    torch.testing.assert_close(model.weight.detach(), slow)
    torch.testing.assert_close(lookahead.slow[0], slow)
    with torch.no_grad():
        model.weight.add_(3.0)
    lookahead.after_step(12)  # the last step: the run ends on the slow weights
    torch.testing.assert_close(model.weight.detach(), slow)
    assert lookahead.updates == 1


def test_frozen_whitening_bias_is_left_alone():
    model = plain.build_model(0.0625)
    model.set_whitening(torch.randn(24, 3, 2, 2) / 4)
    optimizer = plain.make_optimizer(model, batch_size=8)
    images, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    plain.train_step(model, optimizer, images, labels)
    assert model.whiten_bias.detach().abs().sum() > 0  # trained at first
    model.freeze_whitening_bias()
    before = model.whiten_bias.detach().clone()
    plain.train_step(model, optimizer, images, labels)
    assert torch.equal(model.whiten_bias.detach(), before)  # neither stepped nor decayed


# --------------------------------------------------------------- against the project
def test_network_matches_the_projects_airbench_net(project):
    step = project_step(TINY_WIDTH, 8)
    theirs = step.model
    ours = plain.build_model(TINY_WIDTH)
    count = sum(p.numel() for p in ours.parameters())
    assert count == sum(p.numel() for p in theirs.parameters())
    assert ours.widths == list(theirs.config.widths) == [8, 32, 32]
    ours = plain_copy_of(theirs, TINY_WIDTH)
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        out = ours(x)
        assert out.shape == (8, 10)
        torch.testing.assert_close(out, theirs(x), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(  # the running statistics moved alike
            ours.blocks[2].bn2.running_var, theirs.block3.conv2.bn.running_var
        )
        ours.eval(), theirs.eval()
        torch.testing.assert_close(ours(x), theirs(x), rtol=1e-4, atol=1e-5)


def test_a_short_run_matches_the_projects_train_step(project):
    """Ten steps as 9.9 epochs of one step each: the triangle's rates (peak at step 2), the loss,
    SGD with decoupled decay, the whitening bias frozen after step 3, the lookahead at steps
    5 and 10 (the last) alike."""
    step = project_step(0.0625, 8, steps_per_epoch=1)
    assert step.total_steps == 10 and step.bias_steps == 3
    model = plain_copy_of(step.model, 0.0625)
    optimizer = plain.make_optimizer(model, batch_size=8)
    lookahead = plain.Lookahead(model, step.total_steps)
    g = torch.Generator().manual_seed(1)
    for t in range(10):
        # 16x16 images (15, 7, 3, 1 pixels after the whitening and the pools): 4x less work
        x, y = torch.randn(8, 3, 16, 16, generator=g), torch.randint(0, 10, (8,), generator=g)
        plain.set_rates(optimizer, plain.lr_factor(t, step.total_steps))
        loss, correct = plain.train_step(model, optimizer, x, y)
        lookahead.after_step(t + 1)
        if t + 1 == 3:
            model.freeze_whitening_bias()
        their_loss, their_correct = step(x, y)
        torch.testing.assert_close(loss, their_loss, rtol=1e-4, atol=1e-4)
        assert int(correct) == int(their_correct)
        assert model.whiten_bias.requires_grad == (not step.whitening_bias_frozen)
    assert lookahead.updates == 2
    for (name, a), b in zip(model.state_dict().items(), step.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


# -------------------------------------------------------------------------------- data
@pytest.mark.parametrize("layout", ["parent of archive", "archive", "parent of folder", "folder"])
def test_reads_every_layout(layout, archive_dir, tmp_path):
    where = {
        "parent of archive": archive_dir,
        "archive": archive_dir / "cifar-10-binary.tar.gz",
        "parent of folder": tmp_path,
        "folder": tmp_path / "cifar-10-batches-bin",
    }[layout]
    write_batches(tmp_path, records_per_file=RECORDS)
    data, truth = plain.load_cifar10(where), synthetic_cifar(RECORDS)
    for split in ("train", "test"):
        images, labels = data[split]
        assert np.array_equal(images, getattr(truth, f"{split}_images"))
        assert np.array_equal(labels, getattr(truth, f"{split}_labels"))
        assert images.flags.writeable and images.flags.c_contiguous and labels.dtype == np.int64


@pytest.mark.parametrize(
    "where, message",
    [
        ("nowhere", "does not exist"),
        ("cut", "data_batch_3.bin: 1234 bytes"),
        ("garbled", "unreadable archive"),
        (".", "holds neither"),
    ],
)
def test_a_data_error_is_one_line_and_exit_code_3(where, message, tmp_path, capsys):
    cut = truncate("data_batch_3.bin", 1234)
    make_archive(tmp_path / "cut", records_per_file=RECORDS, corrupt=cut)
    (tmp_path / "garbled").mkdir()
    (tmp_path / "garbled" / "cifar-10-binary.tar.gz").write_bytes(b"not a gzip file")
    assert plain.main(["--data-dir", str(tmp_path / where)]) == 3
    (line, *more) = capsys.readouterr().err.splitlines()
    assert not more and line.startswith("plain_airbench: error: ") and message in line, line


def test_no_data_directory_from_the_command_line():
    env = dict(os.environ)
    env.pop("CIFAR10_DIR", None)
    command = [sys.executable, "-m", "bench.plain_airbench"]
    # the timeout guards against a hang; it is no time limit
    done = subprocess.run(command, env=env, cwd=REPO, timeout=600, capture_output=True, text=True)
    want = "plain_airbench: error: no data directory: pass --data-dir or set CIFAR10_DIR\n"
    assert (done.returncode, done.stderr, done.stdout) == (3, want, "")


# --------------------------------------------------------------------------- end to end
def test_tiny_run_writes_json(archive_dir, tmp_path, capsys):
    out = tmp_path / "plain.json"
    # 96 images of batch 32: 3 steps an epoch, 1.5 epochs are 5 steps (the second partial)
    argv = "--width 0.0625 --train-subset 96 --test-subset 40 --epochs 1.5 --batch-size 32"
    code = plain.main([*argv.split(), "--data-dir", str(archive_dir), "--json", str(out)])
    assert code == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("plain airbench94: widths [4, 16, 16]")
    assert lines[1].startswith("epoch  1  train loss") and lines[2].startswith("epoch  2  ")
    assert lines[-1].startswith("test acc")
    record = json.loads(out.read_text())
    assert lines[-1].startswith(f"test acc {record['test_acc']:.4f} ")
    assert (record["test_acc"] * 40).is_integer()
    assert record["steps"] == 5 and [e["steps"] for e in record["epochs"]] == [3, 2]
    assert record["lookahead_updates"] == 1 and record["whitening_bias_steps"] == 5
    assert record["train_images"] == 96 and record["test_images"] == 40
    assert record["widths"] == [4, 16, 16] and record["config"]["epochs"] == 1.5
    assert all(np.isfinite(e["train_loss"]) and e["seconds"] > 0 for e in record["epochs"])
    assert 0 < record["train_seconds"]


# ----------------------------------------------------------------------- the step timer
def test_step_timer_prints_both_rows(project, capsys):
    from bench import airbench_step

    argv = ["--width", "0.0625", "--batch-size", "8", "--steps", "2", "--repeats", "2"]
    assert airbench_step.main([*argv, "--warmup", "1", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("airbench94 training step, width 0.0625 (widths 4/16/16), batch 8")
    rows = {
        line.split()[0]: line.split() for line in lines if line.startswith(("project", "plain"))
    }
    assert set(rows) == {"project", "plain"}
    for fields in rows.values():
        assert fields[1] == "eager"
        median, low, high = map(float, fields[2:5])
        assert 0 < low <= median <= high
    ratio = [line for line in lines if line.startswith("ratio project/plain (eager): ")]
    assert len(ratio) == 1 and float(ratio[0].split()[3]) > 0
