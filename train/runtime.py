"""Where and how a run executes: device, kernel backend, precision, memory format."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from train.config import ConfigError, TrainConfig

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def compiles_model(backend: str, device: torch.device) -> bool:
    """Whether the whole model is wrapped in ``torch.compile``: for ``compile``, and for
    ``triton`` on a GPU (the Triton ops are custom ops that the compiled graph calls as they
    are, while Inductor fuses the rest: the convolutions' epilogues, the loss, the optimiser
    arithmetic). Under the CPU interpreter ``triton`` stays eager: compiling around
    interpreted kernels only adds minutes of compile."""
    return backend == "compile" or (backend == "triton" and device.type == "cuda")


@dataclass(frozen=True)
class Runtime:
    """The resolved execution choices of a run (what ``auto`` turned into)."""

    device: torch.device
    backend: str  # "eager" | "compile" | "triton"
    dtype: torch.dtype  # the network's compute dtype (autocast) and input dtype
    channels_last: bool

    @property
    def device_name(self) -> str:
        if self.device.type == "cuda":
            return torch.cuda.get_device_name(self.device)
        import platform

        return (
            f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
        )

    def autocast(self, cache: bool = True) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass; a no-op in fp32. ``cache``: autocast's cache
        of cast weights (off inside a CUDA-graph capture)."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=cache)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def resolve_device(requested: str) -> torch.device:
    """``auto`` → the first CUDA GPU if there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(requested)
    except RuntimeError as error:
        raise ConfigError(
            f"--device {requested!r} is not a device name (cpu, cuda, cuda:1)"
        ) from error
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {requested} asked for a GPU but this torch sees none "
                f"(torch {torch.__version__}): install a CUDA build of torch on a machine "
                "with an NVIDIA GPU, or use --device cpu"
            )
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ConfigError(f"--device {requested}: only {torch.cuda.device_count()} GPU(s)")
    elif device.type != "cpu":
        raise ConfigError(f"--device {requested}: only cpu and cuda devices are supported")
    return device


def resolve_backend(requested: str, device: torch.device) -> str:
    """``auto`` → Triton kernels on a GPU (torch.compile if Triton is missing), eager on the
    CPU, where compiling the model costs more than it saves in a minutes-long run."""
    from kernels import triton_available  # imported late: TRITON_INTERPRET must be set first

    if requested == "auto":
        if device.type == "cuda":
            return "triton" if triton_available() else "compile"
        return "eager"
    if requested == "triton":
        if not triton_available():
            raise ConfigError(
                "--backend triton needs the triton package (Linux): "
                "pip install triton, or use --backend compile"
            )
        if device.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ConfigError(
                "--backend triton on the CPU runs Triton's interpreter, which must be switched "
                "on before the kernels are imported: run with TRITON_INTERPRET=1 (slow; "
                "correctness only)"
            )
    return requested


def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The instruction-set flags the kernel reports for the first CPU (empty where there is
    no ``/proc/cpuinfo``: then nothing is assumed)."""
    try:
        with open(path) as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """Whether the CPU computes in bf16 natively (AVX512-BF16 or AMX-BF16). Without either,
    oneDNN emulates bf16 through fp32 and a bf16 step is slower than an fp32 one."""
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_bf16", "amx_bf16"} & flags)


def auto_precision(device: torch.device, flags: frozenset[str] | None = None) -> str:
    """``--precision auto``: fp16 on a GPU; on a CPU bf16 where it is native, else fp32.

    Measured: on a CPU with AMX, the full-width step ran 2.1× faster in bf16 than in fp32
    (134 vs 63 img/s); on this project's AVX2-only CI machine (emulated bf16) the CPU-sized
    step ran about 5× slower in bf16 (eager, side by side, alternating)."""
    if device.type == "cuda":
        return "fp16"
    return "bf16" if cpu_has_native_bf16(flags) else "fp32"


def resolve_runtime(config: TrainConfig) -> Runtime:
    device = resolve_device(config.device)
    backend = resolve_backend(config.backend, device)
    precision = config.precision
    if precision == "auto":
        precision = auto_precision(device)
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16 needs an Ampere or newer GPU; use fp16")
    return Runtime(
        device=device,
        backend=backend,
        dtype=_DTYPES[precision],
        # channels_last everywhere: the GPU kernels are tuned for it, and on both CPUs it
        # was measured on it beat NCHW (fp32: the full-width step 1.13× faster on a CPU with
        # AMX; one CPU-sized epoch 27.0 and 27.6 s against 29.7 and 28.0 s in NCHW on the
        # AVX2 CI machine, the trainer itself, alternating).
        channels_last=True,
    )
