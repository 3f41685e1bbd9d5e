"""ResNet9 for CIFAR-10, with every trick of the seed's "bag of tricks" as a config option.

Network (width w multiplies every channel count; w = 1 is the recipe):

  whitening  fixed 3×3 patch-whitening conv 3→27, padding 1 (``whitening=True``)
  prep       1×1 conv 27→64w → BN → act   (without whitening: 3×3 conv 3→64w → BN → act)
  layer1     3×3 conv 64w→128w → pool → BN → act, then a residual pair at 128w
  layer2     3×3 conv 128w→256w → pool → BN → act
  layer3     3×3 conv 256w→512w → pool → BN → act, then a residual pair at 512w
  head       max-pool 4 → flatten → linear 512w→10 (no bias) → × output_scale

"pool → BN" is **max-pool before BN** (``pool_before_bn=True``); the earlier baseline has
conv → BN → act → pool. Every BN is a :class:`~model.layers.GhostBNAct` (**ghost BN** splits,
**frozen BN scales**, **CELU**). Convs have no bias. Initialisation is PyTorch's default for
the convs and the linear layer (as the seed), BN bias 0 and BN scale 1.

Which trick is which field of :class:`ResNet9Config`:

==========================  =========================================  =============
trick (the seed's ladder)   field                                      final / base
==========================  =========================================  =============
max-pool before BN          ``pool_before_bn``                         True / False
CELU                        ``activation``, ``celu_alpha``             celu 0.3 / relu
ghost BN                    ``ghost_splits`` (splits of the batch)     16 / 1
frozen BN scales            ``frozen_bn_scale``                        True / False
3×3 patch whitening         ``whitening``                              True / False
output scale of the logits  ``output_scale``                           1/16 / 1/8
==========================  =========================================  =============
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from model.layers import (
    BNSiteControls,
    ConvBlock,
    GhostBNAct,
    Residual,
    bn_site_options,
    op_backend,
)
from model.whitening import PatchWhitening

__all__ = ["BNSiteShape", "ResNet9Config", "ResNet9", "Head", "bn_site_shapes", "channel_widths"]

#: Channels of prep, layer1, layer2, layer3 at width 1.
BASE_WIDTHS = (64, 128, 256, 512)


def channel_widths(width: float) -> tuple[int, int, int, int]:
    """Channels of (prep, layer1, layer2, layer3) at ``width``: 0.25 gives (16, 32, 64, 128)."""
    return tuple(max(1, round(c * width)) for c in BASE_WIDTHS)  # type: ignore[return-value]


@dataclass(frozen=True)
class ResNet9Config:
    """Architecture options; the defaults are the seed's final recipe.

    ``ghost_splits`` is the number of ghost-BN splits per *training* batch (16 = 512/32 in the
    recipe; 1 = plain BN). A trainer whose batch is not 512 sets it with
    :meth:`ResNet9.set_ghost_splits` (batch / 32). ``backend`` is the model-level backend
    (``"eager"``, ``"compile"`` or ``"triton"``, see :func:`model.layers.op_backend`).
    """

    width: float = 1.0
    activation: str = "celu"  # "celu" | "relu"
    celu_alpha: float = 0.3  # 0.075 × 4: frozen scales of 1 stand for 1/4
    ghost_splits: int = 16
    frozen_bn_scale: bool = True
    pool_before_bn: bool = True
    whitening: bool = True
    output_scale: float = 1 / 16
    num_classes: int = 10
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1
    backend: str = "eager"

    def __post_init__(self) -> None:
        if not self.width > 0:
            raise ValueError(f"width must be positive; got {self.width}")
        if self.activation not in ("celu", "relu"):
            raise ValueError(f"activation must be 'celu' or 'relu'; got {self.activation!r}")
        if self.activation == "celu" and not self.celu_alpha > 0:
            raise ValueError(f"celu_alpha must be positive; got {self.celu_alpha}")
        if not isinstance(self.ghost_splits, int) or self.ghost_splits < 1:
            raise ValueError(f"ghost_splits must be a positive int; got {self.ghost_splits!r}")
        if self.num_classes < 1:
            raise ValueError(f"num_classes must be positive; got {self.num_classes}")
        op_backend(self.backend)

    @classmethod
    def baseline(cls, **overrides) -> ResNet9Config:
        """The seed's starting point: ReLU, plain BN with learnable scales, pool after BN,
        no whitening, logits × 1/8."""
        base = dict(
            activation="relu",
            ghost_splits=1,
            frozen_bn_scale=False,
            pool_before_bn=False,
            whitening=False,
            output_scale=0.125,
        )
        return cls(**{**base, **overrides})

    def replace(self, **changes) -> ResNet9Config:
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    @property
    def widths(self) -> tuple[int, int, int, int]:
        """Channels of (prep, layer1, layer2, layer3)."""
        return channel_widths(self.width)


class Head(nn.Module):
    """Max-pool 4 → flatten → linear (no bias) → × ``output_scale``.

    The fixed output scale (1/16 in the recipe) keeps the initial logits small, which the
    label-smoothed summed loss and the high learning rate rely on.
    """

    def __init__(self, channels: int, num_classes: int, output_scale: float) -> None:
        super().__init__()
        self.output_scale = output_scale
        self.linear = nn.Linear(channels, num_classes, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, 4, 4) → logits (B, num_classes), ``x``'s dtype."""
        x = F.max_pool2d(x, 4).flatten(1)
        return self.linear(x) * self.output_scale


class ResNet9(BNSiteControls, nn.Module):
    """ResNet9 as in the module docstring.

    Input: normalised images float32/float16/bfloat16 (B, 3, 32, 32) — ``(x − mean)/std`` on
    the 0–255 scale — contiguous or channels_last, in the dtype of the conv weights (or under
    ``torch.autocast``). Output: logits (B, num_classes). In training B must be a multiple of
    the ghost splits. With ``whitening=True`` call :meth:`set_whitening` before the first
    forward.
    """

    def __init__(self, config: ResNet9Config | None = None, **overrides) -> None:
        super().__init__()
        config = config or ResNet9Config()
        if overrides:
            config = config.replace(**overrides)
        self.config = config
        c0, c1, c2, c3 = config.widths
        bn = bn_site_options(config)
        pool = "before_bn" if config.pool_before_bn else "after_bn"

        if config.whitening:
            self.whitening: PatchWhitening | None = PatchWhitening(in_channels=3, patch_size=3)
            self.prep = ConvBlock(self.whitening.out_channels, c0, kernel_size=1, **bn)
        else:
            self.whitening = None
            self.prep = ConvBlock(3, c0, kernel_size=3, **bn)
        self.layer1 = nn.Sequential(ConvBlock(c0, c1, pool=pool, **bn), Residual(c1, **bn))
        self.layer2 = ConvBlock(c1, c2, pool=pool, **bn)
        self.layer3 = nn.Sequential(ConvBlock(c2, c3, pool=pool, **bn), Residual(c3, **bn))
        self.head = Head(c3, config.num_classes, config.output_scale)

    # ---- forward -----------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, 3, 32, 32) normalised images → logits (B, num_classes)."""
        if self.whitening is not None:
            x = self.whitening(x)
        x = self.prep(x)
        x = self.layer1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        return self.head(x)

    # ---- tricks that the trainer sets ----------------------------------------------------
    def set_whitening(self, filters: torch.Tensor) -> None:
        """Install the patch-whitening filters, float (27, 3, 3, 3) from
        :func:`model.whitening.whitening_filters_from_data` (its ``.filters``)."""
        if self.whitening is None:
            raise RuntimeError(
                "this model was built with whitening=False: it has no whitening conv to set"
            )
        self.whitening.set_filters(filters)

    # ---- optimiser groups and precision ------------------------------------------------
    def param_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters split by the role the optimiser gives them.

        * ``"weights"``    — every conv weight and the linear layer's weight;
        * ``"bn_biases"``  — the BN biases (the recipe: lr × 64, weight decay ÷ 64);
        * ``"bn_weights"`` — the learnable BN scales; empty with frozen scales (the final
          recipe). The seed grouped parameters by ``'bias' in name``, so its learnable BN
          scales trained with the *weights'* lr and weight decay: put this group with
          ``"weights"`` to reproduce the seed's earlier steps.

        The whitening filters are a buffer, never a parameter, so they are in no group.
        Each trainable parameter is in exactly one list, in ``named_parameters`` order.
        """
        groups: dict[str, list[nn.Parameter]] = {"weights": [], "bn_biases": [], "bn_weights": []}
        for module in self.modules():
            for name, param in module.named_parameters(recurse=False):
                if not param.requires_grad:
                    continue
                if isinstance(module, GhostBNAct):
                    groups["bn_biases" if name == "bias" else "bn_weights"].append(param)
                else:
                    groups["weights"].append(param)
        return groups


# ---- the BN sites, for the kernels' benchmarks and ahead-of-time specs ---------------------
@dataclass(frozen=True)
class BNSiteShape:
    """What one BN site (a :class:`~model.layers.GhostBNAct`) of ResNet9 receives.

    ``name`` is the stage: ``"prep"``, ``"layer1"``…``"layer3"``, or ``"res1"``/``"res3"``
    for the two convs of a residual pair (which share the shape). ``channels`` and ``size``
    (height = width) are those of the conv output entering the op, before the 2×2 max-pool
    that ``pool`` (max-pool before BN) fuses into it.
    """

    name: str
    channels: int
    size: int
    pool: bool


@functools.cache
def bn_site_shapes(
    config: ResNet9Config | None = None, image_size: int = 32
) -> tuple[BNSiteShape, ...]:
    """Every BN site of the ResNet9 that ``config`` builds, in forward order (eight).

    Read from the model itself, built on the meta device (no memory, no initialisation), so
    the list follows the architecture wherever it changes. It relies on what
    :class:`ResNet9` guarantees: ``named_modules`` lists the conv blocks in the order
    ``forward`` runs them, every conv keeps the spatial size (stride 1, padding k // 2), and
    only a block's pool (before or after its BN) halves it.
    """
    with torch.device("meta"):
        model = ResNet9(config)
    residuals = [path for path, m in model.named_modules() if isinstance(m, Residual)]
    sites: list[BNSiteShape] = []
    size = image_size
    for path, block in model.named_modules():
        if not isinstance(block, ConvBlock):
            continue
        stage = path.split(".")[0]
        if any(path.startswith(f"{r}.") for r in residuals):
            stage = "res" + stage.removeprefix("layer")
        sites.append(BNSiteShape(stage, block.bn.channels, size, block.bn.pool))
        if block.pool is not None:
            size //= 2
    return tuple(sites)
