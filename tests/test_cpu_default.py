"""The CPU user's default run: airbench94 sized to fit a few minutes on the CPU it finds."""

from __future__ import annotations

import math

import pytest

from train import cpu_default
from train.cli import build_parser, config_from_args
from train.cpu_default import CPU_BATCH, CPU_LADDER, CpuRung, choose_rung
from train.presets import preset_config


def test_the_ladder_grows_in_cost_and_never_narrows():
    widths = [rung.width for rung in CPU_LADDER]
    assert widths == sorted(widths)
    for before, after in zip(CPU_LADDER, CPU_LADDER[1:]):
        # a rung costs more than the one before: wider, or as wide on more images
        assert after.width > before.width or after.images > before.images
    assert CPU_LADDER[-1].train_subset == 50_000  # the top rung is the whole training set


def test_choose_rung_takes_the_last_that_fits():
    # predicted seconds = images / rate: 50,000 images at 1,000 img/s is 50 s, and so on
    slow = {0.25: 1000.0, 0.5: 400.0, 1.0: 130.0}  # width 0.5: 125 s, 250 s, …: the second
    assert choose_rung(slow, 180.0) == CpuRung(0.5, 10_000, 5)
    here = {0.25: 1200.0, 0.5: 628.0}  # 100,000 images at 628 img/s: 159 s; 150,000: 239 s
    assert choose_rung(here, 180.0) == CpuRung(0.5, 20_000, 5)
    fast = {0.25: 4000.0, 0.5: 2000.0, 1.0: 1000.0}  # 250,000 images: 125 s, then 250 s
    assert choose_rung(fast, 180.0) == CpuRung(0.5, 50_000, 5)
    assert choose_rung(fast, 250.0) == CpuRung(1.0, 50_000, 5)
    assert choose_rung({}, 180.0) == CPU_LADDER[0]  # nothing measured: the smallest
    assert choose_rung({0.25: 10.0}, 180.0) == CPU_LADDER[0]  # nothing fits: the smallest
    assert cpu_default.predicted_seconds(CPU_LADDER[0], {0.25: 500.0}) == 100.0
    assert cpu_default.predicted_seconds(CPU_LADDER[1], {0.25: 500.0}) is None


def test_measuring_stops_at_the_first_width_that_cannot_fit(monkeypatch):
    timed = []

    def fake_rate(config, steps=2):
        timed.append(config.width)
        return {0.25: 1000.0, 0.5: 200.0, 1.0: 100.0}[config.width]

    monkeypatch.setattr(cpu_default, "step_rate", fake_rate)

    def config_at(rung):
        return preset_config("airbench94", **rung.overrides())

    rates = cpu_default.measure_step_rates(config_at, seconds=180.0)
    # width 0.5's cheapest rung takes 250 s at 200 img/s: width 1 is never built
    assert timed == [0.25, 0.5] and rates == {0.25: 1000.0, 0.5: 200.0}
    assert choose_rung(rates, 180.0) == CPU_LADDER[0]


def test_step_rate_times_a_real_step():
    config = preset_config("airbench94", width=0.125, batch_size=16, precision="fp32")
    rate = cpu_default.step_rate(config, steps=1)
    assert math.isfinite(rate) and rate > 0


def _config(argv, rates, monkeypatch=None):
    calls = []

    def measure(config_at):
        calls.append(config_at(CPU_LADDER[0]))
        return rates

    config, note = config_from_args(build_parser().parse_args(argv), has_gpu=False, measure=measure)
    return config, note, calls


def test_the_cpu_default_runs_the_rung_that_fits_with_the_flags_given():
    rates = {0.25: 1000.0, 0.5: 400.0, 1.0: 130.0}
    config, note, calls = _config(["--runs", "3", "--seed", "7"], rates)
    rung = CpuRung(0.5, 10_000, 5)
    expected = preset_config("airbench94", runs=3, seed=7, **rung.overrides())
    assert config == expected and config.batch_size == CPU_BATCH
    assert len(calls) == 1 and calls[0].width == CPU_LADDER[0].width
    # the line says what runs, at what measured rates, and names the full recipes
    assert rung.flags() in note and "400 img/s" in note and "--full" in note
    # its flags repeat the run exactly, without measuring
    again, again_note = config_from_args(
        build_parser().parse_args([*rung.flags().split(), "--runs", "3", "--seed", "7"]),
        has_gpu=False,
        measure=lambda config_at: pytest.fail("a sized run must not measure"),
    )
    assert again == config
    assert again_note is None  # every size was given: nothing filled in


def test_a_sizing_flag_keeps_the_fixed_cpu_configuration():
    for argv in (["--epochs", "3"], ["--preset", "tta"], ["--network", "airbench"]):
        config, note = config_from_args(
            build_parser().parse_args(argv),
            has_gpu=False,
            measure=lambda config_at, argv=argv: pytest.fail(f"{argv} must not measure"),
        )
        assert "CPU-sized configuration" in note


def test_no_measuring_on_a_gpu_with_full_or_under_torchrun(monkeypatch):
    def never(config_at):
        pytest.fail("must not measure")

    config, note = config_from_args(build_parser().parse_args([]), has_gpu=True, measure=never)
    assert note is None and config.network == "resnet9"
    config, note = config_from_args(build_parser().parse_args(["--full"]), has_gpu=False)
    assert note is None and config.network == "resnet9"
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(cpu_default, "measure_step_rates", never)
    config, note = config_from_args(build_parser().parse_args([]), has_gpu=False)
    assert config == preset_config("airbench94", **CPU_LADDER[0].overrides())
    assert CPU_LADDER[0].flags() in note


def test_a_bad_flag_fails_before_any_measuring():
    from train.config import ConfigError

    with pytest.raises(ConfigError, match="past 2\\*\\*63"):
        config_from_args(
            build_parser().parse_args(["--seed", str(2**63 - 1), "--runs", "2"]),
            has_gpu=False,
            measure=lambda config_at: pytest.fail("measured before checking the flags"),
        )
