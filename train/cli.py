"""``python -m train``: the command line of the trainer.

Flags are parsed before ``kernels`` is imported, because running the Triton kernels on the
CPU (``--backend triton --device cpu``) needs ``TRITON_INTERPRET=1`` set before that import.

Exit codes: 0 done; 2 bad flags (every numeric flag: finite and in its range, named in the
message), an output path that cannot be written or that another run is writing, or a
checkpoint of a different run; 3 unreadable data or checkpoint; 4 the training diverged;
5 the runs finished but an output could not be written where asked (the results went to a
file the message names); 130 / 143 stopped by SIGINT / SIGTERM (128 + signal).

Every output path (``--json``, ``--checkpoint``/``--resume``, ``--plot``) is checked and
locked before the data loads (:mod:`train.outputs`), so a run never trains for an hour and
then fails to write, and two runs never write over each other.

Under ``torchrun --nproc-per-node K`` (K > 1) every process runs this command line; they
share the work as ``--distribute`` says (:mod:`train.distributed`), and only rank 0 prints
and writes files. Errors that every rank meets alike (flags, data, divergence) are reported
once, by rank 0, and every rank exits with the same code.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from train.config import ConfigError, TrainConfig
from train.flags import (
    EXIT_DATA,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_TERMINATED,
    EXIT_USAGE,
    build_parser,
    config_from_args,
    fail,
    load_data,
    say,
    take_subsets,
)

if TYPE_CHECKING:
    from train.distributed import Distributed


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit code. Ctrl-C at any point before the training loop
    takes over the signals (start-up, data loading, warm-up) ends it with one line and 130."""
    try:
        return _main(list(sys.argv[1:] if argv is None else argv))
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted by Ctrl-C")


def _main(argv: list[str]) -> int:
    if argv[:1] == ["compare"]:
        from train.compare import compare_main

        return compare_main(argv[1:])
    if argv[:1] == ["pool"]:
        from train.pool import pool_main

        return pool_main(argv[1:])
    args = build_parser().parse_args(argv)
    if getattr(args, "list_presets", False):
        from train.presets import describe_presets

        say(describe_presets())
        return EXIT_OK
    if getattr(args, "backend", None) == "triton" and getattr(args, "device", "auto") == "cpu":
        os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede importing kernels

    import torch  # noqa: F401  (heavy imports after argument errors are reported)

    has_gpu = torch.cuda.is_available()
    try:
        config, note = config_from_args(
            args, has_gpu=has_gpu, announce=lambda line: say(line, flush=True)
        )
    except ConfigError as error:
        return fail(EXIT_USAGE, str(error))
    if note:
        say(note, flush=True)
    return run(
        config,
        plot_dir=getattr(args, "plot", None),
        checkpoint=getattr(args, "checkpoint", None),
        resume=getattr(args, "resume", None),
    )


def run(
    config: TrainConfig,
    plot_dir: str | None = None,
    checkpoint: str | None = None,
    resume: str | None = None,
) -> int:
    """Load the data, train ``config.runs`` runs, print the table and summary.

    ``checkpoint`` and ``resume`` are the flags' paths (one file per run with several runs,
    see :func:`train.checkpoint.run_checkpoint_path`); resuming keeps saving to ``resume``
    unless ``checkpoint`` names another path.

    Under torchrun with K > 1 processes this joins the process group (left again on the way
    out, errors included) and trains on this rank's device as ``config.distribute`` says.
    """
    from train.distributed import launched_by_torchrun

    if not launched_by_torchrun():  # one process: no process group, no wrapper
        return _run(config, plot_dir, checkpoint, resume)
    return _run_under_torchrun(config, plot_dir, checkpoint, resume)


def _run_under_torchrun(
    config: TrainConfig, plot_dir: str | None, checkpoint: str | None, resume: str | None
) -> int:
    """:func:`run` as one of torchrun's K > 1 processes."""
    from train.distributed import (
        init_distributed,
        per_rank_batch,
        rank_device,
        shutdown,
        wait_for_all,
    )
    from train.runtime import resolve_device

    # Every error below is met by every rank alike and reported by rank 0; the others wait
    # until it has (the group's barrier), or torchrun, seeing one rank exit, could stop
    # rank 0 before it said why. So even a device error joins the group first (over gloo).
    device_error: ConfigError | None = None
    try:
        device_type = resolve_device(config.device).type
    except ConfigError as error:
        device_type, device_error = "cpu", error
    ctx = init_distributed(device_type)
    try:  # leave the group however this ends, so that torchrun sees a clean exit
        try:
            if device_error is not None:
                raise device_error
            if checkpoint is not None or resume is not None:
                # Saving and resuming would need every rank to stop at the same step and
                # one file per run written by one rank; not supported yet.
                raise ConfigError(
                    "--checkpoint and --resume are not supported under torchrun "
                    "with several processes: drop them, or train in one process"
                )
            if config.distribute == "data":  # reported before any data is loaded
                if config.network == "airbench":
                    from train.build import data_parallel_airbench_refusal

                    raise ConfigError(data_parallel_airbench_refusal())
                per_rank_batch(config.batch_size, config.ghost_batch, ctx)
            config = config.replace(device=rank_device(config.device, ctx))
            code = _run(config, plot_dir, None, None, ctx)
        except ConfigError as error:
            code = fail(EXIT_USAGE, str(error))
        # These failures are met by every rank alike (flags, data, divergence), rank 0
        # reports them: wait until it has. A stop by signal may reach the ranks apart.
        if code not in (EXIT_OK, EXIT_INTERRUPTED, EXIT_TERMINATED):
            wait_for_all(ctx)
        return code
    finally:
        shutdown()


def _run(
    config: TrainConfig,
    plot_dir: str | None,
    checkpoint: str | None,
    resume: str | None,
    ctx: Distributed | None = None,
) -> int:
    """:func:`run` in this process: alone (``ctx`` None) or as one rank of ``ctx``.

    Before the data loads: the runtime is resolved, and every output path is checked and
    locked (rank 0 alone writes them); the locks are held until the results are written.
    """
    from train.checkpoint import run_checkpoint_path
    from train.distributed import Distributed
    from train.outputs import OutputLocks, claim_outputs
    from train.runtime import resolve_runtime

    ctx = Distributed() if ctx is None else ctx
    try:
        runtime = resolve_runtime(config)
    except ConfigError as error:
        return fail(EXIT_USAGE, str(error))
    seeds = [config.seed + index for index in range(config.runs)]
    save_to = checkpoint or resume
    saves = [
        None if save_to is None else run_checkpoint_path(save_to, seed, config.runs)
        for seed in seeds
    ]
    with OutputLocks() as locks:
        try:
            if ctx.is_main:
                claim_outputs(
                    locks,
                    config.json,
                    plot_dir,
                    saves,
                    "--checkpoint" if checkpoint else "--resume",
                )
        except ConfigError as error:
            return fail(EXIT_USAGE, str(error))
        return _train_and_report(config, runtime, plot_dir, seeds, saves, save_to, resume, ctx)


def _train_and_report(
    config: TrainConfig,
    runtime: Any,
    plot_dir: str | None,
    seeds: list[int],
    saves: list[Path | None],
    save_to: str | None,
    resume: str | None,
    ctx: Distributed,
) -> int:
    """Load the data, check the checkpoints to resume, train every run, report."""
    from train.checkpoint import CheckpointError, CheckpointMismatch, data_fingerprint
    from train.data import DataError
    from train.report import format_header
    from train.resume import resume_paths
    from train.signals import stop_on_signals
    from train.trainer import Trainer, TrainingDiverged, TrainingInterrupted

    spread_runs = ctx.enabled and config.distribute == "runs"
    try:
        data = load_data(config)
    except DataError as error:
        return fail(EXIT_DATA, str(error))
    try:
        data = take_subsets(data, config)
    except ConfigError as error:
        return fail(EXIT_USAGE, str(error))

    resumes = [None] * config.runs
    try:  # a bad checkpoint is reported before any warm-up
        if resume is not None:
            resumes = resume_paths(
                resume, seeds, config=config, runtime=runtime, data=data_fingerprint(data)
            )
    except CheckpointMismatch as error:
        return fail(EXIT_USAGE, str(error))
    except CheckpointError as error:
        return fail(EXIT_DATA, str(error))

    for path in saves:
        if path is not None and resume is None and path.exists():
            say(
                f"note: {path} exists and will be overwritten (--resume {path} continues "
                "it instead)",
                flush=True,
            )
    processes = ""
    if ctx.enabled:
        processes = f" | {ctx.world_size} processes, " + (
            "runs spread over them"
            if spread_runs
            else f"data parallel ({config.batch_size // ctx.world_size} images each per batch)"
        )
    say(
        f"device: {runtime.device_name} | backend {runtime.backend} | "
        f"{str(runtime.dtype).replace('torch.', '')} | {data.train_images.shape[0]} train / "
        f"{data.test_images.shape[0]} test images | width {config.width} | batch "
        f"{config.batch_size} | {config.epochs} epochs{processes}"
        + (" | network airbench" if config.network == "airbench" else ""),
        flush=True,
    )
    if spread_runs:
        return _spread_runs(config, runtime, data, seeds, ctx, plot_dir)
    results = []
    try:
        trainer = Trainer(config, runtime, data, log=lambda line: say(line, flush=True), ctx=ctx)
        say(f"warm-up (compile, autotune; not timed): {trainer.warmup_time:.1f} s", flush=True)
        # One process: from here on a signal stops between steps (and saves). Data-parallel
        # ranks keep the signals' usual effect: each would stop at its own step and leave
        # the others waiting in DDP's all-reduce, and there is no checkpoint to save.
        watch = contextlib.nullcontext(None) if ctx.enabled else stop_on_signals()
        with watch as stop:
            for index, seed in enumerate(seeds):
                if config.runs > 1:
                    say(f"run {index + 1}/{config.runs} (seed {seed})")
                say(format_header(), flush=True)
                results.append(
                    trainer.run(seed, checkpoint=saves[index], resume=resumes[index], stop=stop)
                )
    except ConfigError as error:  # per-rank batch of whole ghost splits (data parallel)
        return fail(EXIT_USAGE, str(error))
    except TrainingDiverged as error:
        return fail(EXIT_DIVERGED, str(error))
    except TrainingInterrupted as error:
        code = EXIT_TERMINATED if error.signal_name == "SIGTERM" else EXIT_INTERRUPTED
        hint = (
            f"; continue with --resume {save_to} and the same flags"
            if error.checkpoint is not None or (save_to is not None and results)
            else ""
        )
        return fail(code, f"{error}{hint}")
    except CheckpointMismatch as error:
        return fail(EXIT_USAGE, str(error))
    except CheckpointError as error:
        return fail(EXIT_DATA, str(error))
    except KeyboardInterrupt:  # a second Ctrl-C: the checkpoint on disk is whole
        written = any(path is not None and path.exists() for path in saves)
        hint = (
            f"; continue from the last checkpoint saved with --resume {save_to} and the same flags"
            if written
            else ""
        )
        return fail(EXIT_INTERRUPTED, f"interrupted by Ctrl-C{hint}")
    code = _report(config, runtime, data, trainer, results, trainer.warmup_time, ctx, plot_dir)
    if trainer.save_failures and code == EXIT_OK:
        code = fail(
            EXIT_OUTPUT,
            f"{len(trainer.save_failures)} checkpoint save(s) failed, "
            f"the last: {trainer.save_failures[-1]}",
        )
    return code


def _report(
    config: TrainConfig,
    runtime: Any,
    data: Any,
    trainer: Any,
    results: list,
    warmup_time: float,
    ctx: Distributed,
    plot_dir: str | None,
) -> int:
    """The summary, the JSON and the plots: rank 0's job alone. A write that fails here
    loses nothing (see :func:`train.report.write_results`): exit code :data:`EXIT_OUTPUT`."""
    from train.report import format_summary, write_results

    if not ctx.is_main:
        return EXIT_OK
    print(format_summary(results, warmup_time), flush=True)
    problem = write_results(
        config,
        runtime,
        data,
        trainer,
        results,
        warmup_time,
        world_size=ctx.world_size,
        distribute=config.distribute if ctx.enabled else None,
        plot_dir=plot_dir,
    )
    return EXIT_OK if problem is None else fail(EXIT_OUTPUT, problem)


def _spread_runs(
    config: TrainConfig,
    runtime: Any,
    data: Any,
    seeds: list[int],
    ctx: Distributed,
    plot_dir: str | None,
) -> int:
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
        for runs in [runs_of_rank(len(seeds), Distributed(rank, ctx.world_size))]
    )
    say(
        f"runs spread over {ctx.world_size} processes ({shares}); the tables follow when "
        "every run is done",
        flush=True,
    )
    results: dict[int, Any] = {}
    error: tuple[int, int, str] | None = None  # (run index, exit code, message)
    trainer, warmup_time, index = None, 0.0, None
    try:
        if mine:  # a rank beyond the number of runs has nothing to do
            trainer = Trainer(config, runtime, data, log=lambda line: None)
            warmup_time = trainer.warmup_time
            for index in mine:
                results[index] = trainer.run(seeds[index])
    except TrainingDiverged as failure:
        error = (index, EXIT_DIVERGED, str(failure))
    except KeyboardInterrupt:  # every rank gets the terminal's Ctrl-C: no one to wait for
        return fail(EXIT_INTERRUPTED, "interrupted")
    # Everyone meets here, errors or not, so that no rank waits for one that gave up.
    gathered = gather_objects((results, error, warmup_time), ctx)
    errors = sorted(e for _, e, _ in gathered if e is not None)
    if errors:
        return fail(errors[0][1], errors[0][2])
    if not ctx.is_main:
        return EXIT_OK
    everything = {i: r for part, _, _ in gathered for i, r in part.items()}
    say(f"warm-up (compile, autotune; not timed): {warmup_time:.1f} s per process", flush=True)
    ordered = [everything[i] for i in range(len(seeds))]
    for index, result in enumerate(ordered):
        if len(seeds) > 1:
            print(
                f"run {index + 1}/{len(seeds)} (seed {result.seed}; process "
                f"{index % ctx.world_size})"
            )
        print(format_header())
        for row in result.rows:
            print(format_row(row))
    return _report(config, runtime, data, trainer, ordered, warmup_time, ctx, plot_dir)
