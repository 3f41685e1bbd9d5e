"""The augmentation op on one batch of 512 and on a whole epoch of 50,000 images:
eager reference vs ``torch.compile`` vs the Triton kernel (GPU only) vs a per-image Python
loop vs the seed's grouped-choice method.

    pytest bench/test_augment_bench.py --benchmark-only [--bench-quick]
"""

from __future__ import annotations

import pytest

from bench.cases import augment_comparison, cached, epoch_comparison, not_measured
from bench.conftest import run_candidate
from bench.shapes import AugmentShape
from bench.timing import TimingPlan

BACKENDS = ("eager", "compile", "triton", "loop", "grouped")


def _epoch_candidates(settings) -> tuple[tuple[str, ...], dict[str, str], TimingPlan | None]:
    """(candidates, skipped with reasons, timing plan) of the epoch comparison."""
    plan = None
    if not settings.quick:
        skipped: dict[str, str] = {}
    else:
        skipped = {
            "loop": "one epoch is 97 calls of the per-batch loop (see the augment "
            "rows); timed without --quick"
        }
    if settings.device.type != "cuda":
        # An epoch takes seconds on a CPU: the first call (untimed) is the warm-up, then a
        # few alternating rounds.
        rounds = 2 if settings.quick else 3
        plan = TimingPlan(budget_s=0.0, min_rounds=rounds, max_rounds=rounds, warmup_s=0.0)
    for name, reason in skipped.items():
        not_measured(f"epoch: {name}", reason)
    return tuple(b for b in BACKENDS if b not in skipped), skipped, plan


@pytest.mark.parametrize("backend", BACKENDS)
def test_augment(benchmark, settings, backend):
    shape = AugmentShape()
    comparison = cached(
        f"augment/b{shape.batch}",
        lambda: augment_comparison(shape, settings.device, settings.dtype, BACKENDS),
    )
    run_candidate(benchmark, comparison, backend, settings)


@pytest.mark.parametrize("backend", BACKENDS)
def test_epoch_data_path(benchmark, settings, backend):
    shape = AugmentShape()
    backends, skipped, plan = _epoch_candidates(settings)
    comparison = cached(
        "epoch",
        lambda: epoch_comparison(shape, settings.device, settings.dtype, backends, skipped, plan),
    )
    run_candidate(benchmark, comparison, backend, settings)
