"""The step loop never waits for the device: whole epochs of :meth:`Trainer.run` under a
dispatch mode that fails on any read of a tensor value by the host (``.item()``,
``bool(tensor)``, ``torch.equal``: ``aten._local_scalar_dense`` and kin) and on any copy
from a device to the host.

On a GPU each of those would block the Python thread until the queued kernels finish, so the
host could no longer run ahead of the device. Here on the CPU nothing waits, but the calls
are the same ops, so the dispatch mode sees them just the same. The mode is active exactly
around each epoch's step loop (where the trainer opens its progress bar); the epoch's end,
which reads the epoch's sums once, runs outside it.
"""

from __future__ import annotations

import contextlib

import pytest
import torch
from tiny_training import TINY_CONFIG, tiny_data
from torch.utils._python_dispatch import TorchDispatchMode

import train.trainer as trainer_module
from train.runtime import Runtime
from train.trainer import Trainer

aten = torch.ops.aten

#: Ops whose result is a Python value read from a tensor's memory: a device sync on a GPU.
HOST_READS = {
    aten._local_scalar_dense.default,
    aten.item.default,
    aten.is_nonzero.default,
    aten.equal.default,
    aten.allclose.default,
}
COPIES = {aten._to_copy.default, aten.copy_.default}


class HostSyncError(AssertionError):
    pass


class NoHostSync(TorchDispatchMode):
    """Counts every op dispatched inside it and raises :class:`HostSyncError` on a host read
    of a tensor value or a device-to-host copy."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.ops += 1
        if func in HOST_READS:
            raise HostSyncError(f"{func} reads a tensor's value on the host inside the step loop")
        if func in COPIES:
            sources = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
            target = kwargs.get("device") or (
                args[0].device if func is aten.copy_.default else None
            )
            if target is not None and torch.device(target).type == "cpu":
                if any(t.device.type != "cpu" for t in sources):
                    raise HostSyncError(
                        f"{func} copies from the device to the host in the step loop"
                    )
        return func(*args, **kwargs)


def watch_step_loops(monkeypatch) -> list[NoHostSync]:
    """Put every epoch's step loop of the trainer under its own :class:`NoHostSync`; returns
    the modes, one per epoch, as they are used."""
    modes: list[NoHostSync] = []
    real_bar = trainer_module.progress_bar

    @contextlib.contextmanager
    def guarded_bar(progress, steps):
        with real_bar(progress, steps) as bar, NoHostSync() as mode:
            modes.append(mode)
            yield bar

    monkeypatch.setattr(trainer_module, "progress_bar", guarded_bar)
    return modes


CONFIG = TINY_CONFIG


@pytest.mark.parametrize(
    "backend,steps,epochs",
    # triton: the fused kernels through the interpreter (seconds per step), one short epoch
    [("eager", 4, 2), ("triton", 2, 1)],
)
def test_whole_epochs_run_without_a_host_sync(monkeypatch, backend, steps, epochs):
    data = tiny_data(steps * CONFIG.batch_size, 32)
    config = CONFIG.replace(backend=backend, epochs=epochs, tta=False, eval_batch_size=32)
    runtime = Runtime(torch.device("cpu"), backend, torch.float32, channels_last=False)
    trainer = Trainer(config, runtime, data, log=lambda line: None)
    modes = watch_step_loops(monkeypatch)
    result = trainer.run(seed=0)
    assert len(result.rows) == config.epochs == len(modes)
    # Each mode saw a whole epoch of steps: forward, backward and SGD are hundreds of ops.
    assert all(mode.ops > 100 * steps for mode in modes)


def test_the_mode_catches_a_read_back(monkeypatch):
    """The check can fail: a step that reads its loss back (as a naive loop would, to print
    it) is stopped at once, naming the op."""
    data = tiny_data(2 * CONFIG.batch_size, 64)
    runtime = Runtime(torch.device("cpu"), "eager", torch.float32, channels_last=False)
    trainer = Trainer(CONFIG.replace(epochs=1), runtime, data, log=lambda line: None)
    watch_step_loops(monkeypatch)
    real_call = trainer_module.TrainStep.__call__

    def printing_step(self, inputs, labels):
        loss, correct = real_call(self, inputs, labels)
        print(f"loss {loss.item():.3f}")
        return loss, correct

    monkeypatch.setattr(trainer_module.TrainStep, "__call__", printing_step)
    with pytest.raises(HostSyncError, match="_local_scalar_dense"):
        trainer.run(seed=0)


def test_the_mode_catches_a_copy_to_the_host_from_a_device():
    """Read from the op's arguments: a copy whose source is on a non-CPU device and whose
    target is the CPU (here a meta tensor stands in for the device)."""
    source = torch.empty(3, device="meta")
    with pytest.raises(HostSyncError, match="copies from the device"):
        with NoHostSync():
            source.to("cpu")
