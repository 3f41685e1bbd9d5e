"""Test-time augmentation beyond the left-right flip: airbench94's six weighted views, and
the 2025 speedrun's "selective" variant that spends them only on the least-confident images.

Views of a batch ``x`` (B, C, H, W) of normalised images (plain tensor ops):

* ``shift = 0``: ``x`` itself;
* ``shift = −1``: the window moved one pixel up and left: ``out[i, j] = x[r(i−1), r(j−1)]``;
* ``shift = +1``: moved down and right: ``out[i, j] = x[r(i+1), r(j+1)]``;

with ``r`` the reflection at the border (``r(−1) = 1``, ``r(H) = H−2``), i.e. the image
reflect-padded by 1 and cropped at offset 0 or 2, as airbench94 does; each with and without
the mirror ``flip(−1)``, applied after the shift (airbench mirrors the shifted image).
Weights (:data:`MULTIVIEW`): ¼ for each of the unshifted pair, ⅛ for each of the four shifted
views: "0.5 for the unshifted pair and 0.25 for each shifted pair", summing to 1. The
combined logits are the weighted sum of the views' float32 logits.

Each view is one forward of a batch of B (so a compiled forward keeps its shape); the
selective variant forwards its ``k`` chosen images (another shape: a compiled forward
compiles it once more).

Where the views come from: by default :func:`view_of` shifts and mirrors the normalised
batch with tensor ops (pad, slice, flip, copy: four passes over the batch per view). The
evaluation passes a :data:`Render` instead, which makes each view straight from the uint8
test set with the augmentation kernel (a reflect-pad of 1, a crop at ``1 + shift``, the
mirror), one pass per view; the two give equal tensors (``tests/test_airbench_train_units.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

#: The network's forward: normalised images (B, C, H, W) → logits (B, K).
Forward = Callable[[torch.Tensor], torch.Tensor]

#: Makes one view of the batch, or of some of its images: ``render(view, rows)`` → normalised
#: images (k, C, H, W) in the batch's dtype and memory format, ``rows`` an int64 (k,) tensor
#: of positions in the batch, or None for the whole batch (k = B).
Render = Callable[["View", "torch.Tensor | None"], torch.Tensor]

#: The TTA settings :func:`tta_mode` accepts (besides True = "flip", False = "none").
TTA_MODES: tuple[str, ...] = ("none", "flip", "multiview", "selective")


@dataclass(frozen=True)
class View:
    """One test-time view: a one-pixel shift of the window (−1, 0, +1 on both axes), an
    optional mirror after it, and its weight in the combined logits."""

    shift: int
    flip: bool
    weight: float


#: airbench94's six views (tta_level 2).
MULTIVIEW: tuple[View, ...] = (
    View(0, False, 0.25),
    View(0, True, 0.25),
    View(-1, False, 0.125),
    View(-1, True, 0.125),
    View(1, False, 0.125),
    View(1, True, 0.125),
)


def tta_mode(tta: bool | str) -> str:
    """The TTA mode a setting names: ``True`` → "flip", ``False`` → "none", or one of
    :data:`TTA_MODES` as it is."""
    if isinstance(tta, bool):
        return "flip" if tta else "none"
    if tta not in TTA_MODES:
        raise ValueError(f"tta must be a bool or one of {TTA_MODES}; got {tta!r}")
    return tta


def _same_layout(view: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``view`` made dense in ``like``'s memory format (channels_last stays channels_last), so
    every view reaches the network with the strides the plain batch has."""
    if like.dim() == 4 and like.is_contiguous(memory_format=torch.channels_last):
        return view.contiguous(memory_format=torch.channels_last)
    return view.contiguous()


def view_of(inputs: torch.Tensor, view: View) -> torch.Tensor:
    """The ``view`` of ``inputs`` (B, C, H, W), same dtype and memory format."""
    out = inputs
    if view.shift:
        if view.shift not in (-1, 1):
            raise ValueError(f"views shift by -1, 0 or +1 pixels; got {view.shift}")
        height, width = inputs.shape[-2:]
        padded = F.pad(inputs, (1, 1, 1, 1), mode="reflect")
        start = 1 + view.shift  # window offset in the padded image: 0 (up-left) or 2
        out = padded[..., start : start + height, start : start + width]
    if view.flip:
        out = out.flip(-1)
    return _same_layout(out, inputs) if out is not inputs else out


def flip_logits(forward: Forward, inputs: torch.Tensor) -> torch.Tensor:
    """Mean of the float32 logits of ``inputs`` (B, C, H, W) and their mirror images:
    float32 (B, K)."""
    mirrored = _same_layout(inputs.flip(-1), inputs)
    return (forward(inputs).float() + forward(mirrored).float()) / 2


def tensor_render(inputs: torch.Tensor) -> Render:
    """The :data:`Render` that makes views of the normalised batch ``inputs`` (B, C, H, W) with
    :func:`view_of`."""

    def render(view: View, rows: torch.Tensor | None) -> torch.Tensor:
        picked = inputs if rows is None else _same_layout(inputs[rows], inputs)
        return view_of(picked, view)

    return render


def multiview_logits(
    forward: Forward,
    inputs: torch.Tensor | None,
    views: Sequence[View] = MULTIVIEW,
    *,
    render: Render | None = None,
) -> torch.Tensor:
    """Weighted sum of the float32 logits of ``views`` of ``inputs`` (B, C, H, W) (airbench94's
    six by default): float32 (B, K). ``render`` makes the views (default: :func:`tensor_render`
    of ``inputs``; with a ``render``, ``inputs`` may be None: it is not read)."""
    if render is None:
        if inputs is None:
            raise ValueError("multiview_logits needs the inputs or a render")
        render = tensor_render(inputs)
    total = None
    for view in views:
        logits = forward(render(view, None)).float() * view.weight
        total = logits if total is None else total + logits
    return total


def selected_count(batch: int, fraction: float) -> int:
    """How many of ``batch`` images get the extra views: ``ceil(fraction · batch)`` (at least
    the fraction; exact when ``fraction · batch`` is a whole number, e.g. 500 of 2000 at ¼),
    computed on the host. The product is rounded to 9 decimals first so that a float
    artefact (0.1·30 = 3.0000000000000004) does not add one."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"the selective TTA fraction must be in [0, 1]; got {fraction}")
    return min(batch, math.ceil(round(fraction * batch, 9)))


def confidence(logits: torch.Tensor) -> torch.Tensor:
    """Confidence of each prediction: the largest softmax probability, float32 (B,) from
    logits (B, K). (The max probability rather than the top-two margin: it is what the public
    selective TTA ranks by, and the two order images almost alike.)"""
    return torch.softmax(logits.float(), dim=1).amax(dim=1)


def least_confident(logits: torch.Tensor, count: int) -> torch.Tensor:
    """Indices int64 (count,) of the ``count`` least confident rows of ``logits`` (B, K),
    least confident first; ties go to the lower index (a stable sort: deterministic)."""
    order = torch.sort(confidence(logits), stable=True).indices
    return order[:count]


def selective_logits(
    forward: Forward,
    inputs: torch.Tensor,
    fraction: float = 0.25,
    *,
    base: torch.Tensor | None = None,
    views: Sequence[View] = MULTIVIEW,
    render: Render | None = None,
) -> torch.Tensor:
    """Flip-TTA logits for every image; the full multi-view logits for the least-confident
    ``fraction`` of the batch (:func:`selected_count` of them, ranked by :func:`confidence`
    of the flip-TTA logits).

    Args:
        forward: the network in eval mode.
        inputs: normalised images (B, C, H, W).
        fraction: the share of the batch that gets the extra views (the 2025 speedrun: ¼).
        base: the flip-TTA logits float32 (B, K) if already computed (e.g. from the
            augmentation kernel's mirrored batch); computed with :func:`flip_logits` if None.
        views: the multi-view set; its unshifted views must be exactly the flip pair with
            equal weights (airbench's), whose share is then taken from ``base``.
        render: makes the shifted views of the chosen images (default:
            :func:`tensor_render` of ``inputs``).

    Returns:
        float32 (B, K): ``base`` on the other images; on the chosen ones, ``base`` times the
        unshifted views' total weight plus the shifted views' weighted logits, i.e. what
        :func:`multiview_logits` gives there. Selection is per call (per batch): the
        evaluation's batches should split the test set evenly for the fraction to be exact
        over the whole set.
    """
    unshifted = [v for v in views if v.shift == 0]
    if (
        sorted(v.flip for v in unshifted) != [False, True]
        or unshifted[0].weight != unshifted[1].weight
    ):
        raise ValueError("selective TTA needs the unshifted views to be the equal-weight flip pair")
    if base is None:
        base = flip_logits(forward, inputs)
    count = selected_count(inputs.shape[0], fraction)
    if count == 0:
        return base
    chosen = least_confident(base, count)
    render = render or tensor_render(inputs)
    combined = base[chosen] * (2 * unshifted[0].weight)
    for view in views:
        if view.shift:
            combined = combined + forward(render(view, chosen)).float() * view.weight
    return base.index_copy(0, chosen, combined)
