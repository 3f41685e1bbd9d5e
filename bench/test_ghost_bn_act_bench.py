"""Ghost BN (+ pool) + activation at every BN site of ResNet9 (CELU, 32-image ghost splits)
and of airbench94 (GELU, plain BN, odd sizes with the floored pool), forward, backward and
both: eager reference vs ``torch.compile`` vs the Triton kernels (GPU only).

    pytest bench/test_ghost_bn_act_bench.py --benchmark-only [--bench-quick]
"""

from __future__ import annotations

import pytest

from bench.cases import cached, ghost_bn_act_comparison, not_measured
from bench.conftest import run_candidate, settings_from
from bench.shapes import (
    AIRBENCH_PRESET,
    QUICK_AIRBENCH_SITE,
    RECIPE_BATCH,
    airbench_bn_sites,
    bn_sites,
    quick_bn_sites,
)

BACKENDS = ("eager", "compile", "triton")
DIRECTIONS = ("fwd", "bwd", "fwd+bwd")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "site" not in metafunc.fixturenames:
        return
    s = settings_from(metafunc.config)
    if s.quick:
        sites = quick_bn_sites(RECIPE_BATCH)
        not_measured(
            "ghost_bn_act: the other BN sites and full width",
            "--quick times two quarter-width ResNet9 sites (layer1 with pool, res1 without) "
            f"and one {AIRBENCH_PRESET} site ({QUICK_AIRBENCH_SITE}: odd size, floored pool)",
        )
    else:
        sites = [site for w in s.widths for site in bn_sites(RECIPE_BATCH, w)]
        # airbench's widths are fixed (no multiplier): its sites at the preset's own batch.
        sites += airbench_bn_sites(AIRBENCH_PRESET)
        if 1.0 not in s.widths:
            not_measured(
                "ghost_bn_act at full width",
                f"not in the widths on {s.device.type} (python -m bench --widths "
                "1,0.25, or pytest --bench-widths 1,0.25; minutes per site on a CPU)",
            )
    metafunc.parametrize("site", sites, ids=[site.label for site in sites])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("direction", DIRECTIONS)
def test_ghost_bn_act(benchmark, settings, site, direction, backend):
    comparison = cached(
        f"ghost_bn_act/{site.label}/{direction}",
        lambda: ghost_bn_act_comparison(
            site, direction, settings.device, settings.dtype, settings.channels_last, BACKENDS
        ),
    )
    run_candidate(benchmark, comparison, backend, settings)
