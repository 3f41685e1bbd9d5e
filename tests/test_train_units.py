"""The trainer's small pieces against hand-computed values and PyTorch's own ops."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from train.cli import build_parser, config_from_args, main
from train.config import ConfigError, TrainConfig
from train.ema import WeightAverage
from train.evaluate import tta_logits
from train.loss import label_smoothing_loss
from train.optim import make_optimizer, set_learning_rate
from train.schedule import PiecewiseLinear, learning_rate, recipe_schedule


# --------------------------------------------------------------------------- schedule
def test_final_recipe_schedule_knots():
    """(0, 0), (2, 1.0), (8, 0.1), flat at 0.1 for the last 2 of 10 epochs."""
    schedule = recipe_schedule(TrainConfig())
    assert schedule(0) == 0.0
    assert schedule(1) == pytest.approx(0.5)
    assert schedule(2) == pytest.approx(1.0)
    assert schedule(5) == pytest.approx(1.0 - 0.9 * 3 / 6)
    assert schedule(8) == pytest.approx(0.1)
    assert schedule(9) == pytest.approx(0.1)
    assert schedule(10) == pytest.approx(0.1)
    assert schedule(12) == pytest.approx(0.1)


def test_schedule_scales_with_epochs_and_peak():
    schedule = recipe_schedule(TrainConfig(epochs=5, lr=2.0))
    # warm-up epochs/5 = 1, decay to 0.1·peak at 5 − 1 = 4, flat after.
    assert schedule(1) == pytest.approx(2.0)
    assert schedule(4) == pytest.approx(0.2)
    assert schedule(4.5) == pytest.approx(0.2)


def test_schedule_without_floor_decays_to_the_end():
    schedule = recipe_schedule(TrainConfig(epochs=24, warmup_epochs=5, lr=0.4, lr_floor=0.0,
                                           floor_epochs=0))
    assert schedule(5) == pytest.approx(0.4)
    assert schedule(14.5) == pytest.approx(0.2)
    assert schedule(24) == pytest.approx(0.0)


def test_learning_rate_is_per_example():
    schedule = PiecewiseLinear((0.0, 1.0), (0.0, 1.0))
    # step 50 of 100 per epoch: half-way up the warm-up, divided by the batch size.
    assert learning_rate(schedule, 50, 100, 512) == pytest.approx(0.5 / 512)


def test_piecewise_linear_rejects_bad_knots():
    with pytest.raises(ValueError, match="must not decrease"):
        PiecewiseLinear((0.0, 2.0, 1.0), (0.0, 1.0, 0.0))


# --------------------------------------------------------------------------- loss
@pytest.mark.parametrize("smoothing", [0.0, 0.2, 0.5])
def test_label_smoothing_loss_equals_pytorch_summed(smoothing):
    logits = torch.randn(37, 10) * 3
    targets = torch.randint(0, 10, (37,))
    ours = label_smoothing_loss(logits, targets, smoothing)
    theirs = F.cross_entropy(logits, targets, label_smoothing=smoothing, reduction="sum")
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_label_smoothing_loss_by_hand():
    """Two classes, logits (0, 0): p = ½ each, so every term is log 2."""
    loss = label_smoothing_loss(torch.zeros(3, 2), torch.tensor([0, 1, 0]), 0.2)
    assert loss.item() == pytest.approx(3 * math.log(2))


# --------------------------------------------------------------------------- EMA
def test_ema_bias_corrected_arithmetic():
    layer = nn.Linear(1, 1, bias=False)
    rho = 0.5
    ema = WeightAverage(layer, rho)
    values = [2.0, 4.0, 8.0]
    for v in values:
        with torch.no_grad():
            layer.weight.fill_(v)
        ema.update()
    # zero start: a = Σ (1−ρ) ρ^(t−i) v_i = 0.5·8 + 0.25·4 + 0.125·2 = 5.25; ÷ (1 − ρ³) = 6.
    target = nn.Linear(1, 1, bias=False)
    ema.copy_to(target)
    assert target.weight.item() == pytest.approx(5.25 / (1 - 0.125))
    assert ema.updates == 3


def test_ema_first_update_reads_back_current_weights():
    """What makes short runs safe: one update already gives the current weights exactly."""
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema = WeightAverage(model, 0.99 ** 5)
    ema.update()
    copy = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema.copy_to(copy)
    for (name, a), b in zip(model.state_dict().items(), copy.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_ema_full_recipe_correction_negligible():
    """~190 updates at ρ = 0.99⁵: the correction differs from 1 by less than 1e-4."""
    ema = WeightAverage(nn.Linear(1, 1), 0.99 ** 5)
    ema.updates = 97 * 10 // 5   # 97 steps per epoch at batch 512, 10 epochs
    assert abs(ema.correction - 1) < 1e-4


def test_ema_refuses_to_read_before_any_update():
    ema = WeightAverage(nn.Linear(1, 1), 0.9)
    with pytest.raises(RuntimeError, match="no updates yet"):
        ema.copy_to(nn.Linear(1, 1))


# --------------------------------------------------------------------------- TTA
def test_tta_averages_logits_of_both_flips():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.randn(6, 3, 4, 4)
    flipped = x.flip(-1)
    expected = (model(x) + model(flipped)) / 2
    torch.testing.assert_close(tta_logits(model, x, flipped), expected)
    torch.testing.assert_close(tta_logits(model, x, None), model(x))


# --------------------------------------------------------------------------- optimiser
class _TinyModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Linear(3, 3, bias=False)
        self.bn_bias = nn.Parameter(torch.zeros(3))

    def param_groups(self):
        return {"weights": [self.conv.weight], "bn_biases": [self.bn_bias], "bn_weights": []}


def test_optimizer_groups_lr_and_weight_decay():
    config = TrainConfig(batch_size=512)
    optimizer = make_optimizer(_TinyModel(), config)
    weights, biases = optimizer.param_groups
    assert weights["weight_decay"] == pytest.approx(5e-4 * 512)
    assert biases["weight_decay"] == pytest.approx(5e-4 * 512 / 64)
    set_learning_rate(optimizer, 0.01)
    assert weights["lr"] == pytest.approx(0.01)
    assert biases["lr"] == pytest.approx(0.64)
    assert weights["nesterov"] and weights["momentum"] == 0.9


# --------------------------------------------------------------------------- config / CLI
@pytest.mark.parametrize("changes, message", [
    ({"epochs": -1}, "--epochs must be at least 1"),
    ({"batch_size": 100}, "not divisible by the ghost-BN split of 32"),
    ({"backend": "cuda-magic"}, "unknown backend"),
    ({"width": 0}, "--width must be positive"),
    ({"cutout": 40}, "--cutout must be in"),
    ({"train_subset": 100, "batch_size": 128}, "smaller than one batch"),
])
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig().replace(**changes)


def test_config_rejects_unknown_field():
    with pytest.raises(ConfigError, match="unknown configuration field"):
        TrainConfig().replace(colour="red")


def test_ghost_splits_follow_batch_size():
    assert TrainConfig().ghost_splits == 16
    assert TrainConfig(batch_size=128).ghost_splits == 4
    assert TrainConfig(ghost_batch=0).ghost_splits == 1


@pytest.mark.parametrize("argv, message", [
    (["--epochs", "-3"], "--epochs must be at least 1"),
    (["--batch-size", "100", "--device", "cpu"], "not divisible by the ghost-BN split"),
    (["--backend", "magic"], "invalid choice"),
    (["--epochs", "ten"], "invalid int value"),
    (["--train-subset", "0"], "must be a positive integer"),
])
def test_cli_bad_flags_give_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_cpu_configuration_fills_only_unset_flags():
    args = build_parser().parse_args(["--epochs", "3"])
    config, note = config_from_args(args, has_gpu=False)
    assert (config.epochs, config.width, config.train_subset, config.batch_size) == \
        (3, 0.25, 10_000, 128)
    assert "CPU-sized configuration" in note and "--full" in note
    full, note = config_from_args(build_parser().parse_args(["--full"]), has_gpu=False)
    assert note is None and full == TrainConfig()
    gpu, note = config_from_args(build_parser().parse_args([]), has_gpu=True)
    assert note is None and gpu == TrainConfig()
