"""What a run prints and writes: the per-epoch table and its progress line, the summary
over runs, the JSON file and the plots."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import statistics
import sys
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from train.atomic import write_atomic
from train.config import CIFAR10_MEAN, CIFAR10_STD, TrainConfig
from train.results import EpochProgress, EpochRow, RunResult
from train.runtime import Runtime
from train.stats import format_mean_ci, summarize

TARGET_ACCURACY = 0.94

# lr: the schedule's value (per batch of summed losses) at the epoch's last step.
_COLUMNS = ("epoch", "lr", "train loss", "train acc", "test loss", "test acc", "epoch s", "total s")
_WIDTHS = (5, 8, 10, 9, 9, 8, 8, 8)

TIME_INCLUDES = "data to device, whitening filters, all training steps (augmentation included)"
TIME_EXCLUDES = "compile/autotune warm-up (reported separately), evaluation"


def format_header() -> str:
    return "  ".join(name.rjust(width) for name, width in zip(_COLUMNS, _WIDTHS))


def format_row(row: EpochRow) -> str:
    def maybe(value: float | None, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    cells = (
        str(row.epoch),
        f"{row.lr:.4f}",
        f"{row.train_loss:.4f}",
        f"{row.train_acc:.4f}",
        maybe(row.test_loss, ".4f"),
        maybe(row.test_acc, ".4f"),
        f"{row.epoch_time:.2f}",
        f"{row.total_time:.2f}",
    )
    return "  ".join(cell.rjust(width) for cell, width in zip(cells, _WIDTHS))


def _spread(values: Sequence[float]) -> dict[str, float | None]:
    s = summarize(values)
    return {
        "mean": s.mean,
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": s.min,
        "max": s.max,
        "ci95_low": s.ci_low if s.has_interval else None,
        "ci95_high": s.ci_high if s.has_interval else None,
    }


def summarize_runs(results: Sequence[RunResult]) -> dict[str, Any]:
    """Accuracy and time statistics over runs (mean, sample std, min, max), and how many
    runs reached 94%."""
    accuracies = [r.test_acc for r in results]
    times = [r.train_time for r in results]
    return {
        "runs": len(results),
        "test_acc": _spread(accuracies),
        "train_time": _spread(times),
        "reached_94": sum(a >= TARGET_ACCURACY for a in accuracies),
    }


def format_summary(results: Sequence[RunResult], warmup_time: float) -> str:
    s = summarize_runs(results)
    acc, sec = s["test_acc"], s["train_time"]
    lines = []
    if len(results) == 1:
        lines.append(f"test accuracy {acc['mean']:.4f} in {sec['mean']:.2f} s of training")
    else:
        accuracies = [r.test_acc for r in results]
        lines.append(
            f"test accuracy {acc['mean']:.4f} ± {acc['std']:.4f} (std over "
            f"{len(results)} runs; min {acc['min']:.4f}, max {acc['max']:.4f}); "
            f"{s['reached_94']}/{len(results)} runs reached 94%"
        )
        lines.append(f"mean test accuracy {format_mean_ci(accuracies, digits=4)}")
        lines.append(
            f"time {sec['mean']:.2f} ± {sec['std']:.2f} s (min {sec['min']:.2f}, "
            f"max {sec['max']:.2f}); mean "
            f"{format_mean_ci([r.train_time for r in results], unit='s')}"
        )
    lines.append(f"time includes: {TIME_INCLUDES}")
    lines.append(f"time excludes: {TIME_EXCLUDES}; warm-up took {warmup_time:.1f} s once")
    return "\n".join(lines)


def environment(
    runtime: Runtime, world_size: int = 1, distribute: str | None = None
) -> dict[str, Any]:
    """Device name and versions, for the JSON record. ``world_size``: the processes that
    trained (torchrun's K; 1 without it); ``distribute``: how they shared the work ("data" or
    "runs"; None for one process). ``device`` is rank 0's."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "device": runtime.device_name,
        "device_type": runtime.device.type,
        "backend": runtime.backend,
        "dtype": str(runtime.dtype).replace("torch.", ""),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
        "triton_interpreter": os.environ.get("TRITON_INTERPRET") == "1",
        "argv": sys.argv,
        "world_size": world_size,
        "distribute": distribute,
    }


def _finite_or_none(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(
    path: str | os.PathLike,
    config: TrainConfig,
    runtime: Runtime,
    results: Sequence[RunResult],
    warmup_time: float,
    *,
    world_size: int = 1,
    distribute: str | None = None,
) -> None:
    """Everything about the runs in one JSON file, written atomically with
    :func:`train.atomic.write_atomic` (by rank 0 alone when several processes trained:
    ``world_size`` and ``distribute`` as in :func:`environment`)."""
    record = {
        "config": config.to_dict(),
        "environment": environment(runtime, world_size, distribute),
        "time_includes": TIME_INCLUDES,
        "time_excludes": TIME_EXCLUDES,
        "warmup_time": warmup_time,
        "summary": summarize_runs(results),
        "runs": [
            {
                "seed": r.seed,
                "test_acc": r.test_acc,
                "test_loss": r.test_loss,
                "train_time": r.train_time,
                "setup_time": r.setup_time,
                "eval_time": r.eval_time,
                "epochs": [asdict(row) for row in r.rows],
            }
            for r in results
        ],
    }
    # Serialised before the file is opened: a value json cannot encode fails here, with
    # nothing written.
    text = json.dumps(record, indent=2, default=_finite_or_none)
    write_atomic(path, lambda handle: handle.write(text.encode("utf-8")))


def write_plots(
    folder: str | os.PathLike,
    config: TrainConfig,
    data: Any,
    trainer: Any,
    results: Sequence[RunResult],
) -> list[str]:
    """The ``--plot`` PNGs: curves of every run, augmented examples, whitening filters."""
    from train.plots import plot_augmentations, plot_curves, plot_whitening

    folder = Path(folder)
    written = [
        plot_curves(
            [[asdict(row) for row in r.rows] for r in results],
            folder / "curves.png",
            labels=[f"seed {r.seed}" for r in results],
        )
    ]
    written.append(
        plot_augmentations(
            data.train_images[:8],
            folder / "augmentations.png",
            pad=config.pad,
            cutout_size=config.cutout,
            flip=config.flip,
            mean=CIFAR10_MEAN,
            std=CIFAR10_STD,
            seed=config.seed,
            titles=[data.classes[int(i)] for i in data.train_labels[:8]],
        )
    )
    if trainer.whitening is not None:
        written.append(
            plot_whitening(
                trainer.whitening.filters.cpu(),
                trainer.whitening.eigenvalues.cpu(),
                folder / "whitening.png",
            )
        )
    return [str(w) for w in written]


def write_results(
    config: TrainConfig,
    runtime: Runtime,
    data: Any,
    trainer: Any,
    results: Sequence[RunResult],
    warmup_time: float,
    *,
    world_size: int = 1,
    distribute: str | None = None,
    plot_dir: str | os.PathLike | None = None,
) -> str | None:
    """Write ``--json`` and the ``--plot`` PNGs; None when all went where asked.

    A write that fails (disk full, a folder removed meanwhile) loses nothing: unless the
    JSON made it to its path, the results go to a fresh file in the temporary folder.
    Returns the one-line account of what failed and where the results are.
    """
    from train.outputs import fallback_path

    def write(path: str | os.PathLike) -> None:
        write_json(
            path,
            config,
            runtime,
            results,
            warmup_time,
            world_size=world_size,
            distribute=distribute,
        )

    failures: list[str] = []
    numbers_on_disk = False
    if config.json:
        try:
            write(config.json)
            print(f"wrote {config.json}")
            numbers_on_disk = True
        except OSError as error:
            failures.append(f"could not write --json {config.json} ({_reason(error)})")
    if plot_dir:
        try:
            for path in write_plots(plot_dir, config, data, trainer, results):
                print(f"wrote {path}")
        except OSError as error:
            failures.append(f"could not write the plots into {plot_dir} ({_reason(error)})")
    if not failures:
        return None
    if not numbers_on_disk:
        rescue = fallback_path()
        try:
            write(rescue)
            failures.append(f"the results are in {rescue}")
        except OSError as error:
            failures.append(
                f"nor to {rescue} ({_reason(error)}); the figures above are all there is"
            )
    return "; ".join(failures)


def _reason(error: OSError) -> str:
    return error.strerror or str(error) or type(error).__name__


@contextlib.contextmanager
def progress_bar(progress: EpochProgress, steps: int) -> Iterator:
    """A transient per-epoch progress line on stderr, only when stderr is a terminal (the
    table rows on stdout stay clean). It counts steps on the host: no device sync."""
    from tqdm import tqdm

    bar = tqdm(
        total=steps,
        initial=progress.batches_done,
        desc=f"epoch {progress.epoch}",
        unit="step",
        leave=False,
        file=sys.stderr,
        disable=not sys.stderr.isatty(),
        dynamic_ncols=True,
    )
    try:
        yield bar
    finally:
        bar.close()
