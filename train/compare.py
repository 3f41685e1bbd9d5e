"""``python -m train compare``: is B better than A? Interleaved runs and Welch's t-test.

A and B are each a string of trainer flags; flags after them apply to both. Runs alternate
A, B, A, B, … with paired seeds, so drift in the machine (clock boost, heat, other load)
hits both sides alike. Each side is built and compiled once and reused for all its runs;
the one-off warm-up is reported apart from the per-run times.
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from pathlib import Path

from train.cli import (EXIT_DATA, EXIT_DIVERGED, EXIT_OK, EXIT_USAGE, _fail, _Parser,
                       build_parser, config_from_args, load_data)
from train.config import ConfigError, TrainConfig


def _compare_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m train compare",
                description="Run configurations A and B interleaved and test the difference. "
                            "Flags after --a/--b/--runs apply to both sides.")
    p.add_argument("--a", required=True, metavar="FLAGS", help='flags of side A, e.g. '
                   '"--activation relu"')
    p.add_argument("--b", required=True, metavar="FLAGS", help="flags of side B")
    p.add_argument("--runs", type=int, default=5, help="runs per side (default 5)")
    p.add_argument("--json", metavar="PATH", help="write both sides' runs and the test here")
    return p


def _side_config(flags: str, common: Sequence[str], has_gpu: bool, name: str
                 ) -> tuple[TrainConfig, str | None]:
    argv = [*common, *shlex.split(flags)]
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        raise ConfigError(f"side {name}: bad flags {flags!r}") from exit_
    for forbidden in ("runs", "json", "plot", "list_presets"):
        if hasattr(args, forbidden) and getattr(args, forbidden):
            raise ConfigError(f"side {name}: --{forbidden.replace('_', '-')} belongs to "
                              "compare itself, not to a side")
    return config_from_args(args, has_gpu=has_gpu)


def compare_main(argv: Sequence[str]) -> int:
    import torch

    from train.data import DataError
    from train.runtime import resolve_runtime
    from train.stats import format_mean_ci, verdict, welch_test
    from train.trainer import Trainer, TrainingDiverged

    args, common = _compare_parser().parse_known_args(argv)
    if args.runs < 2:
        return _fail(EXIT_USAGE, "compare needs --runs of at least 2 per side for a t-test")
    has_gpu = torch.cuda.is_available()
    try:
        config_a, note = _side_config(args.a, common, has_gpu, "A")
        config_b, _ = _side_config(args.b, common, has_gpu, "B")
        if config_a.data_dir != config_b.data_dir:
            raise ConfigError("A and B must read the same data (--data-dir); put it after "
                              "--a/--b so it applies to both")
        runtime_a, runtime_b = resolve_runtime(config_a), resolve_runtime(config_b)
    except ConfigError as error:
        return _fail(EXIT_USAGE, str(error))
    if note:
        print(note, flush=True)
    try:
        data = load_data(config_a)
        data_a = data.subset(config_a.train_subset, config_a.test_subset)
        data_b = data.subset(config_b.train_subset, config_b.test_subset)
    except DataError as error:
        return _fail(EXIT_DATA, str(error))

    quiet = (lambda line: None)
    sides = {"A": [], "B": []}
    try:
        trainers = {"A": Trainer(config_a, runtime_a, data_a, log=quiet),
                    "B": Trainer(config_b, runtime_b, data_b, log=quiet)}
        print(f"A: {args.a}\nB: {args.b}\n{args.runs} runs each, interleaved A B A B …; "
              f"warm-up A {trainers['A'].warmup_time:.1f} s, B {trainers['B'].warmup_time:.1f} s "
              "(not in the run times)", flush=True)
        for index in range(args.runs):
            for name in ("A", "B"):
                config = config_a if name == "A" else config_b
                result = trainers[name].run(config.seed + index)
                sides[name].append(result)
                print(f"run {index + 1} {name}: test acc {result.test_acc:.4f}, "
                      f"{result.train_time:.2f} s", flush=True)
    except TrainingDiverged as error:
        return _fail(EXIT_DIVERGED, str(error))

    acc = {k: [r.test_acc * 100 for r in v] for k, v in sides.items()}
    sec = {k: [r.train_time for r in v] for k, v in sides.items()}
    print()
    for name in ("A", "B"):
        print(f"{name}: accuracy {format_mean_ci(acc[name], unit='%')}; "
              f"time {format_mean_ci(sec[name], unit='s')}")
    acc_test, time_test = welch_test(acc["A"], acc["B"]), welch_test(sec["A"], sec["B"])
    print(f"accuracy: B − A = {acc_test.diff:+.2f} points, Welch p = {acc_test.p:.3g}")
    print(f"time: B − A = {time_test.diff:+.2f} s, Welch p = {time_test.p:.3g}")
    print("verdict: " + verdict(acc_test, metric="accuracy", unit="points"))
    print("verdict: " + verdict(time_test, metric="time", unit="s", better="lower"))
    if args.json:
        record = {"a": {"flags": args.a, "config": config_a.to_dict(), "test_acc": acc["A"],
                        "train_time": sec["A"]},
                  "b": {"flags": args.b, "config": config_b.to_dict(), "test_acc": acc["B"],
                        "train_time": sec["B"]},
                  "accuracy": {"diff": acc_test.diff, "p": acc_test.p,
                               "verdict": verdict(acc_test)},
                  "time": {"diff": time_test.diff, "p": time_test.p,
                           "verdict": verdict(time_test, metric="time", unit="s",
                                              better="lower")}}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(record, indent=2))
        print(f"wrote {args.json}")
    return EXIT_OK
