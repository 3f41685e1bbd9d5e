"""The presets against an independent, hand-written statement of both ladders: the seed's,
and the second one from its final recipe to the 2025 speedrun (shared/docs/RECIPE.md)."""

from __future__ import annotations

import pytest

from train.config import ConfigError, TrainConfig
from train.presets import LADDERS, PRESETS, describe_presets, diff_configs, preset_config

# The seed's table (shared/docs/RECIPE.md), written out again by hand: name, epochs, and
# the set of TrainConfig fields that step changes relative to the previous preset.
LADDER = [
    ("baseline", 24, None),
    ("gpu-data", 24, {"gpu_data"}),
    ("pool-before-bn", 25, {"pool_before_bn", "epochs"}),
    # warm-up goes from the baseline's explicit 5 epochs to the default epochs/5
    ("label-smoothing", 23, {"label_smoothing", "epochs", "warmup_epochs"}),
    ("celu", 20, {"activation", "celu_alpha", "epochs"}),
    ("ghost-bn", 18, {"ghost_batch", "lr", "epochs"}),
    (
        "frozen-scales",
        17,
        {"frozen_bn_scale", "celu_alpha", "bias_lr_mult", "bias_wd_div", "output_scale", "epochs"},
    ),
    ("whitening", 15, {"whitening", "lr", "cutout", "epochs"}),
    ("ema", 13, {"ema", "lr_floor", "floor_epochs", "epochs"}),
    # floor_epochs 2 -> None: the default epochs/5 is the same 2 epochs at 10 epochs
    ("tta", 10, {"tta", "cutout", "epochs", "floor_epochs"}),
]


# The second ladder, written out again: name, epochs, and the fields each step changes
# relative to the previous preset (the first one relative to 'tta').
SECOND_LADDER = [
    (
        "ab-net",
        10,
        {
            "network",
            "activation",
            "ghost_batch",
            "bn_eps",
            "bn_momentum",
            "whitening_patch_size",
            "whitening_eps",
            "whitening_images",
            "output_scale",
        },
    ),
    ("ab-sgd", 10, {"sgd_form", "lr", "weight_decay", "momentum"}),
    ("ab-schedule", 10, {"lr_schedule", "lr_floor"}),
    ("ab-batch", 10, {"batch_size"}),
    ("ab-translate", 10, {"pad"}),
    ("ab-flip", 10, {"flip"}),
    ("ab-lookahead", 10, {"lookahead", "ema"}),
    ("ab-tta", 10, {"tta"}),
    ("airbench94", 9.9, {"epochs"}),
    (
        "ab-muon",
        9.9,
        {
            "optimizer",
            "lr",
            "weight_decay",
            "lr_schedule",
            "lr_floor",
            "lookahead",
            "head_unit_std",
            "output_scale",
            "whitening_bias_init",
        },
    ),
    ("airbench94-muon", 8, {"batch_size", "epochs"}),
    (
        "sr-net",
        8,
        {"activation", "bn_momentum", "whitening_images"},
    ),
    ("sr-smoothing", 8, {"label_smoothing"}),
    ("sr-muon", 8, {"muon_lr", "muon_momentum", "muon_renormalize_every", "momentum"}),
    ("sr-whiten-bias", 8, {"whitening_bias_epochs"}),
    ("sr-jitter", 8, {"jitter"}),
    ("sr-tta", 8, {"tta"}),
    ("speedrun-2025", 7.6, {"batch_size", "epochs"}),
]
BOTH = [("tta", 10, None), *SECOND_LADDER]


def test_names_and_order_follow_the_seed():
    first, second = [n for n, _, _ in LADDER], [n for n, _, _ in SECOND_LADDER]
    assert list(PRESETS) == first + second
    assert LADDERS == {"seed": tuple(first), "airbench": tuple(second)}


@pytest.mark.parametrize("name", list(PRESETS))
def test_every_preset_builds_a_valid_config(name):
    config = preset_config(name)
    config.validate()
    assert PRESETS[name].config() == config


@pytest.mark.parametrize("name, epochs", [(n, e) for n, e, _ in LADDER])
def test_epochs_match_the_seed(name, epochs):
    assert preset_config(name).epochs == epochs
    assert PRESETS[name].seed_epochs == epochs
    assert PRESETS[name].seed_acc == 94.1


@pytest.mark.parametrize("i", range(1, len(LADDER)))
def test_each_step_changes_exactly_its_fields(i):
    prev_name, _, _ = LADDER[i - 1]
    name, _, expected = LADDER[i]
    changed = diff_configs(preset_config(prev_name), preset_config(name))
    assert set(changed) == expected, f"{prev_name} -> {name}"
    assert set(PRESETS[name].changes) == expected


def test_baseline_is_the_earlier_entry():
    c = preset_config("baseline")
    assert (c.epochs, c.lr, c.warmup, c.lr_floor, c.floor) == (24, 0.4, 5, 0.0, 0)
    assert c.activation == "relu" and c.ghost_batch == 0 and c.ghost_splits == 1
    assert not c.pool_before_bn and not c.frozen_bn_scale and not c.whitening
    assert c.label_smoothing == 0 and c.cutout == 8 and c.output_scale == 0.125
    assert (c.bias_lr_mult, c.bias_wd_div) == (1, 1)
    assert not c.ema and not c.tta
    assert not c.gpu_data


def test_step_values():
    assert preset_config("gpu-data").gpu_data
    assert preset_config("label-smoothing").label_smoothing == 0.2
    assert preset_config("label-smoothing").warmup == pytest.approx(23 / 5)
    assert preset_config("celu").celu_alpha == 0.075
    gb = preset_config("ghost-bn")
    assert gb.ghost_batch == 32 and gb.lr == pytest.approx(0.4 * 1.5)
    fz = preset_config("frozen-scales")
    assert fz.celu_alpha == pytest.approx(0.075 * 4)
    assert fz.bias_lr_mult == 16 * 4 and fz.bias_wd_div == 64
    assert fz.output_scale == 1 / 16
    wh = preset_config("whitening")
    assert wh.whitening and wh.cutout == 5 and wh.lr == 1.0
    ema = preset_config("ema")
    assert ema.ema and (ema.ema_every, ema.ema_momentum) == (5, 0.99)
    assert ema.floor == 2 and ema.lr_floor == 0.1
    # the tta step resets floor_epochs to the default but keeps the 2-epoch floor
    assert preset_config("tta").floor == 2


@pytest.mark.parametrize("i", range(1, len(BOTH)))
def test_each_second_ladder_step_changes_exactly_its_fields(i):
    prev_name, _, _ = BOTH[i - 1]
    name, epochs, expected = BOTH[i]
    changed = diff_configs(preset_config(prev_name), preset_config(name))
    assert set(changed) == expected, f"{prev_name} -> {name}"
    assert set(PRESETS[name].changes) == expected
    assert preset_config(name).epochs == epochs == PRESETS[name].seed_epochs
    assert PRESETS[name].ladder == "airbench"


# The sources' published figures (RECIPE.md), and which rows have none.
SOURCE_FIGURES = {
    "airbench94": (94.01, 3.29, 9.9, 1024),
    "airbench94-muon": (94.01, 2.59, 8, 2000),
    "speedrun-2025": (94.00, 2.015, 7.6, 1536),
}


@pytest.mark.parametrize("name", [n for n, _, _ in SECOND_LADDER])
def test_second_ladder_source_figures(name):
    preset = PRESETS[name]
    if name in SOURCE_FIGURES:
        acc, seconds, epochs, batch = SOURCE_FIGURES[name]
        assert (preset.seed_acc, preset.seed_time_s, preset.source_device) == (acc, seconds, "A100")
        c = preset_config(name)
        assert (c.epochs, c.batch_size) == (epochs, batch)
    else:
        assert preset.seed_acc is None and preset.seed_time_s is None


def test_airbench94_is_the_recipe():
    c = preset_config("airbench94")
    assert c.network == "airbench" and c.airbench_widths == (64, 256, 256) and c.width == 1
    assert c.activation == "gelu" and c.ghost_batch == 0 and c.frozen_bn_scale
    assert (c.bn_eps, c.bn_momentum) == (1e-12, pytest.approx(1 - 0.6))
    assert (c.whitening_patch_size, c.whitening_eps, c.whitening_images) == (2, 5e-4, 5000)
    assert c.whitening_bias_epochs == 3 and c.output_scale == 1 / 9
    assert (c.sgd_form, c.lr, c.weight_decay, c.momentum) == ("airbench", 11.5, 0.0153, 0.85)
    assert c.nesterov and c.bias_lr_mult == 64 and c.label_smoothing == 0.2
    assert (c.lr_schedule, c.lr_floor) == ("airbench", 0.07)
    assert (c.pad, c.flip, c.cutout) == (2, "alternating", 0)
    assert c.lookahead and c.lookahead_every == 5 and not c.ema
    assert c.tta == "multiview" and c.optimizer == "sgd"


def test_muon_and_speedrun_recipes():
    m = preset_config("airbench94-muon")
    assert (m.optimizer, m.muon_lr, m.muon_momentum, m.muon_ns_steps) == ("muon", 0.24, 0.6, 3)
    assert m.muon_renormalize_every == 1 and m.momentum == 0.85
    assert (m.lr_schedule, m.lr_floor) == ("linear_decay", 0.0) and not m.lookahead
    assert m.weight_decay / 1024 == pytest.approx(2e-6)  # per example of the batch
    # airbench94_muon's head: its SGD rate 0.67 is set for logits ÷ the last width (256) of a
    # unit-std head; with airbench94's ×1/9 the recipe diverged on the real data
    assert m.head_unit_std and m.output_scale == 1 / m.airbench_widths[-1] == 1 / 256
    assert m.whitening_bias_init == "default"
    s = preset_config("speedrun-2025")
    assert s.activation == "silu" and s.bn_momentum == pytest.approx(1 - 0.5566)
    assert s.label_smoothing == 0.09 and (s.muon_lr, s.muon_momentum) == (0.205, 0.655)
    assert s.momentum == 0.825 and s.muon_renormalize_every == 8
    assert s.jitter == 0.1 and (s.tta, s.tta_fraction) == ("selective", 0.25)
    assert s.whitening_patch_size == 2 and s.whitening_eps == 5e-4
    assert s.whitening_bias_init == "default" and s.head_unit_std
    assert s.output_scale == 1 / 256


@pytest.mark.parametrize("name", ["ab-muon", "airbench94-muon", "sr-net", "speedrun-2025"])
def test_muon_head_divides_logits_by_the_last_width_at_any_width(name):
    # airbench94_muon's head divides by whatever its last width is: 128 at half width, and
    # the rounded channel count at an odd multiplier (256 × 0.3 = 76.8 -> 77)
    assert preset_config(name, width=0.5).output_scale == 1 / 128
    assert preset_config(name, width=0.3).output_scale == 1 / 77
    assert preset_config(name, airbench_widths=(32, 64, 96)).output_scale == 1 / 96
    assert preset_config(name, width=0.5, airbench_widths=(32, 64, 96)).output_scale == 1 / 48
    # an explicit scale is the user's, at any width
    assert preset_config(name, width=0.5, output_scale=0.25).output_scale == 0.25
    # only the scale moves: the rest is the preset's, with the width asked for
    half = preset_config(name, width=0.5)
    assert diff_configs(preset_config(name), half) == {
        "width": (1.0, 0.5),
        "output_scale": (1 / 256, 1 / 128),
    }


@pytest.mark.parametrize("name", ["ab-net", "airbench94", "tta"])
def test_other_presets_keep_their_output_scale_at_any_width(name):
    # airbench94's ×1/9 and the seed's ×1/16 are constants of their recipes, not ÷ a width
    assert preset_config(name, width=0.5).output_scale == preset_config(name).output_scale


def test_final_preset_is_the_default_recipe():
    assert preset_config("tta") == TrainConfig()
    assert PRESETS["tta"].overrides == {}
    assert diff_configs(preset_config("tta"), TrainConfig()) == {}


def test_overrides_are_cumulative():
    for name, preset in PRESETS.items():
        assert TrainConfig().replace(**preset.overrides) == preset_config(name)


def test_overrides_on_top_and_schedule_scaling():
    c = preset_config("ghost-bn", lr=0.5, runs=3)
    assert (c.lr, c.runs, c.ghost_batch) == (0.5, 3, 32)
    # explicit warm-up and floor scale with a changed number of epochs (seed's rule) ...
    assert preset_config("baseline", epochs=12).warmup == pytest.approx(2.5)
    assert preset_config("ema", epochs=26).floor == pytest.approx(4)
    # ... unless given
    assert preset_config("baseline", epochs=12, warmup_epochs=1).warmup == 1


def test_presets_are_not_shared_state():
    c = preset_config("baseline")
    c.lr, c.gpu_data = 5.0, True  # a caller changing the config it was handed
    again = preset_config("baseline")
    assert (again.lr, again.gpu_data) == (0.4, False)
    with pytest.raises(TypeError):  # the ladder itself is read-only
        PRESETS["baseline"].overrides["lr"] = 5.0


def test_unknown_name_lists_the_presets():
    with pytest.raises(ConfigError) as err:
        preset_config("resnet50")
    for name in PRESETS:
        assert name in str(err.value)


def test_bad_override_is_a_config_error():
    with pytest.raises(ConfigError):
        preset_config("baseline", no_such_field=1)
    with pytest.raises(ConfigError):
        preset_config("baseline", epochs=0)


def test_diff_configs():
    a = TrainConfig()
    assert diff_configs(a, a.replace(lr=2.0, cutout=4)) == {"lr": (1.0, 2.0), "cutout": (0, 4)}


def test_describe_presets_lists_every_preset():
    text = describe_presets()
    for name, preset in PRESETS.items():
        line = next(row for row in text.splitlines() if row.startswith(name + " "))
        assert f" {preset.seed_epochs:g} " in line
        if preset.seed_time_s is None:
            assert " - " in line
        else:
            assert f"{preset.seed_time_s:g} s {preset.source_device}" in line
    assert "94.01%" in text and "3.29 s A100" in text and "2.015 s A100" in text
