"""The public op :func:`augment`: input checks, backend dispatch, and the Triton path
registered as the ``torch.library`` custom op ``cifar_kernels::augment``.

Backends (see :mod:`kernels._common`): ``"eager"`` runs
:func:`~kernels.augment.reference.augment_reference`, ``"compile"`` the same under
``torch.compile``, ``"triton"`` the fused kernel through the custom op.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from kernels._common import compiled, register_kernel_op, resolve_backend
from kernels.augment.launch import _augment_launch
from kernels.augment.reference import augment_reference, check_augment_inputs

__all__ = ["augment"]


def augment(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    *,
    cutout_size: int,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
    backend: str | None = None,
    validate: bool = True,
) -> torch.Tensor:
    """Augment a batch drawn from a uint8 data set on the device; see :mod:`kernels.augment`.

    Args:
        data: uint8 (N, C, H, W), contiguous, the whole data set.
        indices: int32/int64 (B,), which images form the batch.
        crop: int32/int64 (B, 2), (row, col) offset of the window in the padded image,
            each in [0, 2·pad].
        flip: bool (B,), mirror left-right.
        cutout: int32/int64 (B, 2), (row, col) of the cutout square's top-left corner.
        cutout_size: side of the cutout square; 0 turns cutout off.
        pad: reflect padding in pixels.
        mean, std: C floats each, on the 0–255 scale.
        out_dtype: float32, float16 or bfloat16.
        backend: "eager", "compile", "triton" or None/"auto" (see ``kernels._common``).
        validate: check ranges of the parameter tensors (reads them back to the host: turn
            off inside a step loop once the caller is known to be right).

    Returns:
        ``out_dtype`` (B, C, H, W) tensor in channels_last memory order.
    """
    kwargs = dict(
        cutout_size=cutout_size,
        pad=pad,
        mean=tuple(map(float, mean)),
        std=tuple(map(float, std)),
        out_dtype=out_dtype,
    )
    if validate:
        check_augment_inputs(data, indices, crop, flip, cutout, **kwargs)
    backend = resolve_backend(backend, data.device)
    if backend == "eager":
        return augment_reference(data, indices, crop, flip, cutout, **kwargs)
    if backend == "compile":
        return compiled(augment_reference)(data, indices, crop, flip, cutout, **kwargs)
    return _augment_triton(data, indices, crop, flip, cutout, **kwargs)


# --------------------------------------------------------------------------------------------
# torch.library registration
# --------------------------------------------------------------------------------------------


# Registered as a ``triton_op`` on a GPU and a ``custom_op`` under the interpreter (see
# :func:`kernels._common.register_kernel_op`), with a fake (meta) implementation either way.
# No ``register_autograd``: every input is data or an integer parameter (uint8, int, bool —
# none can require grad) and the output is the start of the graph, so there is no gradient
# to define; autograd treats the output as a leaf.
def _augment_op_impl(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    cutout_size: int,
    pad: int,
    mean: list[float],
    std: list[float],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``cifar_kernels::augment``: the fused Triton augmentation (see :func:`augment`)."""
    return _augment_launch(
        data, indices, crop, flip, cutout, cutout_size, pad, mean, std, out_dtype
    )


_augment_op = register_kernel_op("augment", _augment_op_impl, mutates_args=())


@_augment_op.register_fake
def _augment_fake(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    cutout_size: int,
    pad: int,
    mean: list[float],
    std: list[float],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    _, channels, height, width = data.shape
    out = data.new_empty((indices.shape[0], height, width, channels), dtype=out_dtype)
    return out.permute(0, 3, 1, 2)


def _augment_triton(
    data: torch.Tensor,
    indices: torch.Tensor,
    crop: torch.Tensor,
    flip: torch.Tensor,
    cutout: torch.Tensor,
    *,
    cutout_size: int,
    pad: int,
    mean: Sequence[float],
    std: Sequence[float],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """The ``backend="triton"`` path of :func:`augment`: one launch of the custom op."""
    return _augment_op(
        data,
        indices,
        crop,
        flip,
        cutout,
        int(cutout_size),
        int(pad),
        [float(m) for m in mean],
        [float(s) for s in std],
        out_dtype,
    )
