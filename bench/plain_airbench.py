"""A plain, one-file PyTorch reimplementation of the airbench94 recipe as this project runs it.

What it is for: the independent yardstick of the trainer's ``--preset airbench94`` (and of
its training step, timed side by side by :mod:`bench.airbench_step`). It is written from
``shared/docs/RECIPE.md`` and the preset's settings in one sitting: torch, numpy and the
standard library only, nothing imported from ``kernels/``, ``model/``, ``train/`` or the
rest of ``bench/``, so that a slowdown or a bug in the project cannot hide in it.

The defaults are the first rung of the trainer's CPU ladder (``train/cpu_default.py``:
width 0.25, the first 10,000 training images, 5 epochs, batch 256, fp32)::

    .venv/bin/python -m bench.plain_airbench            # reads $CIFAR10_DIR or --data-dir
    .venv/bin/python -m train --preset airbench94 --width 0.25 --train-subset 10000 \
        --epochs 5 --batch-size 256

The "train" seconds count, as the trainer counts them: the uint8 arrays in memory to
normalised tensors, the reflect padding, the whitening filters and every training step
(augmentation included); reading the archive, building the model and the evaluation are out.

Recipe (the project's ``airbench94`` preset):

* Net: a fixed 2×2 patch-whitening conv 3→24 without padding (32 → 31): the 12
  eigenfilters of the un-centred 2×2×3 patch second moment of the first 5,000 normalised
  training images (eps 5e-4) and their negations, plus a bias (zeros) trained for the
  first 3 epochs' steps only; GELU. Three blocks conv3×3 → 2×2 max-pool (floored: 31 → 15
  → 7 → 3) → BN → GELU → conv3×3 → BN → GELU, widths 64/256/256 × ``width``; BN scale
  frozen at 1, bias learnable, eps 1e-12, PyTorch momentum 0.4; convs without bias, Dirac
  init (the first min(c_in, c_out) filters the identity). Head: max-pool over the 3×3 map
  → linear without bias → × 1/9.
* Loss: cross-entropy with label smoothing 0.2, summed over the batch.
* Optimiser: Nesterov SGD momentum 0.85, rate 11.5 and weight decay 0.0153 per 1024
  examples, each divided by 1024·(1 + 1/(1 − 0.85)); the decay decoupled (its strength at
  the peak the same for every group); groups: conv filters, head, whitening bias at the
  base rate, BN biases at 64×. Rate factor per step: 0.2 at step 0, linear to 1 at step
  int(0.23·T), linear to 0.07 at step T.
* Lookahead every 5 steps over every floating-point tensor of the state dict: slow ←
  lerp(slow, fast, 1 − 0.95⁵·(t/T)³), fast ← slow; the run ends on the slow weights.
* Data: translate ±2 px (each image its own crop of its 2-px reflect-padded self) and
  alternating flip (a random orientation per image in epoch 0, mirrored on odd epochs).
  Fractional epochs: T = ceil(epochs · steps per epoch), the last epoch partial.
* Evaluation: six-view TTA: flip × {no shift, 1 px up-left, 1 px down-right (reflect)},
  weights ¼, ¼ and ⅛ for each of the four shifted views.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tarfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

MEAN = (125.31, 122.95, 113.87)  # per channel, 0-255 scale
STD = (62.99, 62.09, 66.70)
FOLDER, ARCHIVE = "cifar-10-batches-bin", "cifar-10-binary.tar.gz"
BATCH_FILES = (*(f"data_batch_{i}.bin" for i in range(1, 6)), "test_batch.bin")
RECORD = 3073  # one label byte, then 3 planes of 32x32

WIDTHS = (64, 256, 256)
PATCH, WHITEN_EPS, WHITEN_IMAGES = 2, 5e-4, 5_000
WHITEN_CHANNELS = 2 * 3 * PATCH * PATCH  # 12 eigenfilters and their negations
BN_EPS, BN_MOMENTUM = 1e-12, 0.4  # PyTorch's momentum: airbench's 0.6 is 1 - 0.4
OUTPUT_SCALE = 1 / 9
SMOOTHING = 0.2
LR, WEIGHT_DECAY, MOMENTUM, BIAS_LR_MULT = 11.5, 0.0153, 0.85, 64.0  # per 1024 examples
LR_START, LR_PEAK_AT, LR_END = 0.2, 0.23, 0.07
LOOKAHEAD_EVERY, LOOKAHEAD_BASE = 5, 0.95**5
WHITEN_BIAS_EPOCHS = 3.0
PAD = 2
#: (shift, mirrored, weight) of the six TTA views.
TTA_VIEWS = ((0, False, 0.25), (0, True, 0.25), (-1, False, 0.125), (-1, True, 0.125))
TTA_VIEWS += ((1, False, 0.125), (1, True, 0.125))


class DataError(Exception):
    """A missing or unreadable data set (reported in one line, exit code 3)."""


# ----------------------------------------------------------------------------------- data
def _batch_bytes(root: Path) -> tuple[Path, dict[str, bytes]]:
    """Where the batch files were found and what of them was there (maybe not all)."""
    if not root.exists():
        raise DataError(f"data directory {root} does not exist")
    folder = root if root.name == FOLDER else root / FOLDER
    if folder.is_dir():
        return folder, {n: (folder / n).read_bytes() for n in BATCH_FILES if (folder / n).is_file()}
    archive = root if root.is_file() else root / ARCHIVE
    if not archive.is_file():
        raise DataError(f"{root} holds neither {FOLDER}/ nor {ARCHIVE}")
    found = {}
    try:  # "r|gz" streams: the archive is decompressed once, front to back
        with tarfile.open(archive, "r|gz") as tar:
            for member in tar:
                base = Path(member.name).name
                if member.isfile() and base in BATCH_FILES:
                    found[base] = tar.extractfile(member).read()
    except (tarfile.TarError, EOFError, zlib.error, OSError) as error:
        raise DataError(f"{archive}: unreadable archive ({error})") from None
    return archive, found


def load_cifar10(data_dir: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``{"train": (images, labels), "test": (images, labels)}`` from ``data_dir`` (holding
    ``cifar-10-batches-bin/`` or ``cifar-10-binary.tar.gz``, or either itself): images
    uint8 (N, 3, 32, 32), labels int64 (N,), both writable and contiguous."""
    where, found = _batch_bytes(Path(data_dir))
    if missing := [n for n in BATCH_FILES if n not in found]:
        raise DataError(f"{where} lacks {', '.join(missing)}")
    images, labels = [], []
    for name in BATCH_FILES:
        size = len(found[name])
        if size == 0 or size % RECORD:
            raise DataError(f"{name}: {size} bytes, not a whole number of {RECORD}-byte records")
        rows = np.frombuffer(found[name], np.uint8).reshape(-1, RECORD)
        if rows[:, 0].max() > 9:
            raise DataError(f"{name}: label {rows[:, 0].max()} out of range 0-9")
        images.append(rows[:, 1:].reshape(-1, 3, 32, 32))
        labels.append(rows[:, 0].astype(np.int64))
    return {
        "train": (np.concatenate(images[:5]), np.concatenate(labels[:5])),
        "test": (images[5].copy(), labels[5]),  # a copy: the decoded view is read-only
    }


def normalise(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, 3, H, W) on the 0-255 scale -> float32 (N, 3, H, W), per-channel standard."""
    mean = torch.tensor(MEAN).view(3, 1, 1)
    std = torch.tensor(STD).view(3, 1, 1)
    return (torch.from_numpy(images).float() - mean) / std


def translate_and_flip(
    padded: torch.Tensor,
    index: torch.Tensor,
    dy: torch.Tensor,
    dx: torch.Tensor,
    flip: torch.Tensor,
) -> torch.Tensor:
    """Image ``padded[index[i]]`` cropped at offset ``(dy[i], dx[i])`` and mirrored where
    ``flip[i]``: every image its own translation.

    Args:
        padded: float (N, C, H + 2p, W + 2p), the images reflect-padded by p = ``PAD`` (2).
        index: int64 (B,), which images.
        dy, dx: int64 (B,), offsets in [0, 2p] (offset - p is the shift in pixels).
        flip: bool (B,), mirror left-right after the crop.

    Returns:
        float (B, C, H, W), contiguous, ``padded``'s dtype.
    """
    h = w = padded.shape[-1] - 2 * PAD
    rows = dy[:, None] + torch.arange(h)  # (B, H): the rows each image keeps
    across = torch.arange(w)
    cols = dx[:, None] + torch.where(flip[:, None], w - 1 - across, across)  # mirrored: reversed
    picked = padded[index]
    channels, width = picked.shape[1], picked.shape[-1]
    picked = picked.gather(2, rows[:, None, :, None].expand(-1, channels, -1, width))
    return picked.gather(3, cols[:, None, None, :].expand(-1, channels, h, -1))


def alternating_flips(start: torch.Tensor, epoch: int) -> torch.Tensor:
    """bool (N,): each image's orientation in 0-based ``epoch`` from its epoch-0 draw
    ``start`` bool (N,): the same on even epochs, mirrored on odd ones."""
    return start ^ bool(epoch % 2)


# ---------------------------------------------------------------------------------- model
def whitening_filters(images: torch.Tensor, eps: float = WHITEN_EPS) -> torch.Tensor:
    """The 24 whitening filters float32 (24, 3, 2, 2) of normalised ``images`` float
    (N, 3, H, W): Sigma = X^T X / (n - 1) over every 2x2 patch (un-centred, no padding);
    filter i = v_i / sqrt(lambda_i + eps) by descending eigenvalue (each eigenvector's
    largest entry made positive, as the project fixes the sign), then their negations."""
    dim = 3 * PATCH * PATCH
    gram, count = torch.zeros(dim, dim, dtype=torch.float64), 0
    for part in images.split(500):  # 500 images of 2x2 patches: ~23 MB at a time in fp32
        cols = F.unfold(part.float(), PATCH)  # (n, 12, L), feature order (c, ky, kx)
        x = cols.transpose(1, 2).reshape(-1, dim)
        gram += (x.T @ x).double()
        count += x.shape[0]
    values, vectors = torch.linalg.eigh(gram / (count - 1))  # ascending
    values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
    vectors = vectors * vectors.gather(0, vectors.abs().argmax(0, keepdim=True)).sign()
    filters = (vectors / torch.sqrt(values + eps)).T  # row i: v_i / sqrt(lambda_i + eps)
    return torch.cat([filters, -filters]).float().reshape(2 * dim, 3, PATCH, PATCH)


def dirac_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """3x3 conv, no bias, PyTorch's default init with filter i (i < min(c_in, c_out)) the
    identity on input channel i: the block starts by passing its first channels through."""
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    with torch.no_grad():
        first = torch.arange(min(c_in, c_out))
        conv.weight[: len(first)].zero_()
        conv.weight[first, first, 1, 1] = 1.0
    return conv


class FrozenScaleBN(nn.Module):
    """Batch norm with the scale fixed at 1 (no weight), a learnable bias (zeros), running
    statistics for eval; eps 1e-12, momentum 0.4 (PyTorch's convention)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` float (B, C, H, W) -> same shape and dtype."""
        return F.batch_norm(
            x,
            self.running_mean,
            self.running_var,
            None,
            self.bias,
            self.training,
            BN_MOMENTUM,
            BN_EPS,
        )


class Block(nn.Module):
    """conv3x3 -> 2x2 max-pool (floored) -> BN -> GELU -> conv3x3 -> BN -> GELU."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv1, self.bn1 = dirac_conv(c_in, c_out), FrozenScaleBN(c_out)
        self.conv2, self.bn2 = dirac_conv(c_out, c_out), FrozenScaleBN(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` float (B, c_in, H, W) -> (B, c_out, H // 2, W // 2)."""
        x = F.gelu(self.bn1(F.max_pool2d(self.conv1(x), 2)))
        return F.gelu(self.bn2(self.conv2(x)))


class Net(nn.Module):
    """The airbench94 network at ``width`` × (64, 256, 256) channels (each at least 1).

    Call :meth:`set_whitening` before the first forward (the filters start at zero).
    """

    def __init__(self, width: float = 1.0) -> None:
        super().__init__()
        self.widths = [max(1, round(base * width)) for base in WIDTHS]
        # Registered first, parameter then buffer, so that the state dict lists its entries in
        # the order of the project's AirbenchNet (the tests compare the two entry by entry).
        self.whiten_bias = nn.Parameter(torch.zeros(WHITEN_CHANNELS))
        self.register_buffer("whiten", torch.zeros(WHITEN_CHANNELS, 3, PATCH, PATCH))
        w1, w2, w3 = self.widths
        self.blocks = nn.Sequential(Block(WHITEN_CHANNELS, w1), Block(w1, w2), Block(w2, w3))
        self.head = nn.Linear(w3, 10, bias=False)

    @torch.no_grad()
    def set_whitening(self, filters: torch.Tensor) -> None:
        """Install ``filters`` float (24, 3, 2, 2) (:func:`whitening_filters`)."""
        self.whiten.copy_(filters)

    def freeze_whitening_bias(self) -> None:
        """Stop training the whitening bias: no gradient, so SGD skips it (nor decays it)."""
        self.whiten_bias.requires_grad_(False)
        self.whiten_bias.grad = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` normalised images float (B, 3, 32, 32) -> logits (B, 10), ``x``'s dtype."""
        x = F.gelu(F.conv2d(x, self.whiten.to(x.dtype), self.whiten_bias.to(x.dtype)))
        x = self.blocks(x)
        x = F.max_pool2d(x, tuple(x.shape[-2:])).flatten(1)  # the whole 3x3 map
        return self.head(x) * OUTPUT_SCALE


def build_model(
    width: float,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    *,
    channels_last: bool = False,
) -> Net:
    """A fresh :class:`Net` (seed torch first for reproducible weights) on ``device`` in
    ``dtype``, channels_last if asked, in training mode; the whitening is still to set."""
    model = Net(width).to(device=device, dtype=dtype)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


# ------------------------------------------------------------------------------- training
def make_optimizer(
    model: Net,
    batch_size: int,
    *,
    lr: float = LR,
    weight_decay: float = WEIGHT_DECAY,
    momentum: float = MOMENTUM,
    bias_lr_mult: float = BIAS_LR_MULT,
) -> torch.optim.SGD:
    """Nesterov SGD with airbench94's rates: ``lr`` and ``weight_decay`` per 1024 examples.

    The loss is summed, so the rate is per example; dividing by ``1 + 1/(1 - momentum)``
    undoes Nesterov's amplification of a steady gradient. Each group's ``weight_decay`` is
    the per-step decay at the peak divided by its own peak rate, so that SGD's ``lr · wd``
    is that decay for every group, whatever its rate (the "decoupled" form), following the
    schedule. Groups: filters, head, BN biases (× ``bias_lr_mult``), whitening bias; each
    keeps its peak rate in ``"peak_lr"`` for :func:`set_rates`.
    """
    scale = 1024 * (1 + 1 / (1 - momentum))
    base, decay = lr / scale, weight_decay * batch_size / scale
    roles = {
        "filters": [conv.weight for b in model.blocks for conv in (b.conv1, b.conv2)],
        "head": [model.head.weight],
        "bn_biases": [bn.bias for m in model.blocks for bn in (m.bn1, m.bn2)],
        "whiten_bias": [model.whiten_bias],
    }
    groups = []
    for role, params in roles.items():
        rate = base * (bias_lr_mult if role == "bn_biases" else 1.0)
        groups.append(
            {
                "params": params,
                "name": role,
                "lr": rate,
                "peak_lr": rate,
                "weight_decay": decay / rate,
            }
        )
    # foreach: one op per kind of update over all tensors, as the trainer's CPU optimiser
    return torch.optim.SGD(groups, lr=0.0, momentum=momentum, nesterov=True, foreach=True)


def lr_factor(step: int, total: int) -> float:
    """The rate at 0-based ``step`` of ``total`` as a fraction of the peak: 0.2 at step 0,
    linear to 1 at step int(0.23·total), then linear to 0.07 at step ``total``."""
    peak = int(LR_PEAK_AT * total)
    if step <= 0:  # also when the peak falls on step 0 (a run of under 5 steps)
        return LR_START
    if step < peak:
        return LR_START + (1 - LR_START) * step / peak
    return 1 + (LR_END - 1) * min(step - peak, total - peak) / (total - peak)


def set_rates(optimizer: torch.optim.SGD, factor: float) -> None:
    """Every group's rate to its peak × ``factor``."""
    for group in optimizer.param_groups:
        group["lr"] = group["peak_lr"] * factor


def train_step(
    model: Callable[[torch.Tensor], torch.Tensor],
    optimizer: torch.optim.SGD,
    images: torch.Tensor,
    labels: torch.Tensor,
    smoothing: float = SMOOTHING,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward, summed label-smoothed loss, backward and optimiser step.

    Args:
        model: the network (or its ``torch.compile`` wrapper), in training mode.
        optimizer: :func:`make_optimizer`'s, its rates already set (:func:`set_rates`).
        images: augmented, normalised batch float (B, 3, 32, 32), the model's dtype.
        labels: int64 (B,).

    Returns:
        the float32 summed loss and the int64 count of correct predictions (0-d tensors on
        the batch's device; read them when needed, not every step).
    """
    logits = model(images)
    loss = F.cross_entropy(logits.float(), labels, label_smoothing=smoothing, reduction="sum")
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), (logits.detach().argmax(1) == labels).sum()


class Lookahead:
    """airbench94's lookahead over every floating-point tensor of ``model``'s state dict
    (parameters and BN running statistics), for a run of ``total`` steps."""

    def __init__(self, model: nn.Module, total: int, every: int = LOOKAHEAD_EVERY) -> None:
        self.fast = [t for t in model.state_dict().values() if t.is_floating_point()]
        self.slow = [t.clone() for t in self.fast]
        self.total, self.every, self.updates = total, every, 0

    @torch.no_grad()
    def after_step(self, step: int) -> None:
        """Call after 1-based ``step`` (at most ``total``): every ``every`` steps pull the
        slow weights towards the fast ones, ``slow <- lerp(slow, fast, 1 - d)`` with
        d = 0.95⁵·(t/T)³, and restart the fast ones from them; after the last step the
        fast weights take the slow ones, so the run ends on them."""
        if step % self.every == 0:
            decay = LOOKAHEAD_BASE * (step / self.total) ** 3
            for slow, fast in zip(self.slow, self.fast):
                slow.lerp_(fast, 1 - decay)
                fast.copy_(slow)
            self.updates += 1
        elif step == self.total:
            for slow, fast in zip(self.slow, self.fast):
                fast.copy_(slow)


# ----------------------------------------------------------------------------- evaluation
def tta_views(images: torch.Tensor) -> list[tuple[torch.Tensor, float]]:
    """The six views of ``images`` float (B, C, H, W) with their weights: a shift of -1
    moves the window one pixel up and left (``out[i, j] = x[r(i-1), r(j-1)]``, r the
    reflection at the border), +1 down and right; the mirror comes after the shift."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (1, 1, 1, 1), mode="reflect")
    views = []
    for shift, mirrored, weight in TTA_VIEWS:
        view = padded[..., 1 + shift : 1 + shift + h, 1 + shift : 1 + shift + w]
        views.append((view.flip(-1) if mirrored else view, weight))
    return views


@torch.no_grad()
def evaluate(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    """Accuracy on ``images`` float (N, 3, 32, 32) / ``labels`` int64 (N,) with six-view TTA
    (the weighted sum of the views' float32 logits), in batches of 1000."""
    model.eval()
    correct = 0
    for x, y in zip(images.split(1000), labels.split(1000)):
        logits = sum(model(view.contiguous()).float() * wt for view, wt in tta_views(x))
        correct += int((logits.argmax(1) == y).sum())
    model.train()
    return correct / len(labels)


# ---------------------------------------------------------------------------------- main
#: The command line besides --data-dir: (flag, type, default, help); the defaults are the
#: trainer's CPU quick settings.
OPTIONS = (
    ("--width", float, 0.25, "channel multiplier of (64, 256, 256)"),
    ("--train-subset", int, 10_000, "train on the first N training images"),
    ("--test-subset", int, None, "evaluate on the first N test images (default all)"),
    ("--epochs", float, 5.0, "fractional allowed (airbench94: 9.9)"),
    ("--batch-size", int, 256, "images per step"),
    ("--seed", int, 0, "seeds the weights, the shuffles and the augmentation"),
    ("--json", str, None, "also write the figures to this file"),
)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.plain_airbench", description=__doc__.split("\n")[0]
    )
    where = f"where {FOLDER}/ or {ARCHIVE} lies; default $CIFAR10_DIR"
    p.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR"), help=where)
    for flag, kind, default, text in OPTIONS:
        p.add_argument(flag, type=kind, default=default, help=text)
    args = p.parse_args(argv)
    if min(args.width, args.epochs, args.batch_size) <= 0:
        p.error("--width, --epochs and --batch-size must be positive")
    if args.train_subset < args.batch_size:
        p.error("--train-subset must hold at least one batch")
    if args.test_subset is not None and args.test_subset <= 0:
        p.error("--test-subset must be positive")
    return args


def fail(message: str) -> int:
    print(f"plain_airbench: error: {message}", file=sys.stderr)
    return 3


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.data_dir:
        return fail("no data directory: pass --data-dir or set CIFAR10_DIR")
    began = time.perf_counter()
    try:
        data = load_cifar10(args.data_dir)
    except DataError as error:
        return fail(str(error))
    load_seconds = time.perf_counter() - began
    train_u8, train_y = (a[: args.train_subset] for a in data["train"])
    test_u8, test_y = (a[: args.test_subset] for a in data["test"])
    bs = args.batch_size
    per_epoch = len(train_u8) // bs
    if per_epoch == 0:  # a subset of the archive smaller than asked
        print(
            f"plain_airbench: error: {len(train_u8)} images make no batch of {bs}", file=sys.stderr
        )
        return 2
    total = max(1, math.ceil(round(args.epochs * per_epoch, 9)))  # 9.9 · 97 is not 960.3000…1
    bias_steps = math.ceil(round(WHITEN_BIAS_EPOCHS * per_epoch, 9))

    torch.manual_seed(args.seed)
    model = build_model(args.width)
    optimizer = make_optimizer(model, bs)
    generator = torch.Generator().manual_seed(args.seed)
    print(
        f"plain airbench94: widths {model.widths}, {len(train_u8)} train / {len(test_u8)} "
        f"test images, {args.epochs:g} epochs ({total} steps of batch {bs}), fp32, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads",
        flush=True,
    )

    clock = time.perf_counter()  # from the uint8 arrays in memory, as the trainer counts
    train_x, test_x = normalise(train_u8), normalise(test_u8)
    train_labels, test_labels = torch.from_numpy(train_y), torch.from_numpy(test_y)
    padded = F.pad(train_x, (PAD,) * 4, mode="reflect")
    model.set_whitening(whitening_filters(train_x[:WHITEN_IMAGES]))
    lookahead = Lookahead(model, total)  # the slow copy starts from the whitened model
    start_flips = torch.randint(0, 2, (len(train_x),), generator=generator).bool()
    train_seconds, rows, step = time.perf_counter() - clock, [], 0
    for epoch in range(math.ceil(total / per_epoch)):
        began, loss_sum, correct = (
            time.perf_counter(),
            torch.zeros(()),
            torch.zeros((), dtype=torch.int64),
        )
        steps = min(per_epoch, total - step)
        order = torch.randperm(len(train_x), generator=generator)
        dy, dx = torch.randint(0, 2 * PAD + 1, (2, len(train_x)), generator=generator)
        flips = alternating_flips(start_flips, epoch)[order]
        for b in range(steps):
            part = slice(b * bs, (b + 1) * bs)
            index = order[part]
            inputs = translate_and_flip(padded, index, dy[part], dx[part], flips[part])
            set_rates(optimizer, lr_factor(step, total))
            loss, hits = train_step(model, optimizer, inputs, train_labels[index])
            loss_sum, correct = loss_sum + loss, correct + hits
            step += 1
            lookahead.after_step(step)
            if step == bias_steps:
                model.freeze_whitening_bias()
        seconds = time.perf_counter() - began
        train_seconds += seconds
        seen = steps * bs
        row = {
            "epoch": epoch + 1,
            "steps": steps,
            "train_loss": loss_sum.item() / seen,
            "train_acc": correct.item() / seen,
            "seconds": seconds,
        }
        rows.append(row)
        if not math.isfinite(row["train_loss"]):
            print(
                f"plain_airbench: error: loss is not finite in epoch {epoch + 1}", file=sys.stderr
            )
            return 4
        print(
            f"epoch {epoch + 1:2d}  train loss {row['train_loss']:.4f}  train acc "
            f"{row['train_acc']:.4f}  {seconds:.1f} s",
            flush=True,
        )

    began = time.perf_counter()
    test_acc = evaluate(model, test_x, test_labels)
    eval_seconds = time.perf_counter() - began
    print(
        f"test acc {test_acc:.4f} (six-view TTA, {lookahead.updates} lookahead updates)  "
        f"train {train_seconds:.1f} s  eval {eval_seconds:.1f} s  load {load_seconds:.1f} s",
        flush=True,
    )
    if args.json:
        settings = vars(args).copy()
        del settings["json"]
        record = dict(
            recipe="airbench94, plain reimplementation (bench/plain_airbench.py)",
            config=settings,
            widths=model.widths,
            train_images=len(train_u8),
            test_images=len(test_u8),
            steps=total,
            whitening_bias_steps=min(bias_steps, total),
            lookahead_updates=lookahead.updates,
            epochs=rows,
            test_acc=test_acc,
            train_seconds=train_seconds,
            eval_seconds=eval_seconds,
            load_seconds=load_seconds,
            time_includes=(
                "normalising the uint8 arrays, the reflect padding, the whitening filters and "
                "every training step with its augmentation (not reading the data, building "
                "the model or evaluating)"
            ),
            torch=torch.__version__,
            threads=torch.get_num_threads(),
        )
        with open(args.json, "w") as out:
            json.dump(record, out, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
