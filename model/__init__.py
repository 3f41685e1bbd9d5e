"""The CIFAR-10 networks with their recipes' tricks as options (imports ``kernels``, never
``train``).

* :mod:`model.resnet9` — :class:`ResNet9` and :class:`ResNet9Config` (the seed's network).
* :mod:`model.airbench` — :class:`AirbenchNet` and :class:`AirbenchConfig` (airbench94, its
  Muon variant and the 2025 speedrun).
* :mod:`model.layers` — :class:`GhostBNAct` (ghost BN, frozen scales, pool before BN, the
  activation), :class:`ConvBlock` (with Dirac init), :class:`Residual`.
* :mod:`model.whitening` — k×k patch whitening (3×3 for ResNet9, 2×2 with negations for
  airbench): filters from data and the fixed conv.
"""

from model.airbench import (
    AirbenchBlock,
    AirbenchConfig,
    AirbenchHead,
    AirbenchNet,
    airbench_bn_site_shapes,
    airbench_flops_per_image,
    airbench_whitening_filters,
    pytorch_momentum,
)
from model.layers import (
    MODEL_BACKENDS,
    BNSiteControls,
    ConvBlock,
    GhostBNAct,
    Residual,
    dirac_init_,
    op_backend,
)
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
    "AirbenchBlock",
    "AirbenchConfig",
    "AirbenchHead",
    "AirbenchNet",
    "BNSiteControls",
    "BNSiteShape",
    "ConvBlock",
    "GhostBNAct",
    "Head",
    "PatchWhitening",
    "Residual",
    "ResNet9",
    "ResNet9Config",
    "WhiteningFilters",
    "airbench_bn_site_shapes",
    "airbench_flops_per_image",
    "airbench_whitening_filters",
    "bn_site_shapes",
    "channel_widths",
    "dirac_init_",
    "op_backend",
    "patch_whitening_filters",
    "pytorch_momentum",
    "whitening_filters_from_data",
]
