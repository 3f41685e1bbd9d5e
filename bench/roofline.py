"""A roofline MODEL of the training step on named GPUs — a prediction, not a measurement.

Inputs are counts, not timings: the bytes every op of one training step moves and the FLOPs
of its convolutions and matmuls (:func:`bench.workloads.count_train_step`, counted on fake
tensors in the trainer's GPU configuration: fp16 autocast, channels_last, batch 512), and
the GPU's published peak rates below.

The model, per op ``i`` of one step::

    t_i = max(bytes_i / peak_bandwidth, flops_i / peak_tensor_flops)
    device = Σ_i t_i          host = launches × HOST_US_PER_LAUNCH
    step = max(device, host)  10 epochs = 10 × 97 steps × step

The host runs ahead of the device while it launches faster than the device works; once it
is slower, the step waits for it. Launches per step are counted per backend
(:meth:`bench.workloads.StepCount.launches`), uncaptured and with the step in a CUDA graph
(one replay plus the copies and fills around it, :func:`bench.workloads.graphed_launches`).

Assumptions (printed with every prediction):
  * 100 % of the datasheet's peak bandwidth and dense fp16/bf16 tensor rate — an optimistic
    bound; real kernels reach less (roughly 70–90 % of bandwidth for streaming kernels, and
    less than half the tensor peak for these small convolutions);
  * a fixed host cost per kernel launch (:data:`HOST_US_PER_LAUNCH`, an assumption), no
    other Python overhead, no overlap between ops, no cache reuse between ops (each op reads
    its inputs from DRAM);
  * every matmul/conv FLOP runs on tensor cores in fp16/bf16; other FLOPs are ignored
    (elementwise work is bandwidth-bound here);
  * the step includes the augmentation of its batch and the EMA update every 5 steps;
    data transfer, whitening set-up, compilation and evaluation are excluded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = [
    "GPU",
    "GPUS",
    "HOST_US_PER_LAUNCH",
    "predict_step",
    "roofline_table",
    "ASSUMPTIONS",
    "LABEL",
]

LABEL = "MODEL (roofline prediction from counted bytes and FLOPs; not a measurement)"

#: ASSUMED host time per kernel launched from eager PyTorch: ATen dispatch from Python plus
#: the driver's launch call. Not measured by this project (no GPU yet); ``gpu-check``
#: measures the host time per step with the profiler, which replaces this figure.
HOST_US_PER_LAUNCH = 5.0

ASSUMPTIONS = (
    "t_op = max(bytes/peak_bandwidth, flops/peak_tensor_flops) per op, summed over the ops "
    "of one step (serial, no overlap, no cache reuse between ops)",
    "100% of the datasheet peaks (an optimistic bound: no efficiency factor)",
    f"host: {HOST_US_PER_LAUNCH:g} µs per kernel launch (ASSUMED, not measured); step = "
    "max(device time, launches × that); launches counted per step, uncaptured and in a CUDA "
    "graph; no other Python or synchronisation overhead",
    "FLOPs: convolutions and matmuls only (FlopCounterMode), all at the dense fp16/bf16 "
    "tensor-core rate",
    "bytes: counted per backend in the trainer's GPU configuration (fp16 autocast, "
    "channels_last); the step includes augmenting its batch and 1/5 of an EMA update",
    "10 epochs = 10 × 97 steps (50,000 images, batch 512, drop last); data transfer, "
    "whitening, compilation and evaluation excluded",
)


@dataclass(frozen=True)
class GPU:
    """Published peak rates of one GPU (vendor datasheet)."""

    name: str
    bandwidth_gbs: float  # DRAM bandwidth, GB/s (10⁹ B/s)
    tensor_tflops: float  # dense fp16/bf16 tensor-core rate, TFLOP/s (no sparsity)
    source: str

    @property
    def bandwidth(self) -> float:
        return self.bandwidth_gbs * 1e9

    @property
    def flops(self) -> float:
        return self.tensor_tflops * 1e12


#: Peak rates from NVIDIA's datasheets. The A100 and H100 sheets print the tensor rates
#: "with sparsity" beside the dense ones (A100: 624 sparse / 312 dense; H100 SXM5: 1,979
#: sparse / 989 dense for BF16/FP16): the dense figure is the one that applies here.
GPUS: tuple[GPU, ...] = (
    GPU(
        "V100 SXM2",
        900.0,
        125.0,
        "NVIDIA Tesla V100 GPU Accelerator datasheet: 900 GB/s HBM2, 125 TFLOPS tensor "
        "performance (fp16 mixed precision), SXM2",
    ),
    GPU(
        "A100 SXM4 80GB",
        2039.0,
        312.0,
        "NVIDIA A100 Tensor Core GPU datasheet: 80GB SXM 2,039 GB/s HBM2e; BF16/FP16 tensor "
        "core 312 TFLOPS dense (624 with sparsity)",
    ),
    GPU(
        "H100 SXM5",
        3350.0,
        989.0,
        "NVIDIA H100 Tensor Core GPU datasheet: H100 SXM 3.35 TB/s HBM3; BF16/FP16 tensor "
        "core 1,979 TFLOPS with sparsity, i.e. 989 dense",
    ),
)


def predict_step(ops: list[tuple[int, int]], gpu: GPU) -> dict[str, float]:
    """Model one step from its ops' (bytes, flops).

    Returns the per-op roofline sum (``step_s``) and, for reference, the two whole-step
    bounds ``memory_s`` (all bytes at peak bandwidth) and ``math_s`` (all FLOPs at peak).
    """
    step = sum(max(b / gpu.bandwidth, f / gpu.flops) for b, f in ops)
    total_b = sum(b for b, _ in ops)
    total_f = sum(f for _, f in ops)
    return {
        "step_s": step,
        "memory_s": total_b / gpu.bandwidth,
        "math_s": total_f / gpu.flops,
        "bytes": total_b,
        "flops": total_f,
    }


def roofline_table(
    per_backend_ops: dict[str, list[tuple[int, int]]],
    steps: int,
    gpus: tuple[GPU, ...] = GPUS,
    launches: dict[str, dict[str, float | None]] | None = None,
    host_us_per_launch: float = HOST_US_PER_LAUNCH,
) -> list[dict[str, Any]]:
    """One row per (GPU, backend): predicted step and ``steps``-step times (the MODEL).

    ``launches[backend]``: ``{"uncaptured": n, "graphed": m}`` kernel launches per step
    (fractions: an update every k steps counts 1/k; ``graphed`` None: the step cannot be
    captured, so it runs uncaptured). A backend without counts is modelled
    with no host time (and says so: ``launches_per_step`` None). ``step_ms`` and
    ``ten_epochs_s`` are the step as the trainer runs it on a GPU, in a CUDA graph;
    ``uncaptured_*`` the same step launched op by op. ``host_bound`` says whether the host's
    launches, not the device, set the uncaptured step's time."""
    rows = []
    for gpu in gpus:
        for backend, ops in per_backend_ops.items():
            p = predict_step(ops, gpu)
            device_ms = p["step_s"] * 1e3
            counts = (launches or {}).get(backend)
            uncaptured = counts["uncaptured"] if counts else None
            graphed = counts["graphed"] if counts else None
            host_ms = (uncaptured or 0.0) * host_us_per_launch / 1e3
            uncaptured_ms = max(device_ms, host_ms)
            if counts and graphed is None:  # a step that cannot be captured
                step_ms = uncaptured_ms
            else:
                step_ms = max(device_ms, (graphed or 0.0) * host_us_per_launch / 1e3)
            rows.append(
                {
                    "gpu": gpu.name,
                    "backend": backend,
                    "bytes_per_step": p["bytes"],
                    "flops_per_step": p["flops"],
                    "device_ms": device_ms,
                    "memory_bound_ms": p["memory_s"] * 1e3,
                    "math_bound_ms": p["math_s"] * 1e3,
                    "launches_per_step": uncaptured,
                    "graphed_launches_per_step": graphed,
                    "host_ms": host_ms,
                    "step_ms": step_ms,
                    "ten_epochs_s": step_ms * steps / 1e3,
                    "uncaptured_step_ms": uncaptured_ms,
                    "uncaptured_ten_epochs_s": uncaptured_ms * steps / 1e3,
                    "host_bound": host_ms > device_ms,
                    # The host cost per launch above which the uncaptured step waits for
                    # the host: what a CUDA graph protects against.
                    "breakeven_us_per_launch": (
                        device_ms * 1e3 / uncaptured if uncaptured else None
                    ),
                    "steps": steps,
                    "kind": "model",
                }
            )
    return rows
