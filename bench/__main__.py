"""``python -m bench``: every benchmark that fits this machine, one table, two JSON files.

    python -m bench                 # everything that fits the device (minutes)
    python -m bench --quick         # CI sizes: quarter width, three BN sites (~3 min on 2 CPUs)
    python -m bench --out DIR       # where the files go (default bench-results/)

What it does, in order:
  1. runs the pytest-benchmark suites in ``bench/`` in this process (``pytest.main``), which
     time every backend side by side (see :mod:`bench.timing`) after checking that they
     agree with eager, and write ``DIR/pytest-benchmark.json``;
  2. counts FLOPs and bytes of one training step per backend in the trainer's GPU
     configuration (no GPU needed) and models the step on V100/A100/H100 (a roofline MODEL,
     printed as such);
  3. compiles every Triton kernel ahead of time for sm_80 and sm_90 (:mod:`bench.aot`)
     for registers, spills, shared memory and 128-bit loads;
  4. prints the table and writes ``DIR/summary.json`` (device, versions, threads, every row,
     the counters, the model, and what was not measured and why).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n")[0])
    p.add_argument(
        "--quick",
        action="store_true",
        help="CI sizes: quarter-width shapes, two ResNet9 BN sites and one airbench94 site, "
        "the CPU-sized step, one AOT spec per kernel",
    )
    p.add_argument("--out", default="bench-results", help="output folder (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda[:N]")
    p.add_argument(
        "--budget",
        type=float,
        default=None,
        help="seconds of timing per comparison (default 2 quick, 4 full)",
    )
    p.add_argument(
        "--widths",
        default=None,
        help="model widths of the BN sites, e.g. 1,0.25 (default 0.25 on a CPU "
        "or with --quick, 1,0.25 on a GPU)",
    )
    p.add_argument(
        "-k",
        dest="keyword",
        default=None,
        help="only the benchmarks whose test id matches (pytest -k)",
    )
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads for torch (default: torch's own choice); on cores shared "
        "with other jobs 1 thread avoids OpenMP stalls",
    )
    p.add_argument("--no-aot", action="store_true", help="skip the static kernel report")
    return p.parse_args(argv)


def run_suites(args: argparse.Namespace, out: Path) -> int:
    """The pytest-benchmark suites, in this process; returns pytest's exit code."""
    import pytest

    cmd = [
        str(BENCH_DIR),
        "--benchmark-only",
        f"--benchmark-json={out / 'pytest-benchmark.json'}",
        "--benchmark-quiet",
        "-q",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(REPO),
        "-W",
        "ignore::DeprecationWarning",
        f"--bench-device={args.device}",
    ]
    if args.quick:
        cmd.append("--bench-quick")
    if args.budget:
        cmd.append(f"--bench-budget={args.budget}")
    if args.widths:
        cmd.append(f"--bench-widths={args.widths}")
    if args.keyword:
        cmd += ["-k", args.keyword]
    return int(pytest.main(cmd))


def counters_and_model(device: Any) -> dict[str, Any]:
    """FLOPs and bytes per step per backend in the trainer's GPU configuration, the roofline
    MODEL built on them, and a hand check of the FLOP counter on one conv layer."""
    import torch

    from bench import cases, roofline
    from bench.counters import conv_flops, count_flops
    from bench.shapes import RECIPE_BATCH, StepShape
    from bench.workloads import STEPS_PER_EPOCH, count_train_step, step_ops

    shape = StepShape(1.0, RECIPE_BATCH)
    dtype, channels_last = torch.float16, True  # train.runtime's choice on a GPU
    start = time.perf_counter()
    count = count_train_step(shape, dtype, channels_last)
    compiled_model = cases.STEP_COMPILED_BYTES.get((shape.label, str(dtype), channels_last))
    compiled_augment = cases.augment_bytes_for(RECIPE_BATCH, dtype).get("compile", (None, ""))[0]
    ops, per_backend, not_modelled, launches = {}, {}, {}, {}
    for backend in ("eager", "compile", "triton"):
        counted_launches = count.launches(backend)
        if counted_launches is None:
            cases.not_measured(
                f"kernel launches per step, {backend}",
                "what Inductor fuses is only known from its GPU code (gpu-check profiles it)",
            )
        else:
            launches[backend] = counted_launches
        backend_ops, how = step_ops(
            count,
            backend,
            compiled_model_bytes=compiled_model,
            compiled_augment_bytes=compiled_augment,
        )
        if backend_ops is None:
            not_modelled[backend] = how
            cases.not_measured(f"bytes per step, {backend}, GPU configuration", how)
            continue
        ops[backend] = backend_ops
        per_backend[backend] = {"bytes": sum(b for b, _ in backend_ops), "how": how}
    steps = 10 * STEPS_PER_EPOCH
    model = {
        "label": roofline.LABEL,
        "configuration": (
            f"ResNet9 width 1, batch {RECIPE_BATCH}, fp16 autocast, "
            f"channels_last; {STEPS_PER_EPOCH} steps per epoch, 10 epochs"
        ),
        "assumptions": list(roofline.ASSUMPTIONS),
        "gpus": [
            {
                "name": g.name,
                "bandwidth_gbs": g.bandwidth_gbs,
                "tensor_tflops": g.tensor_tflops,
                "source": g.source,
            }
            for g in roofline.GPUS
        ],
        "host_us_per_launch": roofline.HOST_US_PER_LAUNCH,
        "rows": roofline.roofline_table(ops, steps, launches=launches),
        "not_modelled": not_modelled,
    }
    # One conv layer by hand: layer1's 3×3 conv, 64→128 channels at 32×32, batch 512.
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        x = torch.empty(RECIPE_BATCH, 64, 32, 32)
        w = torch.empty(128, 64, 3, 3)
        counted = count_flops(lambda: torch.nn.functional.conv2d(x, w, padding=1))
    return {
        "configuration": model["configuration"],
        "flops_per_step": count.flops,
        "bytes_per_step": per_backend,
        "launches_per_step": launches,
        "eager_bytes_by_phase": count.phases,
        "conv_check": {
            "layer": "layer1 conv 3×3 64→128 at 32×32, batch 512",
            "hand_2BCinCout9HW": conv_flops(RECIPE_BATCH, 64, 128, 32, 32),
            "flop_counter": counted,
        },
        "seconds": time.perf_counter() - start,
        "roofline": model,
        "recipes": recipe_models(),
    }


#: The recipes the model compares with their sources' measured times: (name, preset or None
#: for the seed's final recipe, the source's own figure as published, the GPU it was on).
MODELLED_RECIPES: tuple[tuple[str, str | None, str, str], ...] = (
    ("final (seed)", None, "26 s (the seed, 10 epochs)", "V100"),
    ("airbench94", "airbench94", "3.29 s (TTA evaluation included)", "A100"),
    ("airbench94-muon", "airbench94-muon", "2.59 s", "A100"),
    ("speedrun-2025", "speedrun-2025", "2.015 s (locked clocks)", "A100"),
)


def recipe_models() -> dict[str, Any]:
    """The roofline MODEL of each recipe's whole training run at its own batch and epochs, per
    GPU and backend, beside the time its source measured (labelled as the source's)."""
    import math

    import torch

    from bench import roofline
    from bench.shapes import StepShape
    from bench.workloads import count_train_step, step_ops, train_config
    from train.presets import preset_config

    rows = []
    for name, preset, published, published_gpu in MODELLED_RECIPES:
        batch = 512 if preset is None else preset_config(preset).batch_size
        shape = StepShape(1.0, batch, preset)
        config = train_config(shape)
        count = count_train_step(shape, torch.float16, True)
        steps = math.ceil(config.epochs * (50_000 // config.batch_size))
        ops = {b: step_ops(count, b)[0] for b in ("eager", "triton")}
        launches = {b: count.launches(b) for b in ops}
        for r in roofline.roofline_table(ops, steps, launches=launches):
            r.update(
                recipe=name,
                batch=config.batch_size,
                epochs=config.epochs,
                gflop_per_image=count.flops / config.batch_size / 1e9,
                per_ten_epochs_s=r["ten_epochs_s"] * 10 / config.epochs,
                # The source's figure on the row of the GPU it was measured on only.
                published=published if r["gpu"].startswith(published_gpu) else "",
            )
            rows.append(r)
    return {
        "label": roofline.LABEL,
        "what": "each recipe's training steps at its own batch and epochs (evaluation, "
        "compile and data loading excluded), fp16 autocast, channels_last",
        "rows": rows,
    }


def aot_report(quick: bool) -> dict[str, Any]:
    """The static kernel report (:func:`bench.aot.report`); in ``quick`` one configuration
    per kernel, else every configuration the kernel modules list."""
    from bench.cases import not_measured

    start = time.perf_counter()
    try:
        import bench.aot as aot

        specs = aot.all_specs()
        if quick:
            chosen: dict[str, Any] = {}
            for spec in specs:  # the first fp16 configuration of each kernel
                name = getattr(spec.kernel, "__name__", None) or getattr(
                    getattr(spec.kernel, "fn", None), "__name__", spec.label
                )
                if name not in chosen or (
                    "fp16" in spec.label and "fp16" not in chosen[name].label
                ):
                    chosen[name] = spec
            specs = list(chosen.values())
            not_measured(
                "static kernel report: other configurations",
                "--quick compiles one configuration per kernel",
            )
        reports = aot.report(aot.DEFAULT_ARCHS, specs)
    except Exception as error:  # noqa: BLE001 - any toolchain failure becomes a reason
        reason = f"{type(error).__name__}: {error}"
        not_measured("static kernel report", reason)
        return {"reports": [], "error": reason, "table": ""}
    return {
        "reports": [r.to_json() for r in reports],
        "table": aot.format_table(reports),
        "archs": list(aot.DEFAULT_ARCHS),
        "seconds": time.perf_counter() - start,
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    sys.path.insert(0, str(REPO))
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)

    code = run_suites(args, out)
    suites_s = time.perf_counter() - started

    from bench import cases, report
    from bench.env import configure, environment, resolve_device

    configure()
    device = resolve_device(args.device)
    bench_json_path = out / "pytest-benchmark.json"
    bench_json = report.load_json(bench_json_path) if bench_json_path.exists() else {}
    rows = report.table_rows(bench_json)
    counters = counters_and_model(device)
    aot = {"reports": [], "table": ""} if args.no_aot else aot_report(args.quick)
    if args.no_aot:
        cases.not_measured("static kernel report", "--no-aot")
    wall = time.perf_counter() - started
    env = environment(device)
    summary = {
        "environment": env,
        "mode": "quick" if args.quick else "full",
        "settings": bench_json.get("bench", {}).get("settings", {}),
        "times_include": {
            "ops": "one call of the op on inputs already on the device; compile excluded "
            "(first_call_s reports the first call, compile included)",
            "step": "forward, loss, backward, SGD step, EMA every 5 steps; no augmentation",
            "epoch": "shuffle + augmentation of 50,000 images in batches of 512; no network",
        },
        "results": rows,
        "not_measured": cases.NOT_MEASURED,
        "compile_times_s": cases.COMPILE_TIMES,
        "counters": {k: v for k, v in counters.items() if k != "roofline"},
        "roofline": counters["roofline"],
        "aot_kernel_report": aot["reports"],
        "aot_error": aot.get("error"),
        "files": {
            "pytest_benchmark_json": str(bench_json_path),
            "summary_json": str(out / "summary.json"),
        },
        "pytest_exit_code": code,
        "wall_time_s": {"suites": suites_s, "total": wall},
    }
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, default=str)

    print()
    print(f"=== MEASURED on {env['device']} ===")
    print(report.format_environment(env))
    print(report.format_table(rows))
    print("\ncompile / JIT (first call, compile included; never inside a timed call):")
    for what, s in cases.COMPILE_TIMES.items():
        print(f"  {what}: {report.format_seconds(s)}")
    print("\ncounted per training step (" + counters["configuration"] + "):")
    print(f"  FLOPs (FlopCounterMode): {counters['flops_per_step'] / 1e12:.3f} TFLOP")
    for backend, entry in counters["bytes_per_step"].items():
        print(f"  bytes, {backend}: {entry['bytes'] / 1e9:.3f} GB  ({entry['how']})")
    for backend, entry in counters["launches_per_step"].items():
        print(
            f"  kernel launches, {backend}: {entry['uncaptured']:.1f} op by op, "
            f"{entry['graphed']:.1f} with the step in a CUDA graph"
        )
    print()
    print(report.format_roofline(counters["roofline"]))
    print()
    print(report.format_recipe_models(counters["recipes"]))
    if aot["table"]:
        print("\nstatic kernel report (ahead-of-time compile, no GPU involved):")
        print(aot["table"])
    print("\nnot measured:")
    print(report.format_not_measured(cases.NOT_MEASURED))
    print(f"\nwrote {bench_json_path} and {out / 'summary.json'}; wall time {wall:.0f} s")
    if code != 0:
        print(f"pytest exit code {code}: see the failures above", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
