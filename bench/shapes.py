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

The airbench family's network (:class:`model.AirbenchNet`, widths 64/256/256, no width
multiplier) has six BN sites, all distinct. :func:`airbench_bn_sites` reads them from the
model that a preset builds (default ``airbench94``: batch 1024, GELU, plain BN — one split —
and a frozen scale). A 2×2 whitening conv without padding makes every size odd, and the
fused 2×2 pool floors:

============  ======================  ====================  =====
site          input of the BN op      output                pool
============  ======================  ====================  =====
block1.conv1  B × 64 × 31 × 31        B × 64 × 15 × 15      yes
block1.conv2  B × 64 × 15 × 15        B × 64 × 15 × 15      no
block2.conv1  B × 256 × 15 × 15       B × 256 × 7 × 7       yes
block2.conv2  B × 256 × 7 × 7         B × 256 × 7 × 7       no
block3.conv1  B × 256 × 7 × 7         B × 256 × 3 × 3       yes
block3.conv2  B × 256 × 3 × 3         B × 256 × 3 × 3       no
============  ======================  ====================  =====

Their labels carry the preset (``airbench94.block1.conv1``), so they never collide with
ResNet9's (``layer1-w0.25``) in test ids, table rows or AOT spec labels.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from model import ResNet9Config, airbench_bn_site_shapes, bn_site_shapes
from train.config import airbench_config
from train.presets import preset_config

__all__ = [
    "BNSite",
    "AugmentShape",
    "StepShape",
    "bn_sites",
    "airbench_bn_sites",
    "quick_bn_sites",
    "model_bn_inputs",
    "RECIPE_BATCH",
    "AIRBENCH_PRESET",
    "QUARTER",
    "GHOST_BATCH",
    "TRAIN_IMAGES",
    "QUICK_AIRBENCH_SITE",
]

#: The recipe's batch size and the images per ghost-BN split.
RECIPE_BATCH = 512
GHOST_BATCH = 32
#: The airbench preset whose BN sites the benchmarks and the AOT report add to ResNet9's.
AIRBENCH_PRESET = "airbench94"
#: The quarter-width model (channels / 4) that CPU runs use.
QUARTER = 0.25
#: Images in the CIFAR-10 training set (one epoch of the data path).
TRAIN_IMAGES = 50_000


@dataclass(frozen=True)
class BNSite:
    """One batch-norm site of a network: the input of :func:`kernels.ghost_bn_act` there,
    x (batch, channels, height, width) with the site's pool, activation and ghost splits.

    ``preset`` is None for ResNet9 (the seed's final recipe: CELU, 32 images per ghost
    split) or the name of the :mod:`train.presets` preset whose network the site belongs to
    (the airbench family). ``ghost_batch`` is the images per ghost split, 0 for plain BN
    (one split), as :class:`train.config.TrainConfig` counts them.
    """

    name: str
    batch: int
    channels: int
    height: int
    width: int
    pool: bool
    times: int  # sites of the network with this shape
    model_width: float  # the width multiplier the channels came from
    act: str = "celu"  # the activation after BN (a key of kernels.ACTIVATIONS)
    alpha: float = 0.3  # CELU's alpha; unused by the other activations
    ghost_batch: int = GHOST_BATCH
    preset: str | None = None

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """(B, C, H, W) of the op's input."""
        return (self.batch, self.channels, self.height, self.width)

    @property
    def out_shape(self) -> tuple[int, int, int, int]:
        """(B, C, H', W') of the op's output: halved by the pool, floored for odd sizes
        (31 → 15), as ``F.max_pool2d(x, 2)``."""
        f = 2 if self.pool else 1
        return (self.batch, self.channels, self.height // f, self.width // f)

    @property
    def splits(self) -> int:
        """Ghost-BN splits of this batch: ``batch / ghost_batch`` (at least 1), or 1 for
        plain BN (``ghost_batch`` 0)."""
        return max(1, self.batch // self.ghost_batch) if self.ghost_batch else 1

    @property
    def label(self) -> str:
        """Short id used in test ids, table rows and AOT spec labels: ``layer1-w0.25`` for
        ResNet9, ``airbench94.block1.conv1`` for a preset's site (its widths are fixed)."""
        if self.preset is None:
            return f"{self.name}-w{self.model_width:g}"
        return f"{self.preset}.{self.name}"

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
    config = ResNet9Config(width=width)
    return _sites(bn_site_shapes(config), batch, width, config)


def _sites(shapes: Iterable[Any], batch: int, width: float, net: Any, **extra: Any) -> list[BNSite]:
    """One :class:`BNSite` per distinct shape of ``shapes`` (a network's sites in forward
    order, each with ``name``, ``channels``, ``size`` and ``pool``), with how many times it
    occurs, at ``batch``; the activation from the network's config ``net``."""
    return [
        BNSite(
            s.name,
            batch,
            s.channels,
            s.size,
            s.size,
            s.pool,
            times,
            width,
            act=net.activation,
            alpha=net.celu_alpha,
            **extra,
        )
        for s, times in Counter(shapes).items()  # keeps first-seen order
    ]


def airbench_bn_sites(preset: str = AIRBENCH_PRESET, batch: int | None = None) -> list[BNSite]:
    """The six BN sites of the airbench network that ``preset`` trains, in forward order, at
    ``batch`` (default: the preset's own, 1024 for airbench94).

    Everything comes from the preset: the network (:func:`train.config.airbench_config`,
    whose sites :func:`model.airbench_bn_site_shapes` lists), the activation, and the
    ghost split (airbench94: 0 → plain BN, one split). Raises ValueError for a preset that
    does not train the airbench network.
    """
    config = preset_config(preset)
    if config.network != "airbench":
        raise ValueError(f"preset {preset!r} trains {config.network!r}, not the airbench network")
    batch = config.batch_size if batch is None else batch
    net = airbench_config(config, "eager")
    # airbench94's six sites differ: times 1 each
    sites = airbench_bn_site_shapes(net)
    return _sites(sites, batch, 1.0, net, ghost_batch=config.ghost_batch, preset=preset)


#: The airbench site ``--quick`` times: block3's first conv, 7×7 → 3×3 — the floored pool
#: of an odd size, with GELU and plain BN, and the smallest pooled airbench site (at batch
#: 1024, 12.8 M elements: fewer than ResNet9's quarter-width layer1 at 512, 16.8 M), so
#: CI's time grows by about one site's compile and timing.
QUICK_AIRBENCH_SITE = "block3.conv1"


def quick_bn_sites(batch: int = RECIPE_BATCH) -> list[BNSite]:
    """The few sites ``--quick`` times: ResNet9 at quarter width and ``batch`` — the largest
    pooled site (layer1) and the largest site without a pool (res1), so both variants of the
    op are covered — and one airbench94 site at its preset's batch
    (:data:`QUICK_AIRBENCH_SITE`: odd-size floored pool, GELU, one split)."""
    resnet = [s for s in bn_sites(batch, QUARTER) if s.name in ("layer1", "res1")]
    airbench = [s for s in airbench_bn_sites() if s.name == QUICK_AIRBENCH_SITE]
    return resnet + airbench


def model_bn_inputs(model: nn.Module, batch: int) -> list[tuple[tuple[int, ...], bool]]:
    """(input shape, pool) of every BN site of ``model``, recorded by running it in training
    mode on ``batch`` random float32 images (B, 3, 32, 32) — the ground truth that
    :func:`bn_sites` (ResNet9) and :func:`airbench_bn_sites` (an AirbenchNet, whose
    whitening filters must be set) must match."""
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
