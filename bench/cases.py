"""The comparisons the bench suites run: each fused op, the whole step, and an epoch's data
path, every backend side by side, checked for agreement before anything is timed.

A :class:`Comparison` holds, per candidate (a backend, or a baseline method), a no-argument
callable doing one call, its counted bytes per call, and the time of its first call (which
includes compiling). :func:`measure` times the candidates together with
:func:`bench.timing.compare` and turns the samples into :class:`Result` rows; results are
cached per comparison, so that the pytest suites (one test per candidate) and
``python -m bench`` time each comparison once.

Candidates by op:

=============  ===========================================================================
augment        eager, compile, triton, ``loop`` (one image at a time in Python),
               ``grouped`` (the seed's up-to-200-groups method) — one batch
ghost_bn_act   eager, compile, triton — forward, backward, forward+backward, per BN site
               (ResNet9's and airbench94's, :mod:`bench.shapes`)
step           eager, compile, triton — forward+backward+optimizer+EMA (the trainer's step)
epoch          eager, compile, triton, grouped (+ loop on a GPU) — shuffle + augment of the
               50,000 training images, no network
=============  ===========================================================================

``triton`` is timed only on a GPU: on a CPU Triton runs in its interpreter, which says
nothing about speed. Such gaps are recorded with their reason in :data:`NOT_MEASURED`.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch

import kernels
from bench import baselines
from bench.counters import count_bytes, gbps, inductor_graph_bytes
from bench.shapes import AugmentShape, BNSite, StepShape
from bench.timing import (
    Samples,
    Timed,
    TimingPlan,
    compare,
    device_name,
    host_seconds,
    rotation_count,
)
from bench.workloads import (
    STEPS_PER_EPOCH,
    count_train_step,
    make_train_step,
    runtime_for,
    step_inputs,
    synthetic_images,
    train_config,
    triton_augment_bytes,
    triton_ghost_bn_act_bytes,
)
from train.config import CIFAR10_MEAN, CIFAR10_STD
from train.graphs import GraphCaptureError
from train.runtime import Runtime

__all__ = [
    "Candidate",
    "Comparison",
    "Result",
    "measure",
    "NOT_MEASURED",
    "COMPILE_TIMES",
    "not_measured",
    "augment_comparison",
    "ghost_bn_act_comparison",
    "step_comparison",
    "epoch_comparison",
    "tolerance",
    "DisagreementError",
    "triton_reason",
]

#: (what, reason) for everything the suite did not time or count — the summary lists them.
NOT_MEASURED: list[dict[str, str]] = []
#: One-off first-call times (compile included), by what was compiled.
COMPILE_TIMES: dict[str, float] = {}
#: Inductor's byte count of the compiled model (forward + backward graphs) per step shape,
#: (label, dtype, channels_last) -> bytes, from the compile backend's step benchmarks.
STEP_COMPILED_BYTES: dict[tuple[str, str, bool], int] = {}


def not_measured(what: str, reason: str) -> None:
    """Record that ``what`` was not measured and why (once)."""
    entry = {"what": what, "reason": reason}
    if entry not in NOT_MEASURED:
        NOT_MEASURED.append(entry)


def triton_reason(device: torch.device) -> str | None:
    """Why the Triton kernels cannot be timed on ``device``, or None when they can."""
    if device.type == "cuda":
        return None if kernels.triton_available() else "not timed: triton is not installed"
    return "not timed: no GPU (on the CPU Triton only runs in its interpreter)"


class DisagreementError(AssertionError):
    """A backend's result differs from the eager reference by more than the tolerance."""


#: Largest allowed error, relative to the reference's largest magnitude (at least 1), per
#: dtype: float32 leaves room for reordered sums; fp16/bf16 for one rounding of the output.
_TOLERANCE = {torch.float32: 1e-4, torch.float16: 1e-2, torch.bfloat16: 4e-2}


def tolerance(dtype: torch.dtype) -> float:
    return _TOLERANCE.get(dtype, 1e-2)


def _scaled_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double(), want.detach().double()
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    return float((got - want).abs().max()) / scale if want.numel() else 0.0


# ------------------------------------------------------------------------------------------
# Data structures
# ------------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """One way of doing the work: ``fn()`` does one call (rotating through input sets)."""

    fn: Callable[[], Any] | Timed
    bytes: int | None = None  # counted bytes per call
    bytes_how: str = ""
    first_call_s: float | None = None  # the first call, compile included
    host_s: float | None = None  # host time per call on a GPU (bench.timing.host_seconds)


@dataclass
class Comparison:
    """Candidates doing the same work, to be timed side by side."""

    op: str
    variant: str
    label: str
    shape: str
    dtype: torch.dtype
    device: torch.device
    candidates: dict[str, Candidate]
    skipped: dict[str, str] = field(default_factory=dict)  # candidate -> reason
    failed: dict[str, str] = field(default_factory=dict)  # candidate -> what went wrong
    flops: int | None = None
    agreement: dict[str, float] = field(default_factory=dict)  # candidate -> scaled error
    extra: dict[str, Any] = field(default_factory=dict)
    plan: TimingPlan | None = None  # overrides the run's plan (e.g. seconds-long calls)

    @property
    def key(self) -> str:
        return "/".join(p for p in (self.op, self.label, self.variant) if p)


@dataclass
class Result:
    """One candidate's timing in one comparison, with everything the table shows."""

    comparison: Comparison
    backend: str
    samples: Samples
    speedup_vs_eager: float | None
    speedup_vs_compile: float | None

    @property
    def candidate(self) -> Candidate:
        return self.comparison.candidates[self.backend]

    @property
    def gbps(self) -> float | None:
        return gbps(self.candidate.bytes, self.samples.median)

    def extra_info(self) -> dict[str, Any]:
        """What pytest-benchmark stores beside the samples (and the table reads back)."""
        c, cand = self.comparison, self.candidate
        tflops = c.flops / self.samples.median / 1e12 if c.flops and self.samples.median else None
        return {
            "op": c.op,
            "variant": c.variant,
            "label": c.label,
            "backend": self.backend,
            "device": device_name(c.device),
            "dtype": str(c.dtype).replace("torch.", ""),
            "shape": c.shape,
            "bytes": cand.bytes,
            "bytes_how": cand.bytes_how,
            "gbps": self.gbps,
            "flops": c.flops,
            "tflops": tflops,
            "median_s": self.samples.median,
            "p20_s": self.samples.p20,
            "p80_s": self.samples.p80,
            "samples": len(self.samples.seconds),
            "calls_per_sample": self.samples.calls_per_sample,
            "timing": self.samples.method,
            "speedup_vs_eager": self.speedup_vs_eager,
            "speedup_vs_compile": self.speedup_vs_compile,
            "first_call_s": cand.first_call_s,
            "host_s": cand.host_s,
            "agreement_error": c.agreement.get(self.backend),
            "agreement_tolerance": tolerance(c.dtype),
            "threads": torch.get_num_threads(),
            **c.extra,
        }


_RESULTS: dict[str, dict[str, Result]] = {}


def measure(comparison: Comparison, plan: TimingPlan) -> dict[str, Result]:
    """Time every candidate of ``comparison`` side by side (cached by its key)."""
    if comparison.key in _RESULTS:
        return _RESULTS[comparison.key]
    fns = {name: c.fn for name, c in comparison.candidates.items()}
    samples = compare(fns, comparison.device, comparison.plan or plan)
    eager = samples.get("eager")
    comp = samples.get("compile")
    results = {}
    for name, s in samples.items():
        results[name] = Result(
            comparison,
            name,
            s,
            speedup_vs_eager=eager.median / s.median if eager else None,
            speedup_vs_compile=comp.median / s.median if comp else None,
        )
    _RESULTS[comparison.key] = results
    for cand in comparison.candidates.values():
        cand.fn = _released  # drop the inputs (and retained graphs) the closures hold
    return results


def _released(*args: Any) -> None:
    raise RuntimeError("this candidate was timed already; its inputs are released")


def cached(key: str, build: Callable[[], Comparison]) -> Comparison:
    """Build a comparison once per process (its inputs and compiled graphs are reused)."""
    if key not in _COMPARISONS:
        _COMPARISONS[key] = build()
    return _COMPARISONS[key]


_COMPARISONS: dict[str, Comparison] = {}


def _first_call(
    what: str, fn: Callable[[], Any] | Timed, device: torch.device, record: bool = False
) -> float:
    """Seconds of the first call of ``fn``; with ``record`` it is a compile (or Triton JIT)
    event and goes into :data:`COMPILE_TIMES` under ``what``."""
    if isinstance(fn, Timed):
        args = fn.setup()
        start = time.perf_counter()
        fn.fn(args)
    else:
        start = time.perf_counter()
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    seconds = time.perf_counter() - start
    if record:
        COMPILE_TIMES.setdefault(what, seconds)
    return seconds


def _cycle(items: list[Any]) -> Callable[[], Any]:
    it = itertools.cycle(items)
    return lambda: next(it)


# ------------------------------------------------------------------------------------------
# ghost_bn_act
# ------------------------------------------------------------------------------------------

_BN_DIRECTIONS = ("fwd", "bwd", "fwd+bwd")
_bn_compiled: dict[str, dict[str, int]] = {}  # site key -> Inductor bytes {"fwd", "bwd"}


def _bn_inputs(
    site: BNSite, dtype: torch.dtype, device: torch.device, channels_last: bool, seed: int
) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(site.shape, generator=g).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    dy = torch.randn(site.out_shape, generator=g).to(dtype)
    if channels_last:
        dy = dy.contiguous(memory_format=torch.channels_last)
    c = site.channels
    return {
        "x": x.to(device).requires_grad_(),
        "bias": (0.1 * torch.randn(c, generator=g)).to(device).requires_grad_(),
        "running_mean": torch.zeros(c, device=device),
        "running_var": torch.ones(c, device=device),
        "dy": dy.to(device),
    }


def _bn_call(site: BNSite, backend: str, inp: dict[str, torch.Tensor]) -> torch.Tensor:
    """One training-mode call at ``site`` (its splits, pool and activation; frozen scale, as
    every recipe's): x (B, C, H, W) → y (B, C, H', W') in x's dtype and memory format."""
    return kernels.ghost_bn_act(
        inp["x"],
        inp["bias"],
        inp["running_mean"],
        inp["running_var"],
        splits=site.splits,
        pool=site.pool,
        act=site.act,
        alpha=site.alpha,
        training=True,
        backend=backend,
    )


def _bn_grads(y: torch.Tensor, inp: dict[str, torch.Tensor], retain: bool) -> tuple:
    return torch.autograd.grad(y, (inp["x"], inp["bias"]), inp["dy"], retain_graph=retain)


def _fresh(inp: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().requires_grad_(v.requires_grad) for k, v in inp.items()}


def _bn_check(site: BNSite, backend: str, inp: dict[str, torch.Tensor]) -> float:
    """Largest scaled error of ``backend`` against eager: output, both gradients, stats."""
    ref_in, got_in = _fresh(inp), _fresh(inp)
    ref_y = _bn_call(site, "eager", ref_in)
    got_y = _bn_call(site, backend, got_in)
    errors = [_scaled_error(got_y, ref_y)]
    errors += [
        _scaled_error(g, r)
        for g, r in zip(_bn_grads(got_y, got_in, False), _bn_grads(ref_y, ref_in, False))
    ]
    errors += [_scaled_error(got_in[k], ref_in[k]) for k in ("running_mean", "running_var")]
    return max(errors)


def ghost_bn_act_comparison(
    site: BNSite,
    direction: str,
    device: torch.device,
    dtype: torch.dtype,
    channels_last: bool,
    backends: Iterable[str] = ("eager", "compile", "triton"),
) -> Comparison:
    """One BN site, one direction ("fwd", "bwd" or "fwd+bwd"), every backend."""
    if direction not in _BN_DIRECTIONS:
        raise ValueError(f"direction must be one of {_BN_DIRECTIONS}; got {direction!r}")
    per_set = (2 * math.prod(site.shape) + math.prod(site.out_shape)) * torch.finfo(dtype).bits // 8
    sets = rotation_count(per_set, device)
    comp = Comparison(
        "ghost_bn_act",
        direction,
        site.label,
        site.shape_str(),
        dtype,
        device,
        {},
        extra={
            "site": site.name,
            "network": "resnet9" if site.preset is None else site.preset,
            "sites_in_model": site.times,
            "splits": site.splits,
            "pool": site.pool,
            "act": site.act,
            "channels_last": channels_last,
            "input_sets": sets,
        },
    )
    reason = triton_reason(device)
    site_key = f"{site.label}/{str(dtype)}/{channels_last}"
    for backend in backends:
        if backend == "triton" and reason:
            comp.skipped[backend] = reason
            not_measured("triton (all ops)", reason)
            continue
        inputs = [_bn_inputs(site, dtype, device, channels_last, seed) for seed in range(sets)]
        nxt = _cycle(inputs)
        first = None
        if backend == "compile" and site_key not in _bn_compiled:
            # The first forward compiles the forward graph, the first backward the backward
            # graph; Inductor's byte count of each comes with it.
            with inductor_graph_bytes() as graphs:
                inp = inputs[0]
                start = time.perf_counter()
                y = _bn_call(site, "compile", inp)
                fwd_graphs = list(graphs)
                _bn_grads(y, inp, False)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                first = time.perf_counter() - start
            COMPILE_TIMES.setdefault(f"ghost_bn_act {site.label} (fwd+bwd graphs)", first)
            _bn_compiled[site_key] = {"fwd": sum(fwd_graphs), "bwd": sum(graphs) - sum(fwd_graphs)}
        if direction == "fwd":
            fn = lambda b=backend, n=nxt: _bn_call(site, b, n())
        elif direction == "bwd":
            # Each timed backward consumes a forward graph built, untimed, just before it
            # (a compiled backward cannot be replayed with retain_graph).
            def setup(b=backend, n=nxt):
                inp = n()
                return _bn_call(site, b, inp), inp

            fn = Timed(fn=lambda args: _bn_grads(args[0], args[1], False), setup=setup)
        else:

            def fn(b=backend, n=nxt):
                inp = n()
                return _bn_grads(_bn_call(site, b, inp), inp, False)

        if first is None:
            # Triton compiles each kernel on its first launch: the fwd and bwd directions
            # are the first to launch the forward and the backward kernels.
            first = _first_call(
                f"ghost_bn_act {site.label} {direction} {backend} (JIT)",
                fn,
                device,
                record=backend == "triton" and direction != "fwd+bwd",
            )
        comp.candidates[backend] = Candidate(fn, first_call_s=first)
    # Agreement before timing.
    check_in = _bn_inputs(site, dtype, device, channels_last, seed=1234)
    for backend in comp.candidates:
        if backend != "eager":
            comp.agreement[backend] = _bn_check(site, backend, check_in)
    _bn_bytes(comp, site, direction, dtype, channels_last, site_key)
    return comp


def _triton_site_bytes(site: BNSite, dtype: torch.dtype, direction: str) -> int:
    """Bytes the Triton kernels move at ``site`` in training, "fwd" or "bwd", with the site's
    own splits and activation (``bench.workloads.triton_ghost_bn_act_bytes`` assumes the
    ResNet9 recipe's 32-image splits, which would give a plain-BN airbench site 32)."""
    kw = dict(splits=site.splits, learnable_scale=False, act=site.act)
    fwd = int(kernels.ghost_bn_act_bytes(site.shape, dtype, site.pool, True, False, **kw)["triton"])
    if direction == "fwd":
        return fwd
    both = int(kernels.ghost_bn_act_bytes(site.shape, dtype, site.pool, True, True, **kw)["triton"])
    return both - fwd


def _bn_bytes(
    comp: Comparison,
    site: BNSite,
    direction: str,
    dtype: torch.dtype,
    channels_last: bool,
    site_key: str,
) -> None:
    parts = ("fwd", "bwd") if direction == "fwd+bwd" else (direction,)
    if "eager" in comp.candidates:
        inp = _bn_inputs(site, dtype, comp.device, channels_last, seed=99)
        fwd = count_bytes(lambda: _bn_call(site, "eager", inp))
        y = _bn_call(site, "eager", inp)
        bwd = count_bytes(lambda: _bn_grads(y, inp, False))
        counted = {"fwd": fwd.total_bytes, "bwd": bwd.total_bytes}
        comp.candidates["eager"].bytes = sum(counted[p] for p in parts)
        comp.candidates["eager"].bytes_how = "dispatch-mode count of the eager ops"
    if "compile" in comp.candidates and site_key in _bn_compiled:
        comp.candidates["compile"].bytes = sum(_bn_compiled[site_key][p] for p in parts) or None
        comp.candidates["compile"].bytes_how = "Inductor's count of its compiled graphs"
    if "triton" in comp.candidates:
        comp.candidates["triton"].bytes = sum(_triton_site_bytes(site, dtype, p) for p in parts)
        comp.candidates["triton"].bytes_how = "kernels.ghost_bn_act.ghost_bn_act_bytes"
    # The least any implementation can move: read x and write y (forward); read x, y (or
    # recompute) and dy, write dx (backward) — an ideal fused kernel's traffic.
    size = torch.finfo(dtype).bits // 8
    x_b, y_b = math.prod(site.shape) * size, math.prod(site.out_shape) * size
    minimum = {"fwd": x_b + y_b, "bwd": 2 * x_b + y_b}
    comp.extra["min_bytes"] = sum(minimum[p] for p in parts)


# ------------------------------------------------------------------------------------------
# augment (one batch)
# ------------------------------------------------------------------------------------------


_DATA: dict[tuple, torch.Tensor] = {}


def _dataset(images: int, device: torch.device) -> torch.Tensor:
    """The synthetic uint8 data set, built once per size and device."""
    key = (images, str(device))
    if key not in _DATA:
        _DATA[key] = synthetic_images(images, device)
    return _DATA[key]


def _prepared(
    images: int, device: torch.device, dtype: torch.dtype, pad: int
) -> tuple[torch.Tensor, float]:
    """The seed's normalised, padded copy of the data set (built once) and its build time."""
    key = ("prepared", images, str(device), str(dtype), pad)
    if key not in _DATA:
        start = time.perf_counter()
        _DATA[key] = baselines.prepare_seed_dataset(
            _dataset(images, device), pad=pad, mean=CIFAR10_MEAN, std=CIFAR10_STD, out_dtype=dtype
        )
        _SETUP_S[key] = time.perf_counter() - start
    return _DATA[key], _SETUP_S[key]


_SETUP_S: dict[tuple, float] = {}
#: Counted bytes of one augmented batch, per (batch, dtype) and candidate: (bytes, how).
_AUGMENT_BYTES: dict[tuple, dict[str, tuple[int | None, str]]] = {}


def augment_bytes_for(batch: int, dtype: torch.dtype) -> dict[str, tuple[int | None, str]]:
    """Counted bytes of one augmented batch per candidate, if that batch was benchmarked."""
    return _AUGMENT_BYTES.get((batch, dtype), {})


def _augment_args(shape: AugmentShape, dtype: torch.dtype) -> dict[str, Any]:
    return dict(
        cutout_size=shape.cutout, pad=shape.pad, mean=CIFAR10_MEAN, std=CIFAR10_STD, out_dtype=dtype
    )


def augment_comparison(
    shape: AugmentShape,
    device: torch.device,
    dtype: torch.dtype,
    backends: Iterable[str] = ("eager", "compile", "triton", "loop", "grouped"),
) -> Comparison:
    """One batch of augmentation from a uint8 data set on the device, every method."""
    data = _dataset(shape.images, device)
    per_set = shape.batch * shape.channels * shape.size**2 * (1 + torch.finfo(dtype).bits // 8)
    sets = rotation_count(per_set, device)
    g = torch.Generator().manual_seed(0)
    params = []
    for _ in range(sets):
        idx = torch.randperm(shape.images, generator=g)[: shape.batch].to(device)
        crop, flip, cutout = kernels.random_augment_params(
            shape.batch, pad=shape.pad, cutout_size=shape.cutout, generator=g
        )
        params.append((idx, crop.to(device), flip.to(device), cutout.to(device)))
    kw = _augment_args(shape, dtype)
    comp = Comparison(
        "augment",
        "",
        f"b{shape.batch}",
        shape.shape_str(),
        dtype,
        device,
        {},
        extra={
            "images": shape.images,
            "pad": shape.pad,
            "cutout": shape.cutout,
            "input_sets": sets,
        },
    )
    reason = triton_reason(device)
    nxt = _cycle(params)
    prepared = None
    host_gen = torch.Generator().manual_seed(1)
    groups = min(baselines.MAX_GROUPS, shape.batch)
    for backend in backends:
        if backend == "triton" and reason:
            comp.skipped[backend] = reason
            not_measured("triton (all ops)", reason)
            continue
        if backend in ("eager", "compile", "triton"):
            fn = lambda b=backend: kernels.augment(data, *nxt(), **kw, backend=b, validate=False)
        elif backend == "loop":
            fn = lambda: baselines.per_image_loop_augment(data, *nxt(), **kw)
        elif backend == "grouped":
            prepared, comp.extra["grouped_setup_s"] = _prepared(
                shape.images, device, dtype, shape.pad
            )

            def fn():
                idx = nxt()[0]
                choices = baselines.draw_group_choices(
                    groups, pad=shape.pad, cutout_size=shape.cutout, generator=host_gen
                )
                return baselines.grouped_choice_augment(
                    prepared, idx, choices, cutout_size=shape.cutout
                )
        else:
            raise ValueError(f"unknown augmentation candidate {backend!r}")
        if backend == "compile":
            with inductor_graph_bytes() as graphs:
                first = _first_call(f"augment b{shape.batch} compile", fn, device, record=True)
            comp.candidates[backend] = Candidate(
                fn,
                first_call_s=first,
                bytes=sum(graphs) or None,
                bytes_how="Inductor's count of its compiled graph",
            )
        else:
            first = _first_call(
                f"augment b{shape.batch} {backend} (JIT)", fn, device, record=backend == "triton"
            )
            comp.candidates[backend] = Candidate(fn, first_call_s=first)
    # Agreement: every method against the eager reference on the same parameters.
    idx, crop, flip, cutout = params[0]
    ref = kernels.augment(data, idx, crop, flip, cutout, **kw, backend="eager")
    for backend in comp.candidates:
        if backend in ("compile", "triton"):
            got = kernels.augment(data, idx, crop, flip, cutout, **kw, backend=backend)
        elif backend == "loop":
            got = baselines.per_image_loop_augment(data, idx, crop, flip, cutout, **kw)
        elif backend == "grouped":
            choices = baselines.draw_group_choices(
                groups,
                pad=shape.pad,
                cutout_size=shape.cutout,
                generator=torch.Generator().manual_seed(7),
            )
            got = baselines.grouped_choice_augment(prepared, idx, choices, cutout_size=shape.cutout)
            c2, f2, k2 = baselines.expand_group_choices(shape.batch, choices, device)
            ref_g = kernels.augment(data, idx, c2, f2, k2, **kw, backend="eager")
            comp.agreement[backend] = _scaled_error(got, ref_g)
            continue
        else:
            continue
        comp.agreement[backend] = _scaled_error(got, ref)
    # Bytes.
    for backend, cand in comp.candidates.items():
        if backend in ("eager", "loop", "grouped"):
            cand.bytes = count_bytes(cand.fn).total_bytes
            cand.bytes_how = "dispatch-mode count of the eager ops"
        elif backend == "triton":
            cand.bytes = triton_augment_bytes(shape.batch, dtype, shape.cutout, shape.pad)
            cand.bytes_how = "kernels.augment.augment_bytes"
    _AUGMENT_BYTES[(shape.batch, dtype)] = {
        b: (c.bytes, c.bytes_how) for b, c in comp.candidates.items()
    }
    # Least traffic: read B uint8 images, write B images in the output dtype.
    pixels = shape.batch * shape.channels * shape.size**2
    comp.extra["min_bytes"] = pixels * (1 + torch.finfo(dtype).bits // 8)
    return comp


# ------------------------------------------------------------------------------------------
# epoch of the data path
# ------------------------------------------------------------------------------------------


def epoch_comparison(
    shape: AugmentShape,
    device: torch.device,
    dtype: torch.dtype,
    backends: Iterable[str],
    skipped: dict[str, str] | None = None,
    plan: TimingPlan | None = None,
) -> Comparison:
    """Shuffle + augment of ``shape.images`` images in batches of ``shape.batch`` (drop
    last), as the trainer's :class:`train.batches.AugmentedBatches` does; no network.

    ``skipped`` names candidates left out and why; ``plan`` overrides the run's timing plan
    (a CPU epoch takes seconds, so a few rounds without a warm-up call suffice)."""
    from train.batches import AugmentedBatches

    data = _dataset(shape.images, device)
    labels = torch.randint(0, 10, (shape.images,), generator=torch.Generator().manual_seed(0)).to(
        device
    )
    comp = Comparison(
        "epoch",
        "",
        f"{shape.images}img",
        f"{shape.images}×3×32×32 / b{shape.batch}",
        dtype,
        device,
        {},
        extra={
            "images": shape.images,
            "batches": shape.images // shape.batch,
            "pad": shape.pad,
            "cutout": shape.cutout,
        },
        skipped=dict(skipped or {}),
        plan=plan,
    )
    reason = triton_reason(device)
    gen = torch.Generator(device=device).manual_seed(0)
    host_gen = torch.Generator().manual_seed(0)
    prepared = None
    steps = shape.images // shape.batch
    kw = _augment_args(shape, dtype)
    for backend in backends:
        if backend == "triton" and reason:
            comp.skipped[backend] = reason
            continue
        if backend in ("eager", "compile", "triton"):
            batches = AugmentedBatches(
                data,
                labels,
                batch_size=shape.batch,
                pad=shape.pad,
                flip=True,
                cutout=shape.cutout,
                mean=CIFAR10_MEAN,
                std=CIFAR10_STD,
                dtype=dtype,
                backend=backend,
                generator=gen,
            )

            def fn(batches=batches):
                for _ in batches:
                    pass
        elif backend == "grouped":
            prepared, comp.extra["grouped_setup_s"] = _prepared(
                shape.images, device, dtype, shape.pad
            )

            def fn():
                # The seed's epoch: one shuffle, up to 200 groups over the whole epoch.
                order = torch.randperm(shape.images, device=device, generator=gen)
                choices = baselines.draw_group_choices(
                    baselines.MAX_GROUPS,
                    pad=shape.pad,
                    cutout_size=shape.cutout,
                    generator=host_gen,
                )
                used = order[: steps * shape.batch]
                out = baselines.grouped_choice_augment(
                    prepared, used, choices, cutout_size=shape.cutout
                )
                ys = labels[used]
                for s in range(steps):
                    _ = out[s * shape.batch : (s + 1) * shape.batch], ys[s * shape.batch :]
        elif backend == "loop":

            def fn():
                order = torch.randperm(shape.images, device=device, generator=gen)
                crop, flip, cutout = kernels.random_augment_params(
                    shape.images,
                    pad=shape.pad,
                    cutout_size=shape.cutout,
                    device=device,
                    generator=gen,
                )
                for s in range(steps):
                    part = slice(s * shape.batch, (s + 1) * shape.batch)
                    baselines.per_image_loop_augment(
                        data, order[part], crop[part], flip[part], cutout[part], **kw
                    )
        else:
            raise ValueError(f"unknown epoch candidate {backend!r}")
        first = _first_call(f"epoch {backend}", fn, device)
        comp.candidates[backend] = Candidate(fn, first_call_s=first)
    # Agreement: the first batch of an epoch from identically seeded generators.
    firsts = {}
    for backend in ("eager", "compile", "triton"):
        if backend in comp.candidates:
            batches = AugmentedBatches(
                data,
                labels,
                batch_size=shape.batch,
                pad=shape.pad,
                flip=True,
                cutout=shape.cutout,
                mean=CIFAR10_MEAN,
                std=CIFAR10_STD,
                dtype=dtype,
                backend=backend,
                generator=torch.Generator(device=device).manual_seed(5),
            )
            firsts[backend] = next(iter(batches))
    for backend, (x, y) in firsts.items():
        if backend != "eager" and "eager" in firsts:
            x0, y0 = firsts["eager"]
            comp.agreement[backend] = max(_scaled_error(x, x0), float((y != y0).any()))
    # Bytes per epoch: the batch op's count × batches, plus the shuffle and parameter draws.
    per_batch = _AUGMENT_BYTES.get((shape.batch, dtype), {})
    for backend, cand in comp.candidates.items():
        nbytes, how = per_batch.get(backend, (None, ""))
        if nbytes:
            cand.bytes = nbytes * steps
            cand.bytes_how = f"{steps} × one batch's count ({how})"
    return comp


# ------------------------------------------------------------------------------------------
# whole training step
# ------------------------------------------------------------------------------------------


def _state_error(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    return max(_scaled_error(sb[k].float(), sa[k].float()) for k in sa if sa[k].is_floating_point())


def step_comparison(
    shape: StepShape,
    device: torch.device,
    backends: Iterable[str] = ("eager", "compile", "triton"),
    dtype: torch.dtype | None = None,
) -> Comparison:
    """The trainer's whole step (forward, backward, SGD, EMA) at ``shape``, every backend."""
    runtime = runtime_for(device, "eager", dtype)
    count = count_train_step(shape, runtime.dtype, runtime.channels_last, augment=False)
    sets = rotation_count(
        shape.batch * 3 * 32 * 32 * torch.finfo(runtime.dtype).bits // 8, device, most=4
    )
    batches = _cycle(step_inputs(shape, runtime, sets))
    comp = Comparison(
        "step",
        "",
        shape.label,
        f"w{shape.width:g} b{shape.batch}",
        runtime.dtype,
        device,
        {},
        flops=count.flops,
        extra={
            "width": shape.width,
            "batch": shape.batch,
            "channels_last": runtime.channels_last,
            "includes": "forward, loss, backward, SGD step, EMA every 5 steps "
            "(augmentation excluded)",
            "bytes_by_phase_eager": count.phases,
        },
    )
    reason = triton_reason(device)
    steps: dict[str, Any] = {}
    losses: dict[str, torch.Tensor] = {}
    check_batch = step_inputs(shape, runtime, 1, seed=99)[0]
    for backend in backends:
        if backend == "triton" and reason:
            comp.skipped[backend] = reason
            continue
        rt = runtime_for(device, backend, dtype)
        step = make_train_step(shape, backend, rt, seed=0)
        # Start at the schedule's peak (the end of the 2-epoch warm-up) so that the checked
        # step really moves the weights (the schedule starts at a learning rate of 0).
        step.steps = 2 * STEPS_PER_EPOCH
        out: dict[str, Any] = {}
        with inductor_graph_bytes() as graphs:
            # The first call compiles (compile) and is also the agreement check's step: every
            # backend starts from the same weights and takes the same batch.
            first = _first_call(
                f"step {shape.label} {backend}",
                lambda s=step: out.update(result=s(*check_batch)),
                device,
                record=backend != "eager",
            )
        steps[backend] = step
        losses[backend] = out["result"][0]

        def fn(s=step):
            return s(*batches())

        cand = Candidate(fn, first_call_s=first)
        if backend == "eager":
            cand.bytes, cand.bytes_how = count.eager_bytes(), "dispatch-mode count (fake tensors)"
        elif backend == "compile" and graphs:
            STEP_COMPILED_BYTES[(shape.label, str(runtime.dtype), runtime.channels_last)] = sum(
                graphs
            )
            cand.bytes = count.outside_model_bytes() + sum(graphs)
            cand.bytes_how = "Inductor's count of the model graphs + eager count of the rest"
        elif backend == "triton":
            cand.bytes, cand.bytes_how = triton_step_bytes(count)
        comp.candidates[backend] = cand
        if device.type == "cuda":
            cand.host_s = host_seconds(fn, device)
            _add_graphed_step(comp, shape, backend, rt, check_batch, batches)
        else:
            comp.skipped[f"{backend}+graphs"] = "CUDA graphs need a CUDA device"
    if "eager" in steps:
        for backend, step in steps.items():
            if backend != "eager":
                comp.agreement[backend] = max(
                    _state_error(steps["eager"].model, step.model),
                    _scaled_error(losses[backend], losses["eager"]),
                )
    return comp


def _add_graphed_step(
    comp: Comparison,
    shape: StepShape,
    backend: str,
    runtime: Runtime,
    check_batch: tuple[torch.Tensor, torch.Tensor],
    batches: Callable[[], tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """The candidate ``<backend>+graphs``: the same step captured in a CUDA graph. Its
    agreement error is how far a replay lands from an uncaptured step on the same batch and
    state (:meth:`train.step.TrainStep.check_capture`); a capture that fails is a failed
    check with its reason (the trainer would fall back to uncaptured steps)."""
    name = f"{backend}+graphs"
    step = make_train_step(shape, backend, runtime, seed=0, graphs="on")
    step.steps = 2 * STEPS_PER_EPOCH
    step(*check_batch)  # the optimiser's state, before the capture
    try:
        step.check_capture(*batches())
    except GraphCaptureError as error:
        comp.failed[name] = str(error)
        return

    def fn(s=step):
        return s(*batches())

    comp.candidates[name] = Candidate(fn, host_s=host_seconds(fn, runtime.device))
    comp.agreement[name] = step.replay_gap


def triton_step_bytes(count: Any) -> tuple[int, str]:
    """Bytes of a step on the Triton path: the eager count with each BN site's ops replaced
    by the Triton kernels' own count (and the augmentation by ``augment_bytes``)."""
    total = count.eager_bytes() - count.bn_bytes()
    for site in count.bn_sites:
        for direction in ("fwd", "bwd"):
            total += triton_ghost_bn_act_bytes(
                site["shape"],
                getattr(torch, site["dtype"]),
                site["pool"],
                direction,
                act=site["act"],
                splits=site["splits"],
            )
    if "augment" in count.phases:
        shape = count.shape
        config = train_config(shape)  # the recipe's own translate and cutout
        dtype = getattr(torch, count.dtype)
        a = triton_augment_bytes(shape.batch, dtype, config.cutout, config.pad)
        total += a - count.phases["augment"]["bytes"]
    return total, "eager count with BN sites (and augment) from the kernels' bytes functions"


__all__ += [
    "cached",
    "triton_step_bytes",
    "STEPS_PER_EPOCH",
    "STEP_COMPILED_BYTES",
    "augment_bytes_for",
]
