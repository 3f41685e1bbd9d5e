"""Fused Triton kernels for the ResNet9 CIFAR-10 hot paths, each with an eager reference.

Public ops (each takes ``backend="eager"|"compile"|"triton"|None``):
  * :func:`augment` — gather, reflect-pad crop, flip, cutout, normalise, cast, channels_last.
  * :func:`ghost_bn_act` — [2×2 max-pool →] ghost batch norm [frozen scale] → activation.

Each op family is a package (``kernels/augment/``, ``kernels/ghost_bn_act/``) with one job
per file, the same files in each:
  * ``__init__.py``       what the op computes and why its kernels are built as they are;
    re-exports the public names;
  * ``reference.py``      the plain-PyTorch op, written to be obviously right, and the input
    checks;
  * ``triton_kernels.py`` the ``@triton.jit`` kernels only, each pointer argument commented
    with its dtype and shape;
  * ``launch.py``         from shapes to launches: block sizes, grids, workspaces, the calls;
  * ``op.py``             the public function, its backend dispatch (reference,
    ``torch.compile``d reference, Triton) and the ``torch.library`` custom ops with their
    fake functions and autograd;
  * ``specs.py``          the counted bytes (``*_bytes``) and the ahead-of-time specs
    (:class:`~kernels._common.AotSpec`) that ``python -m bench.aot`` compiles.
A module stays under ~400 lines: where a job outgrows that, it is split along a boundary
inside it and the extra files sit beside the standard ones. Ghost BN, with six kernels, has
four: ``triton_kernels.py`` holds its forward kernels and ``triton_kernels_bwd.py`` its
backward ones, with the small @jit helpers both inline in ``triton_helpers.py``;
``plan.py`` is the launch plan (block sizes, tile shapes, chunking: pure arithmetic shared by
the launchers, the byte model and the specs, so all three agree) and ``launch.py`` only the
launches; ``byte_model.py`` holds ``ghost_bn_act_bytes`` and ``specs.py`` only the AOT specs.
:mod:`kernels._common` holds what the families share (backend choice, tensor checks,
``AotSpec``); :mod:`kernels._launch` is the one door every Triton launch goes through (on the
tensors' own device, counted by :func:`~kernels._launch.count_launches`); and
:mod:`kernels._versions` states the supported torch/Triton range and is the one place that
branches on versions. ``kernels`` imports neither ``model``, ``train`` nor ``bench``.

Set ``TRITON_INTERPRET=1`` *before* importing this package to run the Triton kernels on the
CPU through Triton's interpreter (correctness only).
"""

from kernels._common import BACKENDS, interpreting, resolve_backend, triton_available
from kernels.augment import augment, augment_bytes, augment_reference, random_augment_params
from kernels.ghost_bn_act import (
    ACTIVATIONS,
    ghost_bn_act,
    ghost_bn_act_bytes,
    ghost_bn_act_native,
    ghost_bn_act_reference,
)

__all__ = [
    "ACTIVATIONS",
    "BACKENDS",
    "augment",
    "augment_bytes",
    "augment_reference",
    "ghost_bn_act",
    "ghost_bn_act_bytes",
    "ghost_bn_act_native",
    "ghost_bn_act_reference",
    "interpreting",
    "random_augment_params",
    "resolve_backend",
    "triton_available",
]
