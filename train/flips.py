"""Left-right flip choices per image: random every epoch, none, or airbench's "alternating".

Alternating flip (airbench94): epoch 0 flips each image at random, once; every later epoch
mirrors the whole set relative to epoch 0 on odd epochs. So image ``n`` is shown flipped in
epoch ``e`` exactly when ``start[n] XOR (e is odd)``: every image alternates orientation and
over any two consecutive epochs the network sees each image both ways (random flipping shows
a quarter of the images the same way twice running).

The flags come out in the format :func:`kernels.augment` takes: bool (B,), one per image of
the batch, in the batch's order (so a shuffled epoch gathers them by its permutation).
"""

from __future__ import annotations

from typing import Literal

import torch

FlipMode = Literal["random", "alternating", "none"]
FLIP_MODES: tuple[str, ...] = ("random", "alternating", "none")


def flip_mode(flip: bool | str) -> FlipMode:
    """The flip mode a setting names: ``True`` → "random" (the seed's per-epoch coin),
    ``False`` → "none", or one of :data:`FLIP_MODES` as it is."""
    if isinstance(flip, bool):
        return "random" if flip else "none"
    if flip not in FLIP_MODES:
        raise ValueError(f"flip must be a bool or one of {FLIP_MODES}; got {flip!r}")
    return flip  # type: ignore[return-value]


def draw_start_flips(
    count: int, *, generator: torch.Generator, device: torch.device | str | None = None
) -> torch.Tensor:
    """The epoch-0 orientation of each image: bool (count,), each True with probability ½,
    drawn from ``generator`` (one ``randint`` call of ``count`` values), on ``device``
    (default: the generator's)."""
    device = generator.device if device is None else device
    return torch.randint(0, 2, (count,), device=device, generator=generator).bool()


def alternating_flips(start: torch.Tensor, epoch: int) -> torch.Tensor:
    """Per-image flip flags for ``epoch`` (0-based) of the alternating scheme.

    Args:
        start: bool (N,), each image's flag in epoch 0 (:func:`draw_start_flips`).
        epoch: 0-based epoch number (a host int: no device sync).

    Returns:
        bool (N,) on ``start``'s device: ``start`` on even epochs, ``~start`` on odd ones,
        indexed by image (gather with the epoch's permutation to get batch order).
    """
    if epoch < 0:
        raise ValueError(f"epoch must be >= 0; got {epoch}")
    if start.dtype != torch.bool:
        raise TypeError(f"start flips must be bool; got {start.dtype}")
    return ~start if epoch % 2 else start.clone()
