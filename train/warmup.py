"""Warming a trainer up before any clock starts, on throwaway data with the real shapes.

What it absorbs: compiling and autotuning, and on any backend the one-off costs of a first
call (allocator growth, oneDNN/cuDNN primitive creation) that would otherwise land in the
first run alone and make it look slower than the rest (``compare`` would then blame side A,
which runs first). The seed did the same for cuDNN.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import torch

from train.runtime import compiles_model
from train.step import TrainStep

if TYPE_CHECKING:
    from train.trainer import Trainer


def _throwaway(
    like: torch.Tensor, count: int, device: torch.device, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` random uint8 images shaped like ``like``'s, and random labels."""
    shape = (count, *like.shape[1:])
    images = torch.randint(0, 256, shape, dtype=torch.uint8, device=device, generator=generator)
    return images, torch.randint(0, 10, (count,), device=device, generator=generator)


def warm_up(trainer: Trainer) -> float:
    """Run ``warmup_steps`` steps and one evaluation of ``trainer``'s model on throwaway
    data, on every backend and device; return the seconds it took (0 when asked for none).
    With CUDA graphs, also capture a step and check its replay (see
    :meth:`train.step.TrainStep.check_capture`), which sets ``trainer.graph_mode``.

    A compiled model sees the data set's full size (its augmentation is specialised to it);
    eager code needs only the batches it runs and one evaluation batch (the whitening's
    eigenproblem is 27×27 whatever the number of images).
    """
    c, runtime, data = trainer.config, trainer.runtime, trainer.data
    if c.warmup_steps == 0:
        return 0.0
    start = time.perf_counter()
    device = runtime.device
    generator = torch.Generator(device=device).manual_seed(12345)
    full_size = compiles_model(runtime.backend, device)
    train_count = data.train_images.shape[0]
    test_count = data.test_images.shape[0]
    if not full_size:
        train_count = min(train_count, c.batch_size * c.warmup_steps)
        test_count = min(test_count, c.eval_batch_size)
    train_images, train_labels = _throwaway(data.train_images, train_count, device, generator)
    test_images, test_labels = _throwaway(data.test_images, test_count, device, generator)

    trainer._set_whitening(train_images)
    step = TrainStep(
        trainer.model,
        trainer.train_forward,
        c,
        runtime,
        steps_per_epoch=1,
        loss_scale=trainer.ctx.world_size,
        graphs=trainer.graph_mode,
        log=trainer.log,
        capture_after=c.warmup_steps + 1,  # never in the loop: captured below, checked
    )
    trainer.model.train()
    batches = trainer._batches(train_images, train_labels, generator)
    for index, (inputs, targets) in enumerate(batches):
        if index == c.warmup_steps:
            break
        step(inputs, targets)
    if trainer.graph_mode != "off":
        # Capture, replay against an uncaptured step on the same batch; "auto" falls back
        # with one line if that fails, "on" raises.
        step.check_capture(inputs, targets)
        trainer.graph_mode = step.graphs
    trainer._evaluate(test_images, test_labels, step)
    runtime.synchronize()
    return time.perf_counter() - start
