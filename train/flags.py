"""What both commands (``python -m train`` and ``python -m train compare``) share: the
trainer's flags and their one rule for numbers, the exit codes, one-line errors, and loading
the data with its notes.

Nothing heavy is imported here at module level: flags are parsed before ``kernels`` is
imported, because running the Triton kernels on the CPU needs ``TRITON_INTERPRET=1`` set
before that import.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

from train.config import (
    ACTIVATION_CHOICES,
    BACKEND_CHOICES,
    CPU_QUICK_OVERRIDES,
    CUDA_GRAPH_CHOICES,
    DISTRIBUTE_CHOICES,
    FLIP_CHOICES,
    LR_SCHEDULE_CHOICES,
    MAX_AIRBENCH_WIDTH,
    NETWORK_CHOICES,
    NUMERIC_RANGES,
    OPTIMIZER_CHOICES,
    PRECISION_CHOICES,
    SGD_FORM_CHOICES,
    TTA_CHOICES,
    WHITENING_BIAS_INIT_CHOICES,
    ConfigError,
    TrainConfig,
    check_number,
)

EXIT_OK, EXIT_USAGE, EXIT_DATA, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 2, 3, 4, 130
EXIT_OUTPUT = 5  # finished, but an output went elsewhere than asked (see message)
EXIT_TERMINATED = 143  # SIGTERM: 128 + 15, as a shell reports a process it killed


def quiet() -> bool:
    """Whether this process is a torchrun rank other than 0, which prints nothing (read from
    torchrun's environment, so that it holds before the process group forms)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 and os.environ.get("RANK", "0") != "0"


def say(*args: Any, **kwargs: Any) -> None:
    """``print``, on rank 0 only."""
    if not quiet():
        print(*args, **kwargs)


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad flag in one line (no usage dump) and exits with 2, or,
    with ``raise_errors``, raises :class:`ConfigError` with argparse's message (for
    ``compare``, which parses each side's flags and says which side was wrong)."""

    def __init__(self, *args: Any, raise_errors: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.raise_errors = raise_errors

    def error(self, message: str) -> None:  # type: ignore[override]
        if self.raise_errors:
            raise ConfigError(message)
        self.exit(EXIT_USAGE, None if quiet() else f"error: {message} (see {self.prog} --help)\n")


def number_type(name: str) -> Callable[[str], int | float]:
    """The argparse type of the numeric field ``name``: parses the text and applies the one
    rule of :data:`train.config.NUMERIC_RANGES` (finite, in range, the range in the
    message), so a bad value is refused before anything heavy is imported."""
    allowed = NUMERIC_RANGES[name]

    def parse(text: str) -> int | float:
        try:
            value = int(text) if allowed.kind is int else float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"must be {allowed.describe()}; got {text!r}"
            ) from None
        try:
            check_number(name, value)
        except ConfigError:
            raise argparse.ArgumentTypeError(
                f"must be {allowed.describe()}; got {text!r}"
            ) from None
        if name == "epochs" and value == int(value):
            value = int(value)  # "--epochs 10" stays the integer 10 (tables, JSON, presets)
        return value

    parse.__name__ = allowed.kind.__name__
    return parse


#: What ``--flip MODE`` and ``--tta MODE`` store: the seed's booleans where they exist, so a
#: config given as ``--flip random`` equals the default one (and its checkpoints).
_FLIP_VALUES = {"random": True, "alternating": "alternating", "none": False}
_TTA_VALUES = {"flip": True, "none": False, "multiview": "multiview", "selective": "selective"}


def mode_type(name: str, values: dict[str, Any]) -> Callable[[str], Any]:
    """The argparse type of a mode flag: one of ``values``' names, stored as its value."""

    def parse(text: str) -> Any:
        if text not in values:
            raise argparse.ArgumentTypeError(
                f"must be one of {', '.join(values)}; got {text!r}"
            ) from None
        return values[text]

    parse.__name__ = name
    return parse


def widths_type(text: str) -> tuple[int, int, int]:
    """``--airbench-widths 64,256,256``: three integers in [1, MAX_AIRBENCH_WIDTH]."""
    parts = text.split(",")
    try:
        widths = tuple(int(part) for part in parts)
    except ValueError:
        widths = ()
    if len(widths) != 3 or not all(1 <= w <= MAX_AIRBENCH_WIDTH for w in widths):
        raise argparse.ArgumentTypeError(
            f"must be three integers in [1, {MAX_AIRBENCH_WIDTH:,}] separated by commas "
            f"(e.g. 64,256,256); got {text!r}"
        )
    return widths  # type: ignore[return-value]


def on_off(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected on/off, got {text!r}")


def build_parser(raise_errors: bool = False) -> argparse.ArgumentParser:
    """The trainer's flags. ``raise_errors``: a bad flag raises :class:`ConfigError`
    instead of exiting (see :class:`Parser`)."""
    # Every config flag defaults to SUPPRESS, so the namespace holds only what the user
    # typed: that is how the CPU-sized configuration fills in only what was not asked for.
    p = Parser(
        raise_errors=raise_errors,
        prog="python -m train",
        description="Train ResNet9 on CIFAR-10 with the 'bag of tricks' recipe (94% in "
        "10 epochs), or any preset of either ladder. Without a GPU, and with no flag that "
        "sizes the run, it runs airbench94 at the size that fits a few minutes on this CPU "
        "(measured first); --full runs the full recipe anyway.",
        epilog="exit codes: 0 done; 2 bad flags, or --resume of a different run; 3 "
        "unreadable data or checkpoint; 4 the loss diverged; 130 / 143 stopped by "
        "SIGINT / SIGTERM (after saving, with --checkpoint). Two more commands: "
        "'python -m train compare' (is recipe B better than A?) and 'python -m train pool' "
        "(one summary over several --json files); each has its own --help",
        argument_default=argparse.SUPPRESS,
    )
    add = p.add_argument
    g = p.add_argument_group("data")
    g.add_argument(
        "--data-dir",
        help="folder with cifar-10-binary.tar.gz or "
        "cifar-10-batches-bin/ (default: $CIFAR10_DIR, else a per-user cache)",
    )
    g.add_argument(
        "--train-subset",
        type=number_type("train_subset"),
        metavar="N",
        help="train on the first N training images",
    )
    g.add_argument(
        "--test-subset",
        type=number_type("test_subset"),
        metavar="N",
        help="evaluate on the first N test images",
    )
    g.add_argument(
        "--no-download", dest="download", action="store_false", help="never download the data set"
    )
    g = p.add_argument_group("recipe")
    g.add_argument("--epochs", type=number_type("epochs"))
    g.add_argument("--batch-size", type=number_type("batch_size"))
    g.add_argument("--lr", type=number_type("lr"), help="peak of the schedule (default 1.0)")
    g.add_argument(
        "--width", type=number_type("width"), help="channel multiplier (0.25 → 16/32/64/128)"
    )
    g.add_argument(
        "--cutout", type=number_type("cutout"), metavar="SIZE", help="cutout square side; 0 = off"
    )
    g.add_argument(
        "--no-tta",
        dest="tta",
        action="store_false",
        help="evaluate without flip test-time augmentation",
    )
    g.add_argument("--activation", choices=ACTIVATION_CHOICES)
    g.add_argument("--celu-alpha", type=number_type("celu_alpha"))
    g.add_argument(
        "--ghost-batch",
        type=number_type("ghost_batch"),
        metavar="N",
        help="images per ghost-BN split (default 32); 0 = plain batch norm",
    )
    g.add_argument("--frozen-bn-scale", type=on_off, metavar="on|off")
    g.add_argument("--pool-before-bn", type=on_off, metavar="on|off")
    g.add_argument("--whitening", type=on_off, metavar="on|off")
    g.add_argument("--label-smoothing", type=number_type("label_smoothing"))
    g.add_argument("--ema", type=on_off, metavar="on|off")
    g.add_argument(
        "--gpu-data",
        type=on_off,
        metavar="on|off",
        help="preprocess and augment on the device (default on); off: on the "
        "host, moving each batch, as the seed's baseline did",
    )
    _airbench_flags(p)
    g = p.add_argument_group("recipe")
    g.add_argument(
        "--eval-every",
        type=number_type("eval_every"),
        metavar="K",
        help="evaluate every K epochs; 0 = last epoch only (default: 1 on a GPU, 0 on the CPU)",
    )
    g = p.add_argument_group("run")
    g.add_argument(
        "--runs", type=number_type("runs"), help="independent runs (mean ± std over them)"
    )
    g.add_argument("--seed", type=number_type("seed"))
    g.add_argument(
        "--backend",
        choices=BACKEND_CHOICES,
        help="eager | compile (torch.compile) | triton (fused kernels) | auto",
    )
    g.add_argument("--device", help="auto | cpu | cuda | cuda:N")
    g.add_argument("--precision", choices=PRECISION_CHOICES)
    g.add_argument(
        "--cuda-graphs",
        choices=CUDA_GRAPH_CHOICES,
        help="replay each training step from a CUDA graph: auto (default; on a GPU, checked "
        "against an uncaptured step during the warm-up, off if that fails), on, off",
    )
    g.add_argument(
        "--warmup-steps", type=number_type("warmup_steps"), help="throwaway steps before the clock"
    )
    g.add_argument("--json", metavar="PATH", help="write every figure and the config here")
    g.add_argument(
        "--distribute",
        choices=DISTRIBUTE_CHOICES,
        help="under torchrun --nproc-per-node K: 'data' (default) trains each run "
        "with DistributedDataParallel, batch split over the K processes; "
        "'runs' spreads the independent --runs over them. Ignored by a "
        "single process",
    )
    g.add_argument(
        "--checkpoint",
        metavar="PATH",
        help="save the run here at every epoch end and when stopped by Ctrl-C or "
        "SIGTERM (written atomically; a fresh run overwrites it); with --runs "
        "N, one file per run, named with its seed before the suffix: "
        "ck.pt -> ck.seed0.pt, ck.seed1.pt, ...",
    )
    g.add_argument(
        "--resume",
        metavar="PATH",
        help="continue the run(s) saved at PATH (same naming as --checkpoint), "
        "bit for bit on the CPU; give the same recipe flags as the stopped "
        "run. Finished runs are read back, runs without a file start afresh. "
        "Keeps saving to PATH unless --checkpoint says otherwise",
    )
    add(
        "--full",
        action="store_true",
        help="on a CPU, run the full recipe (or --preset's) anyway, instead of a CPU-sized run",
    )
    g = p.add_argument_group("research")
    g.add_argument(
        "--preset",
        metavar="NAME",
        help="start from a step of the seed's ladder (see --list-presets); other flags override it",
    )
    g.add_argument(
        "--list-presets", action="store_true", help="print the seed's ladder of presets and exit"
    )
    g.add_argument(
        "--plot",
        metavar="DIR",
        help="write PNGs: training curves, augmented examples, whitening filters",
    )
    return p


def _airbench_flags(p: argparse.ArgumentParser) -> None:
    """The airbench family's tricks (the second ladder of presets), each a flag."""
    g = p.add_argument_group("airbench family (defaults: the seed's recipe)")
    g.add_argument("--network", choices=NETWORK_CHOICES, help="resnet9 (default) or airbench's net")
    g.add_argument(
        "--airbench-widths",
        type=widths_type,
        metavar="W1,W2,W3",
        help="airbench's block widths at --width 1 (default 64,256,256)",
    )
    g.add_argument("--bn-eps", type=number_type("bn_eps"), help="BN eps (default 1e-5)")
    g.add_argument(
        "--bn-momentum",
        type=number_type("bn_momentum"),
        help="BN momentum, PyTorch's convention (default 0.1; airbench94 0.4)",
    )
    g.add_argument(
        "--whitening-patch-size",
        type=number_type("whitening_patch_size"),
        metavar="K",
        help="whitening patch side (ResNet9: 3; airbench: 2)",
    )
    g.add_argument("--whitening-eps", type=number_type("whitening_eps"))
    g.add_argument(
        "--whitening-images",
        type=number_type("whitening_images"),
        metavar="N",
        help="training images the whitening filters come from",
    )
    g.add_argument(
        "--whitening-bias-epochs",
        type=number_type("whitening_bias_epochs"),
        metavar="E",
        help="airbench: train the whitening bias for the first E epochs, then freeze it "
        "(default 3)",
    )
    g.add_argument("--whitening-bias-init", choices=WHITENING_BIAS_INIT_CHOICES)
    g.add_argument("--head-unit-std", type=on_off, metavar="on|off")
    g.add_argument("--output-scale", type=number_type("output_scale"))
    g.add_argument(
        "--pad",
        type=number_type("pad"),
        metavar="PX",
        help="reflect padding = random translation ±PX (default 4; airbench 2)",
    )
    g.add_argument(
        "--flip",
        type=mode_type("flip", _FLIP_VALUES),
        metavar="|".join(FLIP_CHOICES),
        help="left-right flips in training (default random)",
    )
    g.add_argument(
        "--no-flip", dest="flip", action="store_false", help="no flips in training (= --flip none)"
    )
    g.add_argument(
        "--jitter",
        type=number_type("jitter"),
        help="brightness and contrast jitter ±J per image (default 0 = off)",
    )
    g.add_argument("--optimizer", choices=OPTIMIZER_CHOICES)
    g.add_argument(
        "--sgd-form",
        choices=SGD_FORM_CHOICES,
        help="seed (default): lr per mean gradient; airbench: lr and decay per 1024 "
        "examples, decoupled decay",
    )
    g.add_argument("--momentum", type=number_type("momentum"))
    g.add_argument("--weight-decay", type=number_type("weight_decay"))
    g.add_argument("--bias-lr-mult", type=number_type("bias_lr_mult"))
    g.add_argument("--head-lr-mult", type=number_type("head_lr_mult"))
    g.add_argument("--whitening-bias-lr-mult", type=number_type("whitening_bias_lr_mult"))
    g.add_argument("--muon-lr", type=number_type("muon_lr"))
    g.add_argument("--muon-momentum", type=number_type("muon_momentum"))
    g.add_argument("--muon-ns-steps", type=number_type("muon_ns_steps"))
    g.add_argument("--muon-renormalize-every", type=number_type("muon_renormalize_every"))
    g.add_argument(
        "--lr-schedule",
        choices=LR_SCHEDULE_CHOICES,
        help="piecewise (default), airbench (0.2 -> 1 at 23%% of the steps -> --lr-floor), "
        "linear_decay (1 -> --lr-floor)",
    )
    g.add_argument(
        "--lr-floor", type=number_type("lr_floor"), help="end of the decay, fraction of the peak"
    )
    g.add_argument("--lookahead", type=on_off, metavar="on|off")
    g.add_argument("--lookahead-every", type=number_type("lookahead_every"), metavar="K")
    g.add_argument(
        "--tta",
        type=mode_type("tta", _TTA_VALUES),
        metavar="|".join(TTA_CHOICES),
        help="test-time augmentation (default flip)",
    )
    g.add_argument(
        "--tta-fraction",
        type=number_type("tta_fraction"),
        help="selective TTA: share of each evaluation batch given the six views (default 0.25)",
    )


#: Flags of the parser that are not configuration fields.
_NOT_CONFIG = ("full", "preset", "list_presets", "plot", "checkpoint", "resume")


#: Flags that size a run: giving any of them on a CPU keeps the fixed CPU-sized
#: configuration (:data:`CPU_QUICK_OVERRIDES`, filling in the others) instead of the
#: measured airbench94 default (:mod:`train.cpu_default`).
_SIZING = ("preset", "network", "width", "train_subset", "epochs", "batch_size")

#: Measures step rates for the CPU default: ``measure(config_at)`` → images/s per width
#: (see :func:`train.cpu_default.measure_step_rates`).
RateProbe = Callable[[Callable[[Any], TrainConfig]], dict[float, float]]


def sizes_the_run(args: argparse.Namespace) -> bool:
    """Whether the flags set the run's size themselves (any of :data:`_SIZING`, or
    ``--full``): then a CPU run is not sized by measuring."""
    return getattr(args, "full", False) or any(
        getattr(args, name, None) is not None for name in _SIZING
    )


def config_from_args(
    args: argparse.Namespace,
    *,
    has_gpu: bool,
    measure: RateProbe | None = None,
    announce: Callable[[str], None] | None = None,
) -> tuple[TrainConfig, str | None]:
    """The validated config, and a note when a CPU-sized configuration was applied.

    On a CPU (no ``--full``): with no flag that sizes the run (:data:`_SIZING`), the
    airbench94 rung of :mod:`train.cpu_default` that fits this CPU, chosen from the step
    rates ``measure`` returns (default: measured now; ``announce`` is told first, since that
    takes a few seconds); otherwise :data:`CPU_QUICK_OVERRIDES` fills in the sizes not given.
    """
    given: dict[str, Any] = {k: v for k, v in vars(args).items() if k not in _NOT_CONFIG}
    note = None
    device = given.get("device", "auto")
    on_cpu = device == "cpu" or (device == "auto" and not has_gpu)
    preset = getattr(args, "preset", None)
    if on_cpu and not getattr(args, "full", False) and not sizes_the_run(args):
        return _cpu_default(given, measure, announce)
    if on_cpu and not getattr(args, "full", False):
        filled = {k: v for k, v in CPU_QUICK_OVERRIDES.items() if k not in given}
        if filled:
            given = {**filled, **given}
            shown = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in filled.items())
            note = (
                f"No GPU in use: running the CPU-sized configuration ({shown}); the full "
                "recipe takes hours on a CPU: add --full to run it anyway."
            )
    if preset is not None:
        from train.presets import preset_config

        return preset_config(preset, **given), note
    return TrainConfig().replace(**given), note


def _cpu_default(
    given: dict[str, Any],
    measure: RateProbe | None,
    announce: Callable[[str], None] | None,
) -> tuple[TrainConfig, str]:
    """airbench94 at the :mod:`train.cpu_default` rung that fits this CPU, with the other
    flags the user gave; and the line that says so."""
    from train import cpu_default
    from train.presets import preset_config

    def config_at(rung: cpu_default.CpuRung) -> TrainConfig:
        return preset_config(cpu_default.CPU_PRESET, **{**given, **rung.overrides()})

    config_at(cpu_default.CPU_LADDER[0])  # a bad flag fails now, before any measuring
    if measure is None and os.environ.get("WORLD_SIZE", "1") != "1":
        # Under torchrun every process would time its own steps and might size its run
        # differently: all take the first rung instead.
        measure = lambda config_at: {}  # noqa: E731
    if measure is None:
        if announce is not None:
            announce(
                "No GPU in use: running the airbench94 recipe sized for this CPU; timing a "
                "few training steps to choose the size (--full runs a full recipe instead)"
            )
        measure = cpu_default.measure_step_rates
    rates = measure(config_at)
    rung = cpu_default.choose_rung(rates)
    return config_at(rung), cpu_default.describe_choice(rung, rates)


def load_data(config: TrainConfig):
    """The data set with its subsets taken; notices printed. Raises DataError."""
    import warnings

    from train.data import load_cifar10

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        data = load_cifar10(config.data_dir, download=config.download)
    for warning in caught:
        say(f"note: {warning.message}", flush=True)
    return data


def take_subsets(data: Any, config: TrainConfig) -> Any:
    """The subsets the config asks for. Raises :class:`ConfigError` when a subset asks for
    more images than the split holds, or a batch for more than the training images."""
    from train.data import DataError

    try:
        data = data.subset(config.train_subset, config.test_subset)
    except DataError as error:  # a value out of this data set's range: a flag's fault
        raise ConfigError(str(error)) from None
    available = data.train_images.shape[0]
    if config.batch_size > available:
        raise ConfigError(
            f"--batch-size {config.batch_size:,} is more than the {available:,} "
            "training images: no step would run; use a smaller --batch-size"
        )
    return data


def fail(code: int, message: str) -> int:
    """Report ``message`` on stderr in one line (rank 0 only under torchrun); return
    ``code``."""
    if not quiet():
        print(f"error: {message}", file=sys.stderr, flush=True)
    return code
