"""The seed's ladder of steps as named presets, from its 24-epoch baseline to the final recipe.

Myrtle's "How to train your ResNet 8: bag of tricks" reaches 94% on CIFAR-10 by stacking
small improvements and trading each one for fewer epochs. Every row of that table
(``shared/docs/RECIPE.md``, "The seed's ladder of steps") is a preset here: the previous
preset plus the change of that step, with the epochs, learning rates and cutout sizes the seed
used at that step. The last preset, ``tta``, is exactly :class:`TrainConfig`'s defaults.

A preset stores two dictionaries of :class:`TrainConfig` fields:

* ``changes`` — what this step changes relative to the previous preset (the seed's row);
* ``overrides`` — the cumulative overrides relative to ``TrainConfig()``, with every entry
  that equals the default left out (so ``PRESETS["tta"].overrides == {}``).

Numbers that the shared docs do not spell out, and how they were settled:

* **Baseline schedule.** The earlier DAWNBench entry (cifar10-fast ``dawn.py``) used
  piecewise-linear knots (0, 0), (5, 0.4), (24, 0) divided by the batch size: ``lr=0.4``,
  ``warmup_epochs=5`` (not 24/5 = 4.8), decay to 0 at the end (``lr_floor=0``,
  ``floor_epochs=0``). The seed's own log of that run shows lr 0.08 after epoch 1, i.e.
  0 → 0.4 over 5 epochs.
* **Warm-up from label smoothing on.** The text: "we reduce the warmup period in proportion
  to the overall number of epochs", and the final code uses ``epochs/5``; so from
  ``label-smoothing`` on the warm-up is the config's default ``epochs/5`` (``warmup_epochs``
  back to ``None``). Assumption: 23/5 = 4.6 epochs rather than 5·23/24 ≈ 4.8.
* **Peak learning rate.** 0.4 (baseline) → ×1.5 = 0.6 (``ghost-bn``) → 1.0 (``whitening``).
  The text calls the last increase "a further ~50%"; 0.6 × 1.5 would be 0.9, but no later
  step touches the peak and the final recipe's peak is 1.0, so the whitening step's "~50%"
  is taken as 0.6 → 1.0 (×1.67).
* **Output scale.** 1/8 in the baseline network; 1/16 in the final one. It changes at the
  ``frozen-scales`` step, where the text says "the learnable scale for the final layer is
  somewhat larger but we can adjust the scaling of the network output to compensate".
* **CELU alpha.** 0.075 at the ``celu`` step (learnable BN scales, which sit near 1/4), then
  0.3 = 0.075 × 4 at ``frozen-scales`` where the scales are frozen at 1 instead of 1/4; bias
  learning rate ×16 (= 4²) and then another ×4: ``bias_lr_mult=64``, ``bias_wd_div=64``.
* **EMA floor.** The EMA step floors the schedule at 0.1 of the peak for the last 2 epochs
  of 13: ``floor_epochs=2`` is set explicitly (13/5 = 2.6 would differ). At the ``tta``
  step (10 epochs) the config default ``epochs/5`` gives the same 2 epochs, so that step
  sets ``floor_epochs`` back to ``None`` — a change of the field, not of the schedule.
* **GPU data.** The baseline sets ``gpu_data=False``: the seed's CPU data path, where the
  training set stays on the host, is augmented there and each batch is moved to the device.
  The ``gpu-data`` step turns it back on (the default).
* EMA's ``ema_every=5`` and ``ema_momentum=0.99`` are the config's defaults at every step
  (they only act once ``ema`` is on), so the EMA step changes ``ema`` itself.
"""

from __future__ import annotations

import copy
import dataclasses
import types
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from train.config import ConfigError, TrainConfig

__all__ = [
    "BASELINE_CHANGES",
    "PRESETS",
    "Preset",
    "describe_presets",
    "diff_configs",
    "preset_config",
]


@dataclass(frozen=True)
class Preset:
    """One step of the seed's ladder.

    Attributes:
        name: the preset's name (``--preset NAME``).
        description: one line: what this step changes relative to the previous one.
        seed_epochs: epochs the seed trained at this step.
        seed_acc: the seed's reported mean test accuracy, in percent.
        seed_time_s: the seed's reported training time on a V100, in seconds.
        changes: the TrainConfig fields this step changes, with their new values.
        overrides: cumulative TrainConfig overrides (entries equal to the default omitted).
        note: anything about the seed's numbers worth knowing at this step.
    """

    name: str
    description: str
    seed_epochs: int
    seed_acc: float
    seed_time_s: float
    changes: Mapping[str, Any]
    overrides: Mapping[str, Any]
    note: str = ""

    def config(self, **overrides: Any) -> TrainConfig:
        """This preset's configuration, with ``overrides`` on top (see :func:`preset_config`)."""
        return preset_config(self.name, **overrides)


#: The seed's baseline (its earlier DAWNBench entry), as overrides of the final recipe.
BASELINE_CHANGES: dict[str, Any] = {
    "epochs": 24,
    "lr": 0.4,
    "warmup_epochs": 5.0,  # knots (0, 0), (5, 0.4), (24, 0): 5 epochs, not 24/5
    "lr_floor": 0.0,  # linear decay to zero at the end ...
    "floor_epochs": 0.0,  # ... with no flat tail
    "bias_lr_mult": 1.0,
    "bias_wd_div": 1.0,
    "label_smoothing": 0.0,
    "activation": "relu",
    "ghost_batch": 0,  # plain batch norm over the whole batch of 512
    "frozen_bn_scale": False,
    "pool_before_bn": False,
    "whitening": False,  # a learnable 3×3 conv 3→64 as the prep layer
    "output_scale": 0.125,
    "cutout": 8,
    "ema": False,
    "tta": False,
    "gpu_data": False,
}

# (name, seed epochs, seed acc %, seed V100 s, description, changes, note), in ladder order.
_STEPS: tuple[tuple[str, int, float, float, str, dict[str, Any], str], ...] = (
    (
        "baseline",
        24,
        94.1,
        75.0,
        "earlier DAWNBench entry: ReLU, plain BN, pool after BN, cutout 8, lr 0.4",
        BASELINE_CHANGES,
        "schedule (0,0),(5,0.4),(24,0) per example (÷ batch size); time 'about 75 s'",
    ),
    (
        "gpu-data",
        24,
        94.1,
        70.0,
        "preprocessing and augmentation on the device",
        {"gpu_data": True},
        "no network change; this trainer always keeps the data on the device",
    ),
    (
        "pool-before-bn",
        25,
        94.1,
        64.0,
        "max-pool before batch norm, +1 epoch",
        {"pool_before_bn": True, "epochs": 25},
        "alone it costs 0.1% (94.0% at 24 epochs); the extra epoch buys it back",
    ),
    (
        "label-smoothing",
        23,
        94.1,
        59.0,
        "label smoothing 0.2; warm-up scaled with epochs (epochs/5)",
        {"label_smoothing": 0.2, "epochs": 23, "warmup_epochs": None},
        "94.2% at 25 epochs; assumption: warm-up 23/5 = 4.6 epochs",
    ),
    (
        "celu",
        20,
        94.1,
        52.0,
        "CELU activation, alpha 0.075",
        {"activation": "celu", "celu_alpha": 0.075, "epochs": 20},
        "94.3% at 23 epochs",
    ),
    (
        "ghost-bn",
        18,
        94.1,
        46.0,
        "ghost batch norm, 32 images per split; peak lr x1.5",
        {"ghost_batch": 32, "lr": 0.6, "epochs": 18},
        "94.2% at 20 epochs before the lr increase",
    ),
    (
        "frozen-scales",
        17,
        94.1,
        43.0,
        "BN scales frozen at 1: CELU alpha x4, bias lr x64 and wd /64, output x1/16",
        {
            "frozen_bn_scale": True,
            "celu_alpha": 0.3,
            "bias_lr_mult": 64.0,
            "bias_wd_div": 64.0,
            "output_scale": 1 / 16,
            "epochs": 17,
        },
        "bias lr x16 (= 4^2) gives 94.2% at 18 epochs, another x4 helps a little more",
    ),
    (
        "whitening",
        15,
        94.1,
        36.0,
        "fixed 3x3 patch-whitening conv; peak lr ~x1.5 (0.6 -> 1.0); cutout 5x5",
        {"whitening": True, "lr": 1.0, "cutout": 5, "epochs": 15},
        "94.4% at 17 epochs, 94.1% at 15 (39 s) before the lr and cutout change; "
        "assumption: '~50%' = 0.6 -> 1.0, the final recipe's peak",
    ),
    (
        "ema",
        13,
        94.1,
        34.0,
        "EMA of the weights every 5 steps (0.99); lr floored at 0.1 for the last 2 epochs",
        {"ema": True, "lr_floor": 0.1, "floor_epochs": 2.0, "epochs": 13},
        "94.3% at 15 epochs",
    ),
    (
        "tta",
        10,
        94.1,
        26.0,
        "flip test-time augmentation; no cutout (the final recipe)",
        {"tta": True, "cutout": 0, "epochs": 10, "floor_epochs": None},
        "94.6% at 13 epochs with TTA; floor_epochs back to the default epochs/5 = 2",
    ),
)


def _defaults() -> dict[str, Any]:
    return TrainConfig().to_dict()


def _build_presets() -> dict[str, Preset]:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    defaults = _defaults()
    presets: dict[str, Preset] = {}
    cumulative: dict[str, Any] = {}
    for name, epochs, acc, seconds, description, changes, note in _STEPS:
        unknown = set(changes) - fields
        if unknown:  # a typo here would silently do nothing: fail at import instead
            raise ConfigError(f"preset {name!r} names unknown field(s) {sorted(unknown)}")
        if changes.get("epochs", cumulative.get("epochs", defaults["epochs"])) != epochs:
            raise ConfigError(f"preset {name!r}: epochs disagree with the seed's {epochs}")
        cumulative.update(copy.deepcopy(changes))
        # Keep only what differs from the defaults, so the final recipe has no overrides.
        minimal = {k: v for k, v in cumulative.items() if v != defaults[k]}
        # Read-only views: a caller editing a preset must not change later configs.
        presets[name] = Preset(
            name,
            description,
            epochs,
            acc,
            seconds,
            types.MappingProxyType(copy.deepcopy(changes)),
            types.MappingProxyType(copy.deepcopy(minimal)),
            note,
        )
    return presets


#: Every step of the seed's ladder, in order; the last one is the final recipe.
PRESETS: dict[str, Preset] = _build_presets()


def preset_config(name: str, /, **overrides: Any) -> TrainConfig:
    """The validated :class:`TrainConfig` of preset ``name`` with ``overrides`` on top.

    When ``epochs`` is overridden but ``warmup_epochs`` / ``floor_epochs`` are not, a preset's
    explicit warm-up or floor (the baseline's 5 of 24 epochs, the EMA step's 2 of 13) is
    scaled in proportion to the new number of epochs — the seed's own rule when it changed
    the length of training — so that e.g. a 5-epoch CPU run of ``baseline`` still validates.

    Raises:
        ConfigError: unknown preset name (the message lists the names), unknown field, or a
            value that does not validate.
    """
    try:
        preset = PRESETS[name]
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}: choose one of {', '.join(PRESETS)}") from None
    values = copy.deepcopy(dict(preset.overrides))
    if "epochs" in overrides:
        seed_epochs = values.get("epochs", TrainConfig.epochs)
        for key in ("warmup_epochs", "floor_epochs"):
            if key not in overrides and values.get(key) is not None:
                values[key] = values[key] * overrides["epochs"] / seed_epochs
    values.update(overrides)
    return TrainConfig().replace(**values)


def diff_configs(a: TrainConfig, b: TrainConfig) -> dict[str, tuple[Any, Any]]:
    """Fields whose stored values differ between ``a`` and ``b``: ``{field: (a's, b's)}``.

    Compares the fields as stored, in declaration order: ``warmup_epochs=None`` and an
    explicit value equal to ``epochs/5`` count as different.
    """
    out: dict[str, tuple[Any, Any]] = {}
    for f in dataclasses.fields(TrainConfig):
        old, new = getattr(a, f.name), getattr(b, f.name)
        if old != new:
            out[f.name] = (old, new)
    return out


def describe_presets() -> str:
    """A plain-text table of the presets (``python -m train --list-presets``)."""
    rows = [("preset", "epochs", "seed acc", "V100", "change vs previous preset")]
    for p in PRESETS.values():
        rows.append(
            (
                p.name,
                str(p.seed_epochs),
                f"{p.seed_acc:.1f}%",
                f"{p.seed_time_s:.0f} s",
                p.description,
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(4)]
    lines = []
    for i, r in enumerate(rows):
        lines.append(
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  "
            f"{r[3]:>{widths[3]}}  {r[4]}"
        )
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * len(r[4]))
    final = next(reversed(PRESETS))
    lines.append("")
    lines.append(
        f"Each preset is the previous one plus its change; '{final}' is the final "
        "recipe (the defaults)."
    )
    lines.append("Seed's accuracies are means over runs, times on a V100 (DAWNBench timing).")
    return "\n".join(lines)
