"""The airbench94 training step, the project's against the plain reimplementation's, timed
side by side in one process.

    .venv/bin/python -m bench.airbench_step [--width 1.0] [--batch-size 256] [--steps N]
                                            [--repeats R] [--warmup W] [--compile]
                                            [--device auto|cpu|cuda] [--threads T]

* **project**: the trainer's own step for ``--preset airbench94`` at this width and batch,
  built as the step benchmarks build it (:func:`bench.workloads.make_train_step` for a
  :class:`bench.shapes.StepShape` with ``preset="airbench94"``): the rates of the step set,
  forward, summed label-smoothed loss, backward, Nesterov SGD, the lookahead every 5 steps,
  the whitening bias's freeze check.
* **plain**: :mod:`bench.plain_airbench`'s step doing the same work: its rates set,
  :func:`~bench.plain_airbench.train_step`, its lookahead every 5 steps.

Both in float32 and channels_last, as the trainer runs on any device
(``train.runtime.resolve_runtime``; :func:`bench.workloads.runtime_for` would pick NCHW on
the CPU by default, so channels_last is passed to it explicitly), on the same batches of
random normalised-looking images (:func:`bench.workloads.step_inputs`), the same random
whitening filters and the same schedule length. ``--compile`` adds both again with the
network wrapped in ``torch.compile`` (the optimiser and the lookahead stay eager, as in the
trainer). Each variant first runs ``--warmup`` untimed steps (compilation happens there);
then ``--repeats`` rounds each time ``--steps`` steps of every variant, alternating (the
order reversed every other round, so a drift of the machine's speed hits all alike). A CUDA
device is synchronised before and after each timing; on the CPU the ops have finished when
the step returns. On a GPU the project's SGD is its fused form (what the trainer runs there)
and the plain one stays foreach; the project's BN sites run its eager backend (PyTorch's own
batch norm for these one-split sites), or whatever Inductor makes of it under ``--compile``.

The table gives images/s (median, min and max over the repeats) and the ratio
project/plain of the medians per backend (> 1: the project's step is faster). Nothing
else (data augmentation, evaluation) is timed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from bench import plain_airbench as plain
from bench.shapes import StepShape
from bench.workloads import make_train_step, runtime_for, step_inputs

PRESET = "airbench94"

#: A step: normalised images (B, 3, 32, 32) and int64 labels (B,) in, device tensors out.
Step = Callable[[torch.Tensor, torch.Tensor], object]


@dataclass
class Row:
    """One variant's timings: images/s of each repeat."""

    variant: str  # "project" | "plain"
    backend: str  # "eager" | "compile"
    images_per_s: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.images_per_s)


class PlainStep:
    """:mod:`bench.plain_airbench`'s step with what the trainer's step does around it: each
    step's rates from the schedule, and the lookahead after it.

    ``forward`` is the model or its ``torch.compile`` wrapper; ``total`` the run's steps
    (the schedule's and the lookahead's length)."""

    def __init__(self, model: plain.Net, forward: Step, batch: int, total: int) -> None:
        self.forward, self.total, self.steps = forward, total, 0
        self.optimizer = plain.make_optimizer(model, batch)
        self.lookahead = plain.Lookahead(model, total)

    def __call__(
        self, images: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``images`` float32 (B, 3, 32, 32), ``labels`` int64 (B,) -> (loss, correct)."""
        plain.set_rates(self.optimizer, plain.lr_factor(self.steps, self.total))
        out = plain.train_step(self.forward, self.optimizer, images, labels)
        self.steps += 1
        self.lookahead.after_step(self.steps)
        return out


def build_steps(
    width: float, batch: int, backend: str, device: torch.device, planned: int
) -> dict[str, Step]:
    """``{"project": step, "plain": step}`` for ``backend`` ("eager" or "compile") at
    ``width`` and ``batch`` on ``device``; ``planned``: how many steps each will run (less
    than the schedule's length, checked)."""
    shape = StepShape(width, batch, preset=PRESET)
    runtime = runtime_for(device, backend, dtype=torch.float32, channels_last=True)
    project = make_train_step(shape, backend, runtime)
    if planned >= project.total_steps:
        raise ValueError(f"{planned} steps would run past the schedule's {project.total_steps}")
    torch.manual_seed(0)
    model = plain.build_model(width, device, torch.float32, channels_last=True)
    model.set_whitening(project.model.whitening.filters)  # the same random filters
    forward = torch.compile(model) if backend == "compile" else model
    return {"project": project, "plain": PlainStep(model, forward, batch, project.total_steps)}


def measure(
    width: float,
    batch: int,
    steps: int,
    repeats: int,
    warmup: int,
    backends: tuple[str, ...],
    device: torch.device,
) -> list[Row]:
    """Time every (backend, variant) as the module docstring says; one :class:`Row` each,
    in the order project, plain per backend."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    planned = warmup + steps * repeats
    runners: list[tuple[Row, Step]] = []
    for backend in backends:
        for variant, step in build_steps(width, batch, backend, device, planned).items():
            runners.append((Row(variant, backend), step))
    runtime = runtime_for(device, "eager", dtype=torch.float32, channels_last=True)
    batches = step_inputs(StepShape(width, batch, preset=PRESET), runtime, sets=2)

    def run(step: Step, count: int) -> float:
        sync()
        start = time.perf_counter()
        for i in range(count):
            step(*batches[i % len(batches)])
        sync()
        return time.perf_counter() - start

    for _, step in runners:
        run(step, warmup)
    for r in range(repeats):
        for row, step in runners if r % 2 == 0 else runners[::-1]:
            row.images_per_s.append(steps * batch / run(step, steps))
    return [row for row, _ in runners]


def format_table(rows: list[Row], header: str) -> str:
    """The table: one line per row, then the ratio project/plain of the medians per
    backend."""
    lines = [header, "", f"{'variant':<9}{'backend':<9}{'img/s median':>13}{'min':>10}{'max':>10}"]
    for row in rows:
        lo, hi = min(row.images_per_s), max(row.images_per_s)
        lines.append(f"{row.variant:<9}{row.backend:<9}{row.median:>13.1f}{lo:>10.1f}{hi:>10.1f}")
    lines.append("")
    for backend in dict.fromkeys(row.backend for row in rows):
        median = {row.variant: row.median for row in rows if row.backend == backend}
        ratio = median["project"] / median["plain"]
        lines.append(f"ratio project/plain ({backend}): {ratio:.3f}  (> 1: the project is faster)")
    return "\n".join(lines)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.airbench_step", description=__doc__.split("\n")[0]
    )
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="steps per timing (default 10)")
    p.add_argument("--repeats", type=int, default=5, help="timings per variant (default 5)")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile'd steps")
    p.add_argument("--device", default="auto", help="auto (GPU if present), cpu or cuda[:N]")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU intra-op threads (default: torch's); 1 is steadier on a busy machine",
    )
    args = p.parse_args(argv)
    counts = (
        args.batch_size,
        args.steps,
        args.repeats,
        1 if args.threads is None else args.threads,
    )
    if args.width <= 0 or min(counts) < 1 or args.warmup < 0:
        p.error(
            "--width, --batch-size, --steps, --repeats and --threads must be positive, "
            "--warmup >= 0"
        )
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    wanted = args.device
    if wanted == "auto":
        wanted = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(wanted)
    backends = ("eager", "compile") if args.compile else ("eager",)
    rows = measure(
        args.width, args.batch_size, args.steps, args.repeats, args.warmup, backends, device
    )
    widths = "/".join(str(max(1, round(w * args.width))) for w in plain.WIDTHS)
    where = (
        torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu ({torch.get_num_threads()} thread{'s' * (torch.get_num_threads() != 1)})"
    )
    header = (
        f"{PRESET} training step, width {args.width:g} (widths {widths}), batch "
        f"{args.batch_size}, float32, channels_last, {where}, torch {torch.__version__}\n"
        f"{args.steps} steps per timing, {args.repeats} repeats alternating, "
        f"{args.warmup} untimed warm-up steps per variant first"
    )
    print(format_table(rows, header), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
