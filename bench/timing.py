"""The one place that times anything in ``bench``: candidates measured side by side.

Every ratio the suite reports (speed-up against eager, against compile, against a Python
loop) comes from candidates timed in the same process, **alternating**: round after round,
each candidate takes its samples in turn, and the order rotates every round, so that a
machine that slows down half-way (shared CPUs, a GPU that heats up) slows every candidate
alike instead of the one that happened to run last.

* **GPU** — each round calls :func:`triton.testing.do_bench` on each candidate, which times
  with CUDA events and clears the L2 cache between repetitions; the candidates themselves
  rotate through several input sets bigger than the L2 (see :func:`rotation_count`).
  Candidates that need an untimed setup per call (a backward consuming a fresh forward) and
  calls longer than :data:`SLOW_CALL_MS` (an epoch) are timed the same way — events, L2
  cleared — by :func:`_events_calls`.
* **CPU** — a warm-up, then repeated calls timed with :func:`time.perf_counter` (the CPU
  runs synchronously, so the wall time of the call is the op's time). A sample is one call,
  or the mean of several calls when one call is shorter than ``min_sample_s``.

Compilation never happens inside a timed call: the caller runs each candidate once before
handing it here (and reports that first call's time separately), and the warm-up here
runs it again.
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = [
    "Samples",
    "Timed",
    "TimingPlan",
    "compare",
    "rotation_count",
    "cache_bytes",
    "quantile",
    "device_name",
    "cpu_model",
]


def quantile(values: list[float], q: float) -> float:
    """The ``q`` quantile of ``values`` (``numpy.quantile``, linear interpolation); NaN when
    there are no values (a candidate that took no samples), where numpy would raise."""
    if not values:
        return math.nan
    return float(np.quantile(values, q))


@dataclass
class Samples:
    """Seconds per call of one candidate, one entry per sample, in the order taken."""

    seconds: list[float] = field(default_factory=list)
    calls_per_sample: int = 1
    method: str = ""

    @property
    def median(self) -> float:
        return quantile(self.seconds, 0.5)

    @property
    def p20(self) -> float:
        return quantile(self.seconds, 0.2)

    @property
    def p80(self) -> float:
        return quantile(self.seconds, 0.8)

    @property
    def mean(self) -> float:
        return sum(self.seconds) / len(self.seconds) if self.seconds else math.nan


@dataclass(frozen=True)
class Timed:
    """A candidate whose every call needs fresh, untimed preparation: ``setup()`` runs
    outside the clock and its result is passed to ``fn`` (e.g. a forward pass whose
    graph the timed backward consumes)."""

    fn: Callable[[Any], object]
    setup: Callable[[], Any]


Candidate = Callable[[], object] | Timed


@dataclass(frozen=True)
class TimingPlan:
    """How long to measure one comparison.

    ``budget_s`` is the wall time to aim at for all candidates together (after warm-up);
    rounds stop once every candidate has ``min_rounds`` and the budget is spent, or at
    ``max_rounds``. ``gpu_rep_ms`` is the time ``do_bench`` spends per candidate per round.
    """

    budget_s: float = 4.0
    min_rounds: int = 3
    max_rounds: int = 30
    warmup_s: float = 0.2  # 0: no warm-up call (the caller's first call warmed up)
    min_sample_s: float = 2e-3
    gpu_rep_ms: float = 25.0


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _rotated(names: list[str], shift: int) -> list[str]:
    shift %= len(names)
    return names[shift:] + names[:shift]


def compare(
    candidates: Mapping[str, Candidate], device: torch.device, plan: TimingPlan = TimingPlan()
) -> dict[str, Samples]:
    """Time every candidate side by side, alternating; seconds per call of each.

    A candidate is a no-argument callable doing one call of the op, or a :class:`Timed`
    whose ``setup`` runs untimed before each call. Candidates should already have run once
    (compiled, autotuned); they may rotate through input sets themselves.
    """
    names = list(candidates)
    if not names:
        return {}
    if device.type == "cuda":
        return _compare_gpu(candidates, names, device, plan)
    return _compare_cpu(candidates, names, plan)


def _cpu_sample(c: Candidate, calls: int) -> float:
    """Seconds per call, over ``calls`` calls (setups excluded)."""
    if isinstance(c, Timed):
        total = 0.0
        for _ in range(calls):
            args = c.setup()
            start = time.perf_counter()
            c.fn(args)
            total += time.perf_counter() - start
        return total / calls
    start = time.perf_counter()
    for _ in range(calls):
        c()
    return (time.perf_counter() - start) / calls


def _compare_cpu(
    candidates: Mapping[str, Candidate], names: list[str], plan: TimingPlan
) -> dict[str, Samples]:
    calls: dict[str, int] = {}
    per_call: dict[str, float] = {}
    for name in names:  # warm-up, and how many calls make a sample
        n, spent, start = 0, 0.0, time.perf_counter()
        if plan.warmup_s <= 0:
            per_call[name], calls[name] = 1.0, 1
            continue
        while True:
            spent += _cpu_sample(candidates[name], 1)
            n += 1
            if time.perf_counter() - start >= plan.warmup_s or n >= 1000:
                break
        per_call[name] = spent / n
        calls[name] = max(1, math.ceil(plan.min_sample_s / max(per_call[name], 1e-9)))
    round_s = sum(per_call[n] * calls[n] for n in names)
    rounds = int(min(plan.max_rounds, max(plan.min_rounds, plan.budget_s / max(round_s, 1e-9))))
    out = {
        n: Samples(
            calls_per_sample=calls[n], method=f"perf_counter, {torch.get_num_threads()} threads"
        )
        for n in names
    }
    start = time.perf_counter()
    for r in range(rounds):
        # A machine much slower than the warm-up predicted (other jobs on the cores) must
        # not stretch the run without end: past twice the budget, stop at min_rounds.
        if r >= plan.min_rounds and time.perf_counter() - start > 2 * plan.budget_s:
            break
        for name in _rotated(names, r):
            out[name].seconds.append(_cpu_sample(candidates[name], calls[name]))
    return out


def _as_timed(c: Candidate) -> Timed:
    return c if isinstance(c, Timed) else Timed(fn=lambda _: c(), setup=lambda: None)


def _events_calls(c: Timed, reps: int) -> list[float]:
    """``do_bench``'s method — CUDA events around each call, the L2 cache cleared before
    it — with ``c.setup()`` run untimed before every call; milliseconds per call."""
    from triton import runtime

    driver = runtime.driver.active
    cache = driver.get_empty_cache_for_benchmark()
    starts = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    ends = [torch.cuda.Event(enable_timing=True) for _ in range(reps)]
    for i in range(reps):
        args = c.setup()
        driver.clear_cache(cache)
        starts[i].record()
        c.fn(args)
        ends[i].record()
    torch.cuda.synchronize()
    return [s.elapsed_time(e) for s, e in zip(starts, ends)]


#: Calls longer than this (ms) are timed one per round instead of by ``do_bench``, whose
#: five-call estimate and repetitions would take minutes for a seconds-long epoch.
SLOW_CALL_MS = 100.0


def _compare_gpu(
    candidates: Mapping[str, Candidate], names: list[str], device: torch.device, plan: TimingPlan
) -> dict[str, Samples]:
    from triton.testing import do_bench

    out = {
        n: Samples(method="CUDA events, L2 cleared per call (triton.testing.do_bench)")
        for n in names
    }
    per_call_ms: dict[str, float] = {}
    for name in names:  # warm-up (untimed) and a first estimate
        per_call_ms[name] = _events_calls(_as_timed(candidates[name]), 1)[0]
        if per_call_ms[name] < SLOW_CALL_MS and not isinstance(candidates[name], Timed):
            do_bench(candidates[name], warmup=max(plan.warmup_s * 1e3, 1.0), rep=1)

    def bench_ms(name: str) -> list[float]:
        c = candidates[name]
        if per_call_ms[name] >= SLOW_CALL_MS:
            return _events_calls(_as_timed(c), 1)
        if isinstance(c, Timed):
            return _events_calls(c, max(1, int(plan.gpu_rep_ms / max(per_call_ms[name], 1e-3))))
        return do_bench(c, warmup=1, rep=plan.gpu_rep_ms, return_mode="all")

    start = time.perf_counter()
    r = 0
    while r < plan.max_rounds and (
        r < plan.min_rounds or time.perf_counter() - start < plan.budget_s
    ):
        for name in _rotated(names, r):
            out[name].seconds.extend(t * 1e-3 for t in bench_ms(name))
        r += 1
    _sync(device)
    return out


# ------------------------------------------------------------------------------------------
# Input rotation and machine facts
# ------------------------------------------------------------------------------------------


def host_seconds(fn: Callable[[], Any], device: torch.device, calls: int = 15) -> float:
    """Median host time of one call of ``fn`` on a GPU: from an idle device (synchronised
    before each call, so nothing queued can make the host wait) to the call's return. That
    is the time the host needs to issue the call's work; while it stays under the device's
    time per call, the host runs ahead. (Measured directly rather than with the profiler,
    whose per-op records would add to the very time being measured.)"""
    fn()
    seconds = []
    for _ in range(calls):
        _sync(device)
        start = time.perf_counter()
        fn()
        seconds.append(time.perf_counter() - start)
    _sync(device)
    return quantile(seconds, 0.5)


def cache_bytes(device: torch.device) -> int:
    """The last-level cache that rotating inputs must defeat: the GPU's L2, or the CPU's L3
    (read from sysfs; 32 MiB when it cannot be read)."""
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).L2_cache_size)
    try:
        base = "/sys/devices/system/cpu/cpu0/cache"
        best = 0
        for entry in os.listdir(base):
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
            value = int(text.rstrip("KMG")) * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(
                text[-1], 1
            )
            best = max(best, value)
        return best or 32 << 20
    except (OSError, ValueError):
        return 32 << 20


def rotation_count(bytes_per_set: int, device: torch.device, most: int = 16) -> int:
    """How many input sets to rotate through so that together they are at least twice the
    last-level cache, i.e. no call finds its inputs left in cache by the previous one."""
    if bytes_per_set <= 0:
        return 1
    return max(1, min(most, math.ceil(2 * cache_bytes(device) / bytes_per_set)))


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo``), or what :mod:`platform` knows."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_name(device: torch.device) -> str:
    """``NVIDIA H100 80GB HBM3`` or ``CPU: AMD EPYC (2 threads)``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU: {cpu_model()} ({torch.get_num_threads()} threads)"
