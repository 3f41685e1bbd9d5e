"""A plain, one-file PyTorch reimplementation of Myrtle's "bag of tricks" ResNet9 recipe.

What it is for: the independent baseline that the project's trainer is held to. The
trainer (``python -m train``) must cost no more whole-process time on the CPU than this
file at the same settings, and should reach about the same accuracy. So this file is
written the way a researcher would write the recipe from the paper and
``shared/docs/RECIPE.md`` in one sitting: torch, numpy and the standard library only, and
deliberately no code shared with the project (nothing from ``kernels/``, ``model/`` or
``train/``), so that a slowdown or a bug there cannot hide in the yardstick.

The defaults are the trainer's CPU quick settings (width 0.25, the first 10,000 training
images, 5 epochs, batch 128, fp32). Side by side, on a quiet machine::

    /usr/bin/time -v .venv/bin/python -m bench.plain_recipe
    /usr/bin/time -v .venv/bin/python -m train

(both read ``$CIFAR10_DIR``; ``--data-dir`` overrides it here). "Elapsed (wall clock)" is
the whole-process time. The "train" seconds printed here are counted as the trainer counts
them: from the decoded uint8 arrays in memory, through the tensors, normalisation and
padding, the whitening filters and every training step; reading the archive, building the
model and the evaluation are outside.

Recipe (RECIPE.md): fixed 3x3 patch-whitening conv 3->27, 1x1 conv, then three layers of
conv -> max-pool -> ghost BN (32 images per split, scale frozen at 1) -> CELU(0.3) with a
residual pair after layers 1 and 3; max-pool 4, linear, x1/16. Label smoothing 0.2 summed
over the batch, Nesterov SGD 0.9, piecewise-linear LR (0 -> peak over epochs/5, down to
0.1 peak at 4/5 of the epochs, then flat), divided by the batch size; weight decay
5e-4 x batch; BN biases lr x64 and wd /64; EMA every 5 steps (rho 0.99^5, zero start with
bias correction); flip test-time augmentation. Random crop from a 4 px reflect-padded
image and a random flip per image, cutout off by default.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tarfile
import time
import zlib
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = (125.31, 122.95, 113.87)  # per channel, 0-255 scale
STD = (62.99, 62.09, 66.70)
FOLDER, ARCHIVE = "cifar-10-batches-bin", "cifar-10-binary.tar.gz"
TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]
TEST_FILE = "test_batch.bin"
RECORD = 1 + 3 * 32 * 32  # label byte, then the R, G, B planes (32x32 each)
GHOST = 32  # images per ghost-BN split


class DataError(Exception):
    """A missing or unreadable data set (reported in one line, exit code 3)."""


# ----------------------------------------------------------------------------------- data
def read_batch_files(data_dir: str | os.PathLike) -> dict[str, bytes]:
    """The six batch files' bytes, from ``data_dir/cifar-10-batches-bin/``, the folder
    itself, ``data_dir/cifar-10-binary.tar.gz`` or that archive (read in one pass)."""
    path, wanted = Path(data_dir), set(TRAIN_FILES + [TEST_FILE])
    if not path.exists():
        raise DataError(f"data directory {path} does not exist")
    folder = path if path.name == FOLDER and path.is_dir() else path / FOLDER
    archive = path if path.is_file() else path / ARCHIVE
    if folder.is_dir():
        missing = sorted(n for n in wanted if not (folder / n).is_file())
        if missing:
            raise DataError(f"{folder} lacks {', '.join(missing)}")
        return {name: (folder / name).read_bytes() for name in wanted}
    if not archive.is_file():
        raise DataError(f"{path} holds neither {FOLDER}/ nor {ARCHIVE}")
    files = {}
    try:
        with tarfile.open(archive, "r|gz") as tar:  # streaming: one decompression pass
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted:
                    files[name] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"{archive}: unreadable archive ({error})") from None
    missing = sorted(wanted - files.keys())
    if missing:
        raise DataError(f"{archive} lacks {', '.join(missing)}")
    return files


def decode(name: str, raw: bytes) -> tuple[np.ndarray, np.ndarray]:
    """Records -> (uint8 images (N, 3, 32, 32), int64 labels (N,))."""
    if not raw or len(raw) % RECORD:
        raise DataError(f"{name}: {len(raw)} bytes, not a whole number of {RECORD}-byte records")
    records = np.frombuffer(raw, dtype=np.uint8).reshape(-1, RECORD)
    labels = records[:, 0].astype(np.int64)
    if labels.max() > 9:
        raise DataError(f"{name}: label {labels.max()} out of range 0-9")
    return records[:, 1:].reshape(-1, 3, 32, 32), labels


def load_cifar10(data_dir) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) as numpy arrays."""
    files = read_batch_files(data_dir)
    train = [decode(name, files[name]) for name in TRAIN_FILES]
    test_x, test_y = decode(TEST_FILE, files[TEST_FILE])
    # copies: the decoded views are read-only and strided; these are writable and contiguous
    return (
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        test_x.copy(),
        test_y,
    )


def normalise(images: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(images).float()
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    return (x - mean) / std


def augment(
    padded: torch.Tensor, index: torch.Tensor, generator: torch.Generator, cutout: int = 0
) -> torch.Tensor:
    """Each image ``padded[index[i]]`` (40x40, reflect-padded) gets its own random 32x32
    crop and left-right flip (one gather with index arithmetic), then optional cutout."""
    n, size, pad = len(index), 32, padded.shape[-1] - 32
    dy = torch.randint(0, pad + 1, (n, 1), generator=generator)
    dx = torch.randint(0, pad + 1, (n, 1), generator=generator)
    flip = torch.randint(0, 2, (n, 1), generator=generator).bool()
    ar = torch.arange(size)
    rows = dy + ar  # (n, 32)
    cols = dx + torch.where(flip, size - 1 - ar, ar)  # flipped: read right to left
    out = padded[
        index.view(n, 1, 1, 1),
        torch.arange(3).view(1, 3, 1, 1),
        rows.view(n, 1, size, 1),
        cols.view(n, 1, 1, size),
    ]
    if cutout:  # a square of zeros, fully inside the image
        cy = torch.randint(0, size - cutout + 1, (n, 1), generator=generator)
        cx = torch.randint(0, size - cutout + 1, (n, 1), generator=generator)
        in_y, in_x = (ar >= cy) & (ar < cy + cutout), (ar >= cx) & (ar < cx + cutout)
        out = out * ~(in_y[:, None, :, None] & in_x[:, None, None, :])
    return out


# ---------------------------------------------------------------------------------- model
class GhostBatchNorm(nn.Module):
    """Batch norm over ``splits`` groups of a batch, scale frozen at 1, learnable bias.

    Image i of a batch belongs to split ``i % splits``: viewing (N, C, H, W) as
    (N/splits, splits*C, H, W) (free) makes each split's channels separate channels of
    one ``F.batch_norm`` call. Running stats are kept per split and averaged for eval.
    """

    def __init__(self, channels: int, splits: int, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.channels, self.splits, self.eps, self.momentum = channels, splits, eps, momentum
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels * splits))
        self.register_buffer("running_var", torch.ones(channels * splits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        if self.training:
            y = F.batch_norm(
                x.reshape(n // self.splits, c * self.splits, h, w),
                self.running_mean,
                self.running_var,
                None,
                self.bias.repeat(self.splits),
                True,
                self.momentum,
                self.eps,
            )
            return y.view(n, c, h, w)
        return F.batch_norm(
            x,
            self.running_mean.view(self.splits, c).mean(0),
            self.running_var.view(self.splits, c).mean(0),
            None,
            self.bias,
            False,
            0.0,
            self.eps,
        )


class ConvBN(nn.Module):
    """conv (no bias) -> [max-pool 2] -> ghost BN -> CELU(0.3)."""

    def __init__(self, c_in: int, c_out: int, splits: int, kernel: int = 3, pool: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, kernel, padding=kernel // 2, bias=False)
        self.pool = pool
        self.bn = GhostBatchNorm(c_out, splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.pool:
            x = F.max_pool2d(x, 2)
        return F.celu(self.bn(x), alpha=0.3)


class Residual(nn.Module):
    def __init__(self, channels: int, splits: int):
        super().__init__()
        self.res1 = ConvBN(channels, channels, splits)
        self.res2 = ConvBN(channels, channels, splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.res2(self.res1(x))


class ResNet9(nn.Module):
    def __init__(self, width: float = 1.0, splits: int = 16):
        super().__init__()
        c = [max(1, round(base * width)) for base in (64, 128, 256, 512)]
        self.widths = c
        self.register_buffer("whiten", torch.zeros(27, 3, 3, 3))  # fixed, set from data
        self.prep = ConvBN(27, c[0], splits, kernel=1)
        self.layer1, self.res1 = ConvBN(c[0], c[1], splits, pool=True), Residual(c[1], splits)
        self.layer2 = ConvBN(c[1], c[2], splits, pool=True)
        self.layer3, self.res3 = ConvBN(c[2], c[3], splits, pool=True), Residual(c[3], splits)
        self.linear = nn.Linear(c[3], 10, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prep(F.conv2d(x, self.whiten, padding=1))
        x = self.res1(self.layer1(x))
        x = self.res3(self.layer3(self.layer2(x)))
        return self.linear(F.max_pool2d(x, 4).flatten(1)) / 16


def whitening_filters(images: torch.Tensor, eps: float = 1e-2) -> torch.Tensor:
    """3x3x3 PCA-whitening filters (27, 3, 3, 3) from every 3x3 patch of ``images``
    (normalised, no padding): Sigma = X^T X / (n - 1), not mean-centred; filters
    V / sqrt(Lambda + eps), by descending eigenvalue."""
    cov, n = torch.zeros(27, 27, dtype=torch.float64), 0
    for chunk in images.split(1000):  # chunks: all patches at once would be ~1 GB
        patches = F.unfold(chunk, 3).transpose(1, 2).reshape(-1, 27)  # (c, kh, kw) order
        cov += (patches.T @ patches).double()
        n += patches.shape[0]
    eigenvalues, eigenvectors = torch.linalg.eigh(cov / (n - 1))  # ascending
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    return (eigenvectors.T / torch.sqrt(eigenvalues + eps)[:, None]).float().view(27, 3, 3, 3)


# ------------------------------------------------------------------------------- training
def label_smoothing_loss(
    logits: torch.Tensor, targets: torch.Tensor, smoothing: float = 0.2
) -> torch.Tensor:
    """(1 - s) * cross-entropy + s * mean over classes of -log p, summed over the batch."""
    log_p = F.log_softmax(logits, dim=1)
    nll = -log_p.gather(1, targets[:, None]).squeeze(1)
    return ((1 - smoothing) * nll - smoothing * log_p.mean(dim=1)).sum()


def lr_knots(epochs: float, peak: float = 1.0, floor: float = 0.1):
    """The 10-epoch knots (0, 0), (2, 1), (8, 0.1), (10, 0.1), scaled to ``epochs``."""
    return [0.0, epochs / 5, epochs - epochs / 5, epochs], [0.0, peak, floor * peak, floor * peak]


def lr_at(epoch: float, knots) -> float:
    return float(np.interp(epoch, *knots))


class EMA:
    """Average of every floating-point parameter and buffer, zero start, bias-corrected."""

    def __init__(self, model: nn.Module, rho: float):
        self.rho, self.updates = rho, 0
        self.average = {
            k: torch.zeros_like(v) for k, v in model.state_dict().items() if v.is_floating_point()
        }

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        state = model.state_dict()
        for name, avg in self.average.items():
            avg.mul_(self.rho).add_(state[name], alpha=1 - self.rho)
        self.updates += 1

    def model(self, model: nn.Module) -> nn.Module:
        """A copy of ``model`` holding the bias-corrected average (the model itself if the
        run was too short for one update)."""
        if self.updates == 0:
            return model
        averaged, correction = copy.deepcopy(model), 1 / (1 - self.rho**self.updates)
        averaged.load_state_dict({k: v * correction for k, v in self.average.items()})
        return averaged


@torch.no_grad()
def evaluate(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, batch: int = 1000
) -> float:
    """Accuracy with flip TTA: the mean of the logits of each image and its mirror."""
    model.eval()
    correct = 0
    for x, y in zip(images.split(batch), labels.split(batch)):
        logits = (model(x) + model(x.flip(3))) / 2
        correct += (logits.argmax(1) == y).sum().item()
    return correct / len(labels)


def process_seconds() -> float:
    """Seconds since this process started (Linux /proc; else since this module loaded)."""
    try:
        start_ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return uptime - start_ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return time.perf_counter() - _MODULE_START


_MODULE_START = time.perf_counter()


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="python -m bench.plain_recipe", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--data-dir",
        default=os.environ.get("CIFAR10_DIR"),
        help=f"folder with {FOLDER}/ or {ARCHIVE} (default $CIFAR10_DIR)",
    )
    p.add_argument("--width", type=float, default=0.25)
    p.add_argument("--train-subset", type=int, default=10000, help="first N training images")
    p.add_argument("--test-subset", type=int, default=None, help="first N test images")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--cutout", type=int, default=0, help="cutout square size (0 = off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the figures to this file")
    args = p.parse_args(argv)
    if args.batch_size <= 0 or args.batch_size % GHOST:
        p.error(f"--batch-size must be a positive multiple of {GHOST} (ghost BN splits)")
    if args.epochs <= 0 or args.width <= 0 or not 0 <= args.cutout <= 32:
        p.error("--epochs and --width must be positive, --cutout within 0-32")
    test_subset_bad = args.test_subset is not None and args.test_subset <= 0
    if args.train_subset < args.batch_size or test_subset_bad:
        p.error("--train-subset must hold at least one batch, --test-subset be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if not args.data_dir:
        print(
            "plain_recipe: error: no data directory: pass --data-dir or set CIFAR10_DIR",
            file=sys.stderr,
        )
        return 3
    try:
        started = time.perf_counter()
        train_u8, train_y, test_u8, test_y = load_cifar10(args.data_dir)
        load_seconds = time.perf_counter() - started
    except DataError as error:
        print(f"plain_recipe: error: {error}", file=sys.stderr)
        return 3
    train_u8, train_y = train_u8[: args.train_subset], train_y[: args.train_subset]
    test_u8, test_y = test_u8[: args.test_subset], test_y[: args.test_subset]
    bs, steps_per_epoch = args.batch_size, len(train_u8) // args.batch_size
    if steps_per_epoch == 0:
        print(
            f"plain_recipe: error: {len(train_u8)} training images make no batch of {bs}",
            file=sys.stderr,
        )
        return 2

    torch.manual_seed(args.seed)
    model = ResNet9(args.width, splits=bs // GHOST)
    biases = [p for name, p in model.named_parameters() if name.endswith("bias")]
    weights = [p for name, p in model.named_parameters() if not name.endswith("bias")]
    optimizer = torch.optim.SGD(
        [
            {"params": weights, "weight_decay": 5e-4 * bs, "lr_mult": 1.0},
            {"params": biases, "weight_decay": 5e-4 * bs / 64, "lr_mult": 64.0},
        ],
        lr=0.0,
        momentum=0.9,
        nesterov=True,
    )
    ema, knots = EMA(model, rho=0.99**5), lr_knots(args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    print(
        f"plain recipe: widths {model.widths}, {len(train_u8)} train / {len(test_u8)} test "
        f"images, {args.epochs} epochs of {steps_per_epoch} steps at batch {bs}, fp32, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    clock = time.perf_counter()  # the clock starts with the uint8 data in memory
    train_x, test_x = normalise(train_u8), normalise(test_u8)
    train_labels, test_labels = torch.from_numpy(train_y), torch.from_numpy(test_y)
    padded = F.pad(train_x, (4, 4, 4, 4), mode="reflect")
    model.whiten.copy_(whitening_filters(train_x[:10000]))
    train_seconds, rows, step = time.perf_counter() - clock, [], 0
    model.train()
    for epoch in range(1, args.epochs + 1):
        start, loss_sum, correct = time.perf_counter(), 0.0, 0
        permutation = torch.randperm(len(train_x), generator=generator)
        for b in range(steps_per_epoch):
            index = permutation[b * bs : (b + 1) * bs]
            inputs, targets = augment(padded, index, generator, args.cutout), train_labels[index]
            lr = lr_at(step / steps_per_epoch, knots) / bs
            for group in optimizer.param_groups:
                group["lr"] = lr * group["lr_mult"]
            logits = model(inputs)
            loss = label_smoothing_loss(logits, targets)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if step % 5 == 0:
                ema.update(model)
            loss_sum += loss.item()
            correct += (logits.argmax(1) == targets).sum().item()
        seconds = time.perf_counter() - start
        train_seconds += seconds
        seen = steps_per_epoch * bs
        rows.append(
            {
                "epoch": epoch,
                "train_loss": loss_sum / seen,
                "train_acc": correct / seen,
                "seconds": seconds,
            }
        )
        if not np.isfinite(loss_sum):
            print(f"plain_recipe: error: loss is not finite in epoch {epoch}", file=sys.stderr)
            return 4
        print(
            f"epoch {epoch:2d}  train loss {loss_sum / seen:.4f}  train acc {correct / seen:.4f}"
            f"  {seconds:.1f} s",
            flush=True,
        )

    started = time.perf_counter()
    test_acc = evaluate(ema.model(model), test_x, test_labels)
    eval_seconds = time.perf_counter() - started
    whole = process_seconds()
    print(
        f"test acc {test_acc:.4f} (EMA weights, flip TTA, {ema.updates} EMA updates)  "
        f"train {train_seconds:.1f} s  eval {eval_seconds:.1f} s  load {load_seconds:.1f} s  "
        f"whole process {whole:.1f} s",
        flush=True,
    )
    if args.json:
        record = {
            "test_acc": test_acc,
            "train_seconds": train_seconds,
            "eval_seconds": eval_seconds,
            "load_seconds": load_seconds,
            "process_seconds": whole,
            "epochs": rows,
            "ema_updates": ema.updates,
            "widths": model.widths,
            "config": {k: v for k, v in vars(args).items() if k != "json"},
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "train_images": len(train_u8),
            "test_images": len(test_u8),
            "time_includes": "uint8 arrays to normalised tensors, padding, whitening "
            "filters, every training step; not loading, model "
            "building or evaluation",
        }
        Path(args.json).write_text(json.dumps(record, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
