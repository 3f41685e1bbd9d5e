"""pytest-benchmark glue for the bench suites: options, settings, and how a result is
handed to the ``benchmark`` fixture.

Run the suites with ``pytest bench/ --benchmark-only`` (add ``--bench-quick`` for the CI
sizes, ``--benchmark-json=out.json`` for the file); ``python -m bench`` does exactly that
and then prints the table.

Why the fixture does not time anything itself: pytest-benchmark times one callable per
test, but every ratio this suite reports must come from backends timed side by side,
alternating, in one loop (:func:`bench.timing.compare`). So each test takes its
candidate's share of that comparison (run once, on the first test of the comparison) and
hands the fixture those samples; the fixture's statistics, JSON and comparison tools then
work as usual. ``extra_info`` carries the rest (bytes, GB/s, speed-ups, device, dtype).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import pytest
import torch

from bench.env import configure, environment, resolve_device
from bench.timing import TimingPlan

#: Seconds of timing per comparison (all candidates together), by mode.
QUICK_BUDGET_S = 2.0
FULL_BUDGET_S = 4.0


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("bench", "ResNet9 kernel benchmarks")
    group.addoption(
        "--bench-quick",
        action="store_true",
        default=os.environ.get("BENCH_QUICK") == "1",
        help="CI sizes: quarter-width shapes, two BN sites, the CPU-sized step",
    )
    group.addoption(
        "--bench-device",
        default=os.environ.get("BENCH_DEVICE", "auto"),
        help="auto (GPU if present), cpu or cuda[:N]",
    )
    group.addoption(
        "--bench-budget",
        type=float,
        default=None,
        help="seconds of timing per comparison (default 2 quick, 4 full)",
    )
    group.addoption(
        "--bench-widths",
        default=None,
        help="comma-separated model widths for the BN sites (default: 0.25 on "
        "the CPU or in --quick, 1,0.25 on a GPU)",
    )


def pytest_configure(config: pytest.Config) -> None:
    configure()


@dataclass(frozen=True)
class BenchSettings:
    """What the suites run: the device, the activation dtype and layout the trainer uses
    there, which sizes, and how long to time each comparison."""

    quick: bool
    device: torch.device
    dtype: torch.dtype
    channels_last: bool
    plan: TimingPlan
    widths: tuple[float, ...]


def settings_from(config: pytest.Config) -> BenchSettings:
    """The :class:`BenchSettings` a pytest run's options ask for."""
    quick = bool(config.getoption("--bench-quick"))
    device = resolve_device(config.getoption("--bench-device"))
    budget = config.getoption("--bench-budget") or (QUICK_BUDGET_S if quick else FULL_BUDGET_S)
    widths_opt = config.getoption("--bench-widths")
    if widths_opt:
        widths = tuple(float(w) for w in widths_opt.split(","))
    else:
        widths = (0.25,) if quick or device.type != "cuda" else (1.0, 0.25)
    gpu = device.type == "cuda"
    return BenchSettings(
        quick=quick,
        device=device,
        dtype=torch.float16 if gpu else torch.float32,  # the trainer's activations
        channels_last=gpu,  # as train.runtime sets it
        plan=TimingPlan(budget_s=budget, min_rounds=3, max_rounds=15 if quick else 30),
        widths=widths,
    )


@pytest.fixture(scope="session")
def settings(pytestconfig: pytest.Config) -> BenchSettings:
    return settings_from(pytestconfig)


def run_candidate(benchmark: Any, comparison: Any, backend: str, settings: BenchSettings) -> None:
    """The body of every bench test: skip with the reason if ``backend`` cannot run here,
    assert it agrees with eager, time the comparison (once), and report ``backend``'s
    samples and extra_info to pytest-benchmark."""
    from bench.cases import measure, tolerance

    if backend in comparison.failed:
        pytest.fail(f"{comparison.key}: {backend}: {comparison.failed[backend]}")
    if backend in comparison.skipped:
        pytest.skip(f"{backend}: {comparison.skipped[backend]}")
    if backend not in comparison.candidates:
        pytest.skip(f"{backend}: not part of this comparison")
    error = comparison.agreement.get(backend)
    tol = tolerance(comparison.dtype)
    assert error is None or error <= tol, (
        f"{comparison.key}: {backend} differs from eager by {error:.3g} (scaled), more than "
        f"the {tol:g} allowed for {comparison.dtype}"
    )
    result = measure(comparison, settings.plan)[backend]
    record(benchmark, result)


def record(benchmark: Any, result: Any) -> None:
    """Hand one result's samples (seconds per call) and extra_info to the fixture."""
    benchmark.group = " ".join(
        p for p in (result.comparison.op, result.comparison.label, result.comparison.variant) if p
    )
    benchmark.extra_info.update(result.extra_info())
    if benchmark.disabled:
        return
    benchmark._mode = "bench.timing.compare (backends alternating)"
    stats = benchmark._make_stats(1)  # the fixture's own constructor of its statistics
    for seconds in result.samples.seconds:
        stats.update(seconds)


def pytest_benchmark_update_json(
    config: pytest.Config, benchmarks: list, output_json: dict
) -> None:
    """Add what the benchmarks alone do not say: environment, what was not measured and
    why, one-off compile times, and the run's settings."""
    from bench.cases import COMPILE_TIMES, NOT_MEASURED

    s = settings_from(config)
    output_json["bench"] = {
        "environment": environment(s.device),
        "settings": {
            "quick": s.quick,
            "device": str(s.device),
            "dtype": str(s.dtype).replace("torch.", ""),
            "channels_last": s.channels_last,
            "budget_s": s.plan.budget_s,
            "widths": list(s.widths),
        },
        "not_measured": NOT_MEASURED,
        "compile_times_s": COMPILE_TIMES,
    }
