"""The trainer's whole step — forward, summed label-smoothed loss, backward, Nesterov SGD,
EMA every 5 steps — per backend, at a CPU-sized batch and at the recipe's batch of 512.

    pytest bench/test_step_bench.py --benchmark-only [--bench-quick]
"""

from __future__ import annotations

import pytest

from bench.cases import cached, not_measured, step_comparison
from bench.conftest import run_candidate, settings_from
from bench.shapes import QUARTER, RECIPE_BATCH, StepShape

BACKENDS = ("eager", "compile", "triton")
#: The same steps captured in CUDA graphs (on a GPU; skipped with the reason elsewhere).
GRAPHED = tuple(f"{b}+graphs" for b in BACKENDS)
#: The CPU-sized step: quarter width, batch 64 (a fraction of a second on 2 cores).
CPU_STEP = StepShape(QUARTER, 64)


def step_shapes(quick: bool, gpu: bool) -> list[StepShape]:
    """The step shapes a run times; the rest are recorded as not measured."""
    if gpu:
        return [CPU_STEP, StepShape(1.0, RECIPE_BATCH)] + (
            [] if quick else [StepShape(QUARTER, RECIPE_BATCH)]
        )
    not_measured(
        f"step w1 b{RECIPE_BATCH} on the CPU",
        "1.16 TFLOP per step: tens of seconds per step on a few CPU cores; timed on a GPU",
    )
    if quick:
        not_measured(
            f"step w{QUARTER:g} b{RECIPE_BATCH} in --quick",
            "seconds per step on a CPU; timed without --quick",
        )
        return [CPU_STEP]
    return [CPU_STEP, StepShape(QUARTER, RECIPE_BATCH)]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "step_shape" in metafunc.fixturenames:
        s = settings_from(metafunc.config)
        shapes = step_shapes(s.quick, s.device.type == "cuda")
        metafunc.parametrize("step_shape", shapes, ids=[x.label for x in shapes])


@pytest.mark.parametrize("backend", BACKENDS + GRAPHED)
def test_train_step(benchmark, settings, step_shape, backend):
    comparison = cached(
        f"step/{step_shape.label}", lambda: step_comparison(step_shape, settings.device, BACKENDS)
    )
    run_candidate(benchmark, comparison, backend, settings)
