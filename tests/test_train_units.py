"""The trainer's small pieces against hand-computed values and PyTorch's own ops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from train.cli import build_parser, config_from_args, main
from train.config import CPU_QUICK_OVERRIDES, ConfigError, TrainConfig
from train.ema import WeightAverage
from train.evaluate import tta_logits
from train.loss import label_smoothing_loss
from train.optim import make_optimizer, set_learning_rate
from train.runtime import auto_precision, cpu_flags, cpu_has_native_bf16, resolve_runtime
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
    schedule = recipe_schedule(
        TrainConfig(epochs=24, warmup_epochs=5, lr=0.4, lr_floor=0.0, floor_epochs=0)
    )
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


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"epochs": 13, "floor_epochs": 2.0},
        {"epochs": 24, "warmup_epochs": 5.0, "lr": 0.4, "lr_floor": 0.0, "floor_epochs": 0.0},
    ],
)
def test_schedule_is_numpy_interp_up_to_rounding(changes):
    schedule = recipe_schedule(TrainConfig(**changes))
    t = np.linspace(-1.0, schedule.knots[-1] + 1.0, 1001)
    ours = [schedule(x) for x in t]
    np.testing.assert_allclose(
        ours, np.interp(t, schedule.knots, schedule.values), rtol=1e-13, atol=1e-15
    )


def test_schedule_rounds_like_the_recorded_runs():
    """Not numpy.interp's rounding: its slope·(t − t0) + v0 differs in the last bit for
    about a fifth of the steps, which changes SGD's float32 learning rate and the printed lr
    column (here 0.45625 would print 0.4562 instead of 0.4563)."""
    schedule = recipe_schedule(TrainConfig(epochs=1))  # knots (0, 0.2, 0.8, 1)
    t = 9 / 16
    assert schedule(t) == 1.0 + (0.1 - 1.0) * (t - 0.2) / (0.8 - 0.2)
    assert schedule(t) != float(np.interp(t, schedule.knots, schedule.values))
    assert f"{schedule(t):.4f}" == "0.4563"


def test_schedule_without_warmup_starts_at_zero():
    """A warm-up of 0 epochs repeats the first knot: step 0 still gets lr 0 (the value
    before the jump, where numpy.interp would give the peak), every later step the decay."""
    schedule = recipe_schedule(TrainConfig(warmup_epochs=0.0))
    assert schedule.knots[:2] == (0.0, 0.0)
    assert schedule(0.0) == 0.0
    assert schedule(0.1) == pytest.approx(1.0 - 0.9 * 0.1 / 8)


# --------------------------------------------------------------------------- loss
@pytest.mark.parametrize("smoothing", [0.0, 0.2, 0.5])
def test_label_smoothing_loss_equals_the_formula(smoothing):
    """(1 − s)·(−log p of the target) + s·(mean over classes of −log p), summed over the
    batch: written out in float64, independently of F.cross_entropy."""
    logits = torch.randn(37, 10) * 3
    targets = torch.randint(0, 10, (37,))
    log_p = torch.log_softmax(logits.double(), dim=1)
    want = (
        (1 - smoothing) * -log_p[torch.arange(37), targets] + smoothing * -log_p.mean(dim=1)
    ).sum()
    ours = label_smoothing_loss(logits, targets, smoothing)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours.double(), want, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_label_smoothing_loss_of_half_precision_logits_is_float32(dtype):
    """Autocast hands over fp16/bf16 logits; the loss (a sum over the batch) is float32."""
    logits = (torch.randn(64, 10) * 3).to(dtype)
    targets = torch.randint(0, 10, (64,))
    ours = label_smoothing_loss(logits, targets, 0.2)
    assert ours.dtype == torch.float32
    assert torch.equal(ours, label_smoothing_loss(logits.float(), targets, 0.2))


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
    ema = WeightAverage(model, 0.99**5)
    ema.update()
    copy = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3))
    ema.copy_to(copy)
    for (name, a), b in zip(model.state_dict().items(), copy.state_dict().values()):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-7, msg=name)


def test_ema_full_recipe_matches_the_seeds_copy_started_average():
    """The class docstring's claim: over the full recipe's 194 updates (97 steps per epoch
    at batch 512, 10 epochs, every 5th step) the zero-started, bias-corrected average reads
    back what the seed's average, started from a copy of the initial weights, does."""
    rho = 0.99**5
    layer = nn.Linear(8, 4)
    ema = WeightAverage(layer, rho)
    initial = layer.weight.detach().clone()
    seed_average = initial.clone()  # the seed: a copy to start from
    for _ in range(97 * 10 // 5):
        with torch.no_grad():
            layer.weight.add_(torch.randn_like(layer.weight))  # a random walk of weights
        ema.update()
        seed_average.lerp_(layer.weight.detach(), 1 - rho)
    target = nn.Linear(8, 4)
    ema.copy_to(target)
    # Exactly: ours − seed's = ρ¹⁹⁴·(ours − initial), and ρ¹⁹⁴ ≈ 7.2e-5 (plus float32
    # rounding of the ~200 updates).
    ours = target.weight.detach()
    assert ((ours - seed_average).abs() <= 1e-4 * (ours - initial).abs() + 1e-5).all()
    # ... while after a short run (19 updates) the seed's copy still weighs ρ¹⁹ ≈ 38%.
    short = WeightAverage(layer, rho)
    short_seed = layer.weight.detach().clone()
    with torch.no_grad():
        layer.weight.add_(10.0)
    for _ in range(19):
        short.update()
        short_seed.lerp_(layer.weight.detach(), 1 - rho)
    short.copy_to(target)
    torch.testing.assert_close(target.weight, layer.weight.detach())
    assert (layer.weight - short_seed).abs().min() > 3.0


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
    # Values other than the defaults, so that each must come from the configuration.
    config = TrainConfig(
        batch_size=256,
        ghost_batch=32,
        weight_decay=1e-3,
        bias_wd_div=8.0,
        bias_lr_mult=16.0,
        momentum=0.8,
        nesterov=False,
    )
    optimizer = make_optimizer(_TinyModel(), config)
    weights, biases = optimizer.param_groups
    assert weights["weight_decay"] == pytest.approx(1e-3 * 256)  # per example × batch
    assert biases["weight_decay"] == pytest.approx(1e-3 * 256 / 8)
    set_learning_rate(optimizer, 0.01)
    assert weights["lr"] == pytest.approx(0.01)
    assert biases["lr"] == pytest.approx(0.16)
    assert (weights["momentum"], weights["nesterov"]) == (0.8, False)
    assert (biases["momentum"], biases["nesterov"]) == (0.8, False)


@pytest.mark.parametrize("nesterov", [True, False])
def test_fused_sgd_with_tensor_rates_takes_the_foreach_steps(nesterov):
    """The GPU's optimiser (one fused kernel, learning rates as device tensors set in place)
    against the CPU's (foreach, float rates): the same weights over steps whose rate
    changes, with both groups' multipliers and weight decays, within fp32 rounding."""
    config = TrainConfig(bias_lr_mult=64.0, bias_wd_div=64.0, nesterov=nesterov)
    models = [_TinyModel(), _TinyModel()]
    models[1].load_state_dict(models[0].state_dict())
    foreach = make_optimizer(models[0], config)
    fused = make_optimizer(models[1], config, fused=True)
    assert fused.defaults["fused"] and all(
        isinstance(g["lr"], torch.Tensor) for g in fused.param_groups
    )
    x = torch.randn(16, 3)
    for step, lr in enumerate([0.0, 1e-3, 4e-3, 2e-3]):
        for model, optimizer in zip(models, (foreach, fused)):
            set_learning_rate(optimizer, lr)
            optimizer.zero_grad(set_to_none=True)
            (model.conv(x).square().sum() + model.bn_bias.sin().sum() * step).backward()
            optimizer.step()
        for a, b in zip(models[0].parameters(), models[1].parameters()):
            torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert fused.param_groups[1]["lr"].item() == pytest.approx(2e-3 * 64)


# --------------------------------------------------------------------------- config / CLI
@pytest.mark.parametrize(
    "changes, message",
    [
        ({"epochs": -1}, r"--epochs must be a finite number in \[1, .*got -1"),
        ({"batch_size": 100}, "not divisible by the ghost-BN split of 32"),
        ({"backend": "cuda-magic"}, "unknown backend"),
        ({"width": 0}, r"--width must be a finite number in \(0, .*got 0"),
        ({"cutout": 40}, r"--cutout must be an integer in \[0, 32\]; got 40"),
        ({"train_subset": 100, "batch_size": 128}, "smaller than one batch"),
    ],
)
def test_config_rejects_bad_values(changes, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig().replace(**changes)


def test_config_rejects_unknown_field():
    with pytest.raises(ConfigError, match="unknown configuration field"):
        TrainConfig().replace(colour="red")


def test_ghost_splits_follow_batch_size():
    assert TrainConfig(batch_size=512, ghost_batch=32).ghost_splits == 16
    assert TrainConfig(batch_size=128, ghost_batch=32).ghost_splits == 4
    assert TrainConfig(batch_size=96, ghost_batch=48).ghost_splits == 2
    assert TrainConfig(batch_size=512, ghost_batch=0).ghost_splits == 1  # plain BN


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--epochs", "-3"], "argument --epochs: must be a finite number in [1, "),
        (["--batch-size", "100", "--device", "cpu"], "not divisible by the ghost-BN split"),
        (["--backend", "magic"], "invalid choice"),
        (["--epochs", "ten"], "argument --epochs: must be a finite number in [1, "),
        (["--train-subset", "0"], "argument --train-subset: must be an integer in [1, "),
    ],
)
def test_cli_bad_flags_give_one_line_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        code = main(argv)
        raise SystemExit(code)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err


def test_cli_cpu_configuration_fills_only_unset_flags():
    assert CPU_QUICK_OVERRIDES["epochs"] != 3  # else the given 3 would prove nothing
    args = build_parser().parse_args(["--epochs", "3"])
    config, note = config_from_args(args, has_gpu=False)
    expected = {**CPU_QUICK_OVERRIDES, "epochs": 3}  # every CPU setting but the given one
    assert {name: getattr(config, name) for name in expected} == expected
    assert "CPU-sized configuration" in note and "--full" in note
    full, note = config_from_args(build_parser().parse_args(["--full"]), has_gpu=False)
    assert note is None and full == TrainConfig()
    gpu, note = config_from_args(build_parser().parse_args([]), has_gpu=True)
    assert note is None and gpu == TrainConfig()


# --------------------------------------------------------------------------- runtime: auto
def test_cpu_flags_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(
        "processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse avx2 amx_bf16 amx_tile\n"
        "processor\t: 1\nflags\t\t: fpu\n"
    )
    assert cpu_flags(str(cpuinfo)) == {"fpu", "sse", "avx2", "amx_bf16", "amx_tile"}
    assert cpu_flags(str(tmp_path / "missing")) == frozenset()


@pytest.mark.parametrize(
    "flags,native",
    [
        ({"avx2", "fma"}, False),
        ({"avx512f", "avx512bw"}, False),  # AVX-512 alone: oneDNN emulates bf16
        ({"avx512f", "avx512_bf16"}, True),
        ({"amx_tile", "amx_bf16"}, True),
    ],
)
def test_auto_precision_picks_bf16_only_where_it_is_native(flags, native):
    assert cpu_has_native_bf16(frozenset(flags)) is native
    assert auto_precision(torch.device("cpu"), frozenset(flags)) == ("bf16" if native else "fp32")
    assert auto_precision(torch.device("cuda"), frozenset(flags)) == "fp16"


def test_the_cpu_runtime_is_channels_last():
    runtime = resolve_runtime(TrainConfig(device="cpu"))
    assert runtime.channels_last and runtime.device == torch.device("cpu")
    assert runtime.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
