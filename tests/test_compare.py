"""``python -m train compare`` is fair in time as well as in accuracy: every backend warms up
before the clock, the pairs run A B, B A, … so that neither side is always first, identical
sides show no difference in time, and bad flags are named for what they are.

The runs train a 1/16-width network on 64 in-memory images; time comes from a fake clock
(so the timing test does not depend on this machine's speed or load).
"""

from __future__ import annotations

import itertools
import json
import types
from unittest import mock

import torch
from test_cli_inputs import small_data

import train.compare as compare_module
import train.trainer as trainer_module
from train.cli import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, main
from train.compare import run_order
from train.config import TrainConfig
from train.runtime import Runtime
from train.step import TrainStep

TINY = [
    "--device",
    "cpu",
    "--width",
    "0.0625",
    "--epochs",
    "1",
    "--batch-size",
    "32",
    "--train-subset",
    "64",
    "--test-subset",
    "32",
    "--warmup-steps",
    "1",
]
DATA = small_data(train=64, test=32)


def drifting_clock(drift: float = 0.01) -> types.SimpleNamespace:
    """A stand-in for the ``time`` module whose ``perf_counter`` advances by a little more
    at every call: a machine that slows down steadily (heat, other load)."""
    calls = itertools.count()
    now = [0.0]

    def perf_counter() -> float:
        now[0] += 1.0 + drift * next(calls)
        return now[0]

    return types.SimpleNamespace(perf_counter=perf_counter)


def test_pairs_alternate_which_side_goes_first():
    order = run_order(4)
    assert order == [(0, "A"), (0, "B"), (1, "B"), (1, "A"), (2, "A"), (2, "B"), (3, "B"), (3, "A")]
    firsts = [order[2 * i][1] for i in range(4)]
    assert firsts.count("A") == firsts.count("B") == 2


def test_identical_sides_show_no_difference_in_time_on_a_drifting_machine(tmp_path, capsys):
    out = tmp_path / "compare.json"
    with (
        mock.patch.object(compare_module, "load_data", lambda config: DATA),
        mock.patch.object(trainer_module, "time", drifting_clock()),
    ):
        code = main(["compare", "--a", "", "--b", "", "--runs", "4", "--json", str(out), *TINY])
    printed = capsys.readouterr().out
    assert code == EXIT_OK, printed
    assert "in pairs A B, B A" in printed
    time_verdict = [
        line for line in printed.splitlines() if line.startswith("verdict:") and " time" in line
    ]
    assert len(time_verdict) == 1 and "no significant difference in time" in time_verdict[0]
    record = json.loads(out.read_text())
    assert record["order"] == ["A1", "B1", "B2", "A2", "A3", "B3", "B4", "A4"]
    # the same seeds, the same network: the same accuracy run for run
    assert record["a"]["test_acc"] == record["b"]["test_acc"]


def test_cpu_eager_warms_up_before_the_clock(monkeypatch):
    """The first steps of a process pay one-off costs (allocations, oneDNN primitives): they
    must land in the warm-up, not in the first run's time."""
    steps = []
    take_step = TrainStep.__call__

    def counting_step(self, *args, **kwargs):
        steps.append(self)
        return take_step(self, *args, **kwargs)

    monkeypatch.setattr(TrainStep, "__call__", counting_step)
    config = TrainConfig(
        width=0.0625,
        batch_size=32,
        epochs=1,
        warmup_steps=2,
        device="cpu",
        train_subset=64,
        test_subset=32,
    )
    runtime = Runtime(torch.device("cpu"), "eager", torch.float32, channels_last=False)
    trainer_module.Trainer(config, runtime, DATA, log=lambda line: None)
    assert len(steps) == 2


def test_an_unknown_common_flag_is_named_as_such(capsys):
    assert main(["compare", "--a", "", "--b", "", "--bogus", "3"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err == "error: flags for both sides: unrecognized arguments: --bogus 3"


def test_unbalanced_quotes_in_a_side_give_one_line(capsys):
    assert main(["compare", "--a", '--activation "relu', "--b", ""]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: side A: cannot split") and "No closing quotation" in err
    assert len(err.splitlines()) == 1


def test_a_bad_value_in_a_side_names_the_side(capsys):
    assert main(["compare", "--a", "--lr inf", "--b", ""]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: side A ('--lr inf'): argument --lr: must be a finite")


def test_ctrl_c_during_compare_exits_130_in_one_line(capsys):
    def interrupted(self, seed, **kwargs):
        raise KeyboardInterrupt

    with (
        mock.patch.object(compare_module, "load_data", lambda config: DATA),
        mock.patch.object(trainer_module.Trainer, "run", interrupted),
    ):
        assert main(["compare", "--a", "", "--b", "", "--runs", "2", *TINY]) == EXIT_INTERRUPTED
    err = capsys.readouterr().err.strip()
    assert err == "error: compare interrupted by Ctrl-C after 0 of 4 runs; nothing written"


def test_a_size_on_one_side_only_is_refused_on_a_cpu(capsys):
    assert main(["compare", "--a", "--width 0.5", "--b", "", "--device", "cpu"]) == EXIT_USAGE
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: one side sets the run's size") and "--width" in err
    assert len(err.splitlines()) == 1


def test_unsized_sides_are_sized_once_and_alike_on_a_cpu(monkeypatch):
    """With no size given, the CPU default measures once (not once per side) and both
    sides train the same rung, whatever their other flags."""
    from train import cpu_default
    from train.compare import _compare_parser, _side_configs
    from train.presets import preset_config

    measured = []

    def fake_measure(config_at, *args, **kwargs):
        measured.append(config_at)
        return {0.25: 1000.0, 0.5: 400.0, 1.0: 130.0}  # width 0.5 on 10,000 images fits

    monkeypatch.setattr(cpu_default, "measure_step_rates", fake_measure)
    args, common = _compare_parser().parse_known_args(
        ["--a", "--lookahead on", "--b", "--lookahead off", "--device", "cpu"]
    )
    config_a, config_b, note = _side_configs(args, common, has_gpu=False)
    assert len(measured) == 1
    rung = cpu_default.CpuRung(0.5, 10_000, 5)
    common_fields = dict(device="cpu", **rung.overrides())
    assert config_a == preset_config("airbench94", lookahead=True, **common_fields)
    assert config_b == preset_config("airbench94", lookahead=False, **common_fields)
    assert rung.flags() in note
