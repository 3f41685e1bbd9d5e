"""CUDA-graph capture of the training step: one replay instead of hundreds of launches.

Why: a step of the recipe is ~100 kernel launches (convolutions, the fused BN sites forward
and backward, the loss, the optimiser). Launched from Python each costs microseconds of host
time, and on an H100 the host then falls behind the device (see the roofline's per-launch
cost in ``bench.roofline``). A captured graph replays the whole step with one launch.

What a graph needs from the step, and where :class:`~train.step.TrainStep` provides it:

* every value that changes between steps lives in device memory that the graph reads, not in
  a Python number baked into a launch: the learning rate is a 0-d tensor per parameter group
  (fused SGD), the step index is a device counter, the inputs are copied into static buffers
  before each replay (the augmentation's own output is a fresh tensor per step);
* every piece of state is updated in place (momentum, BN running statistics, the divergence
  marker, the step counter): a graph replays writes to the same addresses;
* no host read of a device value inside the step (``tests/test_no_sync.py``);
* the weight-average update is its own small graph, replayed every ``ema_every`` steps: the
  Python ``if`` that chooses it runs on the host, outside both graphs.

The per-epoch permutation and augmentation choices are drawn outside the graph, as before.

Modes (``--cuda-graphs``): ``off``; ``on`` (capture, and fail with one line if the capture
fails or its replay disagrees with an uncaptured step); ``auto`` (the default: the same
check during the trainer's warm-up, and with one line falling back to uncaptured steps if it
fails; off on the CPU and with data parallelism over several processes).

How it is checked without a GPU: :class:`GraphBackend` is the seam. ``tests/graph_emulator.py``
provides a CPU backend that records every ATen op of the captured step with its arguments
(Python scalars included, as a CUDA graph bakes them) and replays that record on the same
tensors, so a step that kept a per-step value on the host would replay stale.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from typing import Protocol

import torch

from train.config import CUDA_GRAPH_CHOICES as GRAPH_CHOICES
from train.config import ConfigError


class GraphCaptureError(RuntimeError):
    """Capturing the step failed, or its replay disagreed with an uncaptured step."""


class Graph(Protocol):
    def replay(self) -> None: ...


class GraphBackend(Protocol):
    """How to capture and replay: CUDA graphs on a GPU, an emulator in the CPU tests."""

    def warm_up_context(self) -> contextlib.AbstractContextManager:
        """Where the uncaptured steps before a capture run (CUDA: a side stream)."""
        ...

    def capture(self, body: Callable[[], object]) -> tuple[Graph, object]:
        """Capture ``body()``; return the graph and what ``body`` returned (tensors that each
        replay overwrites). The capture may run ``body``'s work or only record it."""
        ...


class CudaGraphs:
    """torch.cuda.CUDAGraph on one device; every capture of a trainer shares one memory pool
    (the step graph and the weight-average graph never run at the same time)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.pool = torch.cuda.graph_pool_handle()
        self._side = torch.cuda.Stream(device)

    @contextlib.contextmanager
    def warm_up_context(self) -> Iterator[None]:
        # Work before a capture runs on a side stream, as PyTorch's capture recipe asks:
        # lazily created state (autograd's, the allocator's) is then not tied to the
        # capturing stream.
        current = torch.cuda.current_stream(self.device)
        self._side.wait_stream(current)
        with torch.cuda.stream(self._side):
            yield
        current.wait_stream(self._side)

    def capture(self, body: Callable[[], object]) -> tuple[Graph, object]:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.device(self.device), torch.cuda.graph(graph, pool=self.pool):
            outputs = body()
        return graph, outputs


def default_backend(device: torch.device) -> GraphBackend:
    """The graph backend for ``device`` (CUDA only). Tests patch this to emulate one."""
    if device.type != "cuda":
        raise GraphCaptureError(f"CUDA graphs need a CUDA device, not {device}")
    return CudaGraphs(device)


def resolve_graph_mode(requested: str, device: torch.device, data_parallel: bool) -> str:
    """``auto`` → ``"auto"`` where a capture can be tried (a CUDA device, one process), else
    ``"off"``; ``on`` where it cannot is a :class:`~train.config.ConfigError` naming why."""
    if requested not in GRAPH_CHOICES:
        raise ConfigError(
            f"--cuda-graphs must be one of {', '.join(GRAPH_CHOICES)}; got {requested!r}"
        )
    if requested == "off":
        return "off"
    why = None
    if device.type != "cuda":
        why = f"CUDA graphs need a CUDA device and this run is on {device}"
    elif data_parallel:
        why = "CUDA graphs are not supported with data parallelism over several processes"
    if why is None:
        return requested
    if requested == "on":
        raise ConfigError(f"{why}: use --cuda-graphs auto or off")
    return "off"


class StaticStep:
    """A captured step: static input buffers, the graph, and its output tensors.

    Args:
        body: ``body(inputs, labels) -> (loss, correct)``, the step's device work.
        inputs: a batch like every later one ((B, 3, H, W), the run's dtype and layout);
            copied into the static buffer before the capture.
        labels: int64 (B,).
        backend: how to capture.
    """

    def __init__(
        self,
        body: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
        inputs: torch.Tensor,
        labels: torch.Tensor,
        backend: GraphBackend,
    ) -> None:
        self.inputs = torch.empty_like(inputs)
        self.labels = torch.empty_like(labels)
        self.inputs.copy_(inputs)
        self.labels.copy_(labels)
        self.graph, outputs = backend.capture(lambda: body(self.inputs, self.labels))
        self.outputs: tuple[torch.Tensor, torch.Tensor] = outputs  # type: ignore[assignment]

    def matches(self, inputs: torch.Tensor, labels: torch.Tensor) -> bool:
        """Whether a batch fits the static buffers (shape, dtype, layout)."""
        return (
            inputs.shape == self.inputs.shape
            and inputs.dtype == self.inputs.dtype
            and inputs.stride() == self.inputs.stride()
            and labels.shape == self.labels.shape
        )

    def __call__(
        self, inputs: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Copy the batch in, replay; the outputs are overwritten by the next replay."""
        self.inputs.copy_(inputs, non_blocking=True)
        self.labels.copy_(labels, non_blocking=True)
        self.graph.replay()
        return self.outputs


def snapshot(tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Copies of ``tensors`` (outside any graph pool)."""
    with torch.no_grad():
        return [t.detach().clone() for t in tensors]


def restore(tensors: Sequence[torch.Tensor], saved: Sequence[torch.Tensor]) -> None:
    """Write ``saved`` back into ``tensors`` in place (their addresses are what a graph
    holds)."""
    with torch.no_grad():
        torch._foreach_copy_(list(tensors), list(saved))


def largest_difference(a: Sequence[torch.Tensor], b: Sequence[torch.Tensor]) -> float:
    """max over pairs of max |a − b| / (1 + max |a|) (floating point; exact for integers):
    how far two copies of the training state are apart, relative to their size."""
    worst = 0.0
    for x, y in zip(a, b, strict=True):
        if x.is_floating_point():
            x, y = x.float(), y.float()
            scale = 1.0 + x.abs().max().item() if x.numel() else 1.0
            gap = (x - y).abs().max().item() / scale if x.numel() else 0.0
        else:
            gap = 0.0 if torch.equal(x, y) else float("inf")
        worst = max(worst, gap)
    return worst
