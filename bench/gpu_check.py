"""``./run.sh gpu-check`` (``python -m bench.gpu_check``): one command that proves the project
on a GPU, offline, in under 8 minutes, and writes what it found to one folder.

    ./run.sh gpu-check                         # on a GPU machine: the whole plan
    ./run.sh gpu-check --runs 10               # the headline: ten runs of the recipe
    ./run.sh gpu-check --data-dir .carry/cifar10-carry   # data carried as JPEG mosaics
    ./run.sh gpu-check --dry-run               # the same plan on the CPU at tiny sizes

The plan, one subprocess per stage, each with its own time limit inside ``--budget``; a
stage that fails is recorded and the next one runs:

1. ``data``     CIFAR-10 rebuilt from a carried ``cifar10-carry`` folder, when that is what
               ``--data-dir`` names (or ``.carry/cifar10-carry`` exists and nothing else is
               named);
2. ``kernels``  every ``gpu``-marked kernel test case compiled on CUDA (no interpreter), the
               ``opcheck`` cases included (``TRITON_INTERPRET=0 pytest -m gpu``);
3. ``bench``    ``python -m bench``: one training step per backend on the same batch, checked
               to agree, then timed (median of CUDA events) with its host time per step,
               and again captured in a CUDA graph (``<backend>+graphs``: a replay checked
               against an uncaptured step); every fused op against eager and
               ``torch.compile`` with GB/s; the launch and byte counts and the roofline model
               (the ahead-of-time kernel report is CI's: ``--no-aot`` here);
4. ``train-*``  each recipe of ``--recipes`` (default :data:`DEFAULT_RECIPES`: the seed's
               final recipe and the fastest one known here), ``--runs`` times, timed as the
               seed counted (``python -m train --json``); skipped, and said so, without a
               data set.

Then ``summary.json`` and ``summary.md`` (device, driver, versions, every stage's exit code
and time, the kernel test counts, the bench rows, the training figures, what failed). Exit
codes: 0 all passed, 1 a check failed or a stage did not finish, 2 bad arguments or no GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent

#: The recipes ``gpu-check`` trains by default: the seed's final recipe (``final``, the
#: trainer's defaults) and the fastest recipe this project knows (the last preset of the
#: second ladder). ``--recipes`` takes any preset names (``--list-presets``); the stage of
#: each is ``train-NAME``.
DEFAULT_RECIPES = ("final", "speedrun-2025")

#: Seconds each stage may take on a GPU (the whole must fit the 8-minute promise, with the
#: default two recipes).
GPU_LIMITS = {"data": 45, "kernels": 135, "bench": 120, "train": 90}
#: The same plan on the CPU, sized so that a CI test can walk it.
DRY_RUN_LIMITS = {"data": 120, "kernels": 600, "bench": 900, "train": 900}
DRY_RUN_TRAIN_FLAGS = [
    "--device",
    "cpu",
    "--width",
    "0.0625",
    "--train-subset",
    "256",
    "--test-subset",
    "128",
    "--epochs",
    "1",
    "--batch-size",
    "64",
    "--no-tta",
]


@dataclass
class Stage:
    """One step of the plan: a command, its time limit, and whether it checks correctness."""

    name: str
    command: list[str]
    limit_s: float
    env: dict[str, str] = field(default_factory=dict)
    checks: bool = True  # a failure here is a failed check (exit 1), not only a missing figure


@dataclass
class StageResult:
    name: str
    command: str
    exit_code: int | None  # None: not run (skipped) or killed at its limit
    seconds: float
    status: str  # "passed" | "failed" | "timed out" | "skipped"
    detail: str = ""
    log: str = ""


# ------------------------------------------------------------------------------ arguments


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="./run.sh gpu-check", description=__doc__.split("\n")[0])
    p.add_argument(
        "--out", default=None, help="folder for the results (default runs/gpu-check-TIME)"
    )
    p.add_argument("--runs", type=int, default=3, help="training runs per recipe (default 3)")
    p.add_argument(
        "--recipes",
        default=",".join(DEFAULT_RECIPES),
        help="comma-separated recipes to train: 'final' (the defaults) or preset names "
        f"(default {','.join(DEFAULT_RECIPES)})",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="CIFAR-10 (any form python -m train takes) or a carried cifar10-carry folder "
        "(default $CIFAR10_DIR, else .carry/cifar10-carry when present)",
    )
    p.add_argument(
        "--budget", type=float, default=460.0, help="seconds for the whole plan (default 460)"
    )
    p.add_argument(
        "--dry-run",
        action="store_true",
        help="walk the same plan on the CPU at tiny sizes (tests this script; no GPU figures)",
    )
    return p.parse_args(argv)


def recipe_names(args: argparse.Namespace) -> list[str]:
    """The recipes ``--recipes`` names, checked against the presets (exit 2 otherwise)."""
    from train.presets import PRESETS

    names = [n.strip() for n in args.recipes.split(",") if n.strip()]
    unknown = [n for n in names if n != "final" and n not in PRESETS]
    if not names or unknown:
        _fail_usage(
            f"--recipes {args.recipes!r}: unknown recipe {', '.join(unknown) or '(none given)'}; "
            "use 'final' or preset names (python -m train --list-presets)"
        )
    return names


def _fail_usage(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _data_source(requested: str | None) -> tuple[Path | None, bool]:
    """(path, is_carried_mosaics) of the data set to use, or (None, False) without one."""
    if requested is None:
        requested = os.environ.get("CIFAR10_DIR")
        if requested is None and (REPO / ".carry" / "cifar10-carry" / "rebuild.py").is_file():
            requested = str(REPO / ".carry" / "cifar10-carry")
    if requested is None:
        return None, False
    path = Path(requested).expanduser()
    if not path.exists():
        _fail_usage(
            f"--data-dir {requested} does not exist; name the CIFAR-10 data or leave it out"
        )
    return path, (path / "rebuild.py").is_file()


# ------------------------------------------------------------------------------ the plan


def make_plan(args: argparse.Namespace, out: Path, data: Path | None, carried: bool) -> list[Stage]:
    """The stages in order; the dry run differs only in sizes, device and the interpreter."""
    py = sys.executable
    limits = DRY_RUN_LIMITS if args.dry_run else GPU_LIMITS
    stages: list[Stage] = []
    train_data = data
    if data is not None and carried:
        train_data = out / "cifar10"
        stages.append(
            Stage("data", [py, str(data / "rebuild.py"), str(train_data)], limits["data"])
        )
    kernel_tests = [py, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-m", "gpu", "tests"]
    kernel_tests.append(f"--junitxml={out / 'kernels.xml'}")
    if args.dry_run:  # a few cases through the interpreter: the plan, not the kernels
        kernel_tests += ["-k", "opcheck_fwd or empty_batch or launch"]
    stages.append(
        Stage(
            "kernels",
            kernel_tests,
            limits["kernels"],
            env={"TRITON_INTERPRET": "1" if args.dry_run else "0"},
        )
    )
    bench = [py, "-m", "bench", "--out", str(out / "bench")]
    if args.dry_run:
        bench += ["--quick", "--no-aot", "--budget", "0.05", "-k", "augment and eager"]
    else:  # the ahead-of-time report needs no GPU: CI compiles it
        bench += ["--budget", "1", "--no-aot"]
    stages.append(Stage("bench", bench, limits["bench"], env={"TRITON_INTERPRET": "0"}))
    for name in recipe_names(args):
        flags = [] if name == "final" else ["--preset", name]
        command = [py, "-m", "train", *flags, "--runs", str(args.runs)]
        command += ["--json", str(out / f"train-{name}.json"), "--no-download"]
        command += DRY_RUN_TRAIN_FLAGS if args.dry_run else ["--device", "cuda"]
        if train_data is not None:
            command += ["--data-dir", str(train_data)]
        stages.append(
            Stage(f"train-{name}", command, limits["train"], env={"TRITON_INTERPRET": "0"})
        )
    return stages


def run_stage(stage: Stage, out: Path, seconds_left: float, skip: str | None) -> StageResult:
    """Run one stage with its log in ``out``; never raises for the stage's own failure."""
    shown = " ".join(stage.command)
    if skip is not None:
        return StageResult(stage.name, shown, None, 0.0, "skipped", skip)
    limit = min(stage.limit_s, seconds_left)
    if limit < 5:
        return StageResult(stage.name, shown, None, 0.0, "skipped", "the --budget was spent")
    log = out / f"{stage.name}.log"
    env = {**os.environ, **stage.env, "PYTHONUNBUFFERED": "1"}
    started = time.perf_counter()
    with open(log, "w") as handle:
        try:
            done = subprocess.run(
                stage.command,
                cwd=REPO,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=handle,
                stderr=subprocess.STDOUT,
                timeout=limit,
            )
            code = done.returncode
        except subprocess.TimeoutExpired:
            code = None
    seconds = time.perf_counter() - started
    last = _last_line(log)
    if code is None:
        return StageResult(
            stage.name, shown, None, seconds, "timed out", f"past {limit:.0f} s", log.name
        )
    status = "passed" if code == 0 else "failed"
    return StageResult(stage.name, shown, code, seconds, status, last, log.name)


def _last_line(path: Path) -> str:
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1][:200] if lines else ""


# ------------------------------------------------------------------------------ figures


def environment(dry_run: bool) -> dict[str, Any]:
    import torch

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "dry_run": dry_run,
    }
    try:
        import triton

        env["triton"] = triton.__version__
    except ImportError:
        env["triton"] = None
    if torch.cuda.is_available() and not dry_run:
        props = torch.cuda.get_device_properties(0)
        env["device"] = torch.cuda.get_device_name(0)
        env["multiprocessors"] = props.multi_processor_count
        env["memory_gib"] = round(props.total_memory / 2**30, 1)
        env["driver"] = _nvidia_smi("driver_version")
    else:
        env["device"] = f"CPU ({platform.processor() or platform.machine()}): dry run"
        env["driver"] = None
    return env


def _nvidia_smi(query: str) -> str | None:
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip().splitlines()[0] if done.returncode == 0 and done.stdout else None


def kernel_counts(path: Path) -> dict[str, int] | None:
    """Test counts from pytest's JUnit XML (None when the stage wrote none)."""
    if not path.is_file():
        return None
    suite = ElementTree.parse(path).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return counts


def bench_figures(folder: Path) -> dict[str, Any] | None:
    path = folder / "summary.json"
    if not path.is_file():
        return None
    summary = json.loads(path.read_text())
    keep = (
        "op",
        "backend",
        "shape",
        "dtype",
        "median_s",
        "gbps",
        "speedup_vs_eager",
        "speedup_vs_compile",
        "agreement_error",
        "host_s",
    )
    return {
        "rows": [{k: row.get(k) for k in keep} for row in summary.get("results", [])],
        "not_measured": summary.get("not_measured", []),
        "roofline": summary.get("roofline"),
    }


def train_figures(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    return {
        "summary": record.get("summary"),
        "warmup_time": record.get("warmup_time"),
        "runs": [
            {k: run.get(k) for k in ("seed", "test_acc", "train_time", "eval_time")}
            for run in record.get("runs", [])
        ],
        "time_includes": record.get("time_includes"),
    }


def summarize(
    args: argparse.Namespace, out: Path, results: list[StageResult], data: Path | None
) -> dict[str, Any]:
    failed = [r for r in results if r.status in ("failed", "timed out")]
    return {
        "environment": environment(args.dry_run),
        "data": str(data) if data is not None else None,
        "accuracy_measured": data is not None,
        "stages": [asdict(r) for r in results],
        "kernel_tests": kernel_counts(out / "kernels.xml"),
        "bench": bench_figures(out / "bench"),
        "train": {name: train_figures(out / f"train-{name}.json") for name in recipe_names(args)},
        "failed": [f"{r.name}: {r.status} ({r.detail})" for r in failed],
        "passed": not failed,
    }


def markdown(summary: dict[str, Any]) -> str:
    env = summary["environment"]
    lines = [
        "# gpu-check" + (" (dry run: no GPU figures)" if env["dry_run"] else ""),
        "",
        f"- device: {env['device']}; driver {env.get('driver')}; torch {env['torch']} "
        f"(CUDA {env['cuda']}); triton {env['triton']}; Python {env['python']}",
        "- result: "
        + ("all checks passed" if summary["passed"] else "FAILED: " + "; ".join(summary["failed"])),
    ]
    if not summary["accuracy_measured"]:
        lines.append("- accuracy: not measured (no data set; the bench timed synthetic images)")
    lines += ["", "| stage | status | exit | seconds | last line |", "|---|---|---|---|---|"]
    for s in summary["stages"]:
        detail = s["detail"].replace("|", "\\|")
        lines.append(
            f"| {s['name']} | {s['status']} | {s['exit_code']} | {s['seconds']:.1f} | {detail} |"
        )
    counts = summary["kernel_tests"]
    if counts:
        lines += [
            "",
            f"Kernel tests: {counts['passed']} passed, {counts['failures']} failed, "
            f"{counts['errors']} errors, {counts['skipped']} skipped.",
        ]
    bench = summary["bench"]
    if bench and bench["rows"]:
        lines += [
            "",
            "| op | backend | shape | median ms | host ms | GB/s | vs eager | vs compile |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for r in bench["rows"]:
            lines.append(
                f"| {r['op']} | {r['backend']} | {r['shape']} | {_num(r['median_s'], 1e3)} | "
                f"{_num(r.get('host_s'), 1e3)} | {_num(r['gbps'])} | "
                f"{_num(r['speedup_vs_eager'])} | {_num(r['speedup_vs_compile'])} |"
            )
    for name, figures in summary["train"].items():
        if figures and figures["summary"]:
            lines += ["", f"Recipe `{name}`: {json.dumps(figures['summary'])}"]
    return "\n".join(lines) + "\n"


def _num(value: float | None, scale: float = 1.0) -> str:
    return "" if value is None else f"{value * scale:.3g}"


# ------------------------------------------------------------------------------ main


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.runs < 1:
        _fail_usage(f"--runs must be at least 1; got {args.runs}")
    recipe_names(args)  # an unknown recipe: one line, before any work
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        _fail_usage(
            f"no CUDA GPU is visible to torch {torch.__version__} (CUDA build: "
            f"{torch.version.cuda}); run gpu-check on a machine with an NVIDIA GPU, or add "
            "--dry-run to walk the plan on the CPU"
        )
    from train.outputs import OutputError, check_output_folder

    out = Path(args.out or REPO / "runs" / time.strftime("gpu-check-%Y%m%d-%H%M%S"))
    try:
        check_output_folder(out, "--out")
    except OutputError as error:
        _fail_usage(str(error))
    out.mkdir(parents=True, exist_ok=True)
    data, carried = _data_source(args.data_dir)
    plan = make_plan(args, out, data, carried)
    deadline = time.perf_counter() + args.budget
    results: list[StageResult] = []
    for stage in plan:
        skip = None
        if stage.name.startswith("train-") and data is None:
            skip = "no data set: accuracy not measured (the bench stage timed synthetic images)"
        if stage.name.startswith("train-") and any(
            r.name == "data" and r.status != "passed" for r in results
        ):
            skip = "the data stage failed"
        result = run_stage(stage, out, deadline - time.perf_counter(), skip)
        results.append(result)
        print(
            f"gpu-check: {result.name}: {result.status} in {result.seconds:.0f} s  {result.detail}",
            flush=True,
        )
    summary = summarize(args, out, results, data)
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    (out / "summary.md").write_text(markdown(summary))
    print(f"gpu-check: wrote {out / 'summary.json'} and {out / 'summary.md'}")
    return 0 if summary["passed"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
