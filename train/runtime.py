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

    def autocast(self) -> contextlib.AbstractContextManager:
        """Mixed precision for the forward pass; a no-op in fp32."""
        if self.dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

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


def resolve_runtime(config: TrainConfig) -> Runtime:
    device = resolve_device(config.device)
    backend = resolve_backend(config.backend, device)
    precision = config.precision
    if precision == "auto":
        precision = "fp16" if device.type == "cuda" else "fp32"
    if precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError("--precision bf16 needs an Ampere or newer GPU; use fp16")
    return Runtime(
        device=device,
        backend=backend,
        dtype=_DTYPES[precision],
        channels_last=device.type == "cuda",
    )
