"""Two ladders of named presets: the seed's, from its 24-epoch baseline to its final recipe,
and a second one from that final recipe through airbench94 and airbench94_muon to the 2025
speedrun, the fastest recipe this project knows.

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

The second ladder
-----------------
From ``tta`` (the seed's final recipe) one change per preset to airbench94, then its Muon
variant, then the 2025 speedrun's changes one by one (``shared/docs/RECIPE.md``). Only three
rows have a published figure, the sources' own (not measured here): ``airbench94`` (94.01%
in 3.29 s on an A100, 9.9 epochs), ``airbench94-muon`` (94.01% in 2.59 s on an A100, 8
epochs, batch 2000) and ``speedrun-2025`` (94.00% in 2.015 s on an A100 with locked clocks,
7.6 epochs, batch 1536); the rows between them are this project's decomposition, at the
previous published row's epochs, with no figure. Assumptions, and how they were settled:

* **Order.** The network first (``ab-net``), then the optimiser's form, the schedule's shape,
  the batch, the data (translate, flip), the weight averaging, the TTA, and last the epochs
  each source trained for: so every intermediate row is "the previous recipe plus one trick",
  and the row with the source's epochs is the source's whole recipe.
* **ab-net** is airbench94's network as a whole (2×2 whitening with negations from 5,000
  images, eps 5e-4, its bias trained for the first 3 epochs — ``whitening_bias_epochs``'s
  default —, GELU, widths 64/256/256, plain BN with eps 1e-12 and PyTorch momentum 0.4 =
  airbench's 0.6, logits × 1/9). It keeps the seed's optimiser, schedule, batch, data and
  EMA; whether the seed's lr 1.0 suits that net is not known (no source trained it so).
* **ab-sgd**: airbench94's numbers per 1024 examples (lr 11.5, weight decay 0.0153, Nesterov
  0.85), decoupled decay; BN biases × 64 (``bias_lr_mult``, already the seed's 64), head and
  whitening bias × 1 (airbench94 puts both with the filters). ``bias_wd_div`` has no role in
  this form (the decay is the same for every group at the peak).
* **ab-schedule**: airbench94's triangle, 0.2 of the peak at step 0, the peak at
  ``int(0.23·T)``, 0.07 at the last step (the 0.2 start is airbench94's ``triangle(start=
  0.2)``; RECIPE.md gives the 23% and the 0.07).
* **ab-lookahead** replaces the seed's EMA by airbench94's lookahead (airbench94 has no EMA).
* **ab-muon** is airbench94_muon's optimiser as one change: Muon (lr 0.24, momentum 0.6, 3
  Newton–Schulz steps, filters renormalised every step) on the filters, Nesterov SGD 0.85 on
  the rest at its per-step rates (BN and whitening biases 0.053, head 0.67) with decay 2e-6
  per example (``weight_decay`` 0.002048 per 1024), its linear decay to 0 (the whitening
  bias's rate decays over its own 3 epochs), and no lookahead (airbench94_muon has none).
  ``lr`` goes back to 1.0: Muon's SGD side does not read it (the config refuses another).
  It takes airbench94_muon's head with it: the head weight rescaled to std 1, logits ÷256
  (÷ the last width, where airbench94 has ×1/9; :func:`preset_config` keeps it ÷ the last
  width at any ``width``) and PyTorch's default init of the whitening bias. The head's rate
  (0.67 per step) is set for that head: with airbench94's ×1/9 logits it moves them 28× as
  far, and the recipe diverges (measured on the CPU, 2026-12-02: on the whole training set
  the loss was 27 and the accuracy 10% after the first epoch; at width 0.5 on 20,000 images,
  3 epochs, 10.0% against 69.0% with this head).
* **sr-net**: the speedrun's network changes: SiLU in the blocks (GELU still after the
  whitening), BN momentum 0.5566 in its convention (PyTorch 0.4434), whitening from 960
  images ("a few hundred" in RECIPE.md; 960 from :meth:`model.airbench.AirbenchConfig.
  speedrun2025`). Its head (unit std, logits ÷ 256) and default whitening bias init are
  airbench94_muon's, already on since ``ab-muon``. Its fp16 BN is not taken (BN stays in
  float32 here).
* **sr-muon**: Muon lr 0.205, momentum 0.655, renormalised every 8 steps; SGD momentum 0.825.
  The speedrun's own SGD rates and Newton–Schulz steps are not in RECIPE.md: airbench94_
  muon's are kept. Its schedule is kept too (linear decay).
* **sr-whiten-bias**: the whitening bias trains for 0.19 of an epoch's steps
  (``whitening_bias_epochs=0.19``), as :mod:`model.airbench` reads the speedrun. RECIPE.md
  says "the first 19% of steps", which would be about 1.44 epochs at 7.6: doubtful, so
  recorded here.
* **sr-jitter**: brightness and contrast ±0.1 (``jitter=0.1``); **sr-tta**: six views on
  the 25% least-confident test images (``tta_fraction`` 0.25, the default).
* The speedrun's compile mode, fp16 BN and fused SGD are how it runs, not what it computes:
  no preset field.
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
    "LADDERS",
    "PRESETS",
    "Preset",
    "describe_presets",
    "diff_configs",
    "preset_config",
]


@dataclass(frozen=True)
class Preset:
    """One step of a ladder.

    Attributes:
        name: the preset's name (``--preset NAME``).
        description: one line: what this step changes relative to the previous one.
        seed_epochs: epochs the source trained at this step (fractional for airbench94's
            9.9); for a second-ladder row without a source, the previous source's.
        seed_acc: the source's published mean test accuracy, in percent (None: no source).
        seed_time_s: the source's published training time on ``source_device``, in seconds
            (None: no source).
        changes: the TrainConfig fields this step changes, with their new values.
        overrides: cumulative TrainConfig overrides (entries equal to the default omitted).
        note: anything about the source's numbers worth knowing at this step.
        ladder: ``"seed"`` (the first ladder) or ``"airbench"`` (the second).
        source_device: the GPU of ``seed_time_s``.
    """

    name: str
    description: str
    seed_epochs: float
    seed_acc: float | None
    seed_time_s: float | None
    changes: Mapping[str, Any]
    overrides: Mapping[str, Any]
    note: str = ""
    ladder: str = "seed"
    source_device: str = "V100"

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


#: The second ladder, from the seed's final recipe: (name, epochs, source acc % or None,
#: source s or None, description, changes, note). Source figures are the sources' own, on an
#: A100 (RECIPE.md); the rows between them have none.
_AIRBENCH_STEPS: tuple[
    tuple[str, float, float | None, float | None, str, dict[str, Any], str], ...
] = (
    (
        "ab-net",
        10,
        None,
        None,
        "airbench94's network: 2x2 whitening (bias trained 3 epochs), GELU, 64/256/256, "
        "plain BN (eps 1e-12, momentum 0.4), logits x1/9",
        {
            "network": "airbench",
            "activation": "gelu",
            "ghost_batch": 0,
            "bn_eps": 1e-12,
            "bn_momentum": 0.4,
            "whitening_patch_size": 2,
            "whitening_eps": 5e-4,
            "whitening_images": 5_000,
            "output_scale": 1 / 9,
        },
        "the seed's optimiser, schedule, batch, data and EMA on airbench's net",
    ),
    (
        "ab-sgd",
        10,
        None,
        None,
        "airbench94's SGD: lr 11.5 and weight decay 0.0153 per 1024 examples (decoupled), "
        "Nesterov 0.85",
        {"sgd_form": "airbench", "lr": 11.5, "weight_decay": 0.0153, "momentum": 0.85},
        "BN biases x64 as before; head and whitening bias x1",
    ),
    (
        "ab-schedule",
        10,
        None,
        None,
        "airbench94's triangle: 0.2 -> 1 at 23% of the steps -> 0.07",
        {"lr_schedule": "airbench", "lr_floor": 0.07},
        "",
    ),
    ("ab-batch", 10, None, None, "batch 1024", {"batch_size": 1024}, ""),
    (
        "ab-translate",
        10,
        None,
        None,
        "translate +-2 px (reflect padding 2)",
        {"pad": 2},
        "",
    ),
    (
        "ab-flip",
        10,
        None,
        None,
        "alternating flip (each image flipped on alternate epochs)",
        {"flip": "alternating"},
        "",
    ),
    (
        "ab-lookahead",
        10,
        None,
        None,
        "lookahead every 5 steps instead of the EMA",
        {"lookahead": True, "ema": False},
        "",
    ),
    (
        "ab-tta",
        10,
        None,
        None,
        "six-view TTA (flip x shifts of 0 and +-1 px)",
        {"tta": "multiview"},
        "",
    ),
    (
        "airbench94",
        9.9,
        94.01,
        3.29,
        "9.9 epochs (airbench94)",
        {"epochs": 9.9},
        "source: mean of 1000 runs; its time includes the TTA evaluation",
    ),
    (
        "ab-muon",
        9.9,
        None,
        None,
        "Muon on the filters + SGD on the rest with the head their rates are set for "
        "(unit-std, logits / the last width, default whitening bias init) (airbench94_muon's), "
        "linear decay, no lookahead",
        {
            "optimizer": "muon",
            "lr": 1.0,
            "weight_decay": 0.002048,
            "lr_schedule": "linear_decay",
            "lr_floor": 0.0,
            "lookahead": False,
            "head_unit_std": True,
            "output_scale": 1 / 256,
            "whitening_bias_init": "default",
        },
        "lr back to 1.0: Muon's SGD side keeps airbench94_muon's own rates; its head lr 0.67 "
        "diverges with airbench94's x1/9 head",
    ),
    (
        "airbench94-muon",
        8,
        94.01,
        2.59,
        "batch 2000, 8 epochs (airbench94_muon)",
        {"batch_size": 2000, "epochs": 8},
        "source: mean of 200 runs",
    ),
    (
        "sr-net",
        8,
        None,
        None,
        "the 2025 speedrun's net: SiLU blocks, BN momentum 0.4434, whitening from 960 images",
        {
            "activation": "silu",
            "bn_momentum": 1 - 0.5566,
            "whitening_images": 960,
        },
        "",
    ),
    (
        "sr-smoothing",
        8,
        None,
        None,
        "label smoothing 0.09",
        {"label_smoothing": 0.09},
        "",
    ),
    (
        "sr-muon",
        8,
        None,
        None,
        "Muon lr 0.205, momentum 0.655, renormalised every 8 steps; SGD momentum 0.825",
        {
            "muon_lr": 0.205,
            "muon_momentum": 0.655,
            "muon_renormalize_every": 8,
            "momentum": 0.825,
        },
        "assumption: airbench94_muon's SGD rates and 3 Newton-Schulz steps kept",
    ),
    (
        "sr-whiten-bias",
        8,
        None,
        None,
        "whitening bias trained for 0.19 of an epoch",
        {"whitening_bias_epochs": 0.19},
        "doubtful: RECIPE.md says 19% of the steps",
    ),
    (
        "sr-jitter",
        8,
        None,
        None,
        "brightness and contrast jitter +-0.1",
        {"jitter": 0.1},
        "",
    ),
    (
        "sr-tta",
        8,
        None,
        None,
        "six-view TTA on the 25% least-confident test images only",
        {"tta": "selective"},
        "",
    ),
    (
        "speedrun-2025",
        7.6,
        94.00,
        2.015,
        "batch 1536, 7.6 epochs (the 2025 speedrun; fastest known)",
        {"batch_size": 1536, "epochs": 7.6},
        "source: mean of its 10 published logs, A100 with locked clocks",
    ),
)

#: Each ladder's presets, in order (names of :data:`PRESETS`).
LADDERS: dict[str, tuple[str, ...]] = {
    "seed": tuple(step[0] for step in _STEPS),
    "airbench": tuple(step[0] for step in _AIRBENCH_STEPS),
}


def _defaults() -> dict[str, Any]:
    return TrainConfig().to_dict()


def _build_presets() -> dict[str, Preset]:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    defaults = _defaults()
    presets: dict[str, Preset] = {}
    cumulative: dict[str, Any] = {}
    # The second ladder goes on from the first one's final recipe (its cumulative changes).
    steps = [(*step, "seed", "V100") for step in _STEPS]
    steps += [(*step, "airbench", "A100") for step in _AIRBENCH_STEPS]
    for name, epochs, acc, seconds, description, changes, note, ladder, device in steps:
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
            ladder,
            device,
        )
    return presets


#: Every step of both ladders, in order: the seed's (its last, ``tta``, is the final recipe
#: and the defaults), then the second (its last, ``speedrun-2025``, the fastest known).
PRESETS: dict[str, Preset] = _build_presets()


def preset_config(name: str, /, **overrides: Any) -> TrainConfig:
    """The validated :class:`TrainConfig` of preset ``name`` with ``overrides`` on top.

    When ``epochs`` is overridden but ``warmup_epochs`` / ``floor_epochs`` are not, a preset's
    explicit warm-up or floor (the baseline's 5 of 24 epochs, the EMA step's 2 of 13) is
    scaled in proportion to the new number of epochs — the seed's own rule when it changed
    the length of training — so that e.g. a 5-epoch CPU run of ``baseline`` still validates.
    Likewise, a preset with airbench94_muon's head divides its logits by the last block's
    width whatever ``width`` or ``airbench_widths`` make it (1/128 at ``width=0.5``), as that
    source does, unless ``output_scale`` itself is overridden.

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
    config = TrainConfig().replace(**values)
    if (
        "output_scale" not in overrides
        and config.head_unit_std
        and _divides_logits_by_last_width(preset)
    ):
        config = config.replace(output_scale=1 / config.widths_airbench[-1])
    return config


def _divides_logits_by_last_width(preset: Preset) -> bool:
    """Whether ``preset`` has airbench94_muon's head: weight rescaled to unit std and logits
    ÷ the last block's width (its ``output_scale`` is 1 / that width at ``--width 1``)."""
    values = preset.overrides
    if values.get("network") != "airbench" or not values.get("head_unit_std"):
        return False
    widths = values.get("airbench_widths", TrainConfig.airbench_widths)
    return values.get("output_scale") == 1 / widths[-1]


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
    """A plain-text table of the presets (``python -m train --list-presets``): both ladders,
    each row with the source's epochs, accuracy and time where the source published them."""
    header = ("preset", "epochs", "source acc", "source time", "change vs previous preset")
    rows: list[tuple[str, ...]] = []
    for p in PRESETS.values():
        time = "-" if p.seed_time_s is None else f"{p.seed_time_s:g} s {p.source_device}"
        # As published: the seed's one decimal, the airbench sources' two.
        acc = "-" if p.seed_acc is None else f"{p.seed_acc:.{1 if p.ladder == 'seed' else 2}f}%"
        rows.append((p.name, f"{p.seed_epochs:g}", acc, time, p.description))
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(4)]

    def line(r: tuple[str, ...]) -> str:
        return (
            f"{r[0]:<{widths[0]}}  {r[1]:>{widths[1]}}  {r[2]:>{widths[2]}}  "
            f"{r[3]:>{widths[3]}}  {r[4]}"
        )

    lines = [line(header), "  ".join("-" * w for w in widths) + "  " + "-" * len(header[4])]
    names = list(PRESETS)
    for ladder, title in (
        ("seed", "The seed's ladder (Myrtle's bag of tricks; V100, DAWNBench timing):"),
        ("airbench", "The second ladder, from 'tta' (the sources' published figures, A100):"),
    ):
        lines.append(title)
        lines += [line(rows[names.index(n)]) for n in LADDERS[ladder]]
    seed_final, last = LADDERS["seed"][-1], LADDERS["airbench"][-1]
    lines.append("")
    lines.append(
        f"Each preset is the previous one plus its change; '{seed_final}' is the final "
        f"recipe (the defaults); '{last}' is the fastest recipe known here."
    )
    lines.append(
        "Figures are the sources' own (accuracies are means over runs), not measured here; "
        "'-': no published figure for that step."
    )
    return "\n".join(lines)
