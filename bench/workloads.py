"""The work the benchmarks run, built once and shared by the timers and the counters.

* :func:`make_train_step` — the trainer's own :class:`train.step.TrainStep` (forward,
  summed label-smoothed loss, backward, Nesterov SGD, EMA every 5 steps) around a ResNet9 of
  a given width, for a backend, exactly as :class:`train.trainer.Trainer` builds it.
* :func:`count_train_step` — one such step counted (bytes per phase, FLOPs) on fake tensors,
  in any configuration (e.g. the GPU's fp16 autocast + channels_last) on any machine.
* :func:`synthetic_images` — a uint8 stand-in for the CIFAR-10 training set (the timings do
  not depend on pixel values, and the bench must run without the data set).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from bench.counters import ByteCounter, autograd_nodes_between, count_flops
from bench.shapes import GHOST_BATCH, StepShape
from kernels import augment_bytes, ghost_bn_act_bytes
from train.build import build_optimizer
from train.config import CIFAR10_MEAN, CIFAR10_STD, TrainConfig
from train.runtime import Runtime, compiles_model
from train.step import TrainStep

__all__ = [
    "runtime_for",
    "make_train_step",
    "step_inputs",
    "count_train_step",
    "StepCount",
    "synthetic_images",
    "default_dtype",
    "STEPS_PER_EPOCH",
    "triton_ghost_bn_act_bytes",
    "triton_augment_bytes",
    "step_ops",
]

#: Steps in one epoch of the recipe (50,000 images, batch 512, last partial batch dropped).
STEPS_PER_EPOCH = 50_000 // 512


def steps_per_epoch(shape: StepShape) -> int:
    """Steps of one epoch over the 50,000 training images at ``shape.batch`` (drop last)."""
    return 50_000 // shape.batch


#: Triton launches of one fused op as the trainer calls it (training, with a gradient): the
#: ghost-BN forward (statistics, finalize, normalise) and backward (reduce, finalize, dx), and
#: the augmentation. ``tests/test_launch.py`` counts the real launches against these.
TRITON_LAUNCHES = {"bn_fwd": 3, "bn_bwd": 3, "augment": 1}


def graphed_launches(param_groups: int, ema_every: int) -> float:
    """Host launches of one step replayed from a CUDA graph (:class:`train.step.TrainStep`):
    the batch and labels copied into the static buffers, each parameter group's learning
    rate filled, the step graph's replay, and the weight-average graph's replay every
    ``ema_every`` steps. ``tests/test_graphs.py`` counts them on a captured step."""
    return 2 + param_groups + 1 + 1 / ema_every


def default_dtype(device: torch.device) -> torch.dtype:
    """The trainer's activation dtype: fp16 on a GPU, fp32 on the CPU (train.runtime)."""
    return torch.float16 if device.type == "cuda" else torch.float32


def runtime_for(
    device: torch.device,
    backend: str,
    dtype: torch.dtype | None = None,
    channels_last: bool | None = None,
) -> Runtime:
    """The :class:`train.runtime.Runtime` the trainer would resolve on ``device``."""
    return Runtime(
        device=device,
        backend=backend,
        dtype=dtype if dtype is not None else default_dtype(device),
        channels_last=(device.type == "cuda") if channels_last is None else channels_last,
    )


def train_config(shape: StepShape) -> TrainConfig:
    """The recipe's settings at ``shape``'s width and batch: the seed's final recipe (ghost
    splits of 32 images) or ``shape.preset``'s."""
    if shape.preset is not None:
        from train.presets import preset_config

        return preset_config(shape.preset, width=shape.width, batch_size=shape.batch)
    return TrainConfig(
        width=shape.width,
        batch_size=shape.batch,
        ghost_batch=GHOST_BATCH if shape.batch % GHOST_BATCH == 0 else 0,
    )


def _whitening_filters(config: TrainConfig, seed: int = 0) -> torch.Tensor:
    """Random filters shaped like the network's whitening filters (any finite filters time
    the same; these have their scale): ResNet9's 27 of 3×3, airbench's k×k eigenfilters and
    their negations (24 of 2×2)."""
    k = config.whitening_patch_size
    count = 3 * k * k * (2 if config.network == "airbench" else 1)
    g = torch.Generator().manual_seed(seed)
    return torch.randn(count, 3, k, k, generator=g) / (3 * k * k) ** 0.5


def build_model(shape: StepShape, backend: str, runtime: Runtime, seed: int = 0) -> nn.Module:
    """The recipe's network at ``shape.width`` for ``backend`` on the runtime's device,
    whitening set."""
    from train.build import build_network

    config = train_config(shape)
    torch.manual_seed(seed)
    model = build_network(config, backend)
    if config.whitening:
        model.set_whitening(_whitening_filters(config, seed))
    model = model.to(runtime.device)
    if runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model.train()


def make_train_step(
    shape: StepShape, backend: str, runtime: Runtime, seed: int = 0, graphs: str = "off"
) -> TrainStep:
    """The trainer's step for ``backend``: like :class:`train.trainer.Trainer`, the whole
    model is wrapped in ``torch.compile`` for ``compile``, and for ``triton`` on a GPU (the
    Triton ops are ``triton_op``s whose kernels the compiled graph launches itself).
    ``graphs``: ``"on"`` to capture the step in a CUDA graph (see
    :meth:`train.step.TrainStep.check_capture`)."""
    model = build_model(shape, backend, runtime, seed)
    forward = torch.compile(model) if compiles_model(backend, runtime.device) else model
    return TrainStep(
        model,
        forward,
        train_config(shape),
        runtime,
        steps_per_epoch=steps_per_epoch(shape),
        graphs=graphs,
        capture_after=10**9,  # the bench captures explicitly, checked against a replay
    )


def step_inputs(
    shape: StepShape, runtime: Runtime, sets: int = 1, seed: int = 0
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``sets`` batches of normalised-looking inputs (runtime dtype and memory format) and
    labels, to rotate through."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(sets):
        x = torch.randn(shape.batch, 3, 32, 32, generator=g).to(runtime.dtype)
        if runtime.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (shape.batch,), generator=g)
        out.append((x.to(runtime.device), y.to(runtime.device)))
    return out


def synthetic_images(count: int, device: torch.device, seed: int = 0) -> torch.Tensor:
    """``count`` random uint8 images (N, 3, 32, 32): a stand-in for CIFAR-10."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=g).to(device)


# ------------------------------------------------------------------------------------------
# Counting a step
# ------------------------------------------------------------------------------------------


@dataclass
class StepCount:
    """Bytes and FLOPs of one training step (plus the augmentation of its batch), per phase.

    Phases: ``augment``; ``model_fwd`` and ``model_bwd`` (everything in the network except
    the BN sites); ``bn_fwd:<i>`` and ``bn_bwd:<i>`` for BN site ``i`` in forward order;
    ``loss_bwd`` (the loss's gradient); ``optimizer``; ``ema`` (one average update, which runs
    every ``ema_every`` steps); ``other`` (the loss's forward and the step's bookkeeping).
    """

    shape: StepShape
    dtype: str
    channels_last: bool
    ema_every: int
    phases: dict[str, dict[str, int]]
    flops: int  # FlopCounterMode, one step
    param_groups: int = 2  # the optimiser's groups (one learning-rate fill each)
    capturable: bool = True  # False: a host-float rate (Muon) keeps the step out of graphs
    bn_sites: list[dict[str, Any]] = field(default_factory=list)
    records: list[Any] = field(default_factory=list, repr=False)

    def bytes_where(self, keep: Callable[[str], bool]) -> int:
        return sum(v["bytes"] for k, v in self.phases.items() if keep(k))

    def eager_bytes(self) -> int:
        """Bytes of an average eager step: the EMA update counted at 1/ema_every."""
        return (
            self.bytes_where(lambda p: p != "ema")
            + self.phases.get("ema", {"bytes": 0})["bytes"] // self.ema_every
        )

    def outside_model_bytes(self) -> int:
        """Bytes of an average step outside the network (augment, loss, optimiser, EMA)."""
        model = self.model_bytes()
        return self.eager_bytes() - model

    def model_bytes(self) -> int:
        """Bytes of the network's forward and backward (BN sites included)."""
        return self.bytes_where(lambda p: p.startswith(("model_", "bn_")))

    def bn_bytes(self) -> int:
        return self.bytes_where(lambda p: p.startswith("bn_"))

    def launches(self, backend: str) -> dict[str, float | None] | None:
        """Kernel launches of an average step on ``backend``: ``uncaptured`` (op by op) and
        ``graphed`` (in a CUDA graph; None when the step cannot be captured: Muon's rate is
        a host float); None where this count cannot say (``compile``: what
        Inductor fuses on a GPU is only known there; ``gpu-check`` profiles it).

        One launch per counted op (an op that moves bytes or does FLOPs; a foreach or fused
        optimiser op counts once); the EMA update at 1/ema_every. ``triton``: the BN sites'
        and the augmentation's ops replaced by their kernels' launches
        (:data:`TRITON_LAUNCHES`); the rest as eager ops — an upper bound, since on a GPU
        the trainer also compiles the network around the kernels."""
        graphed = graphed_launches(self.param_groups, self.ema_every) if self.capturable else None

        def average(records: list[Any]) -> float:
            return sum(1 / self.ema_every if r.phase == "ema" else 1 for r in records)

        if backend == "eager":
            return {"uncaptured": average(self.records), "graphed": graphed}
        if backend == "triton":
            rest = [
                r for r in self.records if not r.phase.startswith("bn_") and r.phase != "augment"
            ]
            kernels = len(self.bn_sites) * (TRITON_LAUNCHES["bn_fwd"] + TRITON_LAUNCHES["bn_bwd"])
            if "augment" in self.phases:
                kernels += TRITON_LAUNCHES["augment"]
            return {"uncaptured": average(rest) + kernels, "graphed": graphed}
        return None

    def to_json(self) -> dict[str, Any]:
        return {
            "width": self.shape.width,
            "batch": self.shape.batch,
            "dtype": self.dtype,
            "channels_last": self.channels_last,
            "ema_every": self.ema_every,
            "flops": self.flops,
            "eager_bytes": self.eager_bytes(),
            "phases": self.phases,
            "bn_sites": self.bn_sites,
        }


def _fake_copy(model: nn.Module, mode: Any) -> nn.Module:
    model._apply(mode.from_tensor)
    return model


def count_train_step(
    shape: StepShape, dtype: torch.dtype, channels_last: bool, augment: bool = True
) -> StepCount:
    """Count one eager training step at ``shape`` in ``dtype`` (fp32, or fp16/bf16 under
    autocast as the trainer runs on a GPU) without running it: every tensor is fake.

    The counted step is one where the EMA update fires, so that its cost is known; an
    average step counts it at 1/``ema_every`` (:meth:`StepCount.eager_bytes`).
    """
    from torch._subclasses.fake_tensor import FakeTensorMode

    from kernels import augment as augment_op
    from kernels import random_augment_params

    cpu = torch.device("cpu")
    runtime = Runtime(device=cpu, backend="eager", dtype=dtype, channels_last=channels_last)
    config = train_config(shape)
    model = build_model(shape, "eager", runtime)  # real, small: parameters only
    mode = FakeTensorMode()
    _fake_copy(model, mode)
    counter = ByteCounter(backward_phase="loss_bwd")
    sites = list(model.bn_sites())
    site_info: list[dict[str, Any]] = []

    def bn_pre(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple) -> None:
            counter._bn_stack.append((counter.phase, args[0]))
            counter.phase = f"bn_fwd:{index}"

        return hook

    def bn_post(index: int) -> Callable:
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
            saved, x = counter._bn_stack.pop()
            counter.phase = saved
            for node in autograd_nodes_between(output, x):
                counter.node_phases.setdefault(node, f"bn_bwd:{index}")
            if len(site_info) < len(sites):
                site_info.append(
                    {
                        "index": index,
                        "shape": list(x.shape),
                        "pool": module.pool,
                        "splits": int(module.splits),
                        "act": module.act,
                        "dtype": str(x.dtype).replace("torch.", ""),
                        "channels_last": bool(
                            x.is_contiguous(memory_format=torch.channels_last)
                            and not x.is_contiguous()
                        ),
                    }
                )

        return hook

    def model_post(module: nn.Module, args: tuple, output: torch.Tensor) -> None:
        counter.phase = "other"
        for node in autograd_nodes_between(output, None):
            counter.node_phases.setdefault(node, "model_bwd")

    counter._bn_stack = []  # type: ignore[attr-defined]
    hooks = [
        model.register_forward_pre_hook(lambda m, a: setattr(counter, "phase", "model_fwd")),
        model.register_forward_hook(model_post),
    ]
    for i, site in enumerate(sites):
        hooks += [site.register_forward_pre_hook(bn_pre(i)), site.register_forward_hook(bn_post(i))]
    # The GPU's optimiser: fused SGD with tensor rates (one op per group), built outside the
    # fake mode (its constructor reads the rate's value).
    fused_optimizer = build_optimizer(model, config, fused=True)
    for group in fused_optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"] = mode.from_tensor(group["lr"])
    try:
        with mode:
            step = TrainStep(model, model, config, runtime, steps_per_epoch=steps_per_epoch(shape))
            step.optimizer = fused_optimizer
            opt = step.optimizer
            optimizer_step = opt.step  # Muon + SGD is a combined optimiser without hooks

            def counted_step(*args: Any, **kwargs: Any) -> Any:
                with counter.in_phase("optimizer"):
                    return optimizer_step(*args, **kwargs)

            opt.step = counted_step  # this instance only
            if step.ema is not None:
                update = step.ema.update

                def ema_update() -> None:
                    with counter.in_phase("ema"):
                        update()

                step.ema.update = ema_update  # this instance only
                step.steps = step.ema_every - 1  # the counted step runs the EMA
            if step.lookahead is not None:  # the same phase: a periodic average, every k
                pull = step.lookahead.after_step

                def lookahead_step(t: int) -> None:
                    with counter.in_phase("ema"):
                        pull(t)

                step.lookahead.after_step = lookahead_step
                step.steps = step.lookahead.every - 1
            images = torch.empty(shape.batch * 2, 3, 32, 32, dtype=torch.uint8)
            labels = torch.empty(shape.batch * 2, dtype=torch.int64)
            indices = torch.arange(shape.batch)
            crop, flip, cutout = random_augment_params(
                shape.batch, pad=config.pad, cutout_size=config.cutout, flip=bool(config.flip)
            )
            with counter:
                if augment:
                    with counter.in_phase("augment"):
                        inputs = augment_op(
                            images,
                            indices,
                            crop,
                            flip,
                            cutout,
                            cutout_size=config.cutout,
                            pad=config.pad,
                            mean=CIFAR10_MEAN,
                            std=CIFAR10_STD,
                            out_dtype=dtype,
                            backend="eager",
                            validate=False,
                        )
                        targets = labels[indices]
                else:
                    inputs = torch.empty(shape.batch, 3, 32, 32, dtype=dtype)
                    targets = labels[: shape.batch]
                if not channels_last:
                    inputs = inputs.contiguous()
                step(inputs, targets)
            step.steps = 0
            flops = count_flops(lambda: step(inputs, targets))
    finally:
        for h in hooks:
            h.remove()
    phases: dict[str, dict[str, int]] = {}
    for r in counter.records:
        entry = phases.setdefault(r.phase, {"bytes": 0, "flops": 0, "ops": 0})
        entry["bytes"] += r.bytes
        entry["flops"] += r.flops
        entry["ops"] += 1
    return StepCount(
        shape=shape,
        dtype=str(dtype).replace("torch.", ""),
        channels_last=channels_last,
        ema_every=config.lookahead_every if config.lookahead else config.ema_every,
        phases=phases,
        flops=flops,
        param_groups=len(step.optimizer.param_groups),
        capturable=config.optimizer != "muon",
        bn_sites=site_info,
        records=counter.records,
    )


# ------------------------------------------------------------------------------------------
# Triton kernels' byte counts
# ------------------------------------------------------------------------------------------


def triton_ghost_bn_act_bytes(
    shape: Sequence[int],
    dtype: torch.dtype,
    pool: bool,
    direction: str,
    act: str | None = "celu",
    splits: int | None = None,
) -> int:
    """Bytes the Triton ghost-BN kernels move at one site in training ("fwd", "bwd" or
    "fwd+bwd"), from ``kernels.ghost_bn_act_bytes`` (frozen scale; ``splits`` ghost batches,
    by default the seed's splits of 32 images)."""
    b = int(shape[0])
    if splits is None:
        splits = max(1, b // GHOST_BATCH) if b % GHOST_BATCH == 0 else 1
    kw = dict(splits=splits, learnable_scale=False, act=act)
    fwd = int(ghost_bn_act_bytes(tuple(shape), dtype, pool, True, False, **kw)["triton"])
    if direction == "fwd":
        return fwd
    both = int(ghost_bn_act_bytes(tuple(shape), dtype, pool, True, True, **kw)["triton"])
    return both if direction == "fwd+bwd" else both - fwd


def triton_augment_bytes(
    batch: int, dtype: torch.dtype, cutout_size: int, pad: int, channels: int = 3, size: int = 32
) -> int:
    """Bytes the Triton augmentation kernel moves for one batch, from
    ``kernels.augment_bytes`` (its ``fused`` total)."""
    counts = augment_bytes(batch, channels, size, size, dtype, pad=pad, cutout=bool(cutout_size))
    return int(counts["fused"]["total"])


# ------------------------------------------------------------------------------------------
# One step as a list of (bytes, flops) per op, per backend: the roofline's input
# ------------------------------------------------------------------------------------------


def step_ops(
    count: StepCount,
    backend: str,
    *,
    compiled_model_bytes: int | None = None,
    compiled_augment_bytes: int | None = None,
) -> tuple[list[tuple[int, int]] | None, str]:
    """The ops of one average step on ``backend`` as (bytes, flops), and how they were
    counted — or (None, why not).

    * ``eager``: every op the dispatch-mode counter saw; the EMA update at 1/ema_every.
    * ``triton``: the same, with each BN site's forward and backward ops replaced by the two
      Triton kernels' counts and the augmentation by its kernel's count
      (``*_bytes`` functions of the kernel modules). The rest of the network stays as eager
      ops (on a GPU the trainer also compiles it, which fuses a little more around them).
    * ``compile``: the convolutions and matmuls as counted (Inductor calls the same extern
      kernels), every other byte of the network as Inductor counted its compiled forward
      and backward graphs (``compiled_model_bytes``, which includes the convolutions'
      bytes), the augmentation as Inductor's count of its graph, the rest eager.
    """
    ema = count.ema_every

    def scaled(r: Any) -> tuple[int, int]:
        return (r.bytes // ema, r.flops // ema) if r.phase == "ema" else (r.bytes, r.flops)

    if backend == "eager":
        return [scaled(r) for r in count.records], "dispatch-mode count of every eager op"
    if backend == "triton":
        ops = [
            scaled(r)
            for r in count.records
            if not r.phase.startswith("bn_") and r.phase != "augment"
        ]
        for site in count.bn_sites:
            for direction in ("fwd", "bwd"):
                b = triton_ghost_bn_act_bytes(
                    site["shape"], getattr(torch, site["dtype"]), site["pool"], direction
                )
                ops.append((b, 0))
        if "augment" in count.phases:
            a = triton_augment_bytes(count.shape.batch, getattr(torch, count.dtype), 0, 4)
            ops.append((a, 0))
        return ops, (
            "eager count with the BN sites and the augmentation replaced by the "
            "Triton kernels' byte counts"
        )
    if backend == "compile":
        if compiled_model_bytes is None:
            return None, (
                "needs Inductor's count of the compiled model at this shape and "
                "dtype, which a step benchmark at this configuration produces"
            )
        model = [r for r in count.records if r.phase.startswith(("model_", "bn_"))]
        tensor_ops = [(r.bytes, r.flops) for r in model if r.flops]
        ops = tensor_ops + [(max(0, compiled_model_bytes - sum(b for b, _ in tensor_ops)), 0)]
        ops += [
            scaled(r)
            for r in count.records
            if not r.phase.startswith(("model_", "bn_")) and r.phase != "augment"
        ]
        if "augment" in count.phases:
            if compiled_augment_bytes is None:
                return None, "needs Inductor's count of the compiled augmentation at this dtype"
            ops.append((compiled_augment_bytes, 0))
        return ops, (
            "Inductor's count of the compiled model and augmentation graphs, convs "
            "and matmuls as counted, the rest eager"
        )
    raise ValueError(f"unknown backend {backend!r}")
