"""Shuffled, augmented training batches drawn from a data set that lives on the device.

Every epoch: one permutation and one set of per-image augmentation choices for the whole
epoch (a handful of kernel launches instead of several per batch), then one
``kernels.augment`` launch per batch that gathers, crops, flips, cuts out, normalises and
casts. Nothing leaves the device and nothing waits for it.

The crop is the random translation: the image reflect-padded by ``pad`` and a window at an
offset drawn uniformly from the (2·pad + 1)² offsets, every image its own (airbench's
"translate 2 px with reflect padding" is ``pad=2``: 25 equally likely shifts of −2…+2 px on
each axis, drawn independently).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

import kernels
from train.flips import alternating_flips, draw_start_flips, flip_mode
from train.jitter import apply_jitter, draw_jitter


class AugmentedBatches:
    """Iterable over one epoch of ``(inputs, labels)`` batches; drop-last, so every batch has
    ``batch_size`` images and shapes stay static (CUDA graphs, torch.compile).

    Args:
        images: uint8 (N, 3, H, W), contiguous, on the training device.
        labels: int64 (N,), same device.
        batch_size, pad, cutout: the recipe's augmentation settings (``pad``: reflect
            padding and the range of the random translation, ±pad px).
        flip: ``True``/"random" (each image flipped with probability ½, drawn afresh every
            epoch: the seed's recipe, the default), ``False``/"none", or "alternating"
            (airbench: each image's epoch-0 orientation drawn once, here in the constructor,
            and flipped on every odd epoch; see :mod:`train.flips`).
        mean, std: per-channel normalisation on the 0–255 scale.
        dtype: the network's input dtype.
        backend: the ``kernels.augment`` backend ("eager", "compile", "triton").
        generator: the run's random stream, on the data's device.
        device: where the batches are consumed; when the data set lives elsewhere (the
            host), each augmented batch is copied there (the seed's pre-"GPU data" setup).
        shard: ``(rank, world_size)`` of data-parallel training: every rank draws the whole
            epoch's permutation and augmentation choices (so all ranks consume the generator
            identically) and yields only its contiguous slice of each global batch,
            ``batch_size / world_size`` images; the K slices concatenated in rank order are
            the unsharded batch. ``(0, 1)``: the whole batch.
        jitter: ``(brightness, contrast)`` ranges of the per-image brightness/contrast jitter
            applied to each augmented batch (:mod:`train.jitter`; the 2025 speedrun's
            ``(0.1, 0.1)``), or None (off, the default).

    Random draws, in order (what makes a run a function of its seed): with
    ``flip="alternating"`` the constructor draws the N epoch-0 flip bits; every epoch draws
    its permutation, then the crop / flip / cutout choices (no flip bits unless "random"),
    then the jitter (when on). The defaults draw exactly what they always drew.

    How the trainer calls it: build it once per run right after seeding the generator
    (before restoring a resumed run's generator state, so that the alternating scheme's
    start bits are the same in a resumed run), then each epoch
    ``for inputs, labels in batches.epoch(start=batches_done, number=epoch - 1)`` with the
    trainer's 1-based ``epoch``. ``number`` only matters for "alternating"; without it the
    epochs are counted from 0 by the calls to :meth:`epoch`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        pad: int,
        flip: bool | str,
        cutout: int,
        mean: Sequence[float],
        std: Sequence[float],
        dtype: torch.dtype,
        backend: str,
        generator: torch.Generator,
        device: torch.device | None = None,
        shard: tuple[int, int] = (0, 1),
        jitter: tuple[float, float] | None = None,
    ) -> None:
        if images.shape[0] < batch_size:
            raise ValueError(
                f"{images.shape[0]} training images do not fill one batch of {batch_size}"
            )
        rank, world = shard
        if not (world >= 1 and 0 <= rank < world and batch_size % world == 0):
            raise ValueError(f"cannot take shard {rank} of {world} of a batch of {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.pad, self.cutout = batch_size, pad, cutout
        self.flip_mode = flip_mode(flip)
        self.flip = self.flip_mode == "random"  # what the per-epoch draw is asked for
        self.mean, self.std, self.dtype = tuple(mean), tuple(std), dtype
        self.backend, self.generator = backend, generator
        self.shard = (rank, world)
        self.device = images.device if device is None else torch.device(device)
        self.jitter = None if jitter is None else (float(jitter[0]), float(jitter[1]))
        # The alternating scheme's epoch-0 orientation of every image (indexed by image).
        self.start_flips: torch.Tensor | None = None
        if self.flip_mode == "alternating":
            self.start_flips = draw_start_flips(
                images.shape[0], generator=generator, device=images.device
            )
        self.epochs_begun = 0  # epoch() calls so far: the default epoch number

    def __len__(self) -> int:
        return self.images.shape[0] // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch()

    def epoch(
        self, start: int = 0, *, number: int | None = None
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch's batches from batch index ``start`` on.

        ``number``: the 0-based epoch number, which decides the orientation under
        ``flip="alternating"`` (ignored otherwise); default: the number of epochs begun
        (iterated) before this one.

        The whole epoch's permutation and augmentation choices are drawn whatever ``start``
        is, so that an epoch resumed with the generator state of its beginning sees exactly
        the batches it would have seen, and leaves the generator where the uninterrupted
        epoch would have left it. The skipped batches are never augmented.
        """
        if not 0 <= start <= len(self):
            raise ValueError(f"an epoch has {len(self)} batches; cannot start at {start}")
        number = self.epochs_begun if number is None else number
        self.epochs_begun = number + 1
        count, device = self.images.shape[0], self.images.device
        order = torch.randperm(count, device=device, generator=self.generator)
        crop, flip, cutout = kernels.random_augment_params(
            count,
            pad=self.pad,
            cutout_size=self.cutout,
            height=self.images.shape[2],
            width=self.images.shape[3],
            flip=self.flip,
            device=device,
            generator=self.generator,
        )
        if self.start_flips is not None:
            # Per image, gathered into the epoch's (shuffled) order: position k of the epoch
            # shows image order[k], so it takes that image's flag.
            flip = alternating_flips(self.start_flips, number)[order]
        shift = scale = None
        if self.jitter is not None:  # per position in the epoch, like the other choices
            shift, scale = draw_jitter(
                count,
                brightness=self.jitter[0],
                contrast=self.jitter[1],
                generator=self.generator,
                device=device,
            )
        rank, world = self.shard
        share = self.batch_size // world
        for first in range(start * self.batch_size, len(self) * self.batch_size, self.batch_size):
            # This rank's slice of the global batch; the crop / flip / cutout choices are
            # sliced alike, so each image keeps the augmentation one process would give it.
            batch = slice(first + rank * share, first + (rank + 1) * share)
            indices = order[batch]
            inputs = kernels.augment(
                self.images,
                indices,
                crop[batch],
                flip[batch],
                cutout[batch],
                cutout_size=self.cutout,
                pad=self.pad,
                mean=self.mean,
                std=self.std,
                out_dtype=self.dtype,
                backend=self.backend,
                validate=False,
            )
            if shift is not None:
                inputs = apply_jitter(inputs, shift[batch], scale[batch])
            labels = self.labels[indices]
            if self.device != inputs.device:
                inputs = inputs.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
            yield inputs, labels
