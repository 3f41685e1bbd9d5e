"""A CPU stand-in for CUDA graphs, to test that the training step is capturable.

A CUDA graph records the kernels of one run of a piece of code, with their arguments as they
were then (pointers and scalars), and replays exactly that: a Python value that changes from
step to step (a learning rate passed as a float, a step counter, a branch) is frozen at its
capture-time value, and only what sits in device memory the graph reads changes between
replays. This emulator does the same with ATen ops, which is what every kernel of the eager
backend is: :class:`EmulatedGraphs.capture` runs the code once under a dispatch mode that
records each op with its arguments, and :meth:`EmulatedGraph.replay` runs the record again.
Tensors made inside the capture are renamed to their new values on each replay (as a graph's
private memory pool is reused); tensors from outside it (weights, optimiser state, static
input buffers) are used as they are then. Its outputs are written back into the tensors the
capture returned, as a graph's outputs live at fixed addresses.

What it cannot see: work that is not ATen ops (Inductor's generated code, Triton kernels
under the interpreter). So it checks the step's structure on the eager backend; the compile
and triton backends are checked against uncaptured steps on a GPU (``gpu-check``).
"""

from __future__ import annotations

import contextlib

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.ops.append((func, args, kwargs, out))
        return out


class EmulatedGraph:
    """The ops of one capture, replayed on demand."""

    def __init__(self, ops: list[tuple], outputs: object) -> None:
        self.ops, self.outputs = ops, outputs
        self.replays = 0

    def replay(self) -> None:
        fresh: dict[int, torch.Tensor] = {}  # id of a capture-time tensor → this replay's

        def current(value):
            if isinstance(value, torch.Tensor):
                return fresh.get(id(value), value)
            return value

        with torch.no_grad():
            for func, args, kwargs, out in self.ops:
                result = func(*tree_map(current, args), **tree_map(current, kwargs))
                for old, new in zip(tree_leaves(out), tree_leaves(result)):
                    if isinstance(old, torch.Tensor):
                        fresh[id(old)] = new
            for out in tree_leaves(self.outputs):
                if isinstance(out, torch.Tensor) and id(out) in fresh:
                    out.copy_(fresh[id(out)])
        self.replays += 1


class EmulatedGraphs:
    """A :class:`train.graphs.GraphBackend` for the CPU; counts its captures and keeps its
    graphs (to count their replays)."""

    def __init__(self) -> None:
        self.graphs: list[EmulatedGraph] = []

    def warm_up_context(self) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext()

    def capture(self, body):
        recorder = _Recorder()
        with recorder:
            outputs = body()
        graph = EmulatedGraph(recorder.ops, outputs)
        self.graphs.append(graph)
        return graph, outputs

    @property
    def replays(self) -> int:
        return sum(g.replays for g in self.graphs)
