"""Patch whitening: the fixed first layer of both network families.

A k×k patch-whitening conv has filters that whiten the k×k×C patches of the training images:

  1. take N normalised training images (no padding, no augmentation) and every k×k×C patch
     in them, each flattened to a (C·k²)-vector in the order of a conv weight's
     ``(C, kh, kw)`` (channel-major, then row, then column);
  2. Σ = XᵀX / (n − 1) over the n patch vectors — *not* mean-centred;
  3. Σ = V Λ Vᵀ (``torch.linalg.eigh`` in float64);
  4. filter i = V[:, i] / √(Λᵢ + eps), ordered by descending eigenvalue;
  5. with ``negate=True`` the C·k² filters are followed by their negations (2·C·k² filters).

Then the filters W (D×D as a matrix, D = C·k²) give W Σ Wᵀ = diag(Λ / (Λ + eps)): unit
variance along the strong directions of patch space, damped noise along the weak ones.

The two recipes that use it:

=====================  =================  ==========================  ==================
recipe                 k, filters         images, eps                 conv
=====================  =================  ==========================  ==================
ResNet9 (the seed)     3×3, 27            10,000, 1e-2                padding 1, no bias
airbench94 (+ Muon)    2×2, 12 and −12    5,000, 5e-4                 padding 0, bias
2025 speedrun          2×2, 12 and −12    960, 5e-4                   padding 0, bias
=====================  =================  ==========================  ==================

The negated copies matter because an activation (GELU) follows the airbench whitening conv:
it keeps mostly the positive half of each response, so the pair keeps both halves. Without
padding a 2×2 conv maps 32×32 to 31×31. The airbench bias (zero at first, trained for the
first epochs only) is the conv's one trainable parameter; the filters are never trained.

Σ is the raw second moment in both families: the seed's reference divides XᵀX by n − 1 and
the public airbench source by n, neither subtracts the mean. We use n − 1 for both (the
difference is one part in the ~5 million patches, far below float32 round-off).

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
    """``filters`` float32 (F, C, k, k), row i the i-th whitening filter; ``eigenvalues``
    float64 (F,) of Σ, row i of ``filters`` belonging to ``eigenvalues[i]``. F = C·k², in
    descending order of eigenvalue; with ``negate`` F = 2·C·k² and rows C·k² … 2·C·k² − 1
    are the negations of rows 0 … C·k² − 1 (so the eigenvalues repeat)."""

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
    negate: bool = False,
) -> WhiteningFilters:
    """Whitening filters from XᵀX (float (D, D), D = C·k²) summed over ``count`` patches.

    Σ = XᵀX/(count − 1); Σ = V Λ Vᵀ in float64; filter i = V[:, i]/√(Λᵢ + eps), by descending
    Λ, reshaped to a conv weight float32 (D, C, k, k). ``negate`` appends the D negated
    filters: float32 (2D, C, k, k), the eigenvalues repeated to (2D,).
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
    if negate:
        # Negated after the float64 product, so each pair is an exact negation in float32.
        filters = torch.cat([filters, -filters])
        eigenvalues = torch.cat([eigenvalues, eigenvalues])
    return WhiteningFilters(
        filters.reshape(-1, channels, patch_size, patch_size).float().contiguous(),
        eigenvalues,
    )


@torch.no_grad()
def patch_whitening_filters(
    images: torch.Tensor,
    patch_size: int = 3,
    eps: float = 1e-2,
    chunk_size: int | None = DEFAULT_CHUNK,
    *,
    negate: bool = False,
) -> WhiteningFilters:
    """Patch-whitening filters for ``images``, exactly as the recipe computes them.

    Args:
        images: float32/float64 (N, C, H, W), *already normalised* — the caller's job: the
            recipe uses ``(x − mean) / std`` per channel on the 0–255 scale, the very
            normalisation the network's inputs get, on un-augmented images (no padding, no
            crop, no flip). uint8 is refused; use :func:`whitening_filters_from_data`.
        patch_size: k; ResNet9's recipe uses 3 (27 filters for 3 channels), airbench 2.
        eps: added to the eigenvalues before the inverse square root (1e-2 in ResNet9's
            recipe, 5e-4 in airbench's).
        chunk_size: images per chunk of the XᵀX sum; ``None`` for one shot.
        negate: also return each filter's negation (airbench: 12 filters + 12 negations).

    Returns:
        :class:`WhiteningFilters`: ``filters`` float32 (C·k², C, k, k) — (2·C·k², C, k, k)
        with ``negate`` — on ``images``' device, descending by eigenvalue, and
        ``eigenvalues`` float64 (one per filter).
    """
    xtx, count = patch_second_moment(images, patch_size, chunk_size)
    return filters_from_second_moment(
        xtx, count, channels=images.shape[1], patch_size=patch_size, eps=eps, negate=negate
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
    negate: bool = False,
) -> WhiteningFilters:
    """Patch-whitening filters from the raw training set, as the recipe does it.

    Args:
        images: uint8 (N, C, H, W), the training set on the 0–255 scale (un-padded). The
            first ``n_images`` are used (ResNet9's recipe: 10,000; airbench94: 5,000).
        mean, std: per-channel, on the 0–255 scale (the recipe's (125.31, 122.95, 113.87) and
            (62.99, 62.09, 66.70)); each chunk is normalised as ``(x − mean) / std``.
        n_images: how many images to use (all of them if fewer).
        patch_size, eps, negate: as :func:`patch_whitening_filters`.
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
    return filters_from_second_moment(
        xtx, count, channels=channels, patch_size=patch_size, eps=eps, negate=negate
    )


class PatchWhitening(nn.Module):
    """The fixed whitening conv: ``C → F`` channels, k×k, never trained.

    ResNet9's is ``PatchWhitening(3, 3)``: F = C·k² = 27, padding k//2 = 1 (same H×W), no
    bias. The airbench family's is ``PatchWhitening(3, 2, padding=0, negate=True,
    bias=True)``: F = 2·C·k² = 24 (the 12 eigenfilters and their negations), H×W shrinks by
    k − 1 (32 → 31), and a trainable ``bias`` float32 (F,) starts at 0.

    The filters are a *buffer* (``filters``, float32 (F, C, k, k)), not a parameter: no
    optimizer or weight decay ever sees them, no gradient is computed for them, and they
    still travel with ``.to()``, ``state_dict()`` and ``deepcopy``. An EMA over all
    floating-point buffers averages a constant, which leaves it unchanged.

    They start as NaN and the module refuses to run until they are set
    (:meth:`set_filters`, or loaded through ``load_state_dict``): random filters would
    silently train a worse model. The check reads the filters once (one GPU sync) after
    construction or a ``load_state_dict``, then trusts a Python flag. Writing NaN into the
    buffer by hand after that is not caught.
    """

    def __init__(
        self,
        in_channels: int = 3,
        patch_size: int = 3,
        *,
        padding: int | None = None,
        negate: bool = False,
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.patch_size = patch_size
        self.padding = patch_size // 2 if padding is None else padding
        self.negate = negate
        self.out_channels = in_channels * patch_size * patch_size * (2 if negate else 1)
        self.register_buffer(
            "filters",
            torch.full((self.out_channels, in_channels, patch_size, patch_size), float("nan")),
        )
        if bias:
            # Zero, as airbench sets it: at the start the conv is the pure whitening map.
            self.bias: nn.Parameter | None = nn.Parameter(torch.zeros(self.out_channels))
        else:
            self.register_parameter("bias", None)
        # Python-side cache of "the filters are finite", so a set model never syncs the GPU.
        self._ready = False
        # Loading a state dict may bring unset (NaN) filters: look at them again on next use.
        self.register_load_state_dict_post_hook(PatchWhitening._forget_ready)

    def output_size(self, size: int) -> int:
        """Height (or width) of the output for an input side of ``size`` (stride 1)."""
        return size + 2 * self.padding - self.patch_size + 1

    @staticmethod
    def _forget_ready(module: PatchWhitening, incompatible_keys) -> None:
        module._ready = False

    @torch.no_grad()
    def set_filters(self, filters: torch.Tensor) -> None:
        """Copy ``filters`` float (F, C, k, k) into the buffer (keeping its dtype, device and
        memory format); F = C·k², or 2·C·k² with ``negate`` (the filters then come with their
        negations, as :func:`patch_whitening_filters` with ``negate=True`` returns them)."""
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
                "training or evaluating (or build a ResNet9 with whitening=False); for an "
                "AirbenchNet the filters come from model.airbench.airbench_whitening_filters"
            )
        self._ready = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) normalised images, float32/float16/bfloat16, any memory format
        → (B, F, H', W') whitened patches in ``x``'s dtype, H' = :meth:`output_size` (H)."""
        # The check reads a tensor back (a graph break) and its flag would become a
        # recompile guard, so it runs eagerly only: a compiled model has already run eagerly
        # or been warmed up with its filters set.
        if not torch.compiler.is_compiling():
            self._check_ready()
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.conv2d(x, self.filters.to(x.dtype), bias, padding=self.padding)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.patch_size}, "
            f"padding={self.padding}, negate={self.negate}, bias={self.bias is not None}, "
            f"fixed filters, set={self._ready}"
        )
