"""Process set-up for benchmarking, and the facts every result file names.

:func:`configure` is called once before anything is compiled or timed (by
``bench/conftest.py``): the FX-graph and AOT-autograd caches off, so that Inductor lowers
every graph again and counts its bytes (its compiled-kernel cache stays on, so a second run
on the same machine compiles faster than a fresh one), a recompile limit large enough for
one compiled reference per BN shape, and ``torch.backends.cudnn.benchmark`` on as the
trainer sets it.
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any

import torch

from bench.counters import disable_compile_caches
from bench.timing import cpu_model, device_name

__all__ = ["configure", "environment", "resolve_device"]

_configured = False


def configure() -> None:
    """Set the process up for benchmarking (idempotent)."""
    global _configured
    if _configured:
        return
    disable_compile_caches()
    import torch._dynamo.config as dynamo_config

    # One compiled reference per BN shape and per step shape; the default limit of 8
    # graphs per function would silently fall back to eager half-way through the suite.
    dynamo_config.recompile_limit = max(dynamo_config.recompile_limit, 64)
    dynamo_config.accumulated_recompile_limit = max(dynamo_config.accumulated_recompile_limit, 1024)
    if torch.cuda.is_available():
        torch.backends.cudnn.benchmark = True
    _configured = True


def resolve_device(requested: str = "auto") -> torch.device:
    """``auto`` → the first GPU if there is one, else the CPU."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"--device {requested}: this torch ({torch.__version__}) sees no GPU")
    return device


def _version(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except Exception:  # noqa: BLE001 - a missing or broken package is reported as None
        return None


def environment(device: torch.device) -> dict[str, Any]:
    """Device, versions and threads: what a results table must name."""
    env: dict[str, Any] = {
        "device": device_name(device),
        "device_type": device.type,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "pytest_benchmark": _version("pytest_benchmark"),
        "cuda": torch.version.cuda,
        "executable": sys.executable,
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env.update(
            gpu_name=props.name,
            gpu_capability=f"{props.major}.{props.minor}",
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            gpu_l2_bytes=int(getattr(props, "L2_cache_size", 0)),
            cudnn=torch.backends.cudnn.version(),
        )
    return env
