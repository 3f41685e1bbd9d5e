"""ResNet9 for CIFAR-10 with the seed's tricks as options (imports ``kernels``, never ``train``).

* :mod:`model.resnet9` — :class:`ResNet9` and :class:`ResNet9Config` (the architecture).
* :mod:`model.layers` — :class:`GhostBNAct` (ghost BN, frozen scales, pool before BN, CELU),
  :class:`ConvBlock`, :class:`Residual`.
* :mod:`model.whitening` — 3×3 patch whitening: filters from data and the fixed conv.
"""

from model.layers import MODEL_BACKENDS, ConvBlock, GhostBNAct, Residual, op_backend
from model.resnet9 import (
    BNSiteShape,
    Head,
    ResNet9,
    ResNet9Config,
    bn_site_shapes,
    channel_widths,
)
from model.whitening import (
    PatchWhitening,
    WhiteningFilters,
    patch_whitening_filters,
    whitening_filters_from_data,
)

__all__ = [
    "MODEL_BACKENDS",
    "BNSiteShape",
    "ConvBlock",
    "GhostBNAct",
    "Head",
    "PatchWhitening",
    "Residual",
    "ResNet9",
    "ResNet9Config",
    "WhiteningFilters",
    "bn_site_shapes",
    "channel_widths",
    "op_backend",
    "patch_whitening_filters",
    "whitening_filters_from_data",
]
