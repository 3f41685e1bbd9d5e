"""The benchmark suite: its counters checked by hand, its yardsticks checked against the
reference, and ``python -m bench --quick`` run end to end (the CI run; ~3 min on 2 CPUs)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench import baselines, report, roofline
from bench.counters import ByteCounter, conv_flops, count_bytes, count_flops, op_bytes
from bench.shapes import (
    AIRBENCH_PRESET,
    QUARTER,
    AugmentShape,
    StepShape,
    airbench_bn_sites,
    bn_sites,
    model_bn_inputs,
    quick_bn_sites,
)
from bench.timing import Samples, Timed, TimingPlan, compare, quantile
from kernels import augment_reference, random_augment_params
from model import AirbenchNet, patch_whitening_filters
from model.resnet9 import ResNet9, ResNet9Config
from train.config import CIFAR10_MEAN, CIFAR10_STD, airbench_config
from train.presets import preset_config

REPO = Path(__file__).resolve().parents[1]
GPU = torch.cuda.is_available()


# ------------------------------------------------------------------------------------------
# Counters, by hand
# ------------------------------------------------------------------------------------------


def test_bytes_of_an_add_match_the_hand_count():
    n = 1009  # prime: no accidental factor of two
    a, b = torch.randn(n), torch.randn(n)
    counter = count_bytes(lambda: a + b)
    assert counter.total_bytes == 3 * 4 * n  # read a, read b, write the sum
    assert [r.name for r in counter.records] == ["add"]


def test_bytes_rules_in_place_views_broadcast_and_copy():
    n = 1000
    a, b = torch.randn(n), torch.randn(n)
    assert count_bytes(lambda: a.add_(b)).total_bytes == 3 * 4 * n  # read a, b; write a
    assert count_bytes(lambda: a.copy_(b)).total_bytes == 2 * 4 * n  # copy_ does not read a
    assert count_bytes(lambda: a.view(10, 100)).total_bytes == 0  # a view moves nothing
    x, bias = torch.randn(8, 16, 5, 5), torch.randn(16)
    # The broadcast bias is read once (16 floats), not once per pixel.
    assert count_bytes(lambda: x + bias[:, None, None]).total_bytes == 2 * x.numel() * 4 + 64
    # A gather reads as many source elements as it writes, not the whole source.
    table, idx = torch.randn(10_000, 8), torch.tensor([3, 5, 7])
    assert count_bytes(lambda: table[idx]).total_bytes == 3 * 8 * 4 * 2 + 3 * 8


def test_op_bytes_ignores_metadata_queries():
    x = torch.randn(4, 4)
    assert op_bytes(torch.ops.aten.is_contiguous.default, (x,), {}, True) == 0


def test_conv_flops_match_the_hand_count():
    batch, c_in, c_out, side = 512, 64, 128, 32  # layer1's conv at the recipe's batch
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(batch, c_in, side, side)
        w = torch.empty(c_out, c_in, 3, 3)
        counted = count_flops(lambda: torch.nn.functional.conv2d(x, w, padding=1))
        per_op = ByteCounter()
        with per_op:
            torch.nn.functional.conv2d(x, w, padding=1)
    hand = 2 * batch * c_in * c_out * 9 * side * side
    assert conv_flops(batch, c_in, c_out, side, side) == hand
    assert counted == hand
    assert per_op.total_flops == hand


def test_step_count_phases_and_flops():
    from bench.workloads import count_train_step, step_ops

    count = count_train_step(StepShape(0.25, 64), torch.float32, channels_last=False)
    phases = count.phases
    assert {"augment", "model_fwd", "model_bwd", "optimizer", "ema"} <= set(phases)
    assert sum(p.startswith("bn_fwd:") for p in phases) == 8
    assert sum(p.startswith("bn_bwd:") for p in phases) == 8
    # The per-op FLOPs agree with FlopCounterMode's total, and all of them are convolutions
    # or the head's matmul (forward and backward).
    assert count.flops > 0
    assert sum(v["flops"] for v in phases.values()) == count.flops
    assert count.bytes_where(lambda p: p.startswith("bn_")) == count.bn_bytes()
    ops, _ = step_ops(count, "eager")
    assert sum(b for b, _ in ops) == count.eager_bytes()
    # By hand: every conv and the head's matmul has a backward of twice its forward FLOPs
    # (input grad + weight grad), except the fixed whitening conv (no backward at all) and
    # the prep conv, whose input (the whitening output) needs no gradient.
    fwd = phases["model_fwd"]["flops"]
    whitening = conv_flops(64, 3, 27, 32, 32, kernel=3)
    prep_input_grad = conv_flops(64, 27, 16, 32, 32, kernel=1)
    assert count.flops == 3 * fwd - 2 * whitening - prep_input_grad


def test_step_bytes_scale_linearly_with_batch():
    from bench.workloads import count_train_step

    a, b, c = (
        count_train_step(StepShape(0.25, n), torch.float32, False).eager_bytes()
        for n in (32, 64, 128)
    )
    assert (c - b) == pytest.approx(2 * (b - a), rel=1e-3)


# ------------------------------------------------------------------------------------------
# Shapes and yardsticks
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_bn_site_table_matches_the_model(width):
    model = ResNet9(ResNet9Config(width=width, ghost_splits=1, whitening=False))
    seen = model_bn_inputs(model, batch=2)
    expanded = [
        (tuple((2, *site.shape[1:])), site.pool)
        for site in bn_sites(2, width)
        for _ in range(site.times)
    ]
    assert seen == expanded


def test_airbench_bn_sites_match_the_model():
    """airbench94's sites are what a real AirbenchNet of the preset feeds its BN modules
    (hooks on a training-mode forward at batch 2), with each module's activation, splits
    and frozen scale; by default at the preset's batch."""
    config = preset_config(AIRBENCH_PRESET)
    model = AirbenchNet(airbench_config(config, "eager"))
    # Any whitening filters do: only the shapes after them are recorded.
    model.set_whitening(patch_whitening_filters(torch.randn(8, 3, 8, 8), 2, negate=True).filters)
    sites = airbench_bn_sites(AIRBENCH_PRESET, batch=2)
    expanded = [(site.shape, site.pool) for site in sites for _ in range(site.times)]
    assert model_bn_inputs(model, batch=2) == expanded
    # 31×31 → 15, 15 → 7, 7 → 3: every pooled site has an odd size, floored by the pool.
    assert [s.shape[2:] for s in sites if s.pool] == [(31, 31), (15, 15), (7, 7)]
    assert [s.out_shape[2:] for s in sites if s.pool] == [(15, 15), (7, 7), (3, 3)]
    modules = list(model.bn_sites())
    assert [(m.act, m.splits, m.weight is None) for m in modules] == [
        (s.act, s.splits, True) for s in sites for _ in range(s.times)
    ]
    assert {s.act for s in sites} == {"gelu"} and {s.splits for s in sites} == {1}
    assert {s.batch for s in airbench_bn_sites()} == {config.batch_size} == {1024}
    with pytest.raises(ValueError, match="not the airbench network"):
        airbench_bn_sites("tta")


def test_bn_site_labels_are_unique():
    """Labels name test ids, table rows and AOT specs: unique over both networks and widths."""
    sites = [*bn_sites(512, 1.0), *bn_sites(512, QUARTER), *airbench_bn_sites()]
    labels = [s.label for s in sites]
    assert len(set(labels)) == len(labels)
    assert "airbench94.block1.conv1" in labels and "layer1-w0.25" in labels


def test_quick_sites_cover_pool_and_no_pool():
    sites = quick_bn_sites()
    resnet = [s for s in sites if s.preset is None]
    assert {s.pool for s in resnet} == {True, False}
    assert all(s.model_width == 0.25 and s.batch == 512 and s.act == "celu" for s in resnet)
    assert all(s.splits == 16 for s in resnet)
    # One airbench site, kept small for CI: the odd-size floored pool with GELU, plain BN.
    (airbench,) = [s for s in sites if s.preset == AIRBENCH_PRESET]
    assert airbench.pool and airbench.height % 2 and airbench.act == "gelu"
    assert airbench.splits == 1 and airbench.batch == 1024
    assert math.prod(airbench.shape) <= math.prod(resnet[0].shape)


def test_aot_specs_cover_every_airbench_site():
    """Every kernel that a training step and an eval forward launch at each airbench94 site,
    in each dtype, is among the report's specs (found by what it compiles, as deduplication
    keeps one label per compile); and the model-read sites compile what the kernels' own
    airbench table (``AIRBENCH_SHAPES``) lists for GELU at batch 1024. No compile."""
    from bench import aot
    from kernels.ghost_bn_act import airbench_sites
    from kernels.ghost_bn_act import aot_specs as ghost_bn_act_aot_specs
    from kernels.ghost_bn_act.specs import site_specs

    def compiled(spec) -> tuple:
        return (
            spec.kernel,
            tuple(sorted(spec.signature.items())),
            tuple(sorted(spec.constexprs.items())),
            tuple(sorted(spec.divisible_by_16)),
            spec.num_warps,
        )

    reported = {compiled(s) for s in aot.all_specs()}
    for site in airbench_bn_sites():
        for dtype in aot.AIRBENCH_DTYPES:
            for spec in site_specs(aot.aot_site(site, dtype, site.act, has_weight=False)):
                assert compiled(spec) in reported, spec.label
    airbench = aot.airbench_specs()
    assert all(".block" in s.label and "airbench94" in s.label for s in airbench)
    table = ghost_bn_act_aot_specs(airbench_sites(1024, aot.AIRBENCH_DTYPES, ("gelu",)))
    assert {compiled(s) for s in airbench} == {compiled(s) for s in table}


@pytest.mark.parametrize("cutout_size", [0, 5])
def test_loop_and_grouped_baselines_equal_the_reference(cutout_size):
    data = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    idx = torch.randperm(300)[:67]
    kw = dict(
        cutout_size=cutout_size, pad=4, mean=CIFAR10_MEAN, std=CIFAR10_STD, out_dtype=torch.float32
    )
    crop, flip, cutout = random_augment_params(67, pad=4, cutout_size=cutout_size)
    ref = augment_reference(data, idx, crop, flip, cutout, **kw)
    assert torch.equal(baselines.per_image_loop_augment(data, idx, crop, flip, cutout, **kw), ref)

    prepared = baselines.prepare_seed_dataset(
        data, pad=4, mean=CIFAR10_MEAN, std=CIFAR10_STD, out_dtype=torch.float32
    )
    choices = baselines.draw_group_choices(20, pad=4, cutout_size=cutout_size)
    got = baselines.grouped_choice_augment(prepared, idx, choices, cutout_size=cutout_size)
    c2, f2, k2 = baselines.expand_group_choices(67, choices)
    assert torch.equal(got, augment_reference(data, idx, c2, f2, k2, **kw))


def test_group_bounds_are_even_and_capped():
    bounds = baselines.group_bounds(512, baselines.MAX_GROUPS)
    sizes = [e - s for s, e in bounds]
    assert len(bounds) == 200 and sum(sizes) == 512 and max(sizes) - min(sizes) <= 1
    assert len(baselines.group_bounds(50, 200)) == 50


# ------------------------------------------------------------------------------------------
# Timing core and report
# ------------------------------------------------------------------------------------------


def test_quantiles_and_alternating_compare():
    assert quantile([1.0, 2.0, 3.0, 4.0, 5.0], 0.2) == pytest.approx(1.8)
    assert (quantile([5.0, 1.0], 0.0), quantile([5.0, 1.0], 1.0)) == (1.0, 5.0)
    assert math.isnan(quantile([], 0.5))  # no samples: no number, no raise
    calls = []
    out = compare(
        {
            "a": lambda: calls.append("a"),
            "b": Timed(fn=lambda x: calls.append(x), setup=lambda: "b"),
        },
        torch.device("cpu"),
        TimingPlan(budget_s=0.01, min_rounds=3, max_rounds=3, warmup_s=0.0),
    )
    assert len(out["a"].seconds) == len(out["b"].seconds) == 3
    assert calls == ["a", "b", "b", "a", "a", "b"]  # the order rotates every round
    s = Samples([3.0, 1.0, 2.0])
    assert (s.median, s.p20, s.p80) == (2.0, pytest.approx(1.4), pytest.approx(2.6))


def test_roofline_is_the_max_of_the_two_bounds_per_op():
    gpu = roofline.GPU("test", bandwidth_gbs=1.0, tensor_tflops=1e-3, source="-")
    p = roofline.predict_step([(2_000_000_000, 0), (0, 3_000_000_000)], gpu)
    assert p["step_s"] == pytest.approx(5.0)  # 2 s of bytes + 3 s of FLOPs, no overlap
    # One op with both: the larger of its two times, not their sum.
    both = roofline.predict_step([(2_000_000_000, 3_000_000_000)], gpu)
    assert both["step_s"] == pytest.approx(3.0)
    assert (both["memory_s"], both["math_s"]) == (pytest.approx(2.0), pytest.approx(3.0))
    rows = roofline.roofline_table(
        {"eager": [(2_000_000_000, 0)], "triton": [(10**9, 0)]}, steps=970, gpus=(gpu,)
    )
    assert [(r["backend"], r["step_ms"], r["ten_epochs_s"]) for r in rows] == [
        ("eager", pytest.approx(2000.0), pytest.approx(1940.0)),
        ("triton", pytest.approx(1000.0), pytest.approx(970.0)),
    ]
    assert all(r["launches_per_step"] is None and r["host_ms"] == 0 for r in rows)


def test_roofline_charges_the_host_per_launch_and_a_graph_removes_it():
    """1 ms of device work per step; 400 launches at 5 µs = 2 ms of host: the uncaptured
    step waits for the host (2 ms), the graphed one (5 launches) does not (1 ms)."""
    gpu = roofline.GPU("test", bandwidth_gbs=1.0, tensor_tflops=1.0, source="-")
    (row,) = roofline.roofline_table(
        {"eager": [(1_000_000, 0)]},
        steps=10,
        gpus=(gpu,),
        launches={"eager": {"uncaptured": 400, "graphed": 5}},
        host_us_per_launch=5.0,
    )
    assert row["device_ms"] == pytest.approx(1.0)
    assert row["host_ms"] == pytest.approx(2.0)
    assert row["host_bound"]
    assert row["uncaptured_step_ms"] == pytest.approx(2.0)
    assert row["uncaptured_ten_epochs_s"] == pytest.approx(0.02)
    assert row["step_ms"] == pytest.approx(1.0)  # 5 × 5 µs of host ≪ 1 ms
    assert row["ten_epochs_s"] == pytest.approx(0.01)
    assert row["breakeven_us_per_launch"] == pytest.approx(2.5)  # 1 ms / 400


def test_launches_per_step_count_the_ops_and_the_kernels():
    """On a small counted step: eager launches are its counted ops (the EMA's at 1/5);
    triton swaps each BN site's and the augmentation's ops for their kernels' launches."""
    from bench.workloads import TRITON_LAUNCHES, count_train_step, graphed_launches

    count = count_train_step(StepShape(0.0625, 64), torch.float32, channels_last=False)
    ema = [r for r in count.records if r.phase == "ema"]
    assert ema  # the counted step runs the average's update
    eager = count.launches("eager")
    assert eager["uncaptured"] == pytest.approx(len(count.records) - len(ema) * 4 / 5)
    assert eager["graphed"] == graphed_launches(count.param_groups, 5) == 2 + 2 + 1 + 0.2
    replaced = [r for r in count.records if r.phase.startswith("bn_") or r.phase == "augment"]
    sites = len(count.bn_sites)
    assert sites == 8
    triton = count.launches("triton")
    assert triton["uncaptured"] == pytest.approx(
        eager["uncaptured"]
        - len(replaced)
        + sites * (TRITON_LAUNCHES["bn_fwd"] + TRITON_LAUNCHES["bn_bwd"])
        + TRITON_LAUNCHES["augment"]
    )
    assert count.launches("compile") is None


def test_format_table_columns():
    row = {
        "op": "augment b512",
        "backend": "eager",
        "shape": "s",
        "dtype": "float32",
        "median_s": 0.002,
        "p20_s": 0.001,
        "p80_s": 0.003,
        "gbps": 1.5,
        "speedup_vs_eager": 1.0,
        "speedup_vs_compile": 0.5,
    }
    text = report.format_table([row])
    assert "time median [p20, p80]" in text and "2 ms [1 ms, 3 ms]" in text and "0.50×" in text


# ------------------------------------------------------------------------------------------
# python -m bench --quick, end to end
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)  # as a user runs it
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1800,
    )  # a guard against a hang, not a time limit
    return proc, out


def _expected_rows() -> set[tuple[str, str]]:
    backends = ("eager", "compile", "triton") if GPU else ("eager", "compile")
    rows = {(f"augment b{AugmentShape().batch}", b) for b in (*backends, "loop", "grouped")}
    rows |= {("epoch 50000img", b) for b in (*backends, "grouped")}
    for site in quick_bn_sites():
        for direction in ("fwd", "bwd", "fwd+bwd"):
            rows |= {(f"ghost_bn_act {site.label} {direction}", b) for b in backends}
    rows |= {("step w0.25-b64", b) for b in backends}
    return rows


@pytest.mark.slow
def test_quick_bench_exits_cleanly_and_prints_the_table(quick_run):
    proc, _ = quick_run
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    header = next(line for line in proc.stdout.splitlines() if line.startswith("op "))
    for column in ("backend", "time median [p20, p80]", "GB/s", "vs eager", "vs compile"):
        assert column in header
    table_lines = proc.stdout.splitlines()
    for op, backend in _expected_rows():
        assert any(line.startswith(op + " ") and f" {backend} " in line for line in table_lines), (
            op,
            backend,
        )
    assert "MODEL" in proc.stdout and "not a measurement" in proc.stdout


@pytest.mark.slow
def test_quick_bench_json_files(quick_run):
    proc, out = quick_run
    assert proc.returncode == 0, proc.stderr[-4000:]
    bench_json = json.loads((out / "pytest-benchmark.json").read_text())
    assert bench_json["benchmarks"], "pytest-benchmark wrote no benchmarks"
    for b in bench_json["benchmarks"]:
        info = b["extra_info"]
        for key in (
            "device",
            "dtype",
            "shape",
            "bytes",
            "gbps",
            "speedup_vs_eager",
            "speedup_vs_compile",
            "flops",
            "p20_s",
            "p80_s",
            "threads",
        ):
            assert key in info, (b["fullname"], key)
        assert b["stats"]["rounds"] >= 2
        if info["backend"] != "eager" and not (info["op"], info["backend"]) == ("epoch", "grouped"):
            assert info["agreement_error"] is not None, b["fullname"]
            assert info["agreement_error"] <= info["agreement_tolerance"]
    summary = json.loads((out / "summary.json").read_text())
    env = summary["environment"]
    for key in ("device", "torch", "triton", "python", "cpu_model", "torch_threads"):
        assert env.get(key) is not None, key
    assert {(r["op"], r["backend"]) for r in summary["results"]} == _expected_rows()
    model = summary["roofline"]
    assert "MODEL" in model["label"] and model["assumptions"]
    assert {r["gpu"] for r in model["rows"]} == {"V100 SXM2", "A100 SXM4 80GB", "H100 SXM5"}
    assert all(r["kind"] == "model" for r in model["rows"])
    conv = summary["counters"]["conv_check"]
    assert conv["flop_counter"] == conv["hand_2BCinCout9HW"]
    assert summary["counters"]["bytes_per_step"]["eager"]["bytes"] > 0
    if not GPU:
        reasons = {e["what"]: e["reason"] for e in summary["not_measured"]}
        assert any("triton" in what and "no GPU" in why for what, why in reasons.items())
        assert all(r["backend"] != "triton" for r in summary["results"])


def test_the_airbench_step_counts_what_its_source_says():
    """airbench94's step, counted on fake tensors at its own batch: 0.71 GFLOP per training
    image (forward + backward, as RECIPE.md gives it), six BN sites at the odd sizes its
    unpadded 2×2 whitening makes, fewer launches fused than eager; with Muon the step keeps
    a host-float rate, so it has no graphed count."""
    from bench.workloads import count_train_step

    count = count_train_step(StepShape(1.0, 1024, "airbench94"), torch.float16, True)
    assert count.flops / 1024 == pytest.approx(0.71e9, rel=0.01)
    assert [site["shape"][2] for site in count.bn_sites] == [31, 15, 15, 7, 7, 3]
    # plain BN (one split) and GELU at every site: the Triton byte model counts those
    assert {(site["splits"], site["act"]) for site in count.bn_sites} == {(1, "gelu")}
    from bench.cases import triton_step_bytes
    from bench.workloads import triton_ghost_bn_act_bytes

    site = count.bn_sites[0]
    one_split = triton_ghost_bn_act_bytes(site["shape"], torch.float16, True, "fwd", "gelu", 1)
    ghost = triton_ghost_bn_act_bytes(site["shape"], torch.float16, True, "fwd", "gelu", 32)
    assert one_split < ghost  # 32 splits keep 32 sets of statistics
    assert triton_step_bytes(count)[0] < count.eager_bytes()
    eager, triton = count.launches("eager"), count.launches("triton")
    assert triton["uncaptured"] < eager["uncaptured"]
    assert eager["graphed"] == triton["graphed"] is not None
    muon = count_train_step(StepShape(0.25, 64, "airbench94-muon"), torch.float32, False)
    assert muon.launches("eager")["graphed"] is None


def test_recipe_models_name_the_sources_figures_as_theirs():
    from bench.__main__ import MODELLED_RECIPES

    rows = [
        {
            "recipe": name,
            "batch": 1024,
            "epochs": 9.9,
            "gflop_per_image": 0.7,
            "gpu": gpu,
            "backend": "triton",
            "bytes_per_step": 1e9,
            "launches_per_step": 100.0,
            "graphed_launches_per_step": None,
            "step_ms": 1.0,
            "ten_epochs_s": 0.5,
            "per_ten_epochs_s": 0.51,
            "published": published if gpu.startswith(on) else "",
        }
        for name, _, published, on in MODELLED_RECIPES
        for gpu in ("V100 SXM2", "A100 SXM4 80GB")
    ]
    text = report.format_recipe_models({"label": roofline.LABEL, "what": "w", "rows": rows})
    assert text.startswith("=== MODEL (roofline prediction")
    assert "the source's own measured time (not ours)" in text
    # Each source's time on the rows of the GPU it was measured on, once per backend row.
    lines = text.splitlines()
    seed_rows = [line for line in lines if "26 s (the seed" in line]
    airbench_rows = [line for line in lines if "3.29 s" in line]
    assert len(seed_rows) == len(airbench_rows) == 1
    assert "V100 SXM2" in seed_rows[0] and "A100 SXM4" in airbench_rows[0]
