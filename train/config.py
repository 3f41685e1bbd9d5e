"""Every knob of a training run, with the final "bag of tricks" recipe as the defaults.

The numbers come from the seed's reference code (see ``shared/docs/RECIPE.md``); each field
says which trick it belongs to, so a step of the seed's ladder is a handful of overrides.
The airbench family's tricks (airbench94, airbench94_muon, the 2025 speedrun) are fields too,
each defaulting to what the seed's recipe does (off, or the seed's value), so that the
second ladder of :mod:`train.presets` is a handful of overrides per step as well.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:
    from model.airbench import AirbenchConfig
    from model.resnet9 import ResNet9Config

BACKEND_CHOICES = ("auto", "eager", "compile", "triton")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")
ACTIVATION_CHOICES = ("celu", "relu", "gelu", "gelu_tanh", "silu")
#: The network: the seed's ResNet9, or the airbench family's net (:mod:`model.airbench`).
NETWORK_CHOICES = ("resnet9", "airbench")
#: Left-right flips in training: the seed's per-epoch coin, none, or airbench's alternating
#: scheme (:mod:`train.flips`). Stored as True / False / "alternating" (the seed's booleans).
FLIP_CHOICES = ("random", "alternating", "none")
#: Test-time augmentation (:mod:`train.tta`). Stored as True ("flip") / False ("none") /
#: "multiview" / "selective", so the seed's booleans keep their meaning.
TTA_CHOICES = ("flip", "none", "multiview", "selective")
#: The optimiser: SGD (the seed's form or airbench's), or Muon on the conv filters with
#: airbench's SGD on the rest (airbench94_muon, the 2025 speedrun).
OPTIMIZER_CHOICES = ("sgd", "muon")
#: How SGD's numbers are read (see :mod:`train.build`): the seed's (``lr`` per mean gradient,
#: weight decay × batch) or airbench94's (per 1024 examples, decoupled weight decay).
SGD_FORM_CHOICES = ("seed", "airbench")
#: The learning-rate shape (:mod:`train.schedule`): the seed's piecewise-linear one,
#: airbench94's triangle, or airbench94_muon's linear decay.
LR_SCHEDULE_CHOICES = ("piecewise", "airbench", "linear_decay")
#: The whitening bias's initialisation (airbench94: zeros; the 2025 speedrun: PyTorch's).
WHITENING_BIAS_INIT_CHOICES = ("zeros", "default")
#: How ``torchrun --nproc-per-node K`` uses its K processes (see :mod:`train.distributed`).
DISTRIBUTE_CHOICES = ("data", "runs")
#: ``--cuda-graphs`` (see :mod:`train.graphs`; repeated here so that reading the command
#: line imports no torch-heavy module).
CUDA_GRAPH_CHOICES = ("auto", "on", "off")

#: Per-channel mean and std of the CIFAR-10 training set on the 0–255 scale (the seed's).
CIFAR10_MEAN = (125.31, 122.95, 113.87)
CIFAR10_STD = (62.99, 62.09, 66.70)

#: What ``python -m train`` runs when no GPU is found: the issue's quick real-data check,
#: a few minutes on 2 CPU cores instead of hours.
CPU_QUICK_OVERRIDES: dict[str, Any] = {
    "width": 0.25,
    "train_subset": 10_000,
    "epochs": 5,
    "batch_size": 128,
}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which and why."""


class NumericRange(NamedTuple):
    """The values a numeric field accepts: ``kind`` (int or float) from ``low`` to ``high``,
    each end included unless its ``*_open`` flag says otherwise. Always finite."""

    kind: type
    low: float
    high: float
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        what = "an integer" if self.kind is int else "a finite number"
        return (
            f"{what} in {'(' if self.low_open else '['}{_show(self.low)}, "
            f"{_show(self.high)}{')' if self.high_open else ']'}"
        )

    def admits(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return False
        if self.kind is int and not isinstance(value, int):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below


def _show(bound: float) -> str:
    return f"{bound:,}" if isinstance(bound, int) else f"{bound:g}"


#: The one rule for every numeric setting: finite and in this range (None also accepted
#: where the field is optional). The upper ends keep a typo (an extra zero, ``1e9``) from
#: asking for terabytes or years; each is far above anything the recipes use.
NUMERIC_RANGES: dict[str, NumericRange] = {
    "train_subset": NumericRange(int, 1, 50_000),
    "test_subset": NumericRange(int, 1, 10_000),
    # Fractional epochs (airbench94's 9.9): the last epoch runs that fraction of its steps.
    "epochs": NumericRange(float, 1, 1_000),
    "batch_size": NumericRange(int, 1, 50_000),
    "lr": NumericRange(float, 0, 1e9, low_open=True),  # 1e9 diverges: exit 4, not 2
    "warmup_epochs": NumericRange(float, 0, 1_000),
    "lr_floor": NumericRange(float, 0, 1),
    "floor_epochs": NumericRange(float, 0, 1_000),
    "momentum": NumericRange(float, 0, 1, high_open=True),
    "weight_decay": NumericRange(float, 0, 1),
    "bias_lr_mult": NumericRange(float, 0, 10_000, low_open=True),
    "bias_wd_div": NumericRange(float, 0, 10_000, low_open=True),
    "label_smoothing": NumericRange(float, 0, 1, high_open=True),
    "width": NumericRange(float, 0, 16, low_open=True),
    "celu_alpha": NumericRange(float, 0, 100, low_open=True),
    "ghost_batch": NumericRange(int, 0, 50_000),
    "whitening_images": NumericRange(int, 1, 50_000),
    "whitening_eps": NumericRange(float, 0, 1_000, low_open=True),
    "output_scale": NumericRange(float, 0, 1_000, low_open=True),
    "pad": NumericRange(int, 0, 31),
    "cutout": NumericRange(int, 0, 32),
    "ema_every": NumericRange(int, 1, 1_000_000),
    "ema_momentum": NumericRange(float, 0, 1, low_open=True, high_open=True),
    "eval_every": NumericRange(int, 0, 1_000),
    "eval_batch_size": NumericRange(int, 1, 10_000),
    "runs": NumericRange(int, 1, 1_000),
    # torch.manual_seed takes 64 bits; runs use seed, seed + 1, … (checked below).
    "seed": NumericRange(int, 0, 2**63 - 1),
    "warmup_steps": NumericRange(int, 0, 100_000),
    # --- the airbench family ---
    "bn_eps": NumericRange(float, 0, 1, low_open=True),
    "bn_momentum": NumericRange(float, 0, 1),
    "whitening_patch_size": NumericRange(int, 1, 8),
    "whitening_bias_epochs": NumericRange(float, 0, 1_000),
    "jitter": NumericRange(float, 0, 1),
    "head_lr_mult": NumericRange(float, 0, 10_000, low_open=True),
    "whitening_bias_lr_mult": NumericRange(float, 0, 10_000, low_open=True),
    "muon_lr": NumericRange(float, 0, 100, low_open=True),
    "muon_momentum": NumericRange(float, 0, 1, high_open=True),
    "muon_ns_steps": NumericRange(int, 1, 20),
    "muon_renormalize_every": NumericRange(int, 0, 1_000_000),
    "lookahead_every": NumericRange(int, 1, 1_000_000),
    "tta_fraction": NumericRange(float, 0, 1),
}

#: Largest channel count of an airbench block (``--airbench-widths``): far above the
#: recipes' 256, low enough that a typo does not ask for terabytes.
MAX_AIRBENCH_WIDTH = 4096


def check_number(name: str, value: Any) -> None:
    """Raise :class:`ConfigError` unless ``value`` obeys ``NUMERIC_RANGES[name]``; the
    message names the flag, the range and the value."""
    allowed = NUMERIC_RANGES[name]
    if not allowed.admits(value):
        raise ConfigError(f"--{name.replace('_', '-')} must be {allowed.describe()}; got {value!r}")


#: Numeric fields that may be None (a default worked out from other fields).
_OPTIONAL_NUMBERS = frozenset(
    {"train_subset", "test_subset", "warmup_epochs", "floor_epochs", "eval_every"}
)


@dataclass
class TrainConfig:
    # --- data -------------------------------------------------------------------------
    data_dir: str | None = None  # None: $CIFAR10_DIR, else the per-user cache
    train_subset: int | None = None  # first N training images (quick runs)
    test_subset: int | None = None  # first N test images
    download: bool = True
    # --- schedule and optimiser ---------------------------------------------------------
    epochs: float = 10  # fractional (9.9): the last epoch runs that fraction of its steps
    batch_size: int = 512
    lr: float = 1.0  # peak of the piecewise-linear schedule (per batch of
    # summed losses; divided by batch_size for SGD)
    warmup_epochs: float | None = None  # None: epochs / 5, as the seed scaled it
    lr_floor: float = 0.1  # end of the decay, as a fraction of the peak
    floor_epochs: float | None = None  # last epochs held flat at lr_floor (the EMA step);
    # None: epochs / 5 (= the recipe's 2 of 10 epochs)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4  # per example: SGD gets weight_decay × batch_size
    bias_lr_mult: float = 64.0  # BN biases: lr × this (frozen-scales step)
    bias_wd_div: float = 64.0  # BN biases: weight decay ÷ this
    label_smoothing: float = 0.2
    optimizer: str = "sgd"  # sgd | muon (Muon on the conv filters, SGD on the rest)
    sgd_form: str = "seed"  # seed: lr per mean gradient, weight decay × batch; airbench:
    # lr and weight decay per 1024 examples, decoupled decay
    # (airbench94: lr 11.5, weight decay 0.0153)
    head_lr_mult: float = 1.0  # airbench forms: the head's rate × this
    whitening_bias_lr_mult: float = 1.0  # airbench forms: the whitening bias's rate × this
    muon_lr: float = 0.24  # Muon's peak rate on the filters (airbench94_muon)
    muon_momentum: float = 0.6
    muon_ns_steps: int = 3  # Newton–Schulz iterations
    muon_renormalize_every: int = 1  # filters back to norm √out every N steps; 0 = never
    lr_schedule: str = "piecewise"  # piecewise (the seed's) | airbench (0.2 → 1 at 23% of
    # the steps → lr_floor) | linear_decay (1 → lr_floor)
    # --- model --------------------------------------------------------------------------
    network: str = "resnet9"  # resnet9 | airbench
    width: float = 1.0  # channel multiplier: 0.25 gives 16/32/64/128 (airbench: 16/64/64)
    airbench_widths: tuple[int, int, int] = (64, 256, 256)  # airbench's blocks at width 1
    activation: str = "celu"  # celu | relu | gelu | gelu_tanh | silu
    celu_alpha: float = 0.3  # 0.075 × 4: frozen scales of 1 stand for 1/4
    ghost_batch: int = 32  # images per ghost-BN split; 0 = plain BN
    bn_eps: float = 1e-5
    bn_momentum: float = 0.1  # PyTorch's convention (airbench's 0.6 is 1 − 0.6 = 0.4 here)
    frozen_bn_scale: bool = True
    pool_before_bn: bool = True
    whitening: bool = True  # fixed 3×3 patch-whitening conv at the input
    whitening_images: int = 10_000
    whitening_eps: float = 1e-2
    whitening_patch_size: int = 3  # 3 (ResNet9, padding 1) | k (airbench: 2, no padding)
    whitening_bias_epochs: float = 3.0  # airbench: the whitening bias trains for the first
    # N epochs (fractional: N × steps per epoch, rounded up), then is frozen
    whitening_bias_init: str = "zeros"  # airbench: zeros | default (PyTorch's conv init)
    head_unit_std: bool = False  # airbench: the head's initial weight rescaled to std 1
    output_scale: float = 1 / 16
    # --- augmentation -------------------------------------------------------------------
    pad: int = 4  # reflect padding for random crops (translate ±pad px)
    flip: bool | str = True  # True: random per epoch | False: none | "alternating"
    cutout: int = 0  # side of the cutout square; 0 = off
    jitter: float = 0.0  # brightness and contrast jitter ±jitter per image; 0 = off
    # --- weight averaging and evaluation -------------------------------------------------
    ema: bool = True
    ema_every: int = 5  # update the average every N steps ...
    ema_momentum: float = 0.99  # ... with rho = ema_momentum ** ema_every
    lookahead: bool = False  # airbench94's lookahead (slow weights, every N steps)
    lookahead_every: int = 5
    tta: bool | str = True  # True: flip | False: none | "multiview" | "selective"
    tta_fraction: float = 0.25  # "selective": share of each batch given the six views
    eval_every: int | None = None  # evaluate every N epochs; 0 = last epoch only;
    # None: 1 on a GPU, 0 on the CPU
    eval_batch_size: int = 1000
    # --- run ----------------------------------------------------------------------------
    runs: int = 1
    seed: int = 0
    backend: str = "auto"  # eager | compile | triton | auto
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    precision: str = "auto"  # auto: fp16 on CUDA (bf16 if asked), fp32 on CPU
    warmup_steps: int = 3  # throwaway steps before the timer (compile, cuDNN)
    cuda_graphs: str = "auto"  # capture the step in a CUDA graph: auto (on a GPU, checked
    # during the warm-up, falling back if it fails) | on | off
    distribute: str = "data"  # under torchrun: "data" (DDP over one run) or "runs"
    # (independent runs spread over the processes);
    # ignored by a single process
    json: str | None = None
    gpu_data: bool = True  # preprocessing and augmentation on the device (the
    # seed's "GPU data" step); False: on the host, each
    # batch moved to the device, as the seed's baseline

    def __post_init__(self) -> None:
        self.validate()

    @property
    def ghost_splits(self) -> int:
        """Ghost-BN splits per batch (1 = plain batch norm)."""
        return self.batch_size // self.ghost_batch if self.ghost_batch else 1

    @property
    def epoch_count(self) -> int:
        """Epochs begun: ``epochs`` rounded up (9.9 → 10, the last one partial)."""
        return math.ceil(self.epochs)

    @property
    def widths_airbench(self) -> tuple[int, int, int]:
        """airbench's block widths at this ``width`` (each at least 1)."""
        return tuple(max(1, round(w * self.width)) for w in self.airbench_widths)  # type: ignore[return-value]

    @property
    def warmup(self) -> float:
        return self.epochs / 5 if self.warmup_epochs is None else self.warmup_epochs

    @property
    def floor(self) -> float:
        return self.epochs / 5 if self.floor_epochs is None else self.floor_epochs

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        return dataclasses.replace(self, **changes)  # __post_init__ validates

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> TrainConfig:
        """Raise :class:`ConfigError` naming the first value that cannot work."""

        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        # Ranges first: the checks below do arithmetic on these values.
        for name in NUMERIC_RANGES:
            value = getattr(self, name)
            if value is not None or name not in _OPTIONAL_NUMBERS:
                check_number(name, value)
        need(
            self.seed + self.runs - 1 <= NUMERIC_RANGES["seed"].high,
            f"--seed {self.seed} with --runs {self.runs} gives seeds past 2**63 - 1: use a "
            "smaller --seed",
        )
        if self.ghost_batch:
            need(
                self.batch_size % self.ghost_batch == 0,
                f"--batch-size {self.batch_size} is not divisible by the ghost-BN split of "
                f"{self.ghost_batch} images: use a multiple of {self.ghost_batch} (e.g. "
                f"{max(1, round(self.batch_size / self.ghost_batch)) * self.ghost_batch}) "
                "or --ghost-batch 0 for plain batch norm",
            )
        need(round(64 * self.width) >= 1, f"--width {self.width} leaves the first layer empty")
        need(
            0 <= self.warmup <= self.epochs,
            f"warm-up of {self.warmup} epochs does not fit in {self.epochs} epochs",
        )
        need(
            0 <= self.floor < self.epochs, f"floor epochs must be in [0, epochs); got {self.floor}"
        )
        need(
            self.warmup <= self.epochs - self.floor,
            "the warm-up and the flat floor overlap: use fewer floor epochs or more epochs",
        )
        need(
            self.activation in ACTIVATION_CHOICES,
            f"--activation must be one of {', '.join(ACTIVATION_CHOICES)}; got {self.activation!r}",
        )
        self._validate_airbench(need)
        need(
            self.backend in BACKEND_CHOICES,
            f"unknown backend {self.backend!r}: choose one of {', '.join(BACKEND_CHOICES)}",
        )
        need(
            self.precision in PRECISION_CHOICES,
            f"unknown precision {self.precision!r}: choose one of {', '.join(PRECISION_CHOICES)}",
        )
        need(
            self.cuda_graphs in CUDA_GRAPH_CHOICES,
            f"--cuda-graphs must be one of {', '.join(CUDA_GRAPH_CHOICES)}; "
            f"got {self.cuda_graphs!r}",
        )
        need(
            self.distribute in DISTRIBUTE_CHOICES,
            f"--distribute must be one of {', '.join(DISTRIBUTE_CHOICES)}; got {self.distribute!r}",
        )
        if self.train_subset is not None:
            need(
                self.train_subset >= self.batch_size,
                f"--train-subset {self.train_subset} is smaller than one batch of "
                f"{self.batch_size}: with drop-last no step would run",
            )
        return self

    def _validate_airbench(self, need: Any) -> None:
        """The airbench family's fields: choices, and the combinations that cannot work."""

        def choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
            need(
                value in choices,
                f"--{name.replace('_', '-')} must be one of {', '.join(choices)}; got {value!r}",
            )

        choice("network", self.network, NETWORK_CHOICES)
        choice("optimizer", self.optimizer, OPTIMIZER_CHOICES)
        choice("sgd_form", self.sgd_form, SGD_FORM_CHOICES)
        choice("lr_schedule", self.lr_schedule, LR_SCHEDULE_CHOICES)
        choice("whitening_bias_init", self.whitening_bias_init, WHITENING_BIAS_INIT_CHOICES)
        need(
            isinstance(self.flip, bool) or self.flip == "alternating",
            f"--flip must be one of {', '.join(FLIP_CHOICES)}; got {self.flip!r}",
        )
        need(
            isinstance(self.tta, bool) or self.tta in ("multiview", "selective"),
            f"--tta must be one of {', '.join(TTA_CHOICES)}; got {self.tta!r}",
        )
        widths = self.airbench_widths
        need(
            isinstance(widths, (tuple, list))
            and len(widths) == 3
            and all(
                isinstance(w, int) and not isinstance(w, bool) and 1 <= w <= MAX_AIRBENCH_WIDTH
                for w in widths
            ),
            f"--airbench-widths must be three integers in [1, {MAX_AIRBENCH_WIDTH:,}]; "
            f"got {widths!r}",
        )
        if isinstance(widths, list):  # a JSON or checkpoint round trip: keep it hashable
            self.airbench_widths = tuple(widths)  # type: ignore[assignment]
        if self.network == "resnet9":
            need(
                self.activation in ("celu", "relu"),
                f"--activation {self.activation} needs --network airbench (ResNet9 takes "
                "celu or relu)",
            )
            need(
                self.whitening_patch_size == 3,
                f"--whitening-patch-size {self.whitening_patch_size} needs --network airbench "
                "(ResNet9's whitening is 3x3)",
            )
            need(
                self.whitening_bias_init == "zeros" and not self.head_unit_std,
                "--whitening-bias-init and --head-unit-std need --network airbench",
            )
        else:
            need(self.whitening, "--network airbench always whitens: drop --whitening off")
            need(
                self.pool_before_bn,
                "--network airbench always pools before batch norm: drop --pool-before-bn off",
            )
        if self.optimizer == "muon":
            need(
                self.sgd_form == "airbench",
                "--optimizer muon trains the non-filter weights with airbench's SGD: add "
                "--sgd-form airbench",
            )
            need(
                self.lr == 1.0,
                f"--lr {self.lr} has no effect with --optimizer muon (its SGD side keeps "
                "airbench94_muon's rates): use --muon-lr",
            )
            need(
                self.cuda_graphs != "on",
                "--cuda-graphs on cannot capture Muon, whose learning rate is a host float "
                "a graph would bake in: use --cuda-graphs auto or off",
            )
        if self.lr_schedule != "piecewise":
            need(
                self.warmup_epochs is None and self.floor_epochs is None,
                f"warm-up and floor epochs belong to the piecewise schedule, not "
                f"--lr-schedule {self.lr_schedule}",
            )


def saved_config_with_defaults(saved: Mapping[str, Any]) -> dict[str, Any]:
    """A saved configuration (a checkpoint's, a ``--json`` record's) with the fields it
    predates filled in with their defaults.

    Every field added since (the airbench family's) defaults to what the recipes did before
    it existed, so a file written without it ran with that value. Lists (a JSON round trip)
    come back as tuples, so a saved ``airbench_widths`` equals the default's."""
    filled = {**TrainConfig().to_dict(), **saved}
    return {k: tuple(v) if isinstance(v, list) else v for k, v in filled.items()}


def model_config(
    config: TrainConfig, backend: str, ghost_splits: int | None = None
) -> ResNet9Config:
    """The network the training configuration asks for. ``ghost_splits``: the splits of the
    batch one forward sees (default ``config.ghost_splits``; a data-parallel rank sees
    ``batch_size / K`` images, so fewer splits of the same 32 images)."""
    # Imported here: the command line reads this module before TRITON_INTERPRET is settled,
    # and the model imports the kernels.
    from model.resnet9 import ResNet9Config

    return ResNet9Config(
        width=config.width,
        activation=config.activation,
        celu_alpha=config.celu_alpha,
        ghost_splits=config.ghost_splits if ghost_splits is None else ghost_splits,
        frozen_bn_scale=config.frozen_bn_scale,
        pool_before_bn=config.pool_before_bn,
        whitening=config.whitening,
        output_scale=config.output_scale,
        bn_eps=config.bn_eps,
        bn_momentum=config.bn_momentum,
        backend=backend,
    )


def airbench_config(
    config: TrainConfig, backend: str, ghost_splits: int | None = None
) -> AirbenchConfig:
    """The airbench network the training configuration asks for (``--network airbench``);
    ``ghost_splits`` as for :func:`model_config`. The whitening keeps its GELU (both airbench
    recipes put GELU after the whitening, whatever the blocks use)."""
    from model.airbench import AirbenchConfig

    return AirbenchConfig(
        widths=config.widths_airbench,
        activation=config.activation,
        celu_alpha=config.celu_alpha,
        whitening_patch_size=config.whitening_patch_size,
        whitening_eps=config.whitening_eps,
        whitening_images=config.whitening_images,
        whitening_bias_init=config.whitening_bias_init,
        ghost_splits=config.ghost_splits if ghost_splits is None else ghost_splits,
        frozen_bn_scale=config.frozen_bn_scale,
        bn_eps=config.bn_eps,
        bn_momentum=config.bn_momentum,
        output_scale=config.output_scale,
        head_unit_std=config.head_unit_std,
        backend=backend,
    )
