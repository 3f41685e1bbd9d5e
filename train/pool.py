"""``python -m train pool FILE…``: one summary over runs that separate invocations recorded.

A study of many runs rarely fits one process: a cluster's job array gives each job a seed,
and a long recipe on a CPU may fit one run per sitting. Each invocation's ``--json`` holds its
runs; this command reads several, checks that they are runs of one recipe with one
arithmetic and distinct seeds, and prints what a single ``--runs N`` invocation would have
printed: mean, spread and the 95% confidence interval of test accuracy and of training time.

What must agree, and why:

* the recipe: every configuration field except those that cannot change a run's numbers
  (:data:`IGNORED_FIELDS`: which seeds and how many, where the data and outputs live, how
  often and in what batches the test set is scored, throwaway warm-up steps, and the
  execution settings that :data:`ARITHMETIC` compares in their resolved form instead);
* the arithmetic (device type, backend, dtype as the runs resolved them): fp32 and bf16 runs
  of one recipe are two samples, not one;
* the seeds: a seed in two files is the same run twice, not two independent runs.

Times are pooled only when every file comes from one set-up (:data:`SETUP`: the device,
threads, process count and library versions); otherwise accuracy is pooled and the times are
shown per set-up, since a mean over two machines describes neither.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from train.config import ConfigError, saved_config_with_defaults
from train.flags import EXIT_DATA, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE, Parser, fail
from train.results import EpochRow, RunResult

#: Configuration fields that do not change a run's numbers, or that :data:`ARITHMETIC`
#: compares as resolved (``backend="auto"`` on one machine and ``"eager"`` on another can be
#: the same arithmetic).
IGNORED_FIELDS = (
    "seed",
    "runs",
    "json",
    "data_dir",
    "download",
    "eval_every",
    "eval_batch_size",
    "warmup_steps",
    "device",
    "backend",
    "precision",
    "cuda_graphs",
    "distribute",
)
#: Environment fields that decide the arithmetic: runs that differ in one are not pooled.
ARITHMETIC = ("device_type", "backend", "dtype")
#: Environment fields that decide the time: runs that differ in one have their times shown
#: apart.
SETUP = ("device", "threads", "world_size", "distribute", "torch", "triton", "cuda")


class PoolError(ValueError):
    """Files that cannot be pooled; ``code`` is the exit status (2 for mismatched runs, 3
    for a file that cannot be read as a trainer's record)."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code


@dataclass
class Record:
    """One ``--json`` file of the trainer: its path, configuration, environment and runs."""

    path: str
    config: dict[str, Any]
    environment: dict[str, Any]
    runs: list[RunResult]

    def recipe(self) -> dict[str, Any]:
        """The fields that decide the numbers; those the file predates at their defaults,
        which is what its run did (a record kept from an older version still pools)."""
        filled = saved_config_with_defaults(self.config)
        return {k: v for k, v in filled.items() if k not in IGNORED_FIELDS}

    def arithmetic(self) -> tuple[Any, ...]:
        return tuple(self.environment.get(k) for k in ARITHMETIC)

    def setup(self) -> tuple[Any, ...]:
        return tuple(self.environment.get(k) for k in SETUP) + (self.config.get("cuda_graphs"),)

    def describe_setup(self) -> str:
        env = self.environment
        processes = env.get("world_size") or 1
        return (
            f"{env.get('device')}, {env.get('threads')} threads, {processes} process"
            f"{'es' * (processes != 1)}, torch {env.get('torch')}"
        )


def _unreadable(path: str, why: str) -> PoolError:
    return PoolError(f"cannot pool {path}: {why}", EXIT_DATA)


def _run_from(saved: Any, path: str, index: int) -> RunResult:
    where = f"run {index + 1}"
    if not isinstance(saved, dict):
        raise _unreadable(path, f"{where} is not an object")
    try:
        seed, acc, seconds = saved["seed"], saved["test_acc"], saved["train_time"]
        rows = [EpochRow(**row) for row in saved["epochs"]]
    except (KeyError, TypeError) as error:
        raise _unreadable(path, f"{where} lacks a field the trainer writes ({error})") from None
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise _unreadable(path, f"{where} has seed {seed!r}, not an integer")
    for name, value in (("test_acc", acc), ("train_time", seconds)):
        if not isinstance(value, (int, float)) or not math.isfinite(value):
            raise _unreadable(path, f"{where} has {name} {value!r}, not a finite number")
    if not rows or rows[-1].test_acc != acc:
        raise _unreadable(path, f"{where}'s test_acc is not its last epoch's")
    return RunResult(
        seed=seed,
        rows=rows,
        setup_time=float(saved.get("setup_time", 0.0)),
        train_time=float(seconds),
        eval_time=float(saved.get("eval_time", 0.0)),
    )


def read_record(path: str) -> Record:
    """The trainer's ``--json`` file at ``path``; :class:`PoolError` (exit 3) naming the
    file and what is wrong if it is missing, not JSON, or another command's record."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as error:
        raise _unreadable(path, error.strerror or str(error)) from None
    except UnicodeDecodeError:
        raise _unreadable(path, "it is not text (the trainer's --json writes UTF-8 JSON)") from None
    try:
        saved = json.loads(text)
    except json.JSONDecodeError as error:
        raise _unreadable(path, f"not JSON ({error.msg} at line {error.lineno})") from None
    if isinstance(saved, dict) and {"a", "b", "order"} <= saved.keys():
        raise _unreadable(
            path, "it is a compare record (two recipes); pool reads the trainer's --json files"
        )
    if isinstance(saved, dict) and "pooled_from" in saved:
        raise _unreadable(path, "it is already a pooled record; pool the files it names")
    if not isinstance(saved, dict) or not all(
        isinstance(saved.get(k), want)
        for k, want in (("config", dict), ("environment", dict), ("runs", list))
    ):
        raise _unreadable(
            path, "not a record of the trainer's --json (it needs config, environment and runs)"
        )
    if not saved["runs"]:
        raise _unreadable(path, "it holds no runs")
    runs = [_run_from(run, path, i) for i, run in enumerate(saved["runs"])]
    return Record(path, saved["config"], saved["environment"], runs)


def _show(value: Any) -> str:
    return json.dumps(value) if not isinstance(value, str) else value


def check_poolable(records: Sequence[Record]) -> None:
    """Raise :class:`PoolError` (exit 2) at the first pair of files that are not runs of one
    recipe with one arithmetic, or at a seed that two runs share."""
    first = records[0]
    for other in records[1:]:
        mine, theirs = first.recipe(), other.recipe()
        differ = sorted(k for k in mine.keys() | theirs.keys() if mine.get(k) != theirs.get(k))
        if differ:
            shown = "; ".join(
                f"{k} {_show(mine.get(k))} vs {_show(theirs.get(k))}" for k in differ[:4]
            )
            more = f" (and {len(differ) - 4} more)" if len(differ) > 4 else ""
            raise PoolError(
                f"{other.path} is not the same recipe as {first.path}: {shown}{more}; pool "
                "runs of one recipe (to test two recipes against each other, use "
                "python -m train compare)"
            )
        if other.arithmetic() != first.arithmetic():
            shown = "; ".join(
                f"{k} {_show(a)} vs {_show(b)}"
                for k, a, b in zip(ARITHMETIC, first.arithmetic(), other.arithmetic())
                if a != b
            )
            raise PoolError(
                f"{other.path} ran with other arithmetic than {first.path}: {shown}; runs "
                "that compute differently are two samples, not one"
            )
    owner: dict[int, str] = {}
    for record in records:
        for run in record.runs:
            if run.seed in owner:
                where = (
                    f"twice in {record.path}"
                    if owner[run.seed] == record.path
                    else f"in {owner[run.seed]} and in {record.path}"
                )
                raise PoolError(
                    f"seed {run.seed} appears {where}: that is one run twice, not two "
                    "independent runs; drop one of them"
                )
            owner[run.seed] = record.path


def setups(records: Sequence[Record]) -> list[list[Record]]:
    """The records grouped by set-up (:data:`SETUP`), in order of first appearance."""
    groups: dict[tuple[Any, ...], list[Record]] = {}
    for record in records:
        groups.setdefault(record.setup(), []).append(record)
    return list(groups.values())


def format_pool(records: Sequence[Record]) -> str:
    """Each file's runs in one line, then the summary over all of them."""
    from train.report import TARGET_ACCURACY, TIME_EXCLUDES, TIME_INCLUDES, summarize_runs
    from train.stats import format_mean_ci

    results = [run for record in records for run in record.runs]
    lines = [
        f"{record.path}: "
        + ", ".join(f"seed {r.seed} {r.test_acc:.4f} in {r.train_time:.2f} s" for r in record.runs)
        for record in records
    ]
    acc = summarize_runs(results)["test_acc"]
    accuracies = [r.test_acc for r in results]
    reached = sum(a >= TARGET_ACCURACY for a in accuracies)
    seeds = ", ".join(str(s) for s in sorted(r.seed for r in results))
    lines.append(
        f"pooled {len(results)} run{'s' * (len(results) != 1)} from {len(records)} "
        f"file{'s' * (len(records) != 1)} (seeds {seeds})"
    )
    lines.append(
        f"test accuracy {acc['mean']:.4f} ± {acc['std']:.4f} (std; min {acc['min']:.4f}, "
        f"max {acc['max']:.4f}); {reached}/{len(results)} runs reached 94%"
    )
    lines.append(f"mean test accuracy {format_mean_ci(accuracies, digits=4)}")
    groups = setups(records)
    if len(groups) == 1:
        lines.append(f"mean time {format_mean_ci([r.train_time for r in results], unit='s')}")
    else:
        lines.append(
            f"time: not pooled, the files come from {len(groups)} set-ups (a mean over "
            "machines describes none of them):"
        )
        for group in groups:
            times = [r.train_time for record in group for r in record.runs]
            lines.append(
                f"  {group[0].describe_setup()}: mean time {format_mean_ci(times, unit='s')}"
            )
    lines.append(f"time includes: {TIME_INCLUDES}")
    lines.append(f"time excludes: {TIME_EXCLUDES}")
    return "\n".join(lines)


def pooled_record(records: Sequence[Record]) -> dict[str, Any]:
    """The pooled runs as one JSON-ready record: the shared recipe, each file's environment,
    the summary (times only when one set-up ran them all), and every run with its file."""
    from train.report import summarize_runs

    results = [run for record in records for run in record.runs]
    summary = summarize_runs(results)
    groups = setups(records)
    if len(groups) > 1:
        summary["train_time"] = None
    return {
        "pooled_from": [record.path for record in records],
        "recipe": records[0].recipe(),
        "environments": [record.environment for record in records],
        "times_pooled": len(groups) == 1,
        "summary": summary,
        "runs": [
            {
                "file": record.path,
                "seed": run.seed,
                "test_acc": run.test_acc,
                "train_time": run.train_time,
                "setup_time": run.setup_time,
                "eval_time": run.eval_time,
            }
            for record in records
            for run in record.runs
        ],
    }


def _pool_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="python -m train pool",
        description="Summarise runs that separate invocations wrote with --json (for example "
        "one seed per job): mean, spread and 95% CI of test accuracy and time, after "
        "checking that the files hold one recipe, one arithmetic and distinct seeds.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="the trainer's --json files")
    p.add_argument("--json", metavar="PATH", help="write the pooled runs and summary here")
    return p


def pool_main(argv: Sequence[str]) -> int:
    """``python -m train pool``; returns the exit code."""
    from train.atomic import write_atomic
    from train.outputs import OutputLocks, check_output_file, write_fallback

    args = _pool_parser().parse_args(list(argv))
    try:
        if len(set(map(_same_file_key, args.files))) != len(args.files):
            raise PoolError("a file is named twice; name each --json file once")
        if args.json:
            check_output_file(args.json, "--json")
            if _same_file_key(args.json) in set(map(_same_file_key, args.files)):
                raise PoolError(
                    f"--json {args.json} is one of the files being pooled; write the pooled "
                    "record to another file"
                )
        records = [read_record(path) for path in args.files]
        check_poolable(records)
    except PoolError as error:
        return fail(error.code, str(error))
    except ConfigError as error:
        return fail(EXIT_USAGE, str(error))
    print(format_pool(records))
    if not args.json:
        return EXIT_OK
    record = pooled_record(records)
    text = json.dumps(record, indent=2)
    with OutputLocks() as locks:
        try:
            locks.acquire(args.json, "--json")
            write_atomic(args.json, lambda handle: handle.write(text.encode("utf-8")))
        except ConfigError as error:
            return fail(EXIT_USAGE, str(error))
        except OSError as error:
            rescue = write_fallback(record, "pool")
            return fail(
                EXIT_OUTPUT,
                f"could not write --json {args.json} ({error.strerror or error}); the pooled "
                f"record is in {rescue}",
            )
    print(f"wrote {args.json}")
    return EXIT_OK


def _same_file_key(path: str) -> str:
    """Two spellings of one file (``a.json``, ``./a.json``) give the same key."""
    return str(Path(path).resolve())
