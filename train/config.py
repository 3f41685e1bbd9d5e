"""Every knob of a training run, with the final "bag of tricks" recipe as the defaults.

The numbers come from the seed's reference code (see ``shared/docs/RECIPE.md``); each field
says which trick it belongs to, so a step of the seed's ladder is a handful of overrides.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

BACKEND_CHOICES = ("auto", "eager", "compile", "triton")
PRECISION_CHOICES = ("auto", "fp32", "fp16", "bf16")
ACTIVATION_CHOICES = ("celu", "relu")
#: How ``torchrun --nproc-per-node K`` uses its K processes (see :mod:`train.distributed`).
DISTRIBUTE_CHOICES = ("data", "runs")

#: Per-channel mean and std of the CIFAR-10 training set on the 0–255 scale (the seed's).
CIFAR10_MEAN = (125.31, 122.95, 113.87)
CIFAR10_STD = (62.99, 62.09, 66.70)

#: What ``python -m train`` runs when no GPU is found: the issue's quick real-data check,
#: a few minutes on 2 CPU cores instead of hours.
CPU_QUICK_OVERRIDES: dict[str, Any] = {
    "width": 0.25, "train_subset": 10_000, "epochs": 5, "batch_size": 128,
}


class ConfigError(ValueError):
    """A configuration value that cannot work; the message says which and why."""


@dataclass
class TrainConfig:
    # --- data -------------------------------------------------------------------------
    data_dir: str | None = None          # None: $CIFAR10_DIR, else the per-user cache
    train_subset: int | None = None      # first N training images (quick runs)
    test_subset: int | None = None       # first N test images
    download: bool = True
    # --- schedule and optimiser ---------------------------------------------------------
    epochs: int = 10
    batch_size: int = 512
    lr: float = 1.0                      # peak of the piecewise-linear schedule (per batch of
                                         # summed losses; divided by batch_size for SGD)
    warmup_epochs: float | None = None   # None: epochs / 5, as the seed scaled it
    lr_floor: float = 0.1                # end of the decay, as a fraction of the peak
    floor_epochs: float | None = None    # last epochs held flat at lr_floor (the EMA step);
                                         # None: epochs / 5 (= the recipe's 2 of 10 epochs)
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4           # per example: SGD gets weight_decay × batch_size
    bias_lr_mult: float = 64.0           # BN biases: lr × this (frozen-scales step)
    bias_wd_div: float = 64.0            # BN biases: weight decay ÷ this
    label_smoothing: float = 0.2
    # --- model --------------------------------------------------------------------------
    width: float = 1.0                   # channel multiplier: 0.25 gives 16/32/64/128
    activation: str = "celu"
    celu_alpha: float = 0.3              # 0.075 × 4: frozen scales of 1 stand for 1/4
    ghost_batch: int = 32                # images per ghost-BN split; 0 = plain BN
    frozen_bn_scale: bool = True
    pool_before_bn: bool = True
    whitening: bool = True               # fixed 3×3 patch-whitening conv at the input
    whitening_images: int = 10_000
    whitening_eps: float = 1e-2
    output_scale: float = 1 / 16
    # --- augmentation -------------------------------------------------------------------
    pad: int = 4                         # reflect padding for random crops
    flip: bool = True
    cutout: int = 0                      # side of the cutout square; 0 = off
    # --- weight averaging and evaluation -------------------------------------------------
    ema: bool = True
    ema_every: int = 5                   # update the average every N steps ...
    ema_momentum: float = 0.99           # ... with rho = ema_momentum ** ema_every
    tta: bool = True                     # average logits of each image and its mirror
    eval_every: int | None = None        # evaluate every N epochs; 0 = last epoch only;
                                         # None: 1 on a GPU, 0 on the CPU
    eval_batch_size: int = 1000
    # --- run ----------------------------------------------------------------------------
    runs: int = 1
    seed: int = 0
    backend: str = "auto"                # eager | compile | triton | auto
    device: str = "auto"                 # auto | cpu | cuda | cuda:N
    precision: str = "auto"              # auto: fp16 on CUDA (bf16 if asked), fp32 on CPU
    warmup_steps: int = 3                # throwaway steps before the timer (compile, cuDNN)
    distribute: str = "data"             # under torchrun: "data" (DDP over one run) or "runs"
                                         # (independent runs spread over the processes);
                                         # ignored by a single process
    json: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)   # room for presets' notes

    @property
    def ghost_splits(self) -> int:
        """Ghost-BN splits per batch (1 = plain batch norm)."""
        return self.batch_size // self.ghost_batch if self.ghost_batch else 1

    @property
    def warmup(self) -> float:
        return self.epochs / 5 if self.warmup_epochs is None else self.warmup_epochs

    @property
    def floor(self) -> float:
        return self.epochs / 5 if self.floor_epochs is None else self.floor_epochs

    def replace(self, **changes: Any) -> "TrainConfig":
        """A copy with some fields changed (validated)."""
        unknown = set(changes) - {f.name for f in dataclasses.fields(self)}
        if unknown:
            raise ConfigError(f"unknown configuration field(s): {', '.join(sorted(unknown))}")
        new = dataclasses.replace(self, **changes)
        new.validate()
        return new

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        """Raise :class:`ConfigError` naming the first value that cannot work."""
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(self.epochs >= 1, f"--epochs must be at least 1; got {self.epochs}")
        need(self.batch_size >= 1, f"--batch-size must be positive; got {self.batch_size}")
        need(self.ghost_batch >= 0, f"ghost batch size must be >= 0; got {self.ghost_batch}")
        if self.ghost_batch:
            need(self.batch_size % self.ghost_batch == 0,
                 f"--batch-size {self.batch_size} is not divisible by the ghost-BN split of "
                 f"{self.ghost_batch} images: use a multiple of {self.ghost_batch} (e.g. "
                 f"{max(1, round(self.batch_size / self.ghost_batch)) * self.ghost_batch}) "
                 "or --ghost-batch 0 for plain batch norm")
        need(self.width > 0, f"--width must be positive; got {self.width}")
        need(round(64 * self.width) >= 1, f"--width {self.width} leaves the first layer empty")
        need(self.lr > 0, f"--lr must be positive; got {self.lr}")
        need(0 <= self.warmup <= self.epochs,
             f"warm-up of {self.warmup} epochs does not fit in {self.epochs} epochs")
        need(0 <= self.floor < self.epochs,
             f"floor epochs must be in [0, epochs); got {self.floor}")
        need(self.warmup <= self.epochs - self.floor,
             "the warm-up and the flat floor overlap: use fewer floor epochs or more epochs")
        need(0 <= self.label_smoothing < 1,
             f"--label-smoothing must be in [0, 1); got {self.label_smoothing}")
        need(self.activation in ACTIVATION_CHOICES,
             f"--activation must be one of {', '.join(ACTIVATION_CHOICES)}; got "
             f"{self.activation!r}")
        need(self.celu_alpha > 0, f"--celu-alpha must be positive; got {self.celu_alpha}")
        need(0 <= self.pad < 32, f"--pad must be in [0, 31]; got {self.pad}")
        need(0 <= self.cutout <= 32, f"--cutout must be in [0, 32]; got {self.cutout}")
        need(self.ema_every >= 1, f"--ema-every must be at least 1; got {self.ema_every}")
        need(0 < self.ema_momentum < 1,
             f"--ema-momentum must be in (0, 1); got {self.ema_momentum}")
        need(self.eval_every is None or self.eval_every >= 0,
             f"--eval-every must be >= 0; got {self.eval_every}")
        need(self.eval_batch_size >= 1, "--eval-batch-size must be positive")
        need(self.runs >= 1, f"--runs must be at least 1; got {self.runs}")
        need(self.backend in BACKEND_CHOICES,
             f"unknown backend {self.backend!r}: choose one of {', '.join(BACKEND_CHOICES)}")
        need(self.precision in PRECISION_CHOICES,
             f"unknown precision {self.precision!r}: choose one of "
             f"{', '.join(PRECISION_CHOICES)}")
        need(self.warmup_steps >= 0, "--warmup-steps must be >= 0")
        need(self.distribute in DISTRIBUTE_CHOICES,
             f"--distribute must be one of {', '.join(DISTRIBUTE_CHOICES)}; got "
             f"{self.distribute!r}")
        need(self.whitening_images >= 1, "--whitening-images must be positive")
        for name in ("train_subset", "test_subset"):
            value = getattr(self, name)
            need(value is None or value >= 1,
                 f"--{name.replace('_', '-')} must be a positive number of images; got {value}")
        if self.train_subset is not None:
            need(self.train_subset >= self.batch_size,
                 f"--train-subset {self.train_subset} is smaller than one batch of "
                 f"{self.batch_size}: with drop-last no step would run")
        return self
