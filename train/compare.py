"""``python -m train compare``: is B better than A? Interleaved runs and Welch's t-test.

A and B are each a string of trainer flags; flags after them apply to both. Each side is
built once and warmed up on throwaway data before any clock (compile, autotune, and the
one-off costs of a first call on every backend); the warm-up is reported apart from the
per-run times. Runs pair up seeds (run i of A and of B use the same seed) and go in the
order A B, B A, A B, B A, …: with an even number of pairs a steady drift of the machine
(clock boost, heat, other load) lands on both sides alike, and neither side is always
first. The order is printed and written to the JSON.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Callable, Sequence
from typing import Any

from train.config import ConfigError, TrainConfig
from train.flags import (
    EXIT_DATA,
    EXIT_DIVERGED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_OUTPUT,
    EXIT_USAGE,
    Parser,
    build_parser,
    config_from_args,
    fail,
    load_data,
    number_type,
    say,
    sizes_the_run,
    take_subsets,
)

#: Flags that only make sense for compare as a whole, not for one side.
_COMPARE_OWN = ("runs", "json", "plot", "list_presets", "checkpoint", "resume")


def _compare_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m train compare",
        description="Run configurations A and B interleaved and test the difference. "
        "Flags after --a/--b/--runs apply to both sides.",
    )
    p.add_argument(
        "--a", required=True, metavar="FLAGS", help='flags of side A, e.g. "--activation relu"'
    )
    p.add_argument("--b", required=True, metavar="FLAGS", help="flags of side B")
    p.add_argument(
        "--runs", type=number_type("runs"), default=5, help="runs per side (default 5; at least 2)"
    )
    p.add_argument("--json", metavar="PATH", help="write both sides' runs and the test here")
    return p


def run_order(runs: int) -> list[tuple[int, str]]:
    """``(run index, side)`` in the order they run: pairs A B, B A, A B, … (ABBA)."""
    order = []
    for index in range(runs):
        pair = ("A", "B") if index % 2 == 0 else ("B", "A")
        order += [(index, name) for name in pair]
    return order


def _check_common(common: Sequence[str]) -> None:
    """Parse the flags for both sides on their own, so that a bad one is named as such
    (not blamed on side A, whose flags come first)."""
    try:
        args = build_parser(raise_errors=True).parse_args(list(common))
    except ConfigError as error:
        raise ConfigError(f"flags for both sides: {error}") from None
    _refuse_compare_own(args, "flags for both sides")


def _refuse_compare_own(args: argparse.Namespace, where: str) -> None:
    for name in _COMPARE_OWN:
        if getattr(args, name, None):
            raise ConfigError(
                f"{where}: --{name.replace('_', '-')} belongs to compare itself, not to a side"
                if name in ("runs", "json")
                else f"{where}: --{name.replace('_', '-')} is not supported by compare"
            )


def _side_args(flags: str, common: Sequence[str], name: str) -> argparse.Namespace:
    try:
        side = shlex.split(flags)
    except ValueError as error:  # e.g. "No closing quotation"
        raise ConfigError(
            f"side {name}: cannot split {flags!r} into flags ({error}); check the quotes"
        ) from None
    try:
        args = build_parser(raise_errors=True).parse_args([*common, *side])
    except ConfigError as error:
        raise ConfigError(f"side {name} ({flags!r}): {error}") from None
    _refuse_compare_own(args, f"side {name}")
    return args


def _side_configs(
    args: argparse.Namespace, common: Sequence[str], has_gpu: bool
) -> tuple[TrainConfig, TrainConfig, str | None]:
    """Both sides' configurations, and the note of A's. Without a GPU and with no flag that
    sizes the run, both sides get the CPU default at one size, measured once."""
    side_a = _side_args(args.a, common, "A")
    side_b = _side_args(args.b, common, "B")
    if not has_gpu and sizes_the_run(side_a) != sizes_the_run(side_b):
        raise ConfigError(
            "one side sets the run's size (--preset, --network, --width, --train-subset, "
            "--epochs, --batch-size or --full) and the other does not, so on a CPU they "
            "would train different recipes: give the size to both, or as common flags"
        )
    measured: list[dict[float, float]] = []

    def measure_once(config_at: Callable[[Any], TrainConfig]) -> dict[float, float]:
        if not measured:
            from train.cpu_default import measure_step_rates

            say("No GPU in use: timing a few training steps to size both sides alike")
            measured.append(measure_step_rates(config_at))
        return measured[0]

    config_a, note = config_from_args(side_a, has_gpu=has_gpu, measure=measure_once)
    config_b, _ = config_from_args(side_b, has_gpu=has_gpu, measure=measure_once)
    return config_a, config_b, note


def compare_main(argv: Sequence[str]) -> int:
    import torch

    args, common = _compare_parser().parse_known_args(argv)
    if args.runs < 2:
        return fail(EXIT_USAGE, "compare needs --runs of at least 2 per side for a t-test")
    has_gpu = torch.cuda.is_available()
    try:
        _check_common(common)
        config_a, config_b, note = _side_configs(args, common, has_gpu)
        if config_a.data_dir != config_b.data_dir:
            raise ConfigError(
                "A and B must read the same data (--data-dir); put it after "
                "--a/--b so it applies to both"
            )
    except ConfigError as error:
        return fail(EXIT_USAGE, str(error))
    from train.outputs import OutputLocks, check_output_file

    with OutputLocks() as locks:
        try:
            if args.json:
                check_output_file(args.json, "--json")
                locks.acquire(args.json, "--json")
        except ConfigError as error:
            return fail(EXIT_USAGE, str(error))
        return _compare(args, config_a, config_b, note)


def _compare(
    args: argparse.Namespace, config_a: TrainConfig, config_b: TrainConfig, note: str | None
) -> int:
    from train.data import DataError
    from train.runtime import resolve_runtime
    from train.trainer import Trainer, TrainingDiverged

    try:
        runtime_a, runtime_b = resolve_runtime(config_a), resolve_runtime(config_b)
    except ConfigError as error:
        return fail(EXIT_USAGE, str(error))
    if note:
        print(note, flush=True)
    try:
        data = load_data(config_a)
    except DataError as error:
        return fail(EXIT_DATA, str(error))
    try:
        data_a, data_b = take_subsets(data, config_a), take_subsets(data, config_b)
    except ConfigError as error:
        return fail(EXIT_USAGE, str(error))

    def quiet(line: str) -> None:  # compare prints its own one line per run
        pass

    configs = {"A": config_a, "B": config_b}
    sides: dict[str, list[Any]] = {"A": [], "B": []}
    order = run_order(args.runs)
    try:
        trainers = {
            "A": Trainer(config_a, runtime_a, data_a, log=quiet),
            "B": Trainer(config_b, runtime_b, data_b, log=quiet),
        }
        print(
            f"A: {args.a}\nB: {args.b}\n{args.runs} runs each, in pairs A B, B A, A B, … "
            f"(seed of pair i: the sides' --seed + i); warm-up A "
            f"{trainers['A'].warmup_time:.1f} s, B {trainers['B'].warmup_time:.1f} s "
            "(not in the run times)",
            flush=True,
        )
        for index, name in order:
            result = trainers[name].run(configs[name].seed + index)
            sides[name].append(result)
            print(
                f"run {index + 1} {name}: test acc {result.test_acc:.4f}, "
                f"{result.train_time:.2f} s",
                flush=True,
            )
    except ConfigError as error:
        return fail(EXIT_USAGE, str(error))
    except TrainingDiverged as error:
        return fail(EXIT_DIVERGED, str(error))
    except KeyboardInterrupt:
        done = len(sides["A"]) + len(sides["B"])
        return fail(
            EXIT_INTERRUPTED,
            f"compare interrupted by Ctrl-C after {done} of {len(order)} runs; nothing written",
        )
    return _report(args, configs, sides, order)


def _report(
    args: argparse.Namespace,
    configs: dict[str, TrainConfig],
    sides: dict[str, list[Any]],
    order: list[tuple[int, str]],
) -> int:
    from train.atomic import write_atomic
    from train.outputs import write_fallback
    from train.stats import format_mean_ci, verdict, welch_test

    acc = {k: [r.test_acc * 100 for r in v] for k, v in sides.items()}
    sec = {k: [r.train_time for r in v] for k, v in sides.items()}
    print()
    for name in ("A", "B"):
        print(
            f"{name}: accuracy {format_mean_ci(acc[name], unit='%')}; "
            f"time {format_mean_ci(sec[name], unit='s')}"
        )
    acc_test, time_test = welch_test(acc["A"], acc["B"]), welch_test(sec["A"], sec["B"])
    acc_verdict = verdict(acc_test, metric="accuracy", unit="points")
    time_verdict = verdict(time_test, metric="time", unit="s", better="lower")
    print(f"accuracy: B − A = {acc_test.diff:+.2f} points, Welch p = {acc_test.p:.3g}")
    print(f"time: B − A = {time_test.diff:+.2f} s, Welch p = {time_test.p:.3g}")
    print("verdict: " + acc_verdict)
    print("verdict: " + time_verdict)
    if not args.json:
        return EXIT_OK
    record = {
        **{
            key: {
                "flags": getattr(args, key),
                "config": configs[name].to_dict(),
                "test_acc": acc[name],
                "train_time": sec[name],
            }
            for key, name in (("a", "A"), ("b", "B"))
        },
        "order": [f"{name}{index + 1}" for index, name in order],
        "accuracy": {"diff": acc_test.diff, "p": acc_test.p, "verdict": acc_verdict},
        "time": {"diff": time_test.diff, "p": time_test.p, "verdict": time_verdict},
    }
    text = json.dumps(record, indent=2)
    try:
        write_atomic(args.json, lambda handle: handle.write(text.encode("utf-8")))
    except OSError as error:
        rescue = write_fallback(record, "compare")
        return fail(
            EXIT_OUTPUT,
            f"could not write --json {args.json} "
            f"({error.strerror or error}); the results are in {rescue}",
        )
    print(f"wrote {args.json}")
    return EXIT_OK
