"""Each plot writes a real, non-blank PNG of about the expected size."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from train.plots import augmentation_views, plot_augmentations, plot_curves, plot_whitening


def _read(path) -> np.ndarray:
    import matplotlib.image as mpimg

    return mpimg.imread(path)


def _assert_png(path, width_px: int, height_px: int, min_std: float = 0.02):
    img = _read(path)
    assert img.ndim == 3 and img.shape[2] in (3, 4)
    h, w = img.shape[:2]
    assert abs(w - width_px) <= 0.15 * width_px and abs(h - height_px) <= 0.15 * height_px
    assert img[..., :3].std() > min_std, "image looks blank"
    return img


def _images(n: int = 8) -> torch.Tensor:
    """Structured uint8 images (gradients + a bright block + noise): crops and flips show."""
    g = torch.Generator().manual_seed(0)
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    base = torch.stack([xx * 8, yy * 8, (xx + yy) * 4]).float()
    imgs = base.expand(n, 3, 32, 32).clone()
    imgs[:, :, 4:12, 20:28] = 255
    imgs += torch.randint(0, 40, imgs.shape, generator=g)
    return imgs.clamp(0, 255).to(torch.uint8)


def _history(n_epochs: int, offset: float = 0.0, evaluate_every: int = 1):
    out, total = [], 0.0
    for e in range(1, n_epochs + 1):
        total += 2.5
        evaluated = e % evaluate_every == 0 or e == n_epochs
        out.append(
            {
                "epoch": e,
                "lr": min(e / 2, 1.0) * (1 - e / (n_epochs + 1)),
                "train_loss": 2.0 / e + offset,
                "train_acc": 1 - 0.8 / e,
                "test_loss": 2.2 / e + offset if evaluated else None,
                "test_acc": 1 - 0.9 / e if evaluated else None,
                "epoch_time": 2.5,
                "total_time": total,
            }
        )
    return out


def test_matplotlib_is_not_imported_at_module_import():
    # Only the functions import matplotlib; importing train.plots must stay cheap.
    import subprocess

    code = "import sys, train.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_plot_curves(tmp_path):
    path = plot_curves(
        [_history(10), _history(10, 0.1, evaluate_every=3), _history(6)],
        tmp_path / "sub" / "curves.png",
        labels=["a", "b", "c"],
        title="t",
    )
    _assert_png(path, 1200, 800)


def test_plot_curves_last_epoch_only_and_bad_labels(tmp_path):
    path = plot_curves([_history(5, evaluate_every=100)], tmp_path / "one.png")
    _assert_png(path, 1200, 800)
    with pytest.raises(ValueError):
        plot_curves([_history(3)], tmp_path / "x.png", labels=["a", "b"])
    with pytest.raises(ValueError):
        plot_curves([], tmp_path / "x.png")


def test_augmentation_views_differ():
    imgs = _images()
    views = augmentation_views(imgs, n_images=8, n_views=4, cutout_size=8, seed=3)
    assert views.shape == (4, 8, 3, 32, 32)
    assert 0 <= float(views.min()) and float(views.max()) <= 1
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(views[i], views[j]), f"views {i} and {j} are identical"
    # same seed, same views; other seed, other views
    assert torch.equal(views, augmentation_views(imgs, seed=3))
    assert not torch.equal(views, augmentation_views(imgs, seed=4))
    # with nothing random left the views are the originals
    plain = augmentation_views(imgs, n_views=2, pad=0, cutout_size=0, flip=False)
    assert torch.allclose(plain[0], imgs.float() / 255, atol=1e-5)


def test_plot_augmentations(tmp_path):
    imgs = _images()
    path = plot_augmentations(
        imgs,
        tmp_path / "aug.png",
        n_images=8,
        n_views=3,
        cutout_size=8,
        seed=1,
        titles=[f"c{i}" for i in range(8)],
    )
    _assert_png(path, int(100 * (1.3 * 8 + 0.8)), int(100 * (1.3 * 4 + 0.5)))
    other = plot_augmentations(
        imgs, tmp_path / "aug2.png", n_images=8, n_views=3, cutout_size=8, seed=2
    )
    a, b = _read(path), _read(other)
    assert a.shape == b.shape and not np.array_equal(a, b)


def test_plot_whitening(tmp_path):
    # Real eigen-patches of random correlated patches, ordered by descending eigenvalue.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 27, generator=g) @ torch.randn(27, 27, generator=g)
    lam, vec = torch.linalg.eigh(x.T @ x / 1999)
    lam, vec = lam.flip(0), vec.T.flip(0).reshape(27, 3, 3, 3)
    path = plot_whitening(
        vec / (lam + 1e-2).sqrt()[:, None, None, None], lam, tmp_path / "white.png"
    )
    _assert_png(path, int(100 * (1.1 * 9 + 0.4)), int(100 * (2.3 * 3 + 0.6)))
    with pytest.raises(ValueError):
        plot_whitening(vec, lam[:5], tmp_path / "bad.png")
