"""The airbench recipes wired into the trainer, end to end on the CPU at a tiny size.

``airbench94`` at 1/16 width (blocks 4/16/16) on 128 tiny images, batch 32 (4 steps per
epoch), 1.5 epochs (6 steps: 4, then 2), the whitening bias trained for 1 epoch, lookahead
every 2 steps, checked against what the recipe says step by step — each check written
independently of the trainer's code: the table and the fractional epoch's step counts, the
triangle schedule's rates, the bias frozen from step 5 on, every image flipped the other way
in epoch 2, the lookahead's decays ``0.95⁵·(t/T)³``, and the six-view TTA's accuracy
recomputed by hand. Then a resume across the partial epoch, the Muon + jitter + selective-TTA
speedrun preset, the optimiser's per-group rates, and the schedules and step counts as
formulas.
"""

from __future__ import annotations

import math
import os
import signal

import pytest
import torch
import torch.nn.functional as F
from tiny_training import tiny_data

import kernels
import train.evaluate as evaluate_module
import train.trainer as trainer_module
from train.build import StepRates, build_network, build_optimizer
from train.config import CIFAR10_MEAN, CIFAR10_STD, ConfigError, TrainConfig
from train.lookahead import Lookahead
from train.presets import preset_config
from train.runtime import Runtime
from train.schedule import steps_in_epoch, total_steps
from train.step import TrainStep
from train.trainer import Trainer, TrainingInterrupted

RUNTIME = Runtime(torch.device("cpu"), "eager", torch.float32, channels_last=False)
BATCH, STEPS_PER_EPOCH, TEST = 32, 4, 64
DATA = tiny_data(BATCH * STEPS_PER_EPOCH, TEST, seed=3)
TINY = dict(
    width=0.0625,
    batch_size=BATCH,
    epochs=1.5,
    whitening_images=64,
    whitening_bias_epochs=1.0,
    lookahead_every=2,
    eval_every=1,
    eval_batch_size=TEST,
    warmup_steps=0,
    device="cpu",
)
CONFIG = preset_config("airbench94", **TINY)
TOTAL = 6  # ceil(1.5 · 4)


pytestmark = pytest.mark.usefixtures("one_thread")


class Recorded:
    """What the spies saw during one run."""

    def __init__(self) -> None:
        self.frozen_before: list[bool] = []  # the bias's state as each step starts
        self.bias_after: list[torch.Tensor] = []
        self.flips: list[tuple[torch.Tensor, torch.Tensor]] = []  # (image indices, flags)
        self.decays: list[float] = []
        self.multiview_calls = 0
        self.selective_calls = 0


@pytest.fixture(scope="module")
def run():
    """One tiny airbench94 run with spies on the step, the augmentation, the lookahead and
    the evaluation's TTA."""
    seen = Recorded()
    patch = pytest.MonkeyPatch()

    class SpyStep(TrainStep):
        def __call__(self, inputs, labels):
            seen.frozen_before.append(self.whitening_bias_frozen)
            out = super().__call__(inputs, labels)
            seen.bias_after.append(self.model.whitening_bias.detach().clone())
            return out

    augment = kernels.augment

    def spy_augment(images, indices, crop, flip, cutout, **kwargs):
        if kwargs["pad"] == CONFIG.pad:  # training batches (evaluation uses pad 0)
            seen.flips.append((indices.clone(), flip.clone()))
        return augment(images, indices, crop, flip, cutout, **kwargs)

    update = Lookahead.update

    def spy_update(self, decay):
        seen.decays.append(decay)
        return update(self, decay)

    multiview = evaluate_module.multiview_logits

    def spy_multiview(*args, **kwargs):
        seen.multiview_calls += 1
        return multiview(*args, **kwargs)

    patch.setattr(trainer_module, "TrainStep", SpyStep)
    patch.setattr(kernels, "augment", spy_augment)
    patch.setattr(Lookahead, "update", spy_update)
    patch.setattr(evaluate_module, "multiview_logits", spy_multiview)
    try:
        trainer = Trainer(CONFIG, RUNTIME, DATA, log=lambda line: None)
        result = trainer.run(0)
    finally:
        patch.undo()
    return trainer, result, seen


def test_the_table_has_a_partial_last_epoch(run):
    _, result, seen = run
    assert [row.epoch for row in result.rows] == [1, 2]
    assert len(seen.frozen_before) == TOTAL  # 4 steps, then 2
    assert all(row.test_acc is not None for row in result.rows)
    assert result.rows[1].total_time >= result.rows[0].total_time + result.rows[1].epoch_time
    assert result.train_time == pytest.approx(result.rows[-1].total_time)


def test_rows_show_the_triangle_schedule(run):
    _, result, _ = run

    # airbench94's triangle over T = 6 steps: 0.2 at step 0, 1 at int(0.23·6) = 1, 0.07 at
    # step 6, linear between; each row shows the rate of its last step (steps 3 and 5).
    def factor(t: int) -> float:
        return 0.2 + 0.8 * t if t <= 1 else 1 + (0.07 - 1) * (t - 1) / 5

    assert result.rows[0].lr == pytest.approx(11.5 * factor(3))
    assert result.rows[1].lr == pytest.approx(11.5 * factor(5))


def test_the_whitening_bias_trains_for_its_epoch_then_is_frozen(run):
    _, _, seen = run
    assert seen.frozen_before == [False] * 4 + [True] * 2
    biases = seen.bias_after
    assert not torch.equal(biases[0], biases[3])  # trained in epoch 1
    # after step 4 (its last, and the lookahead's reset) the bias never moves again
    assert torch.equal(biases[3], biases[4]) and torch.equal(biases[4], biases[5])


def test_every_image_is_flipped_the_other_way_in_the_next_epoch(run):
    _, _, seen = run
    assert len(seen.flips) == TOTAL
    first = {}
    for indices, flags in seen.flips[:4]:
        first.update(zip(indices.tolist(), flags.tolist()))
    assert sorted(first) == list(range(BATCH * STEPS_PER_EPOCH))  # every image once
    assert 0 < sum(first.values()) < len(first)  # a random start, not all one way
    for indices, flags in seen.flips[4:]:
        for image, flag in zip(indices.tolist(), flags.tolist()):
            assert flag == (not first[image])


def test_lookahead_every_two_steps_with_airbench_decays(run):
    trainer, _, seen = run
    expected = [0.95**5 * (t / TOTAL) ** 3 for t in (2, 4, 6)] + [1.0]  # + the final reset
    assert seen.decays == pytest.approx(expected)
    assert trainer.config.lookahead and not trainer.config.ema


def test_evaluation_uses_the_six_views(run):
    trainer, result, seen = run
    assert seen.multiview_calls == 2  # one test batch, two evaluations
    # The six views by hand: reflect-pad 1 and crop at 0 or 2 (shift ∓1), mirrored or not,
    # weights 1/4 for the unshifted pair and 1/8 for the others.
    model = trainer.eval_model  # holds the final weights (no EMA)
    mean = torch.tensor(CIFAR10_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(CIFAR10_STD).view(1, 3, 1, 1)
    x = (DATA.test_images.float() - mean) / std
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    views = [(x, 0.25), (padded[..., :32, :32], 0.125), (padded[..., 2:, 2:], 0.125)]
    with torch.no_grad():
        logits = sum(w * (model(v).float() + model(v.flip(-1)).float()) for v, w in views)
    accuracy = (logits.argmax(1) == DATA.test_labels).float().mean().item()
    assert result.rows[-1].test_acc == pytest.approx(accuracy)


# --------------------------------------------------------------------------- resume
def test_resume_across_the_partial_epoch_is_bit_identical(run, tmp_path, monkeypatch):
    reference, reference_result, _ = run
    stop_after = 5  # in the partial epoch 2, after the bias froze and a lookahead update

    class HookedStep(TrainStep):
        def __call__(self, inputs, labels):
            out = super().__call__(inputs, labels)
            if self.steps == stop_after:
                os.kill(os.getpid(), signal.SIGINT)
            return out

    path = tmp_path / "run.pt"
    monkeypatch.setattr(trainer_module, "TrainStep", HookedStep)
    with pytest.raises(TrainingInterrupted):
        Trainer(CONFIG, RUNTIME, DATA, log=lambda line: None).run(0, checkpoint=path)
    monkeypatch.setattr(trainer_module, "TrainStep", TrainStep)
    trainer = Trainer(CONFIG, RUNTIME, DATA, log=lambda line: None)
    result = trainer.run(0, checkpoint=path, resume=path)
    for name, tensor in reference.model.state_dict().items():
        assert torch.equal(tensor, trainer.model.state_dict()[name]), name
    assert trainer.model.whitening_bias_frozen
    rows = [(r.epoch, r.lr, r.train_loss, r.train_acc, r.test_acc) for r in result.rows]
    same = [(r.epoch, r.lr, r.train_loss, r.train_acc, r.test_acc) for r in reference_result.rows]
    assert rows == same
    # finished: read back, nothing retrained
    again = Trainer(CONFIG, RUNTIME, DATA, log=lambda line: None).run(0, resume=path)
    assert [r.epoch for r in again.rows] == [1, 2]


# --------------------------------------------------------------------------- muon
def test_speedrun_preset_trains_with_muon_jitter_and_selective_tta(monkeypatch):
    config = preset_config("speedrun-2025", **TINY)
    calls = []
    selective = evaluate_module.selective_logits
    monkeypatch.setattr(
        evaluate_module,
        "selective_logits",
        lambda *a, **k: calls.append(k) or selective(*a, **k),
    )
    trainer = Trainer(config, RUNTIME, DATA, log=lambda line: None)
    result = trainer.run(0)
    assert [row.epoch for row in result.rows] == [1, 2]
    assert all(math.isfinite(row.train_loss) for row in result.rows)
    assert len(calls) == 2 and all(call.get("base") is not None for call in calls)
    assert trainer.model.config.activation == "silu"


def test_muon_turns_graphs_off_with_one_line_under_auto(monkeypatch):
    config = preset_config("airbench94-muon", **{**TINY, "warmup_steps": 1})
    with pytest.raises(ConfigError, match="cannot capture Muon"):
        config.replace(cuda_graphs="on")
    # As on a GPU, where "auto" resolves to "auto": Muon's host-float rate turns it off.
    monkeypatch.setattr(trainer_module, "resolve_graph_mode", lambda *args: "auto")
    lines: list[str] = []
    trainer = Trainer(config, RUNTIME, DATA, log=lines.append)
    assert trainer.graph_mode == "off"
    assert lines == ["CUDA graphs off: --optimizer muon keeps its learning rate on the host"]


# --------------------------------------------------------------------------- units
def test_fractional_epochs_count_their_steps():
    # airbench94's counting: T = ceil(epochs · S), the last epoch the remainder
    assert total_steps(9.9, 48) == math.ceil(9.9 * 48) == 476
    assert [steps_in_epoch(e, 9.9, 48) for e in range(9, 12)] == [48, 476 - 9 * 48, 0]
    assert total_steps(7.6, 5) == 38 and steps_in_epoch(8, 7.6, 5) == 3  # 7.6·5 = 37.999…
    assert total_steps(10, 97) == 970 and steps_in_epoch(10, 10, 97) == 97


def test_airbench_sgd_groups_have_the_recipe_rates():
    config = preset_config("airbench94", width=0.0625, device="cpu")
    model = build_network(config, "eager")
    optimizer = build_optimizer(model, config)
    base = 11.5 / (1024 * (1 + 1 / (1 - 0.85)))  # per example, airbench94's scaling
    decay = 0.0153 * 1024 / (1024 * (1 + 1 / (1 - 0.85)))  # per step at batch 1024
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert set(groups) == {"filters", "head", "bn_biases", "whiten_bias"}
    for name, mult in (("filters", 1), ("head", 1), ("bn_biases", 64), ("whiten_bias", 1)):
        assert groups[name]["initial_lr"] == pytest.approx(base * mult)
        # decoupled: lr × weight_decay is the same decay per step for every group
        assert groups[name]["initial_lr"] * groups[name]["weight_decay"] == pytest.approx(decay)
        assert optimizer.defaults["momentum"] == 0.85 and optimizer.defaults["nesterov"]
    rates = StepRates(config, steps_per_epoch=48)
    rates.apply(optimizer, 0)  # 0.2 of the peak at step 0
    assert groups["bn_biases"]["lr"] == pytest.approx(0.2 * 64 * base)


def test_muon_linear_decay_and_the_whitening_bias_own_decay():
    config = preset_config("airbench94-muon", width=0.0625, device="cpu")
    model = build_network(config, "eager")
    optimizer = build_optimizer(model, config)
    rates = StepRates(config, steps_per_epoch=25)  # T = 200, bias for 75 steps
    shown = rates.apply(optimizer, 50) * config.batch_size
    groups = {g["name"]: g for g in optimizer.param_groups}
    assert shown == pytest.approx(0.24 * (1 - 50 / 200))
    assert groups["filters"]["lr"] == pytest.approx(0.24 * 0.75)
    assert groups["head"]["lr"] == pytest.approx(0.67 * 0.75)
    assert groups["whiten_bias"]["lr"] == pytest.approx(0.053 * (1 - 50 / 75))
    rates.apply(optimizer, 100)
    assert groups["whiten_bias"]["lr"] == 0.0


def test_seed_defaults_keep_the_seed_optimizer():
    config = TrainConfig(width=0.0625)
    model = build_network(config, "eager")
    optimizer = build_optimizer(model, config)
    assert [g["lr_mult"] for g in optimizer.param_groups] == [1.0, 64.0]
    assert optimizer.defaults["momentum"] == 0.9


def test_checkpoints_from_before_the_airbench_fields_still_resume():
    from train.checkpoint import CheckpointMismatch, runtime_record
    from train.resume import check_compatible

    new_fields = {"network", "optimizer", "lookahead", "tta_fraction", "jitter", "bn_eps"}
    old = {k: v for k, v in TrainConfig().to_dict().items() if k not in new_fields}
    data = {"train_images": 1, "test_images": 1, "crc32": 0}
    saved = {"config": old, "runtime": runtime_record(RUNTIME), "data": data, "seed": 0}
    check_compatible(saved, config=TrainConfig(), runtime=RUNTIME, data=data, seed=0)
    # ... but a new field that changes the trajectory must match
    with pytest.raises(CheckpointMismatch, match="lookahead False in the checkpoint vs True"):
        check_compatible(
            saved, config=TrainConfig(lookahead=True), runtime=RUNTIME, data=data, seed=0
        )
