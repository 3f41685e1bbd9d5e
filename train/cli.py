"""``python -m train``: the command line of the trainer.

Flags are parsed before ``kernels`` is imported, because running the Triton kernels on the
CPU (``--backend triton --device cpu``) needs ``TRITON_INTERPRET=1`` set before that import.

Exit codes: 0 done; 2 bad flags, or a checkpoint of a different run; 3 unreadable data or
checkpoint; 4 the training diverged; 130 / 143 stopped by SIGINT / SIGTERM (128 + signal).

Under ``torchrun --nproc-per-node K`` (K > 1) every process runs this command line; they
share the work as ``--distribute`` says (:mod:`train.distributed`), and only rank 0 prints
and writes files. Errors that every rank meets alike (flags, data, divergence) are reported
once, by rank 0, and every rank exits with the same code.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from train.config import (BACKEND_CHOICES, CPU_QUICK_OVERRIDES, DISTRIBUTE_CHOICES,
                          PRECISION_CHOICES, ConfigError, TrainConfig)

if TYPE_CHECKING:
    from train.distributed import Distributed

EXIT_OK, EXIT_USAGE, EXIT_DATA, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130
EXIT_TERMINATED = 143      # SIGTERM: 128 + 15, as a shell reports a process it killed


def _quiet() -> bool:
    """Whether this process is a torchrun rank other than 0, which prints nothing (read from
    torchrun's environment, so that it holds before the process group forms)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


def _say(*args: Any, **kwargs: Any) -> None:
    """``print``, on rank 0 only."""
    if not _quiet():
        print(*args, **kwargs)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits with 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE,
                  None if _quiet() else f"error: {message} (see python -m train --help)\n")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {value}")
    return value


def _flag(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {text!r}")


def build_parser() -> argparse.ArgumentParser:
    # Every config flag defaults to SUPPRESS, so the namespace holds only what the user
    # typed: that is how the CPU-sized configuration fills in only what was not asked for.
    p = _Parser(
        prog="python -m train",
        description="Train ResNet9 on CIFAR-10 with the 'bag of tricks' recipe (94%% in "
                    "10 epochs). Without a GPU it runs a CPU-sized configuration unless "
                    "--full is given.",
        epilog="exit codes: 0 done; 2 bad flags, or --resume of a different run; 3 "
               "unreadable data or checkpoint; 4 the loss diverged; 130 / 143 stopped by "
               "SIGINT / SIGTERM (after saving, with --checkpoint)",
        argument_default=argparse.SUPPRESS)
    add = p.add_argument
    g = p.add_argument_group("data")
    g.add_argument("--data-dir", help="folder with cifar-10-binary.tar.gz or "
                   "cifar-10-batches-bin/ (default: $CIFAR10_DIR, else a per-user cache)")
    g.add_argument("--train-subset", type=_positive_int, metavar="N",
                   help="train on the first N training images")
    g.add_argument("--test-subset", type=_positive_int, metavar="N",
                   help="evaluate on the first N test images")
    g.add_argument("--no-download", dest="download", action="store_false",
                   help="never download the data set")
    g = p.add_argument_group("recipe")
    g.add_argument("--epochs", type=int)
    g.add_argument("--batch-size", type=int)
    g.add_argument("--lr", type=float, help="peak of the schedule (default 1.0)")
    g.add_argument("--width", type=float, help="channel multiplier (0.25 → 16/32/64/128)")
    g.add_argument("--cutout", type=int, metavar="SIZE", help="cutout square side; 0 = off")
    g.add_argument("--no-tta", dest="tta", action="store_false",
                   help="evaluate without flip test-time augmentation")
    g.add_argument("--activation", choices=("celu", "relu"))
    g.add_argument("--celu-alpha", type=float)
    g.add_argument("--ghost-batch", type=int, metavar="N",
                   help="images per ghost-BN split (default 32); 0 = plain batch norm")
    g.add_argument("--frozen-bn-scale", type=_flag, metavar="on|off")
    g.add_argument("--pool-before-bn", type=_flag, metavar="on|off")
    g.add_argument("--whitening", type=_flag, metavar="on|off")
    g.add_argument("--label-smoothing", type=float)
    g.add_argument("--ema", type=_flag, metavar="on|off")
    g.add_argument("--eval-every", type=int, metavar="K",
                   help="evaluate every K epochs; 0 = last epoch only "
                        "(default: 1 on a GPU, 0 on the CPU)")
    g = p.add_argument_group("run")
    g.add_argument("--runs", type=int, help="independent runs (mean ± std over them)")
    g.add_argument("--seed", type=int)
    g.add_argument("--backend", choices=BACKEND_CHOICES,
                   help="eager | compile (torch.compile) | triton (fused kernels) | auto")
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", choices=PRECISION_CHOICES)
    g.add_argument("--warmup-steps", type=int, help="throwaway steps before the clock")
    g.add_argument("--json", metavar="PATH", help="write every figure and the config here")
    g.add_argument("--distribute", choices=DISTRIBUTE_CHOICES,
                   help="under torchrun --nproc-per-node K: 'data' (default) trains each run "
                        "with DistributedDataParallel, batch split over the K processes; "
                        "'runs' spreads the independent --runs over them. Ignored by a "
                        "single process")
    g.add_argument("--checkpoint", metavar="PATH",
                   help="save the run here at every epoch end and when stopped by Ctrl-C or "
                        "SIGTERM (written atomically; a fresh run overwrites it); with --runs "
                        "N, one file per run, named with its seed before the suffix: "
                        "ck.pt -> ck.seed0.pt, ck.seed1.pt, ...")
    g.add_argument("--resume", metavar="PATH",
                   help="continue the run(s) saved at PATH (same naming as --checkpoint), "
                        "bit for bit on the CPU; give the same recipe flags as the stopped "
                        "run. Finished runs are read back, runs without a file start afresh. "
                        "Keeps saving to PATH unless --checkpoint says otherwise")
    add("--full", action="store_true",
        help="on a CPU, run the full recipe anyway (hours) instead of the CPU-sized one")
    g = p.add_argument_group("research")
    g.add_argument("--preset", metavar="NAME",
                   help="start from a step of the seed's ladder (see --list-presets); "
                        "other flags override it")
    g.add_argument("--list-presets", action="store_true",
                   help="print the seed's ladder of presets and exit")
    g.add_argument("--plot", metavar="DIR",
                   help="write PNGs: training curves, augmented examples, whitening filters")
    return p


#: Flags of the parser that are not configuration fields.
_NOT_CONFIG = ("full", "preset", "list_presets", "plot", "checkpoint", "resume")


def config_from_args(args: argparse.Namespace, *, has_gpu: bool) -> tuple[TrainConfig, str | None]:
    """The validated config, and a note when the CPU-sized configuration was applied."""
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    note = None
    device = given.get("device", "auto")
    on_cpu = device == "cpu" or (device == "auto" and not has_gpu)
    if on_cpu and not getattr(args, "full", False):
        filled = {k: v for k, v in CPU_QUICK_OVERRIDES.items() if k not in given}
        if filled:
            given = {**filled, **given}
            shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in filled.items())
            note = (f"No GPU in use: running the CPU-sized configuration ({shown}); the full "
                    "recipe takes hours on a CPU: add --full to run it anyway.")
    preset = getattr(args, "preset", None)
    if preset is not None:
        from train.presets import preset_config
        return preset_config(preset, **given), note
    return TrainConfig().replace(**given), note


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["compare"]:
        from train.compare import compare_main
        return compare_main(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "list_presets", False):
        from train.presets import describe_presets
        _say(describe_presets())
        return EXIT_OK
    if getattr(args, "backend", None) == "triton" and getattr(args, "device", "auto") == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")   # must precede importing kernels

    import torch  # noqa: F401  (heavy imports after argument errors are reported)

    has_gpu = torch.cuda.is_available()
    try:
        config, note = config_from_args(args, has_gpu=has_gpu)
    except ConfigError as error:
        return _fail(EXIT_USAGE, str(error))
    if note:
        _say(note, flush=True)
    return run(config, plot_dir=getattr(args, "plot", None),
               checkpoint=getattr(args, "checkpoint", None), resume=getattr(args, "resume", None))


def load_data(config: TrainConfig):
    """The data set with its subsets taken; notices printed. Raises DataError."""
    import warnings

    from train.data import load_cifar10

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_cifar10(config.data_dir, download=config.download)
    for warning in caught:
        _say(f"note: {warning.message}", flush=True)
    return data


def run(config: TrainConfig, plot_dir: str | None = None, checkpoint: str | None = None,
        resume: str | None = None) -> int:
    """Load the data, train ``config.runs`` runs, print the table and summary.

    ``checkpoint`` and ``resume`` are the flags' paths (one file per run with several runs,
    see :func:`train.checkpoint.run_checkpoint_path`); resuming keeps saving to ``resume``
    unless ``checkpoint`` names another path.

    Under torchrun with K > 1 processes this joins the process group (left again on the way
    out, errors included) and trains on this rank's device as ``config.distribute`` says.
    """
    from train.distributed import launched_by_torchrun

    if not launched_by_torchrun():   # one process: no process group, no wrapper
        return _run(config, plot_dir, checkpoint, resume)
    return _run_under_torchrun(config, plot_dir, checkpoint, resume)


def _run_under_torchrun(config: TrainConfig, plot_dir: str | None, checkpoint: str | None,
                        resume: str | None) -> int:
    """:func:`run` as one of torchrun's K > 1 processes."""
    from train.distributed import (init_distributed, per_rank_batch, rank_device, shutdown,
                                   wait_for_all)
    from train.runtime import resolve_device

    try:
        if checkpoint is not None or resume is not None:
            # Saving and resuming would need every rank to stop at the same step and one
            # file per run written by one rank; not supported yet.
            raise ConfigError("--checkpoint and --resume are not supported under torchrun "
                              "with several processes: drop them, or train in one process")
        device_type = resolve_device(config.device).type
    except ConfigError as error:
        return _fail(EXIT_USAGE, str(error))
    ctx = init_distributed(device_type)
    try:   # leave the group however this ends, so that torchrun sees a clean exit
        try:
            if config.distribute == "data":   # reported before any data is loaded
                per_rank_batch(config.batch_size, config.ghost_batch, ctx)
            config = config.replace(device=rank_device(config.device, ctx))
            code = _run(config, plot_dir, None, None, ctx)
        except ConfigError as error:
            code = _fail(EXIT_USAGE, str(error))
        # These failures are met by every rank alike (flags, data, divergence), rank 0
        # reports them: wait until it has. A stop by signal may reach the ranks apart.
        if code not in (EXIT_OK, EXIT_INTERRUPTED, EXIT_TERMINATED):
            wait_for_all(ctx)
        return code
    finally:
        shutdown()


def _run(config: TrainConfig, plot_dir: str | None, checkpoint: str | None,
         resume: str | None, ctx: "Distributed | None" = None) -> int:
    """:func:`run` in this process: alone (``ctx`` None) or as one rank of ``ctx``."""
    from train.checkpoint import (CheckpointError, CheckpointMismatch, data_fingerprint,
                                  resume_paths, run_checkpoint_path, stop_on_signals)
    from train.data import DataError
    from train.distributed import Distributed
    from train.report import format_header
    from train.runtime import resolve_runtime
    from train.trainer import Trainer, TrainingDiverged, TrainingInterrupted

    ctx = Distributed() if ctx is None else ctx
    spread_runs = ctx.enabled and config.distribute == "runs"
    try:
        runtime = resolve_runtime(config)
    except ConfigError as error:
        return _fail(EXIT_USAGE, str(error))
    try:
        data = load_data(config).subset(config.train_subset, config.test_subset)
    except DataError as error:
        return _fail(EXIT_DATA, str(error))

    seeds = [config.seed + index for index in range(config.runs)]
    save_to = checkpoint or resume
    saves = [None if save_to is None else run_checkpoint_path(save_to, seed, config.runs)
             for seed in seeds]
    resumes = [None] * config.runs
    try:    # a bad checkpoint is reported before any warm-up
        if resume is not None:
            resumes = resume_paths(resume, seeds, config=config, runtime=runtime,
                                   data=data_fingerprint(data))
    except CheckpointMismatch as error:
        return _fail(EXIT_USAGE, str(error))
    except CheckpointError as error:
        return _fail(EXIT_DATA, str(error))

    for path in saves:
        if path is not None and path.is_dir():
            return _fail(EXIT_USAGE, f"--checkpoint {path} is a folder; name a file in it")
        if path is not None and resume is None and path.exists():
            print(f"note: {path} exists and will be overwritten (--resume {path} continues "
                  "it instead)", flush=True)
    processes = ""
    if ctx.enabled:
        processes = (f" | {ctx.world_size} processes, "
                     + ("runs spread over them" if spread_runs else
                        f"data parallel ({config.batch_size // ctx.world_size} images each "
                        "per batch)"))
    _say(f"device: {runtime.device_name} | backend {runtime.backend} | "
         f"{str(runtime.dtype).replace('torch.', '')} | {data.train_images.shape[0]} train / "
         f"{data.test_images.shape[0]} test images | width {config.width} | batch "
         f"{config.batch_size} | {config.epochs} epochs{processes}", flush=True)
    if spread_runs:
        return _spread_runs(config, runtime, data, seeds, ctx, plot_dir)
    results = []
    try:
        trainer = Trainer(config, runtime, data, log=lambda line: _say(line, flush=True),
                          ctx=ctx)
        _say(f"warm-up (compile, autotune; not timed): {trainer.warmup_time:.1f} s", flush=True)
        # One process: from here on a signal stops between steps (and saves). Data-parallel
        # ranks keep the signals' usual effect: each would stop at its own step and leave
        # the others waiting in DDP's all-reduce, and there is no checkpoint to save.
        watch = (contextlib.nullcontext(None) if ctx.enabled else stop_on_signals())
        with watch as stop:
            for index, seed in enumerate(seeds):
                if config.runs > 1:
                    _say(f"run {index + 1}/{config.runs} (seed {seed})")
                _say(format_header(), flush=True)
                results.append(trainer.run(seed, checkpoint=saves[index],
                                           resume=resumes[index], stop=stop))
    except ConfigError as error:   # per-rank batch of whole ghost splits (data parallel)
        return _fail(EXIT_USAGE, str(error))
    except TrainingDiverged as error:
        return _fail(EXIT_DIVERGED, str(error))
    except TrainingInterrupted as error:
        code = EXIT_TERMINATED if error.signal_name == "SIGTERM" else EXIT_INTERRUPTED
        hint = (f"; continue with --resume {save_to} and the same flags"
                if error.checkpoint is not None or (save_to is not None and results) else "")
        return _fail(code, f"{error}{hint}")
    except CheckpointMismatch as error:
        return _fail(EXIT_USAGE, str(error))
    except CheckpointError as error:
        return _fail(EXIT_DATA, str(error))
    except KeyboardInterrupt:
        return _fail(EXIT_INTERRUPTED, "interrupted")
    return _report(config, runtime, data, trainer, results, trainer.warmup_time, ctx, plot_dir)


def _report(config: TrainConfig, runtime: Any, data: Any, trainer: Any, results: list,
            warmup_time: float, ctx: "Distributed", plot_dir: str | None) -> int:
    """The summary, the JSON and the plots: rank 0's job alone."""
    from train.report import format_summary, write_json

    if not ctx.is_main:
        return EXIT_OK
    print(format_summary(results, warmup_time), flush=True)
    if config.json:
        write_json(config.json, config, runtime, results, warmup_time,
                   world_size=ctx.world_size,
                   distribute=config.distribute if ctx.enabled else None)
        print(f"wrote {config.json}")
    if plot_dir:
        from train.report import write_plots
        for path in write_plots(plot_dir, config, data, trainer, results):
            print(f"wrote {path}")
    return EXIT_OK


def _spread_runs(config: TrainConfig, runtime: Any, data: Any, seeds: list[int],
                 ctx: "Distributed", plot_dir: str | None) -> int:
    """``--distribute runs``: rank r trains runs r, r+K, … alone (no gradient exchange, the
    same seeds as one process would give them); rank 0 gathers every result and prints the
    runs' tables in run order, then the summary. A run that diverges ends its rank's share;
    the error of the earliest such run is reported once and every rank exits with its code.
    """
    from train.distributed import Distributed, gather_objects, runs_of_rank
    from train.report import format_header, format_row
    from train.trainer import Trainer, TrainingDiverged

    mine = runs_of_rank(len(seeds), ctx)
    shares = "; ".join(
        f"process {rank}: " + (", ".join(str(i + 1) for i in runs) or "none")
        for rank in range(ctx.world_size)
        for runs in [runs_of_rank(len(seeds), Distributed(rank, ctx.world_size))])
    _say(f"runs spread over {ctx.world_size} processes ({shares}); the tables follow when "
         "every run is done", flush=True)
    results: dict[int, Any] = {}
    error: tuple[int, int, str] | None = None     # (run index, exit code, message)
    trainer, warmup_time, index = None, 0.0, None
    try:
        if mine:   # a rank beyond the number of runs has nothing to do
            trainer = Trainer(config, runtime, data, log=lambda line: None)
            warmup_time = trainer.warmup_time
            for index in mine:
                results[index] = trainer.run(seeds[index])
    except TrainingDiverged as failure:
        error = (index, EXIT_DIVERGED, str(failure))
    except KeyboardInterrupt:   # every rank gets the terminal's Ctrl-C: no one to wait for
        return _fail(EXIT_INTERRUPTED, "interrupted")
    # Everyone meets here, errors or not, so that no rank waits for one that gave up.
    gathered = gather_objects((results, error, warmup_time), ctx)
    errors = sorted(e for _, e, _ in gathered if e is not None)
    if errors:
        return _fail(errors[0][1], errors[0][2])
    if not ctx.is_main:
        return EXIT_OK
    everything = {i: r for part, _, _ in gathered for i, r in part.items()}
    _say(f"warm-up (compile, autotune; not timed): {warmup_time:.1f} s per process",
         flush=True)
    ordered = [everything[i] for i in range(len(seeds))]
    for index, result in enumerate(ordered):
        if len(seeds) > 1:
            print(f"run {index + 1}/{len(seeds)} (seed {result.seed}; process "
                  f"{index % ctx.world_size})")
        print(format_header())
        for row in result.rows:
            print(format_row(row))
    return _report(config, runtime, data, trainer, ordered, warmup_time, ctx, plot_dir)


def _fail(code: int, message: str) -> int:
    """Report ``message`` on stderr in one line (rank 0 only under torchrun); return
    ``code``."""
    if not _quiet():
        print(f"error: {message}", file=sys.stderr, flush=True)
    return code
