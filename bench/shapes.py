"""The shapes the trainer really runs, so that every benchmark times the work of a real step.

ResNet9 has eight batch-norm sites (see ``model/resnet9.py``); at width ``w`` and batch ``B``
the tensor entering each one (before the fused 2×2 max-pool where there is one) is:

=========  ===================  ======  =====
site       input of the BN op   pool    times
=========  ===================  ======  =====
prep       B × 64w × 32 × 32    no      1
layer1     B × 128w × 32 × 32   yes     1
res1       B × 128w × 16 × 16   no      2
layer2     B × 256w × 16 × 16   yes     1
layer3     B × 512w × 8 × 8     yes     1
res3       B × 512w × 4 × 4     no      2
=========  ===================  ======  =====

``times`` says how many sites of the network share the shape (the two convs of each
residual pair), so that a per-site time × ``times`` summed over the table is the BN cost of
one forward pass. :func:`bn_sites` reads the sites from the model
(:func:`model.bn_site_shapes`), the one list that the benchmarks and the ahead-of-time specs
(:mod:`bench.aot`) share; ``tests/test_bench.py`` checks it against a real forward pass.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from model import ResNet9Config, bn_site_shapes

__all__ = [
    "BNSite",
    "AugmentShape",
    "StepShape",
    "bn_sites",
    "quick_bn_sites",
    "model_bn_inputs",
    "RECIPE_BATCH",
    "QUARTER",
    "GHOST_BATCH",
    "TRAIN_IMAGES",
]

#: The recipe's batch size and the images per ghost-BN split.
RECIPE_BATCH = 512
GHOST_BATCH = 32
#: The quarter-width model (channels / 4) that CPU runs use.
QUARTER = 0.25
#: Images in the CIFAR-10 training set (one epoch of the data path).
TRAIN_IMAGES = 50_000


@dataclass(frozen=True)
class BNSite:
    """One batch-norm site of ResNet9: the input of :func:`kernels.ghost_bn_act` there."""

    name: str
    batch: int
    channels: int
    height: int
    width: int
    pool: bool
    times: int  # sites of the network with this shape
    model_width: float  # the width multiplier the channels came from

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, C, H, W) of the op's input."""
        return (self.batch, self.channels, self.height, self.width)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(B, C, H', W') of the op's output (halved by the pool)."""
        f = 2 if self.pool else 1
        return (self.batch, self.channels, self.height // f, self.width // f)

    @property
    def splits(self) -> int:
        """Ghost-BN splits of this batch (32 images each, as the recipe)."""
        return max(1, self.batch // GHOST_BATCH)

    @property
    def label(self) -> str:
        """Short id used in test ids and table rows, e.g. ``layer1-w0.25``."""
        return f"{self.name}-w{self.model_width:g}"

    def shape_str(self) -> str:
        """``512×32×32×32 pool`` — the table's way of naming the shape."""
        return "×".join(map(str, self.shape)) + (" pool" if self.pool else "")


@dataclass(frozen=True)
class AugmentShape:
    """One batch of the augmentation op: ``batch`` images out of a data set of ``images``."""

    batch: int = RECIPE_BATCH
    images: int = TRAIN_IMAGES
    channels: int = 3
    size: int = 32
    pad: int = 4
    cutout: int = 0  # the final recipe has cutout off

    def shape_str(self) -> str:
        return f"{self.batch}×{self.channels}×{self.size}×{self.size} of {self.images}"


@dataclass(frozen=True)
class StepShape:
    """A whole training step: the recipe (a preset name; None: the seed's final recipe,
    ResNet9), the model's width and the batch."""

    width: float
    batch: int
    preset: str | None = None

    @property
    def label(self) -> str:
        size = f"w{self.width:g}-b{self.batch}"
        return size if self.preset is None else f"{self.preset}-{size}"


def bn_sites(batch: int = RECIPE_BATCH, width: float = 1.0) -> list[BNSite]:
    """The six distinct BN shapes of ResNet9 at ``batch`` and ``width``, in forward order:
    the recipe's model (:class:`model.ResNet9Config` defaults at ``width``) lists its eight
    sites, and sites with the same shape (a residual pair's two convs) become one entry
    with ``times`` 2."""
    shapes = Counter(bn_site_shapes(ResNet9Config(width=width)))  # keeps first-seen order
    return [
        BNSite(s.name, batch, s.channels, s.size, s.size, s.pool, times, width)
        for s, times in shapes.items()
    ]


def quick_bn_sites(batch: int = RECIPE_BATCH) -> list[BNSite]:
    """The few sites ``--quick`` times: quarter width, the largest pooled site (layer1) and
    the largest site without a pool (res1), so both variants of the op are covered."""
    return [s for s in bn_sites(batch, QUARTER) if s.name in ("layer1", "res1")]


def model_bn_inputs(model: nn.Module, batch: int) -> list[tuple[tuple[int, ...], bool]]:
    """(input shape, pool) of every BN site of ``model``, recorded by running it in training
    mode on ``batch`` random images — the ground truth that :func:`bn_sites` must match."""
    seen: list[tuple[tuple[int, ...], bool]] = []
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args: seen.append((tuple(args[0].shape), bool(mod.pool)))
        )
        for m in model.bn_sites()
    ]  # type: ignore[attr-defined]
    try:
        model.train()
        with torch.no_grad():
            model(torch.randn(batch, 3, 32, 32))
    finally:
        for h in hooks:
            h.remove()
    return seen
