"""3×3 patch whitening: the fixed first layer of the final recipe.

The seed's "3×3 patch whitening" step replaces the trained input conv with a fixed conv
whose 27 filters whiten the 3×3×3 patches of the training images:

  1. take N normalised training images (the recipe: the first 10,000, centre 32×32, no
     padding) and every 3×3×3 patch in them, each flattened to a 27-vector in the order of
     a conv weight's ``(C, kh, kw)`` (channel-major, then row, then column);
  2. Σ = XᵀX / (n − 1) over the n patch vectors — *not* mean-centred;
  3. Σ = V Λ Vᵀ (``torch.linalg.eigh`` in float64);
  4. filter i = V[:, i] / √(Λᵢ + eps), eps = 1e-2, ordered by descending eigenvalue.

Then the filters W (27×27 as a matrix) give W Σ Wᵀ = diag(Λ / (Λ + eps)): unit variance along
the strong directions of patch space, damped noise along the weak ones. In the network the
conv runs with padding 1 (3→27 channels, same H×W) and is never trained.

Eigenvectors are defined up to sign; we fix it (largest-magnitude entry positive) so the
filters are deterministic across devices and libraries. The sign does not matter to training.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "WhiteningFilters",
    "PatchWhitening",
    "patch_second_moment",
    "filters_from_second_moment",
    "patch_whitening_filters",
    "whitening_filters_from_data",
]

#: Images per chunk when accumulating XᵀX: 500 images × 900 patches × 27 in float64 ≈ 97 MB.
DEFAULT_CHUNK = 500


class WhiteningFilters(NamedTuple):
    """``filters`` float32 (C·k², C, k, k), row i the i-th whitening filter; ``eigenvalues``
    float64 (C·k²,) of Σ, descending (row i of ``filters`` belongs to ``eigenvalues[i]``)."""

    filters: torch.Tensor
    eigenvalues: torch.Tensor


def _check_images(images: torch.Tensor, patch_size: int) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise TypeError(
            f"images must be normalised floating-point images, got dtype {images.dtype}: for "
            "the raw uint8 data set use whitening_filters_from_data(images, mean, std)"
        )
    if images.dim() != 4:
        raise ValueError(f"images must be (N, C, H, W); got shape {tuple(images.shape)}")
    if images.shape[2] < patch_size or images.shape[3] < patch_size:
        raise ValueError(
            f"images of {tuple(images.shape[2:])} pixels have no {patch_size}×{patch_size} patch"
        )


def _chunk_second_moment(chunk: torch.Tensor, patch_size: int) -> torch.Tensor:
    """XᵀX of every patch of ``chunk`` (n, C, H, W): float64 (C·k², C·k²).

    The unfold and the product run in float32 (4–5× faster than float64 on a CPU, and the
    time counts towards a run's clock); one chunk's sum of ≤ 500·900 patches keeps float32's
    relative error near 1e-6, and the chunks are added in float64.
    """
    patches = F.unfold(chunk.float(), patch_size)  # (n, C·k², L), no padding
    x = patches.transpose(1, 2).reshape(-1, patches.shape[1])  # (n·L, C·k²)
    return (x.T @ x).double()


@torch.no_grad()
def patch_second_moment(
    images: torch.Tensor,
    patch_size: int = 3,
    chunk_size: int | None = DEFAULT_CHUNK,
) -> tuple[torch.Tensor, int]:
    """Accumulate XᵀX over every ``patch_size``² patch of ``images``, a chunk at a time.

    Args:
        images: float (N, C, H, W), already normalised (see :func:`patch_whitening_filters`).
        patch_size: k, the side of the square patches.
        chunk_size: images per chunk (bounds memory); ``None`` does all images at once.

    Returns:
        ``(xtx, n)``: float64 (C·k², C·k²) on ``images``' device, and the number of patches.
        The sums are in float64 so that neither chunking nor TF32 changes the result.
    """
    _check_images(images, patch_size)
    n_images, channels, height, width = images.shape
    dim = channels * patch_size * patch_size
    step = n_images if chunk_size is None else max(1, int(chunk_size))
    xtx = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
    for start in range(0, n_images, step):
        xtx += _chunk_second_moment(images[start : start + step], patch_size)
    count = n_images * (height - patch_size + 1) * (width - patch_size + 1)
    return xtx, count


def filters_from_second_moment(
    xtx: torch.Tensor,
    count: int,
    *,
    channels: int,
    patch_size: int = 3,
    eps: float = 1e-2,
) -> WhiteningFilters:
    """Whitening filters from XᵀX (float (D, D), D = C·k²) summed over ``count`` patches.

    Σ = XᵀX/(count − 1); Σ = V Λ Vᵀ in float64; filter i = V[:, i]/√(Λᵢ + eps), by descending
    Λ, reshaped to a conv weight float32 (D, C, k, k).
    """
    dim = channels * patch_size * patch_size
    if xtx.shape != (dim, dim):
        raise ValueError(
            f"xtx must be {dim}×{dim} for {channels} channels and "
            f"{patch_size}×{patch_size} patches; got {tuple(xtx.shape)}"
        )
    if count < 2:
        raise ValueError(f"need at least 2 patches to estimate a covariance; got {count}")
    if not eps > 0:
        raise ValueError(f"eps must be positive; got {eps}")
    sigma = xtx.double() / (count - 1)
    sigma = (sigma + sigma.T) / 2  # exact symmetry for eigh
    eigenvalues, eigenvectors = torch.linalg.eigh(sigma)  # ascending
    eigenvalues = eigenvalues.flip(0)
    eigenvectors = eigenvectors.flip(1)  # column i ↔ eigenvalues[i]
    # Fix each eigenvector's sign: its largest-magnitude entry is positive.
    peak = eigenvectors.abs().argmax(dim=0)
    signs = torch.sign(eigenvectors.gather(0, peak[None]))[0]
    eigenvectors = eigenvectors * torch.where(signs == 0, 1.0, signs)
    # Σ is positive semi-definite; clamp round-off negatives so √ stays real.
    scale = torch.rsqrt(eigenvalues.clamp_min(0.0) + eps)
    filters = (eigenvectors * scale).T  # row i = V[:, i] / √(Λᵢ + eps)
    return WhiteningFilters(
        filters.reshape(dim, channels, patch_size, patch_size).float().contiguous(),
        eigenvalues,
    )


@torch.no_grad()
def patch_whitening_filters(
    images: torch.Tensor,
    patch_size: int = 3,
    eps: float = 1e-2,
    chunk_size: int | None = DEFAULT_CHUNK,
) -> WhiteningFilters:
    """Patch-whitening filters for ``images``, exactly as the recipe computes them.

    Args:
        images: float32/float64 (N, C, H, W), *already normalised* — the caller's job: the
            recipe uses ``(x − mean) / std`` per channel on the 0–255 scale, the very
            normalisation the network's inputs get, on un-augmented images (no padding, no
            crop, no flip). uint8 is refused; use :func:`whitening_filters_from_data`.
        patch_size: k; the recipe uses 3 (27 filters for 3 channels).
        eps: added to the eigenvalues before the inverse square root (1e-2 in the recipe).
        chunk_size: images per chunk of the XᵀX sum; ``None`` for one shot.

    Returns:
        :class:`WhiteningFilters`: ``filters`` float32 (C·k², C, k, k) on ``images``' device,
        descending by eigenvalue, and ``eigenvalues`` float64 (C·k²,).
    """
    xtx, count = patch_second_moment(images, patch_size, chunk_size)
    return filters_from_second_moment(
        xtx, count, channels=images.shape[1], patch_size=patch_size, eps=eps
    )


@torch.no_grad()
def whitening_filters_from_data(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    n_images: int = 10_000,
    *,
    patch_size: int = 3,
    eps: float = 1e-2,
    chunk_size: int = DEFAULT_CHUNK,
) -> WhiteningFilters:
    """Patch-whitening filters from the raw training set, as the recipe does it.

    Args:
        images: uint8 (N, C, H, W), the training set on the 0–255 scale (un-padded). The
            first ``n_images`` are used (the recipe: 10,000).
        mean, std: per-channel, on the 0–255 scale (the recipe's (125.31, 122.95, 113.87) and
            (62.99, 62.09, 66.70)); each chunk is normalised as ``(x − mean) / std``.
        n_images: how many images to use (all of them if fewer).
        patch_size, eps: as :func:`patch_whitening_filters`.
        chunk_size: images normalised and summed at a time; memory ≈ chunk_size × 1.9 MB in
            float64 for 32×32×3 images, never the 1 GB that 10,000 images would take at once.

    Returns:
        :class:`WhiteningFilters` on ``images``' device.
    """
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8:
        raise TypeError(
            "images must be the uint8 (N, C, H, W) data set; for normalised float "
            "images call patch_whitening_filters"
        )
    if images.dim() != 4 or images.shape[1] != len(mean) or len(mean) != len(std):
        raise ValueError(
            f"images must be (N, C, H, W) with C = len(mean) = len(std); got shape "
            f"{tuple(images.shape)}, {len(mean)} means, {len(std)} stds "
            "(an (N, H, W, C) array needs .permute(0, 3, 1, 2) first)"
        )
    images = images[:n_images]
    channels = images.shape[1]
    shape = (1, channels, 1, 1)
    mean_t = torch.tensor(mean, dtype=torch.float32, device=images.device).reshape(shape)
    std_t = torch.tensor(std, dtype=torch.float32, device=images.device).reshape(shape)
    dim = channels * patch_size * patch_size
    xtx = torch.zeros(dim, dim, dtype=torch.float64, device=images.device)
    count = 0
    for start in range(0, images.shape[0], max(1, int(chunk_size))):
        chunk = (images[start : start + chunk_size].float() - mean_t) / std_t
        part, n = patch_second_moment(chunk, patch_size, chunk_size=None)
        xtx += part
        count += n
    return filters_from_second_moment(xtx, count, channels=channels, patch_size=patch_size, eps=eps)


class PatchWhitening(nn.Module):
    """The fixed whitening conv: ``C → C·k²`` channels, k×k, padding k//2, no bias, not trained.

    The filters are a *buffer* (``filters``, float32 (C·k², C, k, k)), not a parameter: no
    optimizer or weight decay ever sees them, no gradient is computed for them, and they
    still travel with ``.to()``, ``state_dict()`` and ``deepcopy``. An EMA over all
    floating-point buffers averages a constant, which leaves it unchanged.

    They start as NaN and the module refuses to run until they are set
    (:meth:`set_filters`, or loaded through ``load_state_dict``): random filters would
    silently train a worse model. The check reads the filters once (one GPU sync) after
    construction or a ``load_state_dict``, then trusts a Python flag. Writing NaN into the
    buffer by hand after that is not caught.
    """

    def __init__(self, in_channels: int = 3, patch_size: int = 3) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.out_channels = in_channels * patch_size * patch_size
        self.register_buffer(
            "filters",
            torch.full((self.out_channels, in_channels, patch_size, patch_size), float("nan")),
        )
        # Python-side cache of "the filters are finite", so a set model never syncs the GPU.
        self._ready = False
        # Loading a state dict may bring unset (NaN) filters: look at them again on next use.
        self.register_load_state_dict_post_hook(PatchWhitening._forget_ready)

    @staticmethod
    def _forget_ready(module: PatchWhitening, incompatible_keys) -> None:
        module._ready = False

    @torch.no_grad()
    def set_filters(self, filters: torch.Tensor) -> None:
        """Copy ``filters`` float (C·k², C, k, k) into the buffer (keeping its dtype, device and
        memory format)."""
        if not isinstance(filters, torch.Tensor) or tuple(filters.shape) != tuple(
            self.filters.shape
        ):
            got = tuple(filters.shape) if isinstance(filters, torch.Tensor) else type(filters)
            raise ValueError(
                f"whitening filters must have shape {tuple(self.filters.shape)}; got {got}"
            )
        if not bool(torch.isfinite(filters).all()):
            raise ValueError("whitening filters contain NaN or inf")
        self.filters.copy_(filters)
        self._ready = True

    def _check_ready(self) -> None:
        if self._ready:
            return
        # Filters may have arrived through load_state_dict or a state_dict copy_: look once.
        if not bool(torch.isfinite(self.filters).all()):
            raise RuntimeError(
                "the patch-whitening filters are not set: call model.set_whitening("
                "whitening_filters_from_data(train_images_uint8, mean, std).filters) before "
                "training or evaluating (or build the model with whitening=False)"
            )
        self._ready = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) normalised images → (B, C·k², H, W) whitened patches."""
        # The check reads a tensor back (a graph break) and its flag would become a
        # recompile guard, so it runs eagerly only: a compiled model has already run eagerly
        # or been warmed up with its filters set.
        if not torch.compiler.is_compiling():
            self._check_ready()
        return F.conv2d(x, self.filters.to(x.dtype), padding=self.patch_size // 2)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.patch_size}, "
            f"padding={self.patch_size // 2}, fixed, set={self._ready}"
        )
