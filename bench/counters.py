"""Counters that need no GPU: FLOPs and bytes moved, per op and per training step.

Bytes are **counted**, never timed: the roofline model (:mod:`bench.roofline`) and the
achieved-bandwidth column of every table divide these counts by measured or peak rates.

How each backend is counted
---------------------------
``eager``    :class:`ByteCounter`, a ``TorchDispatchMode`` that sees every ATen op the eager
             code runs (after autograd, i.e. the kernels PyTorch launches) and adds up the
             bytes of its inputs and outputs (rules in :func:`op_bytes`).
``compile``  Inductor's own count for each graph it compiles (``GraphLowering.count_bytes``:
             the reads and writes of every fused kernel and extern call it schedules), caught
             from its ``inductor_metrics`` log; ops left outside the compiled graph (the loss,
             the optimizer, the EMA) are counted as eager.
``triton``   the eager count with the batch-norm sites' (and the augmentation's) ops replaced
             by the Triton kernels' own byte counts (``kernels.ghost_bn_act_bytes`` and
             ``kernels.augment_bytes``, computed from the kernels' arguments).

A whole step is counted without running it: the model, optimiser and inputs are fake tensors
(``FakeTensorMode``: shapes and dtypes, no data), so the recipe's batch of 512 at full width
costs a second on a laptop. FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode`
(matmuls and convolutions only — the tensor-core work — which is what a roofline needs).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode, flop_registry

__all__ = [
    "OpRecord",
    "ByteCounter",
    "op_bytes",
    "tensor_bytes",
    "count_bytes",
    "count_flops",
    "conv_flops",
    "inductor_graph_bytes",
    "disable_compile_caches",
    "autograd_nodes_between",
    "gbps",
]

aten = torch.ops.aten

#: Ops that write their destination without reading it first.
_PURE_WRITES = {
    "copy_",
    "fill_",
    "zero_",
    "normal_",
    "uniform_",
    "random_",
    "bernoulli_",
    "exponential_",
    "set_",
    "resize_",
}
#: Ops that allocate without touching memory.
_NO_TRAFFIC = {
    "empty",
    "empty_like",
    "empty_strided",
    "new_empty",
    "new_empty_strided",
    "resize_",
    "set_",
    "lift_fresh",
}
#: Ops that read only the gathered rows of their first input, not all of it.
_GATHERS = {"index", "index_select", "gather", "take", "embedding", "_unsafe_index"}
#: Metadata queries that take a tensor but move no data.
_METADATA = {
    "is_contiguous",
    "is_strides_like_format",
    "is_non_overlapping_and_dense",
    "size",
    "sym_size",
    "stride",
    "sym_stride",
    "storage_offset",
    "numel",
    "sym_numel",
    "dim",
    "_local_scalar_dense",
    "is_same_size",
    "_has_compatible_shallow_copy_type",
}


def tensor_bytes(t: torch.Tensor) -> int:
    """Bytes of memory a kernel touches to read or write all of ``t``.

    For a broadcast (stride-0) or otherwise overlapping view that is the memory it spans,
    not numel × itemsize: an ``expand``ed bias of C floats costs 4·C bytes, not 4·B·C·H·W.
    """
    n = t.numel()
    if n == 0:
        return 0
    span = 1 + sum((s - 1) * abs(st) for s, st in zip(t.shape, t.stride()))
    return min(n, span) * t.element_size()


def _tensors(tree: Any) -> list[torch.Tensor]:
    leaves, _ = tree_flatten(tree)
    return [x for x in leaves if isinstance(x, torch.Tensor)]


def _unique(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    seen: set[int] = set()
    out = []
    for t in tensors:
        if id(t) not in seen:
            seen.add(id(t))
            out.append(t)
    return out


def op_bytes(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: Any) -> int:
    """Bytes one ATen op moves: every input it reads plus every output it writes.

    Rules: a tensor passed twice is read once; a view op (``func.is_view``) moves nothing; an
    in-place op reads and writes its destination (``add_``) unless it only writes it
    (``copy_``, ``fill_``, ``out=`` variants); a gather (``index``, ``gather``, …) reads as many
    elements of its source as it writes; broadcast inputs count the memory they span
    (:func:`tensor_bytes`); allocations (``empty*``) and metadata queries count nothing.
    """
    name = func._schema.name.split("::")[-1]
    if func.is_view or name in _NO_TRAFFIC or name in _METADATA:
        return 0
    written: list[torch.Tensor] = []
    args_by_name = dict(zip((a.name for a in func._schema.arguments), args))
    args_by_name.update(kwargs)
    for a in func._schema.arguments:
        if a.alias_info is not None and a.alias_info.is_write and a.name in args_by_name:
            written += _tensors(args_by_name[a.name])
    writes = _unique(written + _tensors(out))
    if not writes:
        return 0
    written_ids = {id(t) for t in written}
    reads_destination = (
        name.endswith("_") and name not in _PURE_WRITES and (func._overloadname != "out")
    )
    reads = [
        t
        for t in _unique(_tensors(args) + _tensors(kwargs))
        if id(t) not in written_ids or reads_destination
    ]
    total = sum(tensor_bytes(t) for t in writes)
    if name in _GATHERS and reads:
        src, rest = reads[0], reads[1:]
        out_elems = sum(t.numel() for t in _tensors(out))
        total += min(tensor_bytes(src), out_elems * src.element_size())
        total += sum(tensor_bytes(t) for t in rest)
    else:
        total += sum(tensor_bytes(t) for t in reads)
    return total


def _op_flops(func: torch._ops.OpOverload, args: tuple, kwargs: dict, out: Any) -> int:
    fn = flop_registry.get(func._overloadpacket)
    if fn is None:
        return 0
    return int(fn(*args, **kwargs, out_val=out))


@dataclass
class OpRecord:
    """One ATen op as run: its name, the phase of the step it belongs to, bytes and FLOPs."""

    name: str
    phase: str
    bytes: int
    flops: int


class ByteCounter(TorchDispatchMode):
    """Records every ATen op with its bytes (:func:`op_bytes`), FLOPs and phase.

    ``phase`` is whatever :meth:`in_phase` set; during a backward pass it is looked up from
    the autograd node being run (:attr:`node_phases`, filled by the caller), so that the
    gradient ops of a batch-norm site can be told from those of a convolution.
    """

    def __init__(self, backward_phase: str = "backward") -> None:
        super().__init__()
        self.records: list[OpRecord] = []
        self.node_phases: dict[Any, str] = {}
        self.phase = "other"
        self.backward_phase = backward_phase

    @contextlib.contextmanager
    def in_phase(self, name: str) -> Iterator[None]:
        """Attribute the ops run inside the block to ``name``."""
        saved, self.phase = self.phase, name
        try:
            yield
        finally:
            self.phase = saved

    def _current_phase(self) -> str:
        node = torch._C._current_autograd_node()
        if node is None:
            return self.phase
        return self.node_phases.get(node, self.backward_phase)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if isinstance(func, torch._ops.OpOverload):
            nbytes = op_bytes(func, args, kwargs, out)
            flops = _op_flops(func, args, kwargs, out)
            if nbytes or flops:
                self.records.append(
                    OpRecord(
                        str(func.overloadpacket.__name__), self._current_phase(), nbytes, flops
                    )
                )
        return out

    # ---- summaries -------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        return sum(r.bytes for r in self.records)

    @property
    def total_flops(self) -> int:
        return sum(r.flops for r in self.records)

    def by_phase(self) -> dict[str, dict[str, int]]:
        """{phase: {"bytes", "flops", "ops"}} in first-seen order."""
        out: dict[str, dict[str, int]] = defaultdict(lambda: {"bytes": 0, "flops": 0, "ops": 0})
        for r in self.records:
            entry = out[r.phase]
            entry["bytes"] += r.bytes
            entry["flops"] += r.flops
            entry["ops"] += 1
        return dict(out)


def count_bytes(fn: Callable[[], Any]) -> ByteCounter:
    """Run ``fn`` under a fresh :class:`ByteCounter` and return it."""
    counter = ByteCounter()
    with counter:
        fn()
    return counter


def count_flops(fn: Callable[[], Any]) -> int:
    """Total FLOPs of ``fn`` by :class:`torch.utils.flop_counter.FlopCounterMode`."""
    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def conv_flops(batch: int, c_in: int, c_out: int, height: int, width: int, kernel: int = 3) -> int:
    """Forward FLOPs of a stride-1 'same' convolution by hand: 2·B·Cin·Cout·k²·H·W
    (one multiply and one add per weight per output pixel)."""
    return 2 * batch * c_in * c_out * kernel * kernel * height * width


def autograd_nodes_between(output: torch.Tensor, stop: torch.Tensor | None) -> set[Any]:
    """Every autograd node from ``output.grad_fn`` back to (not including) ``stop.grad_fn``:
    the backward of whatever computed ``output`` from ``stop``. Parameters' accumulate
    nodes are included."""
    start = output.grad_fn
    stop_node = stop.grad_fn if stop is not None else None
    found: set[Any] = set()
    todo = [start] if start is not None else []
    while todo:
        node = todo.pop()
        if node is None or node is stop_node or node in found:
            continue
        found.add(node)
        todo.extend(n for n, _ in node.next_functions)
    return found


# ------------------------------------------------------------------------------------------
# torch.compile: Inductor's count
# ------------------------------------------------------------------------------------------

_METRICS_LOGGER = "torch._inductor.compile_fx.__inductor_metrics"


class _GraphBytes(logging.Filter):
    """Catches Inductor's per-graph metrics record and keeps it off the console."""

    def __init__(self) -> None:
        super().__init__()
        self.graphs: list[int] = []

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 1:
            args = args[0]
        if isinstance(args, dict) and "num_bytes_accessed" in args:
            self.graphs.append(int(args["num_bytes_accessed"]))
        return False


_metrics_on = False


def disable_compile_caches() -> None:
    """Make every ``torch.compile`` in this process lower its graphs for real (no FX-graph
    or AOT-autograd cache hits), so that Inductor computes the byte counts that only a real
    compile produces. Its cache of built kernels stays on: compile times on a machine that
    ran the bench before are shorter than on a fresh one."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = False
    functorch_config.enable_autograd_cache = False


@contextlib.contextmanager
def inductor_graph_bytes() -> Iterator[list[int]]:
    """Collect Inductor's byte count of every graph compiled inside the block.

    Yields a list that receives one int per compiled graph (a forward and, on the first
    backward, a backward graph). Compile caches must be off (:func:`disable_compile_caches`)
    or a cache hit compiles nothing and counts nothing.
    """
    global _metrics_on
    if not _metrics_on:
        # Inductor counts bytes only when its metrics log is on; the filter below swallows
        # the log lines themselves.
        torch._logging.set_logs(inductor_metrics=True)
        _metrics_on = True
    logger = logging.getLogger(_METRICS_LOGGER)
    catcher = _GraphBytes()
    logger.addFilter(catcher)
    try:
        yield catcher.graphs
    finally:
        logger.removeFilter(catcher)


def gbps(nbytes: int | None, seconds: float) -> float | None:
    """Achieved bandwidth in GB/s (10⁹ bytes per second), or None without a count."""
    if not nbytes or not seconds or math.isnan(seconds):
        return None
    return nbytes / seconds / 1e9
