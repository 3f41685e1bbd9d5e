"""The airbench network family for CIFAR-10, with every trick of its recipes as a config option.

Network (widths (w1, w2, w3) = (64, 256, 256) in every recipe; sizes for 32×32 inputs):

  whitening  fixed 2×2 patch-whitening conv 3→24, *no padding* (32 → 31), trainable bias,
             then an activation (GELU)
  block1     3×3 conv 24→w1 → 2×2 max-pool (31 → 15) → BN → act → 3×3 conv w1→w1 → BN → act
  block2     3×3 conv w1→w2 → max-pool (15 → 7) → BN → act → 3×3 conv w2→w2 → BN → act
  block3     3×3 conv w2→w3 → max-pool (7 → 3) → BN → act → 3×3 conv w3→w3 → BN → act
  head       max-pool over the whole 3×3 map → flatten → linear w3→10 (no bias) → × output_scale

The 2×2 pools floor, so every BN site sees an odd size (31, 15, 7 before a pool; 15, 7, 3
after). "max-pool → BN" is max-pool *before* BN, fused into the BN op
(:class:`~model.layers.GhostBNAct` with ``pool=True``), as in ResNet9. Every BN has a frozen
scale of 1 (no ``weight`` parameter) and a learnable bias starting at 0. The 24 whitening
filters are 12 eigenfilters of the 2×2×3 patch covariance and their negations
(:mod:`model.whitening`); they are a buffer, set from data with :meth:`AirbenchNet.
set_whitening` before the first forward. The 3×3 convs have no bias and start from PyTorch's
default init with their first min(c_in, c_out) filters made the identity (**Dirac init**).

Which trick is which field of :class:`AirbenchConfig` (airbench94_muon uses airbench94's net):

=============================  ==========================  ==========  =================
trick                          field                       airbench94  2025 speedrun
=============================  ==========================  ==========  =================
block widths                   ``widths``                  64/256/256  64/256/256
activation in the blocks       ``activation``              gelu        silu
activation after whitening     ``whitening_activation``    gelu        gelu
whitening patch side           ``whitening_patch_size``    2           2
whitening eps                  ``whitening_eps``           5e-4        5e-4
images for the whitening       ``whitening_images``        5,000       960
whitening bias initialisation  ``whitening_bias_init``     zeros       default (uniform)
BN momentum (PyTorch's)        ``bn_momentum``             0.4         1 − 0.5566
BN eps                         ``bn_eps``                  1e-12       1e-12
frozen BN scales               ``frozen_bn_scale``         True        True
ghost BN splits                ``ghost_splits``            1 (off)     1 (off)
Dirac init of the 3×3 convs    ``dirac_init``              True        True
output scale of the logits     ``output_scale``            1/9         1/256 (= 1/w3)
head weight rescaled to std 1  ``head_unit_std``           False       True
=============================  ==========================  ==========  =================

BN momentum: airbench writes it as the weight of the *old* running value (0.6; the speedrun's
0.5566), PyTorch as the weight of the new batch statistic; this config holds PyTorch's
convention, so airbench's m is stored as 1 − m (:func:`pytorch_momentum`). The whitening bias
is trained only for the first epochs (airbench94: 3; the speedrun: 19% of an epoch's steps):
the trainer calls :meth:`AirbenchNet.freeze_whitening_bias`. Precision: airbench keeps BN in
float32 (:meth:`~model.layers.BNSiteControls.to_mixed_precision`); the speedrun runs its BN in
fp16 too, which this model does not do.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import (
    ACTIVATIONS,
    BNSiteControls,
    ConvBlock,
    activation,
    bn_site_options,
    op_backend,
)
from model.resnet9 import BNSiteShape
from model.whitening import PatchWhitening, WhiteningFilters, whitening_filters_from_data

__all__ = [
    "AirbenchBlock",
    "AirbenchConfig",
    "AirbenchHead",
    "AirbenchNet",
    "airbench_bn_site_shapes",
    "airbench_flops_per_image",
    "airbench_whitening_filters",
    "pytorch_momentum",
]


def pytorch_momentum(airbench_momentum: float) -> float:
    """PyTorch's BN momentum (the weight of the new batch statistic) for airbench's (the weight
    kept by the old running value): 1 − m. airbench94's 0.6 → 0.4; the speedrun's 0.5566 →
    0.4434."""
    return 1.0 - airbench_momentum


@dataclass(frozen=True)
class AirbenchConfig:
    """Architecture options; the defaults are airbench94's network (see the module table).

    ``bn_momentum`` is in PyTorch's convention (see :func:`pytorch_momentum`).
    ``whitening_images`` is how many training images :func:`airbench_whitening_filters` uses;
    the model itself only holds the filters. ``ghost_splits`` is per *training* batch (1 =
    plain BN, as both recipes). ``backend`` is the model-level backend (``"eager"``,
    ``"compile"`` or ``"triton"``, see :func:`model.layers.op_backend`).
    """

    widths: tuple[int, int, int] = (64, 256, 256)
    activation: str = "gelu"  # any of kernels.ACTIVATIONS but None
    whitening_activation: str | None = "gelu"
    celu_alpha: float = 0.3  # used only where an activation is "celu"
    whitening_patch_size: int = 2
    whitening_eps: float = 5e-4
    whitening_images: int = 5_000
    whitening_bias_init: str = "zeros"  # "zeros" | "default" (PyTorch's conv bias init)
    ghost_splits: int = 1
    frozen_bn_scale: bool = True
    bn_eps: float = 1e-12
    bn_momentum: float = 0.4  # airbench94's 0.6 in its convention: 1 − 0.6
    dirac_init: bool = True
    output_scale: float = 1 / 9
    head_unit_std: bool = False
    num_classes: int = 10
    backend: str = "eager"

    def __post_init__(self) -> None:
        widths = tuple(self.widths)
        if len(widths) != 3 or not all(isinstance(w, int) and w >= 1 for w in widths):
            raise ValueError(f"widths must be three positive ints; got {self.widths!r}")
        # A list would make the frozen config unhashable (bn_site_shapes caches on it).
        object.__setattr__(self, "widths", widths)
        if self.activation not in ACTIVATIONS or self.activation is None:
            raise ValueError(
                f"activation must be one of {[a for a in ACTIVATIONS if a]}; "
                f"got {self.activation!r}"
            )
        if self.whitening_activation not in ACTIVATIONS:
            raise ValueError(
                f"whitening_activation must be one of {ACTIVATIONS}; "
                f"got {self.whitening_activation!r}"
            )
        if "celu" in (self.activation, self.whitening_activation) and not self.celu_alpha > 0:
            raise ValueError(f"celu_alpha must be positive; got {self.celu_alpha}")
        if not isinstance(self.whitening_patch_size, int) or self.whitening_patch_size < 1:
            raise ValueError(
                f"whitening_patch_size must be a positive int; got {self.whitening_patch_size!r}"
            )
        if not self.whitening_eps > 0:
            raise ValueError(f"whitening_eps must be positive; got {self.whitening_eps}")
        if not isinstance(self.whitening_images, int) or self.whitening_images < 1:
            raise ValueError(
                f"whitening_images must be a positive int; got {self.whitening_images!r}"
            )
        if self.whitening_bias_init not in ("zeros", "default"):
            raise ValueError(
                f"whitening_bias_init must be 'zeros' or 'default'; "
                f"got {self.whitening_bias_init!r}"
            )
        if not isinstance(self.ghost_splits, int) or self.ghost_splits < 1:
            raise ValueError(f"ghost_splits must be a positive int; got {self.ghost_splits!r}")
        if not self.bn_eps > 0:
            raise ValueError(f"bn_eps must be positive; got {self.bn_eps}")
        if not 0.0 <= self.bn_momentum <= 1.0:
            raise ValueError(f"bn_momentum must be in [0, 1]; got {self.bn_momentum}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive; got {self.num_classes}")
        op_backend(self.backend)

    @classmethod
    def airbench94(cls, **overrides) -> AirbenchConfig:
        """airbench94's network (the defaults); airbench94_muon trains the same network."""
        return cls(**overrides)

    @classmethod
    def speedrun2025(cls, **overrides) -> AirbenchConfig:
        """The 2025 speedrun's network: SiLU in the blocks (GELU still after the whitening),
        BN momentum 0.5566 in airbench's convention, whitening from 960 images with a
        default-initialised bias, logits ÷ w3 (256) from a head rescaled to unit std."""
        widths = tuple(overrides.get("widths", cls.widths))
        base = dict(
            activation="silu",
            whitening_activation="gelu",
            whitening_images=960,
            whitening_bias_init="default",
            bn_momentum=pytorch_momentum(0.5566),
            output_scale=1 / widths[2],
            head_unit_std=True,
        )
        return cls(**{**base, **overrides})

    def replace(self, **changes) -> AirbenchConfig:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def whitening_channels(self) -> int:
        """Channels out of the whitening conv: 2 · 3 · k² (24 for k = 2)."""
        return 2 * 3 * self.whitening_patch_size**2


class AirbenchBlock(nn.Module):
    """conv3×3 → 2×2 max-pool → BN → act → conv3×3 → BN → act (``conv1``, ``conv2``).

    Both are :class:`~model.layers.ConvBlock` s; the first fuses the pool into its BN site
    (``pool="before_bn"``). ``bn_options`` go to both BN sites.
    """

    def __init__(self, c_in: int, c_out: int, *, dirac: bool = True, **bn_options) -> None:
        super().__init__()
        self.conv1 = ConvBlock(c_in, c_out, pool="before_bn", dirac=dirac, **bn_options)
        self.conv2 = ConvBlock(c_out, c_out, dirac=dirac, **bn_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, c_in, H, W) → (B, c_out, ⌊H/2⌋, ⌊W/2⌋), ``x``'s dtype."""
        return self.conv2(self.conv1(x))


class AirbenchHead(nn.Module):
    """Max-pool over the whole map → flatten → linear (no bias) → × ``output_scale``.

    The pool's window is the input's own H×W (3×3 for 32×32 images, as airbench's
    ``MaxPool2d(3)``): a global max that routes each gradient to one pixel, as max-pool does.
    """

    def __init__(self, channels: int, num_classes: int, output_scale: float) -> None:
        super().__init__()
        self.output_scale = output_scale
        self.linear = nn.Linear(channels, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) → logits (B, num_classes), ``x``'s dtype."""
        x = F.max_pool2d(x, kernel_size=tuple(x.shape[-2:])).flatten(1)
        return self.linear(x) * self.output_scale


class AirbenchNet(BNSiteControls, nn.Module):
    """The airbench network of the module docstring.

    Input: normalised images float32/float16/bfloat16 (B, 3, 32, 32), contiguous or
    channels_last, in the dtype of the conv weights (or under ``torch.autocast``). Output:
    logits (B, num_classes). In training B must be a multiple of the ghost splits. Call
    :meth:`set_whitening` before the first forward.

    ``bn_sites``, ``set_ghost_splits``, ``set_backend``, ``backend`` and
    ``to_mixed_precision`` come from :class:`~model.layers.BNSiteControls`.
    """

    def __init__(self, config: AirbenchConfig | None = None, **overrides) -> None:
        super().__init__()
        config = config or AirbenchConfig()
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        w1, w2, w3 = config.widths
        # plain BN by design: on the eager backend, PyTorch's own batch norm (model.layers)
        bn = {**bn_site_options(config), "native_eager": True}
        k = config.whitening_patch_size
        self.whitening = PatchWhitening(3, k, padding=0, negate=True, bias=True)
        if config.whitening_bias_init == "default":
            # nn.Conv2d's own bias init: U(−1/√fan_in, 1/√fan_in), fan_in = 3·k².
            bound = 1 / math.sqrt(3 * k * k)
            with torch.no_grad():
                self.whitening.bias.uniform_(-bound, bound)
        c0 = self.whitening.out_channels
        self.block1 = AirbenchBlock(c0, w1, dirac=config.dirac_init, **bn)
        self.block2 = AirbenchBlock(w1, w2, dirac=config.dirac_init, **bn)
        self.block3 = AirbenchBlock(w2, w3, dirac=config.dirac_init, **bn)
        self.head = AirbenchHead(w3, config.num_classes, config.output_scale)
        if config.head_unit_std:
            with torch.no_grad():
                weight = self.head.linear.weight
                weight.mul_(1.0 / weight.std())

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, 32, 32) normalised images → logits (B, num_classes)."""
        x = activation(self.whitening(x), self.config.whitening_activation, self.config.celu_alpha)
        x = self.block1(x)
        x = self.block2(x)
        x = self.block3(x)
        return self.head(x)

    # ---- the whitening layer -------------------------------------------------------------
    def set_whitening(self, filters: torch.Tensor) -> None:
        """Install the whitening filters, float (2·3·k², 3, k, k) — (24, 3, 2, 2) — with their
        negations, as :func:`airbench_whitening_filters` returns them (its ``.filters``)."""
        self.whitening.set_filters(filters)

    @property
    def whitening_bias(self) -> nn.Parameter:
        """The whitening conv's bias, float (24,): the only trainable part of that layer,
        trained for the first epochs only (:meth:`freeze_whitening_bias`)."""
        assert self.whitening.bias is not None
        return self.whitening.bias

    def freeze_whitening_bias(self, frozen: bool = True) -> None:
        """Stop (``frozen=True``) or resume training the whitening bias.

        Freezing sets ``requires_grad=False`` and drops any gradient it holds, so an
        optimiser that has it in a group skips it from then on (PyTorch's optimisers skip a
        parameter whose ``.grad`` is None: no update, no weight decay) and the backward no
        longer computes the first conv's input gradient. A compiled model recompiles once
        on the change.
        """
        self.whitening_bias.requires_grad_(not frozen)
        if frozen:
            self.whitening_bias.grad = None

    @property
    def whitening_bias_frozen(self) -> bool:
        """True after :meth:`freeze_whitening_bias` (and until it is called with False)."""
        return not self.whitening_bias.requires_grad

    # ---- optimiser groups ---------------------------------------------------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters split by the role the optimiser gives them.

        * ``"filters"``        — the 3×3 conv weights (Muon's share in airbench94_muon and the
          speedrun; airbench94's SGD treats them with the head);
        * ``"head"``           — the linear layer's weight;
        * ``"bn_biases"``      — the BN biases (airbench: lr × 64);
        * ``"bn_weights"``     — learnable BN scales; empty with frozen scales (every recipe);
        * ``"whiten_bias"``    — the whitening bias, listed even while frozen, because it is
          frozen for the later part of a run and the optimiser is built at the start.

        The role names are those of :mod:`train.optim_airbench`, whose
        ``sgd_param_groups`` skips the empty ones. The whitening filters are a buffer, in no
        group. Each parameter is in exactly one list.
        """
        groups: dict[str, list[nn.Parameter]] = {
            "filters": [],
            "head": [],
            "bn_biases": [],
            "bn_weights": [],
            "whiten_bias": [self.whitening_bias],
        }
        for block in (self.block1, self.block2, self.block3):
            for conv_block in (block.conv1, block.conv2):
                groups["filters"].append(conv_block.conv.weight)
                groups["bn_biases"].append(conv_block.bn.bias)
                if conv_block.bn.weight is not None:
                    groups["bn_weights"].append(conv_block.bn.weight)
        groups["head"].append(self.head.linear.weight)
        return groups


# ---- the whitening filters from data --------------------------------------------------------
@torch.no_grad()
def airbench_whitening_filters(
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    config: AirbenchConfig | None = None,
    *,
    chunk_size: int = 500,
) -> WhiteningFilters:
    """The whitening filters of ``config``'s network from the raw training set.

    ``images`` uint8 (N, 3, H, W) on the 0–255 scale; the first ``config.whitening_images``
    are normalised with ``mean``/``std`` (per channel, 0–255 scale) and every
    ``whitening_patch_size``² patch is used. Returns :class:`~model.whitening.WhiteningFilters`
    whose ``filters`` float32 (2·3·k², 3, k, k) go to :meth:`AirbenchNet.set_whitening`.
    """
    config = config or AirbenchConfig()
    return whitening_filters_from_data(
        images,
        mean,
        std,
        n_images=config.whitening_images,
        patch_size=config.whitening_patch_size,
        eps=config.whitening_eps,
        chunk_size=chunk_size,
        negate=True,
    )


# ---- the BN sites and the FLOPs, for the benchmarks and ahead-of-time specs ----------------
def _conv_layers(config: AirbenchConfig, image_size: int) -> list[tuple[str, int, int, int, int]]:
    """Every conv in forward order: (name, c_in, c_out, k, output side), the output side
    being the conv's own (before the pool that follows it)."""
    k = config.whitening_patch_size
    size = image_size - k + 1  # no padding
    c_in = config.whitening_channels
    layers = [("whitening", 3, c_in, k, size)]
    for i, c_out in enumerate(config.widths, start=1):
        layers.append((f"block{i}.conv1", c_in, c_out, 3, size))
        size //= 2  # the 2×2 pool floors
        layers.append((f"block{i}.conv2", c_out, c_out, 3, size))
        c_in = c_out
    return layers


@functools.cache
def airbench_bn_site_shapes(
    config: AirbenchConfig | None = None, image_size: int = 32
) -> tuple[BNSiteShape, ...]:
    """Every BN site of the :class:`AirbenchNet` that ``config`` builds, in forward order (six).

    Each is a :class:`~model.resnet9.BNSiteShape`: ``name`` ``"block1.conv1"`` …
    ``"block3.conv2"``, the ``channels`` and ``size`` (H = W) of the conv output entering
    the op — before the 2×2 max-pool that ``pool`` fuses into it. For airbench94 at 32×32:
    (64, 31, pool), (64, 15), (256, 15, pool), (256, 7), (256, 7, pool), (256, 3).
    """
    config = config or AirbenchConfig()
    return tuple(
        BNSiteShape(name, c_out, size, name.endswith("conv1"))
        for name, _, c_out, _, size in _conv_layers(config, image_size)
        if name != "whitening"
    )


def airbench_flops_per_image(
    config: AirbenchConfig | None = None,
    image_size: int = 32,
    *,
    training: bool = True,
    whitening_bias_trainable: bool = True,
) -> int:
    """FLOPs of the convs and the linear layer for one image, counted as
    :class:`torch.utils.flop_counter.FlopCounterMode` counts them: 2 per multiply-add.

    Forward: 2·c_in·c_out·k²·H·W per conv at its output size, 2·w3·classes for the linear.
    ``training`` adds the backward: the weight gradient of every trained layer (the 3×3
    convs and the linear: as many FLOPs as its forward) and the input gradient of every
    layer whose input needs one — every layer but the whitening conv (its input is the
    images, its filters fixed), and but block1's first conv once the whitening bias is frozen
    (``whitening_bias_trainable=False``: nothing before it then needs a gradient). BN,
    activations and pools are not counted (memory-bound, a few FLOPs per element).

    airbench94 at 32×32: 236.3 MFLOP forward, 707.8 MFLOP forward + backward while the
    whitening bias trains (RECIPE.md: 0.71 GFLOP), 681.2 MFLOP after.
    """
    config = config or AirbenchConfig()
    per_layer = [
        (name, 2 * c_in * c_out * k * k * size * size)
        for name, c_in, c_out, k, size in _conv_layers(config, image_size)
    ]
    per_layer.append(("head", 2 * config.widths[2] * config.num_classes))
    total = sum(flops for _, flops in per_layer)
    if not training:
        return total
    for name, flops in per_layer:
        if name == "whitening":
            continue  # no weight gradient (fixed filters), no input gradient (the images)
        total += flops  # the weight gradient
        if name != "block1.conv1" or whitening_bias_trainable:
            total += flops  # the input gradient
    return total
