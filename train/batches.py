"""Shuffled, augmented training batches drawn from a data set that lives on the device.

Every epoch: one permutation and one set of per-image augmentation choices for the whole
epoch (a handful of kernel launches instead of several per batch), then one
``kernels.augment`` launch per batch that gathers, crops, flips, cuts out, normalises and
casts. Nothing leaves the device and nothing waits for it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

import kernels


class AugmentedBatches:
    """Iterable over one epoch of ``(inputs, labels)`` batches; drop-last, so every batch has
    ``batch_size`` images and shapes stay static (CUDA graphs, torch.compile).

    Args:
        images: uint8 (N, 3, H, W), contiguous, on the training device.
        labels: int64 (N,), same device.
        batch_size, pad, flip, cutout: the recipe's augmentation settings.
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
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        pad: int,
        flip: bool,
        cutout: int,
        mean: Sequence[float],
        std: Sequence[float],
        dtype: torch.dtype,
        backend: str,
        generator: torch.Generator,
        device: torch.device | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> None:
        if images.shape[0] < batch_size:
            raise ValueError(
                f"{images.shape[0]} training images do not fill one batch of {batch_size}"
            )
        rank, world = shard
        if not (world >= 1 and 0 <= rank < world and batch_size % world == 0):
            raise ValueError(f"cannot take shard {rank} of {world} of a batch of {batch_size}")
        self.images, self.labels = images, labels
        self.batch_size, self.pad, self.flip, self.cutout = batch_size, pad, flip, cutout
        self.mean, self.std, self.dtype = tuple(mean), tuple(std), dtype
        self.backend, self.generator = backend, generator
        self.shard = (rank, world)
        self.device = images.device if device is None else torch.device(device)

    def __len__(self) -> int:
        return self.images.shape[0] // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch()

    def epoch(self, start: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """One epoch's batches from batch index ``start`` on.

        The whole epoch's permutation and augmentation choices are drawn whatever ``start``
        is, so that an epoch resumed with the generator state of its beginning sees exactly
        the batches it would have seen, and leaves the generator where the uninterrupted
        epoch would have left it. The skipped batches are never augmented.
        """
        if not 0 <= start <= len(self):
            raise ValueError(f"an epoch has {len(self)} batches; cannot start at {start}")
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
            labels = self.labels[indices]
            if self.device != inputs.device:
                inputs = inputs.to(self.device, non_blocking=True)
                labels = labels.to(self.device, non_blocking=True)
            yield inputs, labels
