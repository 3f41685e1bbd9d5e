"""The two augmentation methods the fused op replaces, kept here as yardsticks.

* :func:`per_image_loop_augment` — what a CPU data loader does: one image at a time in
  Python (pad, crop, flip, normalise, cut out), a handful of small kernels per image. It
  honours the same per-image parameters as :func:`kernels.augment`, so it must agree with
  the op exactly.
* :func:`grouped_choice_augment` — the seed's GPU method (cifar10-fast): normalise and
  reflect-pad the whole data set once, then per epoch shuffle and split the images into up
  to 200 evenly sized groups, each group getting *one* crop/flip/cutout choice, so a few
  hundred sliced copies replace per-image work. Its randomness is coarser than per-image
  choices; :func:`expand_group_choices` turns its choices into per-image parameters, with
  which :func:`kernels.augment_reference` reproduces it exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "per_image_loop_augment",
    "GroupChoices",
    "draw_group_choices",
    "group_bounds",
    "prepare_seed_dataset",
    "grouped_choice_augment",
    "expand_group_choices",
    "MAX_GROUPS",
]

#: The seed's cap on the number of groups per augmentation.
MAX_GROUPS = 200


def per_image_loop_augment(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    *,
    cutout_size: int,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """Augment one image at a time in a Python loop; same arguments and result values as
    :func:`kernels.augment` (the result is contiguous NCHW rather than channels_last)."""
    _, channels, height, width = data.shape
    mean_t = torch.tensor(mean, dtype=torch.float32, device=data.device).view(channels, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=data.device).view(channels, 1, 1)
    # One host copy of the parameters per batch, as a loader holding them on the host would.
    idx, crops, flips, holes = (indices.tolist(), crop.tolist(), flip.tolist(), cutout.tolist())
    out = torch.empty(len(idx), channels, height, width, dtype=out_dtype, device=data.device)
    for b, i in enumerate(idx):
        image = data[i].float()
        if pad:
            image = F.pad(image[None], (pad, pad, pad, pad), mode="reflect")[0]
        y0, x0 = crops[b]
        image = image[:, y0 : y0 + height, x0 : x0 + width]
        if flips[b]:
            image = image.flip(2)
        image = (image - mean_t) / std_t
        if cutout_size:
            cy, cx = holes[b]
            image[:, cy : cy + cutout_size, cx : cx + cutout_size] = 0.0
        out[b] = image
    return out


@dataclass(frozen=True)
class GroupChoices:
    """One crop offset, flip and cutout corner per group, held on the host (the seed drew
    them with numpy: slicing needs Python ints, and a host draw costs the GPU nothing)."""

    crop: list[tuple[int, int]]
    flip: list[bool]
    cutout: list[tuple[int, int]]


def group_bounds(count: int, groups: int) -> list[tuple[int, int]]:
    """[start, end) of ``groups`` evenly sized consecutive groups of ``count`` items (sizes
    differ by at most one, as ``torch.tensor_split``)."""
    groups = max(1, min(groups, count))
    base, extra = divmod(count, groups)
    bounds, start = [], 0
    for g in range(groups):
        end = start + base + (1 if g < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def draw_group_choices(
    groups: int,
    *,
    pad: int,
    cutout_size: int,
    size: int = 32,
    flip: bool = True,
    generator: torch.Generator | None = None,
) -> GroupChoices:
    """Draw one choice of each transform per group (uniform, like the per-image draw)."""
    g = generator
    crop = torch.randint(0, 2 * pad + 1, (groups, 2), generator=g).tolist()
    flips = (
        torch.randint(0, 2, (groups,), generator=g).bool().tolist() if flip else [False] * groups
    )
    if cutout_size:
        hole = torch.randint(0, size - cutout_size + 1, (groups, 2), generator=g).tolist()
    else:
        hole = [[0, 0]] * groups
    return GroupChoices([tuple(c) for c in crop], flips, [tuple(h) for h in hole])


def prepare_seed_dataset(
    data: torch.Tensor,
    *,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
    chunk: int = 5000,
) -> torch.Tensor:
    """The seed's one-off preprocessing: normalise the uint8 data set and reflect-pad it,
    stored in the network's dtype: (N, C, H + 2·pad, W + 2·pad). Not part of an epoch."""
    channels = data.shape[1]
    mean_t = torch.tensor(mean, dtype=torch.float32, device=data.device).view(1, channels, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=data.device).view(1, channels, 1, 1)
    parts = []
    for start in range(0, data.shape[0], chunk):  # chunks bound the float32 temporaries
        x = (data[start : start + chunk].float() - mean_t) / std_t
        if pad:
            x = F.pad(x, (pad, pad, pad, pad), mode="reflect")
        parts.append(x.to(out_dtype))
    return torch.cat(parts)


def grouped_choice_augment(
    prepared: torch.Tensor,
    indices: torch.Tensor,
    choices: GroupChoices,
    *,
    cutout_size: int,
    size: int = 32,
) -> torch.Tensor:
    """The seed's grouped augmentation of the (already shuffled) ``indices``.

    ``prepared`` is :func:`prepare_seed_dataset`'s output; group ``g`` of
    ``group_bounds(len(indices), len(choices.crop))`` is cropped at ``choices.crop[g]``,
    flipped if ``choices.flip[g]`` and cut out at ``choices.cutout[g]``. Returns
    (B, C, size, size) contiguous in ``prepared``'s dtype.
    """
    count = indices.shape[0]
    out = torch.empty(
        count, prepared.shape[1], size, size, dtype=prepared.dtype, device=prepared.device
    )
    for g, (start, end) in enumerate(group_bounds(count, len(choices.crop))):
        y0, x0 = choices.crop[g]
        # Gather only the crop window of the group's images: one indexed copy per group.
        piece = prepared[indices[start:end], :, y0 : y0 + size, x0 : x0 + size]
        if choices.flip[g]:
            piece = piece.flip(3)
        out[start:end] = piece
        if cutout_size:
            cy, cx = choices.cutout[g]
            out[start:end, :, cy : cy + cutout_size, cx : cx + cutout_size] = 0
    return out


def expand_group_choices(
    count: int, choices: GroupChoices, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image (crop, flip, cutout) tensors equal to the group choices, in the format of
    :func:`kernels.random_augment_params`."""
    sizes = [end - start for start, end in group_bounds(count, len(choices.crop))]
    reps = torch.tensor(sizes)
    crop = torch.tensor(choices.crop, dtype=torch.int64).repeat_interleave(reps, dim=0)
    flip = torch.tensor(choices.flip, dtype=torch.bool).repeat_interleave(reps)
    cutout = torch.tensor(choices.cutout, dtype=torch.int64).repeat_interleave(reps, dim=0)
    return crop.to(device), flip.to(device), cutout.to(device)
