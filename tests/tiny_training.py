"""A tiny training set-up shared by the trainer's tests: a data set the trainer reads like
CIFAR-10's, and a configuration that trains a 1/16-width ResNet9 in a fraction of a second
per step on the CPU."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from train.config import TrainConfig

#: Eager, fp32, NCHW on the CPU: the runtime the tiny tests train with.
TINY_CONFIG = TrainConfig(
    width=0.0625,
    batch_size=32,
    epochs=2,
    cutout=8,
    ema_every=2,
    eval_every=1,
    eval_batch_size=64,
    warmup_steps=0,
    device="cpu",
)

#: The same tiny run as command-line flags, for tests that drive ``python -m train`` itself:
#: a 1/16-width ResNet9, one epoch of 4 steps on 128 images, scored on 64.
TINY_CLI_FLAGS = (
    "--device",
    "cpu",
    "--width",
    "0.0625",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--train-subset",
    "128",
    "--test-subset",
    "64",
)


@dataclass
class TinyData:
    """The fields of :class:`train.data.Cifar10` that the trainer reads."""

    train_images: torch.Tensor  # uint8 (N, 3, 32, 32)
    train_labels: torch.Tensor  # int64 (N,)
    test_images: torch.Tensor  # uint8 (M, 3, 32, 32)
    test_labels: torch.Tensor  # int64 (M,)
    classes: list[str] = field(default_factory=lambda: [str(i) for i in range(10)])


def tiny_data(train: int, test: int, seed: int = 0) -> TinyData:
    """``train`` and ``test`` learnable images: a brightness per class plus noise."""
    generator = torch.Generator().manual_seed(seed)

    def split(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(0, 10, (count,), generator=generator)
        noise = torch.randint(0, 48, (count, 3, 32, 32), generator=generator)
        images = (labels.view(-1, 1, 1, 1) * 20 + noise).clamp(0, 255).to(torch.uint8)
        return images.contiguous(), labels

    return TinyData(*split(train), *split(test))
