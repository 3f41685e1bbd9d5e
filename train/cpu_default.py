"""What ``python -m train`` runs on a machine without a GPU: the best accuracy that fits in a
few minutes on the CPU it finds.

The recipe is airbench94's (the ``airbench94`` preset: a third of ResNet9's FLOPs per image,
and the most accurate per second of anything this project trains), at batch 256 (its 1,024
would leave a handful of steps per epoch on a CPU-sized subset). What grows with the machine
is the size of the run, along :data:`CPU_LADDER`: a wider network, then more of the training
set. Which rung fits is measured, not guessed from the CPU's name: :func:`measure_step_rates`
times a few training steps of each width on random data (about 10 s on 2 AVX2 cores), and
:func:`choose_rung` takes the last rung whose predicted training time fits
:data:`CPU_SECONDS`. The first line of the run names the rung and its flags, so that the
run can be repeated exactly anywhere (``--width … --train-subset … --epochs …`` skip the
measurement).

Each rung is meant to be at least as accurate as the one before it: at one width, more
images; between widths, measured on ``../shared/cifar10`` (CPU "AMD EPYC", 2 cores, AVX2,
fp32, eager, one run each): see :data:`CPU_LADDER`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

#: The preset every rung runs, and its batch on a CPU.
CPU_PRESET = "airbench94"
CPU_BATCH = 256
#: "A few minutes": the training time (as the seed counted it) a rung must be predicted to
#: fit. Evaluation (six-view TTA) and start-up come on top: about 40 s more at width 0.5 here.
CPU_SECONDS = 180.0


@dataclass(frozen=True)
class CpuRung:
    """One size of the CPU run: airbench94 at ``width`` on the first ``train_subset``
    training images for ``epochs`` epochs, batch :data:`CPU_BATCH`."""

    width: float
    train_subset: int
    epochs: float

    @property
    def images(self) -> float:
        """Training images the run steps through (its cost at this width)."""
        return self.train_subset * self.epochs

    def overrides(self) -> dict[str, Any]:
        """The configuration fields this rung sets (on top of :data:`CPU_PRESET`)."""
        return {
            "width": self.width,
            "train_subset": self.train_subset,
            "epochs": self.epochs,
            "batch_size": CPU_BATCH,
        }

    def flags(self) -> str:
        """The command line that runs this rung without the measurement."""
        return f"--preset {CPU_PRESET} " + " ".join(
            f"--{name.replace('_', '-')} {value}" for name, value in self.overrides().items()
        )


#: Cheapest first: a wider network, then more of the training set at that width, then the
#: full width on all of it. Measured on ../shared/cifar10 (AMD EPYC, 2 cores, AVX2, fp32,
#: eager, six-view TTA): width 0.25 on 10,000 images × 5 epochs 68.66% (mean of seeds
#: 0-3); width 0.5, same data, 72.79% (seeds 0-2); width 0.5 on 20,000 images 81.04%
#: (seeds 0-2); width 0.5 on all 50,000 images 86.41% (seeds 0-2, about 7 minutes each).
#: (Width 1 on 10,000 images gave 76.83%, seeds 0-2, in 420 s: dearer than width 0.5 on
#: more images, which is why the ladder widens only on the whole set.)
CPU_LADDER: tuple[CpuRung, ...] = (
    CpuRung(0.25, 10_000, 5),
    CpuRung(0.5, 10_000, 5),
    CpuRung(0.5, 20_000, 5),
    CpuRung(0.5, 30_000, 5),
    CpuRung(0.5, 50_000, 5),
    CpuRung(1.0, 50_000, 5),
)


def choose_rung(
    rates: Mapping[float, float], seconds: float = CPU_SECONDS, ladder=CPU_LADDER
) -> CpuRung:
    """The last rung of ``ladder`` whose predicted training time (its images over the step
    rate of its width, ``rates[width]`` in images/s) fits in ``seconds``; the first rung when
    none does. A width missing from ``rates`` (not measured) does not fit."""
    chosen = ladder[0]
    for rung in ladder:
        rate = rates.get(rung.width)
        if rate and rung.images / rate <= seconds:
            chosen = rung
    return chosen


def predicted_seconds(rung: CpuRung, rates: Mapping[float, float]) -> float | None:
    """The training time ``rung`` is predicted to take at ``rates`` (None if unmeasured)."""
    rate = rates.get(rung.width)
    return rung.images / rate if rate else None


def measure_step_rates(
    config_at: Callable[[CpuRung], Any],
    seconds: float = CPU_SECONDS,
    ladder=CPU_LADDER,
    steps: int = 2,
) -> dict[float, float]:
    """Images per second of a training step at each width of ``ladder``, narrowest first,
    stopping at the first width whose cheapest rung would not fit ``seconds`` (a wider one
    cannot fit either, so it is not built). ``config_at(rung)``: the run's configuration at
    that rung (its runtime, precision and backend are the run's)."""
    rates: dict[float, float] = {}
    for width in sorted({rung.width for rung in ladder}):
        cheapest = min((r for r in ladder if r.width == width), key=lambda r: r.images)
        rates[width] = step_rate(config_at(cheapest), steps)
        if cheapest.images / rates[width] > seconds:
            break
    return rates


def step_rate(config: Any, steps: int = 2) -> float:
    """Images per second of ``config``'s training step (forward, loss, backward, optimiser
    step) on random data in the run's precision and memory format, after one untimed step
    (oneDNN builds its primitives there). Augmentation, the weight average and lookahead are
    left out: they are a few percent of a CPU step, and the choice only needs the scale."""
    import torch
    import torch.nn.functional as F

    from train.build import build_network, build_optimizer, build_whitening
    from train.runtime import resolve_runtime

    runtime = resolve_runtime(config)
    generator = torch.Generator().manual_seed(0)
    model = build_network(config, runtime.backend)
    images = torch.randint(0, 256, (config.batch_size, 3, 32, 32), dtype=torch.uint8)
    whitening = build_whitening(config, images)
    if whitening is not None:
        model.set_whitening(whitening.filters)
    memory = torch.channels_last if runtime.channels_last else torch.contiguous_format
    model = model.to(runtime.device, memory_format=memory).train()
    optimizer = build_optimizer(model, config)
    inputs = torch.randn(config.batch_size, 3, 32, 32, generator=generator)
    inputs = inputs.to(runtime.device, memory_format=memory)
    labels = torch.randint(0, 10, (config.batch_size,), generator=generator).to(runtime.device)
    low_precision = runtime.dtype != torch.float32

    def one_step() -> None:
        with torch.autocast(runtime.device.type, dtype=runtime.dtype, enabled=low_precision):
            loss = F.cross_entropy(model(inputs).float(), labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    one_step()
    start = time.perf_counter()
    for _ in range(steps):
        one_step()
    return steps * config.batch_size / (time.perf_counter() - start)


def describe_choice(rung: CpuRung, rates: Mapping[float, float]) -> str:
    """The run's first line: what it runs, why, and how to run it again or in full."""
    measured = ", ".join(f"width {w:g}: {r:,.0f} img/s" for w, r in sorted(rates.items()))
    predicted = predicted_seconds(rung, rates)
    fits = f"about {predicted:.0f} s of training" if predicted else "the smallest size"
    return (
        f"No GPU in use: running airbench94 sized for this CPU ({rung.flags()}; {fits} at "
        f"the measured step rates, {measured}); the full recipes are one flag away: --full "
        f"(the seed's ResNet9) or --preset {CPU_PRESET} --full."
    )
