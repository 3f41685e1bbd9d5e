"""Turning results into the table ``python -m bench`` prints and the summary JSON it writes.

The timing table is built from pytest-benchmark's JSON file — the same numbers whichever
way the suites were run — and names the device and versions above it. The roofline
section is printed under a banner saying it is a MODEL.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "TABLE_COLUMNS",
    "table_rows",
    "format_table",
    "format_seconds",
    "load_json",
    "format_roofline",
    "format_environment",
    "format_not_measured",
]

TABLE_COLUMNS = (
    "op",
    "backend",
    "shape",
    "dtype",
    "time median [p20, p80]",
    "GB/s",
    "vs eager",
    "vs compile",
)


def load_json(path: str | Path) -> dict[str, Any]:
    with open(path) as f:
        return json.load(f)


def format_seconds(s: float | None) -> str:
    """1.23 s, 45.6 ms, 789 µs."""
    if s is None or (isinstance(s, float) and math.isnan(s)):
        return "-"
    if s >= 1:
        return f"{s:.3g} s"
    if s >= 1e-3:
        return f"{s * 1e3:.3g} ms"
    return f"{s * 1e6:.3g} µs"


def _ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}×"


def _op_name(info: dict[str, Any]) -> str:
    parts = [info.get("op", "?"), info.get("label", ""), info.get("variant", "")]
    return " ".join(p for p in parts if p)


def table_rows(benchmark_json: dict[str, Any]) -> list[dict[str, Any]]:
    """One dict per timed (op, backend), in run order, from pytest-benchmark's JSON."""
    rows = []
    for bench in benchmark_json.get("benchmarks", []):
        info = bench.get("extra_info", {})
        if "op" not in info:
            continue
        stats = bench.get("stats", {})
        rows.append(
            {
                "op": _op_name(info),
                "backend": info["backend"],
                "shape": info.get("shape", ""),
                "dtype": info.get("dtype", ""),
                "median_s": stats.get("median"),
                "p20_s": info.get("p20_s"),
                "p80_s": info.get("p80_s"),
                "samples": stats.get("rounds"),
                "gbps": info.get("gbps"),
                "bytes": info.get("bytes"),
                "flops": info.get("flops"),
                "tflops": info.get("tflops"),
                "speedup_vs_eager": info.get("speedup_vs_eager"),
                "speedup_vs_compile": info.get("speedup_vs_compile"),
                "first_call_s": info.get("first_call_s"),
                "agreement_error": info.get("agreement_error"),
                "name": bench.get("fullname"),
            }
        )
    return rows


def _render(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = [
        "  ".join(str(c).ljust(w) for c, w in zip(header, widths)).rstrip(),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)


def format_table(rows: list[dict[str, Any]]) -> str:
    """The timing table: op, backend, median time with p20/p80, GB/s, speed-ups."""
    body = []
    for r in rows:
        t = (
            f"{format_seconds(r['median_s'])} [{format_seconds(r['p20_s'])}, "
            f"{format_seconds(r['p80_s'])}]"
        )
        gb = "-" if r["gbps"] is None else f"{r['gbps']:.3g}"
        body.append(
            (
                r["op"],
                r["backend"],
                r["shape"],
                r["dtype"],
                t,
                gb,
                _ratio(r["speedup_vs_eager"]),
                _ratio(r["speedup_vs_compile"]),
            )
        )
    return _render(TABLE_COLUMNS, body)


def format_environment(env: dict[str, Any]) -> str:
    keys = ("device", "cpu_model", "torch_threads", "torch", "triton", "python", "cuda")
    return "  ".join(f"{k}={env.get(k)}" for k in keys if env.get(k) is not None)


def format_not_measured(entries: list[dict[str, str]]) -> str:
    return "\n".join(f"  - {e['what']}: {e['reason']}" for e in entries) or "  (nothing)"


def format_roofline(roofline: dict[str, Any]) -> str:
    """The MODEL section: banner, peak table with sources, predictions, assumptions."""
    out = [f"=== {roofline['label']} ==="]
    gpu_rows = [
        (g["name"], f"{g['bandwidth_gbs']:g}", f"{g['tensor_tflops']:g}", g["source"])
        for g in roofline["gpus"]
    ]
    out.append(_render(("GPU", "peak GB/s", "dense fp16/bf16 TFLOP/s", "source"), gpu_rows))
    out.append("")
    pred = [
        (
            r["gpu"],
            r["backend"],
            f"{r['bytes_per_step'] / 1e9:.2f}",
            f"{r['flops_per_step'] / 1e12:.3f}",
            f"{r['memory_bound_ms']:.2f}",
            f"{r['math_bound_ms']:.2f}",
            "-" if r.get("launches_per_step") is None else f"{r['launches_per_step']:.0f}",
            f"{r.get('host_ms', 0.0):.2f}",
            "-"
            if r.get("breakeven_us_per_launch") is None
            else f"{r['breakeven_us_per_launch']:.1f}",
            f"{r['step_ms']:.2f}",
            f"{r['ten_epochs_s']:.2f}",
            f"{r.get('uncaptured_ten_epochs_s', r['ten_epochs_s']):.2f}",
        )
        for r in roofline["rows"]
    ]
    out.append(
        _render(
            (
                "GPU",
                "backend",
                "GB/step",
                "TFLOP/step",
                "bytes/BW ms",
                "flops/peak ms",
                "launches",
                "host ms",
                "host-bound above µs/launch",
                "MODEL step ms (graph)",
                "MODEL 10 epochs s (graph)",
                "MODEL 10 epochs s (no graph)",
            ),
            pred,
        )
    )
    out.append(f"configuration: {roofline['configuration']}")
    for name, why in roofline.get("not_modelled", {}).items():
        out.append(f"not modelled: {name}: {why}")
    out.append("assumptions:")
    out += [f"  - {a}" for a in roofline["assumptions"]]
    return "\n".join(out)


def format_recipe_models(recipes: dict[str, Any]) -> str:
    """The MODEL of each recipe's run beside its source's measured time (labelled)."""
    rows = [
        (
            r["recipe"],
            str(r["batch"]),
            f"{r['epochs']:g}",
            f"{r['gflop_per_image']:.3f}",
            r["gpu"],
            r["backend"],
            f"{r['bytes_per_step'] / 1e9:.2f}",
            "-" if r["launches_per_step"] is None else f"{r['launches_per_step']:.0f}",
            "no" if r["graphed_launches_per_step"] is None else "yes",
            f"{r['step_ms']:.2f}",
            f"{r['ten_epochs_s']:.2f}",
            f"{r['per_ten_epochs_s']:.2f}",
            r["published"],
        )
        for r in recipes["rows"]
    ]
    header = (
        "recipe",
        "batch",
        "epochs",
        "GFLOP/img",
        "GPU",
        "backend",
        "GB/step",
        "launches",
        "graph",
        "MODEL step ms",
        "MODEL run s",
        "MODEL per 10 epochs s",
        "the source's own measured time (not ours)",
    )
    return "\n".join(
        [f"=== {recipes['label']}: the recipes ===", _render(header, rows), recipes["what"]]
    )
