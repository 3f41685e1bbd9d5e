"""Every Triton launch of this package goes through :func:`launch`: on the device of the
tensors it reads, and counted.

Why a guard: Triton launches on ``torch.cuda.current_device()``, not on the device of the
tensors it is given. A process that trains on ``cuda:1`` without ever calling
``torch.cuda.set_device`` would otherwise launch on GPU 0 with pointers into GPU 1 ("Pointer
argument cannot be accessed from Triton"). ``torch.cuda.device(d)`` makes ``d`` current for
the launch and restores the previous device after.

Why a count: launches per step are what a CUDA graph saves and what the roofline's host
cost is charged per (see ``bench.counters``); :func:`count_launches` lets tests and benches
count them on any machine, the interpreter included.
"""

from __future__ import annotations

import collections
import contextlib
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from kernels._common import interpreting, registers_triton_ops
from kernels._versions import interpreter_problem

_active_counters: list[collections.Counter] = []
_interpreter_checked = False


@contextlib.contextmanager
def count_launches() -> Iterator[collections.Counter]:
    """Count the Triton launches made inside the block, by kernel name::

    with count_launches() as launches:
        step(inputs, labels)
    sum(launches.values())
    """
    counts: collections.Counter = collections.Counter()
    _active_counters.append(counts)
    try:
        yield counts
    finally:
        # By identity: two counters with the same counts compare equal.
        del _active_counters[next(i for i, c in enumerate(_active_counters) if c is counts)]


def device_guard(device: torch.device) -> contextlib.AbstractContextManager:
    """``torch.cuda.device(device)`` for a CUDA device, a no-op context elsewhere (the
    interpreter's CPU tensors)."""
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def _launch_device(args: Sequence[Any]) -> torch.device:
    for arg in args:
        if isinstance(arg, torch.Tensor):
            return arg.device
    raise TypeError("a Triton launch needs at least one tensor argument")


def _check_interpreter() -> None:
    """Once per process, before the first interpreted launch: a version pair whose
    interpreter cannot run the kernels gets one clear line instead of a deep traceback."""
    global _interpreter_checked
    if not _interpreter_checked:
        problem = interpreter_problem()
        if problem is not None:
            raise RuntimeError(problem)
        _interpreter_checked = True


def launch(kernel: Any, grid: tuple[int, ...], *args: Any, **kwargs: Any) -> None:
    """``kernel[grid](*args, **kwargs)`` on the device of the first tensor in ``args``.

    Args:
        kernel: a ``@triton.jit`` function.
        grid: the launch grid, 1 to 3 positive ints.
        args, kwargs: the kernel's arguments (constexprs and ``num_warps`` by keyword).
    """
    if interpreting():
        _check_interpreter()
    with device_guard(_launch_device(args)):
        _run(kernel, grid, args, kwargs)
    name = getattr(kernel, "__name__", None) or getattr(kernel.fn, "__name__", "kernel")
    for counts in _active_counters:
        counts[name] += 1


def _run(kernel: Any, grid: tuple[int, ...], args: Sequence[Any], kwargs: dict) -> None:
    """The launch itself (a seam for the tests, which observe the device in effect here).

    Compiled kernels go through ``wrap_triton``: inside a ``torch.compile``d graph that makes
    the launch a node the compiler emits itself (the ops are ``triton_op``s, see
    :func:`kernels._common.register_kernel_op`); anywhere else it is a plain launch.
    Interpreted kernels are launched directly (they cannot be traced)."""
    if registers_triton_ops():
        torch.library.wrap_triton(kernel)[grid](*args, **kwargs)
    else:
        kernel[grid](*args, **kwargs)
