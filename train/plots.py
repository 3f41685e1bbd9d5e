"""PNG figures a researcher looks at: training curves, augmented views, whitening filters.

matplotlib is imported inside each function, so the trainer pays for it only when asked to
plot (``--plot``). Figures are built with the object-oriented API (``Figure`` rendered by the
Agg canvas) rather than ``pyplot``: no global state, no GUI backend, nothing to close.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from typing import Any

import torch

from train.config import CIFAR10_MEAN, CIFAR10_STD

__all__ = ["augmentation_views", "plot_augmentations", "plot_curves", "plot_whitening"]

PathLike = str | os.PathLike[str]


def _figure(width: float, height: float) -> Any:
    """A new Agg-backed figure (matplotlib imported here, not at module import)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Any, path: PathLike) -> str:
    path = os.fspath(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    fig.savefig(path, format="png")
    return path


# ---- training curves ---------------------------------------------------------------------


def _series(
    history: Sequence[dict[str, Any]], key: str, x_key: str = "epoch"
) -> tuple[list[float], list[float]]:
    """(x, y) for entries where ``key`` has a value (test metrics may be None or absent)."""
    xs, ys = [], []
    for entry in history:
        y, x = entry.get(key), entry.get(x_key)
        if y is not None and x is not None:
            xs.append(float(x))
            ys.append(float(y))
    return xs, ys


def plot_curves(
    histories: Sequence[Sequence[dict[str, Any]]],
    path: PathLike,
    *,
    labels: Sequence[str] | None = None,
    title: str | None = None,
) -> str:
    """Loss, accuracy, learning rate and accuracy-against-time of several runs, overlaid.

    Args:
        histories: one list per run of per-epoch dicts with keys ``epoch``, ``lr``,
            ``train_loss``, ``train_acc``, ``test_loss``, ``test_acc`` (None where the epoch
            was not evaluated), ``epoch_time``, ``total_time``.
        path: the PNG to write (parent folders are created).
        labels: a legend label per run (default "run 1", "run 2", ...).
        title: the figure's title.

    Train curves are solid, test curves dashed with markers (a test point may be a lone
    final-epoch evaluation); one colour per run. Returns the path written.
    """
    if not histories:
        raise ValueError("plot_curves needs at least one run's history")
    labels = list(labels) if labels is not None else [f"run {i + 1}" for i in range(len(histories))]
    if len(labels) != len(histories):
        raise ValueError(f"{len(labels)} labels for {len(histories)} runs")
    # Accuracies may come as fractions or percent; show percent either way.
    accs = [y for h in histories for k in ("train_acc", "test_acc") for y in _series(h, k)[1]]
    acc_scale = 100.0 if accs and max(accs) <= 1.0 else 1.0

    fig = _figure(12, 8)
    ax_loss, ax_acc, ax_lr, ax_time = fig.subplots(2, 2).ravel()
    colours = [f"C{i % 10}" for i in range(len(histories))]
    for history, label, colour in zip(histories, labels, colours):
        x, y = _series(history, "train_loss")
        ax_loss.plot(x, y, "-", color=colour, label=f"{label} train")
        x, y = _series(history, "test_loss")
        ax_loss.plot(x, y, "--o", color=colour, markersize=3, label=f"{label} test")
        x, y = _series(history, "train_acc")
        ax_acc.plot(x, [v * acc_scale for v in y], "-", color=colour, label=f"{label} train")
        x, y = _series(history, "test_acc")
        ax_acc.plot(
            x, [v * acc_scale for v in y], "--o", color=colour, markersize=3, label=f"{label} test"
        )
        x, y = _series(history, "lr")
        ax_lr.plot(x, y, "-", color=colour, label=label)
        x, y = _series(history, "test_acc", x_key="total_time")
        ax_time.plot(x, [v * acc_scale for v in y], "--o", color=colour, markersize=3, label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss (train solid, test dashed)")
    ax_acc.set(xlabel="epoch", ylabel="accuracy (%)", title="accuracy")
    ax_lr.set(xlabel="epoch", ylabel="learning rate", title="learning-rate schedule")
    ax_time.set(
        xlabel="training time (s)", ylabel="test accuracy (%)", title="test accuracy against time"
    )
    for ax in (ax_loss, ax_acc, ax_lr, ax_time):
        ax.grid(True, alpha=0.3)
    # One legend is enough when runs are many; the colours repeat across panels.
    ax_acc.legend(fontsize="small", ncol=2 if len(histories) > 4 else 1)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


# ---- augmentations -----------------------------------------------------------------------


def augmentation_views(
    images_uint8: torch.Tensor,
    *,
    n_images: int = 8,
    n_views: int = 4,
    pad: int = 4,
    cutout_size: int = 8,
    flip: bool = True,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    seed: int = 0,
) -> torch.Tensor:
    """The first ``n_images`` images under ``n_views`` independent random augmentations.

    Parameters are drawn with ``kernels.random_augment_params`` and applied by
    ``kernels.augment(..., backend="eager")`` — the training pipeline's own op — then
    de-normalised for display. Returns float (n_views, n_images, 3, H, W) in [0, 1].
    """
    from kernels import augment, random_augment_params

    if images_uint8.dtype != torch.uint8 or images_uint8.ndim != 4:
        raise ValueError(
            "images must be a uint8 (N, C, H, W) tensor; got "
            f"{images_uint8.dtype} {tuple(images_uint8.shape)}"
        )
    data = images_uint8[:n_images].cpu().contiguous()
    n, _, height, width = data.shape
    generator = torch.Generator().manual_seed(seed)
    mean_t = torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1)
    views = []
    for _ in range(n_views):
        crop, flips, cutout = random_augment_params(
            n,
            pad=pad,
            cutout_size=cutout_size,
            height=height,
            width=width,
            flip=flip,
            generator=generator,
        )
        out = augment(
            data,
            torch.arange(n),
            crop,
            flips,
            cutout,
            cutout_size=cutout_size,
            pad=pad,
            mean=mean,
            std=std,
            out_dtype=torch.float32,
            backend="eager",
        )
        # Undo the normalisation: cutout's zeros come back as the mean colour, as in the seed.
        views.append(((out.float() * std_t + mean_t) / 255.0).clamp(0, 1).contiguous())
    return torch.stack(views)


def plot_augmentations(
    images_uint8: torch.Tensor,
    path: PathLike,
    *,
    n_images: int = 8,
    n_views: int = 4,
    pad: int = 4,
    cutout_size: int = 8,
    flip: bool = True,
    mean: Sequence[float] = CIFAR10_MEAN,
    std: Sequence[float] = CIFAR10_STD,
    seed: int = 0,
    titles: Sequence[str] | None = None,
) -> str:
    """A grid of the same images (columns) under several random augmentations (rows).

    The first row is the original images; each further row is one draw of crop (reflect
    padding ``pad``), flip and cutout (``cutout_size``, 0 for none), as the seed shows two
    random augmentations of the same images. ``titles`` (e.g. class names) label columns.
    Returns the path written.
    """
    views = augmentation_views(
        images_uint8,
        n_images=n_images,
        n_views=n_views,
        pad=pad,
        cutout_size=cutout_size,
        flip=flip,
        mean=mean,
        std=std,
        seed=seed,
    )
    originals = images_uint8[:n_images].cpu().float() / 255.0
    rows = [originals] + list(views)
    n = originals.shape[0]
    fig = _figure(1.3 * n + 0.8, 1.3 * len(rows) + 0.5)
    axes = fig.subplots(len(rows), n, squeeze=False)
    for r, batch in enumerate(rows):
        for c in range(n):
            ax = axes[r][c]
            ax.imshow(batch[c].permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0 and titles is not None and c < len(titles):
                ax.set_title(str(titles[c]), fontsize="small")
            if c == 0:
                ax.set_ylabel("original" if r == 0 else f"view {r}", fontsize="small")
    cut = f"cutout {cutout_size}×{cutout_size}" if cutout_size else "no cutout"
    fig.suptitle(f"random crop (pad {pad}), flip {'on' if flip else 'off'}, {cut}")
    fig.tight_layout()
    return _save(fig, path)


# ---- whitening filters -------------------------------------------------------------------


def plot_whitening(
    filters: torch.Tensor, eigenvalues: torch.Tensor, path: PathLike, *, per_row: int = 9
) -> str:
    """The 3×3 eigen-patches of the whitening layer, each with both signs, as in the seed.

    Args:
        filters: (27, 3, 3, 3) float — eigenvectors or the whitening conv's weights
            (eigenvectors divided by √(λ+eps)); each patch is normalised for display, so
            either shows the same shapes.
        eigenvalues: (27,) float, in the filters' order (the seed orders them descending).
        path: the PNG to write.
        per_row: filters per row; each row of filters is drawn twice, +v above −v.

    Titles read "i (√λ)", the scale of variation along that direction. Returns the path.
    """
    filters = filters.detach().cpu().double()
    eigenvalues = eigenvalues.detach().cpu().double().flatten()
    if filters.ndim != 4 or filters.shape[1] != 3:
        raise ValueError(f"filters must be (K, 3, h, w); got {tuple(filters.shape)}")
    if eigenvalues.numel() != filters.shape[0]:
        raise ValueError(f"{eigenvalues.numel()} eigenvalues for {filters.shape[0]} filters")
    k = filters.shape[0]
    cols = min(per_row, k)
    groups = math.ceil(k / cols)
    fig = _figure(1.1 * cols + 0.4, 2.3 * groups + 0.6)
    axes = fig.subplots(2 * groups, cols, squeeze=False)
    for i in range(k):
        # Map each patch to [0, 1] around mid-grey: sign and shape stay, the size goes to the
        # title (√λ), as in the seed's figure.
        v = filters[i]
        v = v / (2 * v.abs().max().clamp_min(1e-12))
        g, c = divmod(i, cols)
        for sign, row in ((1, 2 * g), (-1, 2 * g + 1)):
            ax = axes[row][c]
            ax.imshow(
                (0.5 + sign * v).clamp(0, 1).permute(1, 2, 0).numpy(), interpolation="nearest"
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if sign == 1:
                scale = math.sqrt(max(float(eigenvalues[i]), 0.0))
                ax.set_title(f"{i + 1} ({scale:.2f})", fontsize="small")
    for j in range(k, groups * cols):  # empty cells of the last row
        g, c = divmod(j, cols)
        axes[2 * g][c].axis("off")
        axes[2 * g + 1][c].axis("off")
    fig.suptitle("3×3 patch eigenvectors (√eigenvalue); each shown as +v above −v")
    fig.tight_layout()
    return _save(fig, path)
