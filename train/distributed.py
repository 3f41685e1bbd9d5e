"""Training on several processes (``torchrun --nproc-per-node K -m train ...``).

Two ways to use K processes:

* ``--distribute data`` (default under torchrun): DistributedDataParallel over one run.
  Every rank draws the *same* epoch permutation and augmentation choices from the run's
  seed and takes its contiguous slice of each global batch, augmenting it on its own
  device. Ghost-BN splits are consecutive groups of 32 images, so a rank's slice holds whole
  splits and the K ranks compute exactly the statistics one process would. DDP averages
  gradients over ranks while the recipe's loss is summed over the batch, so each rank's loss
  is multiplied by K: the update is then the single-process update (up to the order of
  floating-point sums). Evaluation is sharded over ranks and its sums all-reduced; BN
  running statistics, which each rank keeps from its own splits, are averaged over ranks
  before evaluating (as one process averages over all splits).
* ``--distribute runs``: no gradient exchange; rank r trains the independent runs
  r, r+K, r+2K, … of ``--runs`` and rank 0 gathers every result. For many-run statistics
  this is the faster use of K GPUs.

Only rank 0 prints and writes files. On the CPU the ``gloo`` backend is used (and tested);
on GPUs ``nccl``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from train.config import ConfigError

DISTRIBUTE_CHOICES = ("data", "runs")


@dataclass(frozen=True)
class Distributed:
    """This process's place among the ranks (world_size 1: not distributed)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_distributed(device_type: str) -> Distributed:
    """Join the process group that torchrun set up (no-op when not under torchrun)."""
    if not launched_by_torchrun():
        return Distributed()
    rank = int(os.environ["RANK"])
    world_size = int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
    return Distributed(rank, world_size, local_rank)


def rank_device(requested: str, ctx: Distributed) -> str:
    """Each rank's device: ``cuda:<local_rank>`` on GPUs, the CPU otherwise."""
    if ctx.enabled and requested in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{ctx.local_rank}"
    return requested


def per_rank_batch(batch_size: int, ghost_batch: int, ctx: Distributed) -> int:
    """The slice of each global batch one rank trains on; it must hold whole ghost splits."""
    if batch_size % ctx.world_size:
        raise ConfigError(f"--batch-size {batch_size} does not split over {ctx.world_size} "
                          "processes: use a multiple of the process count")
    local = batch_size // ctx.world_size
    if ghost_batch and local % ghost_batch:
        raise ConfigError(
            f"each of the {ctx.world_size} processes gets {local} images per batch, which is "
            f"not a whole number of ghost-BN splits of {ghost_batch}: use --batch-size a "
            f"multiple of {ghost_batch * ctx.world_size}")
    return local


def rank_slice(global_batch: torch.Tensor, ctx: Distributed) -> torch.Tensor:
    """This rank's contiguous share of a global batch's indices (B,) → (B/K,)."""
    share = global_batch.shape[0] // ctx.world_size
    return global_batch[ctx.rank * share:(ctx.rank + 1) * share]


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors over ranks in place (no-op when not distributed)."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


@torch.no_grad()
def average_running_stats(model: nn.Module) -> None:
    """Average every BN running mean/var over ranks, in place."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    world = dist.get_world_size()
    for name, buffer in model.named_buffers():
        if name.endswith(("running_mean", "running_var")):
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world)


def wrap_ddp(model: nn.Module, ctx: Distributed, device: torch.device) -> nn.Module:
    """DistributedDataParallel without buffer broadcasting: each rank's BN running stats
    come from its own splits and are averaged before evaluation instead."""
    if not ctx.enabled:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, broadcast_buffers=False)


def gather_objects(obj: object, ctx: Distributed) -> list[object]:
    """Every rank's ``obj`` on every rank (rank order)."""
    if not ctx.enabled:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
