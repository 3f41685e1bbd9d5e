"""Per-image brightness/contrast jitter of normalised images (the 2025 speedrun's ±0.1).

On the network's input, i.e. after normalisation (and after cutout, where that is on):
``out = (x + shift[b]) · scale[b]`` with ``shift ~ U(−brightness, brightness)`` and
``scale ~ U(1 − contrast, 1 + contrast)``, one pair per image. The public 2025 speedrun
(hiverge/cifar10-speedrun) adds the shift first and then multiplies, on normalised fp16
images, with one draw per image per epoch; so does this unit. Plain tensor ops: two
broadcast elementwise ops on the batch, which keep its memory format (channels_last stays
channels_last).
"""

from __future__ import annotations

import torch


def draw_jitter(
    count: int,
    *,
    brightness: float,
    contrast: float,
    generator: torch.Generator,
    device: torch.device | str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw one brightness shift and one contrast scale per image.

    Two ``torch.rand`` calls of ``count`` values each, in that order, from ``generator``.

    Returns:
        ``shift`` float32 (count,) uniform in [−brightness, brightness) and ``scale``
        float32 (count,) uniform in [1 − contrast, 1 + contrast), on ``device`` (default:
        the generator's).
    """
    if brightness < 0 or contrast < 0:
        raise ValueError(f"jitter ranges must be >= 0; got {brightness}, {contrast}")
    device = generator.device if device is None else device
    kw = dict(device=device, generator=generator, dtype=torch.float32)
    shift = (torch.rand(count, **kw) * 2 - 1) * brightness
    scale = (torch.rand(count, **kw) * 2 - 1) * contrast + 1
    return shift, scale


def apply_jitter(inputs: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``(inputs + shift) · scale`` per image, in ``inputs``' dtype (a new tensor).

    Args:
        inputs: float (B, C, H, W) normalised images, any memory format.
        shift, scale: float (B,), per-image brightness shift and contrast scale (cast to
            ``inputs.dtype`` first, so fp16 inputs stay fp16, as the speedrun computes).

    Returns:
        (B, C, H, W) in ``inputs``' dtype and memory format.
    """
    if shift.shape != (inputs.shape[0],) or scale.shape != (inputs.shape[0],):
        raise ValueError(
            f"shift and scale need one value per image ({inputs.shape[0]}); got "
            f"{tuple(shift.shape)} and {tuple(scale.shape)}"
        )
    shift = shift.to(inputs.dtype).view(-1, 1, 1, 1)
    scale = scale.to(inputs.dtype).view(-1, 1, 1, 1)
    return (inputs + shift) * scale
