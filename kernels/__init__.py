"""Fused Triton kernels for the ResNet9 CIFAR-10 hot paths, each with an eager reference.

Public ops (each takes ``backend="eager"|"compile"|"triton"|None``):
  * :func:`augment` — gather, reflect-pad crop, flip, cutout, normalise, cast, channels_last.
  * :func:`ghost_bn_act` — [2×2 max-pool →] ghost batch norm [frozen scale] → activation.

Set ``TRITON_INTERPRET=1`` *before* importing this package to run the Triton kernels on the
CPU through Triton's interpreter (correctness only).
"""

from kernels._common import BACKENDS, interpreting, resolve_backend, triton_available
from kernels.augment import augment, augment_reference, random_augment_params
from kernels.ghost_bn_act import ACTIVATIONS, ghost_bn_act, ghost_bn_act_reference

__all__ = [
    "ACTIVATIONS", "BACKENDS", "augment", "augment_reference", "ghost_bn_act",
    "ghost_bn_act_reference", "interpreting", "random_augment_params", "resolve_backend",
    "triton_available",
]
