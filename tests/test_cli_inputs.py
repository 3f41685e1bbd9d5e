"""What a user types never gives a traceback: every numeric flag obeys one rule (finite, in
its range, the range in the message), bad values exit with 2 before any work, subsets
larger than the data exit with 2 naming the split's size, and Ctrl-C at start-up or while
the data loads exits with 130 in one line.

Everything runs in this process with the training itself replaced by a sentinel: these
tests are about what happens *before* the first step.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import train.cli as cli
import train.trainer as trainer_module
from train.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main
from train.config import NUMERIC_RANGES, TrainConfig
from train.data import Cifar10


class ReachedTraining(Exception):
    """Raised where the trainer would be built: every check before it has passed."""


def small_data(train: int = 256, test: int = 128) -> Cifar10:
    generator = torch.Generator().manual_seed(0)
    return Cifar10(
        train_images=torch.randint(
            0, 256, (train, 3, 32, 32), dtype=torch.uint8, generator=generator
        ),
        train_labels=torch.randint(0, 10, (train,), generator=generator),
        test_images=torch.randint(
            0, 256, (test, 3, 32, 32), dtype=torch.uint8, generator=generator
        ),
        test_labels=torch.randint(0, 10, (test,), generator=generator),
        classes=[str(i) for i in range(10)],
        source="memory",
    )


DATA = small_data()


def run_until_training(argv: list[str]) -> int:
    """``main(argv)`` with a small in-memory data set; 0 when it got as far as building the
    trainer (which is not run)."""

    def refuse(*args, **kwargs):
        raise ReachedTraining

    with (
        mock.patch.object(cli, "load_data", lambda config: DATA),
        mock.patch.object(trainer_module, "Trainer", refuse),
    ):
        try:
            return main(["--device", "cpu", *argv])
        except ReachedTraining:
            return EXIT_OK
        except SystemExit as exit_:  # argparse's way out for a bad flag (python -m: its code)
            return exit_.code


def numeric_flags() -> list[str]:
    """Every flag of the trainer whose value is a number (from the parser itself)."""
    parser = cli.build_parser()
    return sorted(
        option
        for action in parser._actions
        for option in action.option_strings
        if isinstance(action, argparse.Action)
        and action.dest in NUMERIC_RANGES
        and option.startswith("--")
    )


def test_every_numeric_flag_of_the_parser_has_a_range():
    flags = numeric_flags()
    # the flags this test drives are the parser's own, not a copied list
    assert {
        "--epochs",
        "--lr",
        "--width",
        "--seed",
        "--celu-alpha",
        "--train-subset",
        "--test-subset",
    } <= set(flags)


def values() -> st.SearchStrategy[str]:
    numbers = st.one_of(
        st.integers(min_value=-(10**30), max_value=10**30),
        st.floats(allow_nan=True, allow_infinity=True),
        st.sampled_from([0, 1, 2, 3, 32, 2**63 - 1, 2**63, 2**64, 18446744073709551616]),
    )
    words = st.sampled_from(
        [
            "",
            "abc",
            "1e3",
            "0x10",
            "1,000",
            "inf",
            "-inf",
            "nan",
            "NaN",
            "1.5",
            "-0",
            "1e400",
            " 7 ",
            "½",
        ]
    )
    return st.one_of(numbers.map(str), words)


@settings(
    max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(flag=st.sampled_from(numeric_flags()), value=values())
def test_numeric_flags_exit_with_0_or_2_and_never_a_traceback(flag, value):
    err_buffer = io.StringIO()
    with contextlib.redirect_stderr(err_buffer), contextlib.redirect_stdout(io.StringIO()):
        code = run_until_training(["--warmup-steps", "0", flag, value])
    err = err_buffer.getvalue()
    assert code in (EXIT_OK, EXIT_USAGE), err
    if code == EXIT_USAGE:
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
        assert err.startswith("error: ")


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--width", "inf", "--width: must be a finite number in (0, 16]; got 'inf'"),
        ("--seed", "18446744073709551616", "--seed: must be an integer in [0, "),
        ("--lr", "inf", "--lr: must be a finite number in (0, 1e+09]; got 'inf'"),
        ("--celu-alpha", "inf", "--celu-alpha: must be a finite number in (0, 100]"),
        ("--lr", "nan", "--lr: must be a finite number"),
        ("--epochs", "-1", "--epochs: must be a finite number in [1, 1,000]; got '-1'"),
        ("--batch-size", "2.5", "--batch-size: must be an integer"),
    ],
)
def test_bad_numbers_name_the_flag_and_its_range(flag, value, expected, capsys):
    assert run_until_training([flag, value]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


def test_config_refuses_non_finite_values_built_in_code():
    for field, value in (
        ("lr", math.inf),
        ("celu_alpha", math.inf),
        ("width", math.nan),
        ("epochs", -1),
    ):
        with pytest.raises(ValueError, match=f"--{field.replace('_', '-')} must be"):
            TrainConfig(**{field: value})


def test_seeds_of_several_runs_stay_within_64_bits():
    with pytest.raises(ValueError, match="gives seeds past 2\\*\\*63 - 1"):
        TrainConfig(seed=2**63 - 1, runs=2)


@pytest.mark.parametrize(
    "flag, split, size, official",
    [("--train-subset", "train", 256, "50,000"), ("--test-subset", "test", 128, "10,000")],
)
def test_a_subset_larger_than_its_split_exits_2_naming_the_size(
    flag, split, size, official, capsys
):
    # 999,999 is more than CIFAR-10's split holds: refused by the parser, naming the size
    assert run_until_training([flag, "999999"]) == EXIT_USAGE
    assert f"[1, {official}]" in capsys.readouterr().err
    # within the parser's range but more than this (small) data set holds
    assert run_until_training(["--full", "--batch-size", "32", flag, str(size + 1)]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert f"the {split} set has {size} images" in err and len(err.splitlines()) == 1


def test_a_batch_larger_than_the_training_set_exits_2(capsys):
    assert run_until_training(["--full", "--batch-size", "512"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert "--batch-size 512 is more than the 256 training images" in err


@pytest.mark.parametrize("where", ["config_from_args", "load_data"])
def test_ctrl_c_at_start_up_or_while_the_data_loads_exits_130_in_one_line(where, capsys):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    with mock.patch.object(cli, where, interrupted):
        assert main(["--device", "cpu"]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip()
    assert err == "error: interrupted by Ctrl-C"


# --------------------------------------------------------------------------- airbench flags
@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--network", "vgg"], "argument --network: invalid choice: 'vgg'"),
        (["--flip", "sideways"], "argument --flip: must be one of random, alternating, none"),
        (["--tta", "sixview"], "argument --tta: must be one of flip, none, multiview, selective"),
        (["--airbench-widths", "64,256"], "argument --airbench-widths: must be three integers"),
        (["--airbench-widths", "64,0,256"], "argument --airbench-widths: must be three integers"),
        (["--epochs", "0.5"], "argument --epochs: must be a finite number in [1, 1,000]"),
        (["--jitter", "2"], "argument --jitter: must be a finite number in [0, 1]"),
        (["--tta-fraction", "nan"], "argument --tta-fraction: must be a finite number"),
        (["--bn-eps", "0"], "argument --bn-eps: must be a finite number in (0, 1]"),
        (["--lr-schedule", "cosine"], "argument --lr-schedule: invalid choice: 'cosine'"),
        (["--optimizer", "adam"], "argument --optimizer: invalid choice: 'adam'"),
        (["--muon-ns-steps", "0"], "argument --muon-ns-steps: must be an integer in [1, 20]"),
        # ResNet9 named: on a CPU with no size given, the run would be airbench94 itself
        (
            ["--network", "resnet9", "--whitening-patch-size", "2"],
            "--whitening-patch-size 2 needs --network airbench",
        ),
        (
            ["--network", "resnet9", "--optimizer", "muon"],
            "--optimizer muon trains the non-filter weights with",
        ),
        (
            ["--network", "resnet9", "--activation", "silu"],
            "--activation silu needs --network airbench",
        ),
        (
            ["--optimizer", "muon", "--sgd-form", "airbench", "--lr", "2"],
            "--lr 2.0 has no effect with --optimizer muon",
        ),
        (
            ["--preset", "airbench94-muon", "--cuda-graphs", "on"],
            "--cuda-graphs on cannot capture Muon",
        ),
        (
            ["--network", "airbench", "--pool-before-bn", "off"],
            "--network airbench always pools before batch norm",
        ),
        (["--lr-schedule", "airbench", "--preset", "ema"], "belong to the piecewise schedule"),
    ],
)
def test_bad_airbench_flags_exit_2_in_one_line(argv, expected, capsys):
    assert run_until_training(argv) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1, err


@pytest.mark.parametrize(
    "argv, field, value",
    [
        (["--flip", "random"], "flip", True),
        (["--flip", "none"], "flip", False),
        (["--no-flip"], "flip", False),
        (["--flip", "alternating"], "flip", "alternating"),
        (["--tta", "flip"], "tta", True),
        (["--tta", "multiview"], "tta", "multiview"),
        (["--epochs", "9.9"], "epochs", 9.9),
        (["--airbench-widths", "8,16,32"], "airbench_widths", (8, 16, 32)),
    ],
)
def test_airbench_flags_reach_the_config(argv, field, value):
    config, _ = cli.config_from_args(cli.build_parser().parse_args(argv), has_gpu=True)
    assert getattr(config, field) == value
    assert type(getattr(config, field)) is type(value)


def test_airbench_preset_reaches_training_on_the_cpu():
    argv = ["--preset", "speedrun-2025", "--full", "--batch-size", "32"]
    assert run_until_training(argv) == EXIT_OK


@pytest.mark.parametrize(
    ("argv", "shown"),
    [
        (["--help"], "(94% in 10 epochs)"),
        (["--help"], "23% of the steps"),  # a flag's help, which argparse %-formats
        (["pool", "--help"], "95% CI of test accuracy"),
    ],
)
def test_help_prints_percent_signs_once(capsys, argv, shown):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 0
    printed = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    assert shown in printed and "%%" not in printed
