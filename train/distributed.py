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

import inspect
import os
import warnings
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import nn

from train.config import DISTRIBUTE_CHOICES, ConfigError

__all__ = [
    "DISTRIBUTE_CHOICES",
    "Distributed",
    "all_reduce_min",
    "all_reduce_sum",
    "average_running_stats",
    "broadcast_state",
    "gather_objects",
    "init_distributed",
    "launched_by_torchrun",
    "per_rank_batch",
    "rank_device",
    "rank_range",
    "rank_slice",
    "runs_of_rank",
    "shutdown",
    "wait_for_all",
    "wrap_ddp",
]


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
    if device_type == "cuda":
        # nccl needs each process on its own GPU before the group forms.
        torch.cuda.set_device(local_rank)
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
        raise ConfigError(
            f"--batch-size {batch_size} does not split over {ctx.world_size} "
            "processes: use a multiple of the process count"
        )
    local = batch_size // ctx.world_size
    if ghost_batch and local % ghost_batch:
        raise ConfigError(
            f"each of the {ctx.world_size} processes gets {local} images per batch, which is "
            f"not a whole number of ghost-BN splits of {ghost_batch}: use --batch-size a "
            f"multiple of {ghost_batch * ctx.world_size}"
        )
    return local


def rank_slice(global_batch: torch.Tensor, ctx: Distributed) -> torch.Tensor:
    """This rank's contiguous share of a global batch's indices (B,) → (B/K,)."""
    share = global_batch.shape[0] // ctx.world_size
    return global_batch[ctx.rank * share : (ctx.rank + 1) * share]


def rank_range(count: int, ctx: Distributed) -> slice:
    """This rank's contiguous share of ``count`` items (the test set), as even as possible:
    the K shares cover ``range(count)`` exactly once, in rank order."""
    return slice(count * ctx.rank // ctx.world_size, count * (ctx.rank + 1) // ctx.world_size)


def runs_of_rank(runs: int, ctx: Distributed) -> list[int]:
    """The run indices rank r trains with ``--distribute runs``: r, r+K, r+2K, …"""
    return list(range(ctx.rank, runs, ctx.world_size))


def all_reduce_sum(*tensors: torch.Tensor) -> None:
    """Sum tensors over ranks in place (no-op when not distributed).

    It reduces over the whole process group: with ``--distribute runs`` the group exists but
    each rank trains alone, so callers decide by their own :class:`Distributed` whether to
    call it.
    """
    if dist.is_initialized() and dist.get_world_size() > 1:
        for t in tensors:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def all_reduce_min(tensor: torch.Tensor) -> None:
    """Minimum of ``tensor`` over ranks, in place (no-op when not distributed); the same
    caveat as :func:`all_reduce_sum`."""
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)


@torch.no_grad()
def broadcast_state(model: nn.Module) -> None:
    """Rank 0's parameters and buffers on every rank, in place (no-op when not distributed).

    Every rank builds the same model from the same seed and whitens the same data, so this
    changes nothing in value; it guarantees the ranks start a run identical even where a
    library picks a different (non-deterministic) algorithm on another device."""
    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return
    for tensor in model.state_dict().values():
        if tensor.is_contiguous():
            dist.broadcast(tensor, src=0)
        else:  # channels_last conv weights: collectives want a dense row-major buffer
            dense = tensor.contiguous()
            dist.broadcast(dense, src=0)
            tensor.copy_(dense)


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
    # The 1×1 prep conv's weight gradient (C, 27, 1, 1) comes out of the conv backward with
    # strides that differ from DDP's bucket view only in its size-1 dimensions; DDP copies
    # it (a few hundred numbers) and warns once per rank that this "may impair performance".
    warnings.filterwarnings("ignore", message="Grad strides do not match bucket view strides")
    ddp = nn.parallel.DistributedDataParallel
    # Newer torch deprecates broadcast_buffers for forward_sync_buffers (buffers still synced
    # once at construction, which is harmless: every rank builds the same model).
    no_sync = (
        "forward_sync_buffers"
        if "forward_sync_buffers" in inspect.signature(ddp.__init__).parameters
        else "broadcast_buffers"
    )
    return ddp(model, device_ids=ids, **{no_sync: False})


def gather_objects(obj: object, ctx: Distributed) -> list[object]:
    """Every rank's ``obj`` on every rank (rank order)."""
    if not ctx.enabled:
        return [obj]
    out: list[object] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def wait_for_all(ctx: Distributed, timeout_s: float = 60.0) -> None:
    """A barrier before a failing exit: torchrun stops every process as soon as one exits
    with an error, so a rank must not leave before rank 0 has reported it. At most
    ``timeout_s`` on gloo (a rank that never comes is not waited for); errors are ignored."""
    if not (ctx.enabled and dist.is_initialized()):
        return
    try:
        if dist.get_backend() == "gloo":
            dist.monitored_barrier(timeout=timedelta(seconds=timeout_s))
        else:
            dist.barrier()
    except RuntimeError:
        pass


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
