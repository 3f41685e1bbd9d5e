"""Ahead-of-time compilation of the Triton kernels for NVIDIA GPUs, with no GPU needed.

Triton's own compiler runs the whole pipeline (Triton IR → PTX → cubin) for a named target
without touching a driver, so a CPU-only machine can still answer the questions that decide
whether a kernel is any good on an A100 (``sm_80``) or H100 (``sm_90a``):

* how many registers a thread uses and whether anything spills to local memory,
* how much static and dynamic shared memory a block needs,
* how wide the global loads and stores are in the final SASS (``LDG.E.128`` means 16-byte
  vector loads; ``LDG.E.U16`` means one fp16 per instruction, a sign that an alignment hint
  is missing).

Each kernel family builds its :class:`~kernels._common.AotSpec` list in its ``specs.py``;
:func:`all_specs` gathers them at the trainer's configurations (the ghost-BN sites come from
the models, through :func:`bench.shapes.bn_sites` for ResNet9 and
:func:`bench.shapes.airbench_bn_sites` for airbench94), :func:`compile_spec` compiles one and
measures it, and :func:`report` does every spec for several architectures. From the shell::

    python -m bench.aot                        # every spec, sm_80 and sm_90
    python -m bench.aot --arch 90 --json out.json

The numbers come from the tools that ship inside the ``triton`` wheel: ``ptxas -v`` (rerun on
Triton's PTX with Triton's own flags) for registers and spills, ``cuobjdump
--dump-resource-usage`` on the cubin for REG/STACK/SHARED/LOCAL, and ``cuobjdump -sass`` for
the load/store instructions.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.shapes import AIRBENCH_PRESET, QUARTER, RECIPE_BATCH, BNSite, airbench_bn_sites, bn_sites
from kernels._common import AotSpec
from kernels.augment import aot_specs as augment_aot_specs
from kernels.ghost_bn_act import AotSite
from kernels.ghost_bn_act import aot_specs as ghost_bn_act_aot_specs

#: Architectures reported by default: A100 (sm_80) and H100 (sm_90, compiled as sm_90a).
DEFAULT_ARCHS: tuple[int, ...] = (80, 90)

#: Triton's argument attribute for "this pointer/integer is a multiple of 16" — the hint the
#: JIT attaches when it sees a 16-byte-aligned pointer or an int divisible by 16.
DIVISIBILITY_ATTR: list[Any] = ["tt.divisibility", 16]

_INSTALL_HINT = (
    "install the Linux triton wheel (pip install triton), which bundles the NVIDIA backend "
    "together with ptxas and cuobjdump; or point TRITON_PTXAS_PATH / TRITON_CUOBJDUMP_PATH at "
    "a CUDA toolkit's binaries"
)


@dataclass(frozen=True)
class KernelReport:
    """What one compiled kernel costs on one architecture.

    Register and spill figures are per thread; shared-memory figures are per block.
    ``arch`` is the name Triton compiled for (``"sm_80"``, ``"sm_90a"``) and ``capability``
    the number asked for (80, 90). ``registers`` is the cubin's count (cuobjdump);
    ``ptxas_registers`` is what the ``ptxas -v`` rerun printed — they agree when the rerun
    reproduces Triton's compile, which the tests check. On sm_90 ``static_shared_bytes``
    includes the 1 KiB ``.nv.shared.reserved`` block the toolchain adds to any kernel that
    uses shared memory; ``dynamic_shared_bytes`` is Triton's own allocation
    (``metadata.shared``), which the launcher requests at run time.
    ``global_loads``/``global_stores`` count SASS opcodes (``"LDG.E.128"`` → 3);
    ``load_widths``/``store_widths`` fold them into access widths in bits (``{128: 3}``).
    """

    label: str
    kernel: str
    arch: str
    capability: int
    num_warps: int
    num_stages: int
    registers: int
    ptxas_registers: int
    spill_store_bytes: int
    spill_load_bytes: int
    stack_bytes: int
    local_bytes: int
    static_shared_bytes: int
    dynamic_shared_bytes: int
    local_memory_instructions: int
    global_loads: dict[str, int]
    global_stores: dict[str, int]
    load_widths: dict[int, int]
    store_widths: dict[int, int]
    has_128bit_loads: bool
    has_128bit_stores: bool
    ptxas_verbose: str
    divisibility_hints: int  # arguments carrying tt.divisibility=16 in Triton's IR
    compile_seconds: float = field(compare=False)

    @property
    def spill_bytes(self) -> int:
        """Spill stores plus spill loads: 0 for a kernel that fits in registers."""
        return self.spill_store_bytes + self.spill_load_bytes

    @property
    def shared_bytes(self) -> int:
        """Static plus dynamic shared memory per block."""
        return self.static_shared_bytes + self.dynamic_shared_bytes

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (width keys become strings, as JSON requires)."""
        out = dataclasses.asdict(self)
        out["load_widths"] = {str(k): v for k, v in self.load_widths.items()}
        out["store_widths"] = {str(k): v for k, v in self.store_widths.items()}
        out["spill_bytes"] = self.spill_bytes
        out["shared_bytes"] = self.shared_bytes
        return out


# --------------------------------------------------------------------------------------------
# Toolchain discovery
# --------------------------------------------------------------------------------------------


def _import_triton() -> Any:
    """Import triton and its NVIDIA backend, or say what to install."""
    try:
        import triton
    except ImportError as e:
        raise RuntimeError(
            f"ahead-of-time compilation needs the triton package: {_INSTALL_HINT}"
        ) from e
    try:
        importlib.import_module("triton.backends.nvidia.compiler")
    except ImportError as e:
        raise RuntimeError(
            f"triton {triton.__version__} has no NVIDIA backend (triton.backends.nvidia): "
            f"{_INSTALL_HINT}"
        ) from e
    return triton


def _bundled_tool(name: str) -> str | None:
    """Path of a tool in the triton wheel's ``backends/nvidia/bin``, or on ``PATH``."""
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name
    if path.is_file() and os.access(path, os.X_OK):
        return str(path)
    return shutil.which(name)


def ptxas_path(arch: int) -> str:
    """The ptxas Triton itself uses for ``arch``.

    Triton 3.9 compiles sm_90+ with the newer ``ptxas-blackwell`` and older targets with
    ``ptxas``; asking its backend (rather than guessing) keeps our rerun identical to the
    one that produced the cubin. ``TRITON_PTXAS_PATH`` is honoured through ``triton.knobs``.
    """
    _import_triton()
    nv = importlib.import_module("triton.backends.nvidia.compiler")
    try:
        if hasattr(nv, "get_ptxas"):
            return nv.get_ptxas(arch).path
        import triton

        return triton.knobs.nvidia.ptxas.path
    except (RuntimeError, AttributeError, OSError):
        path = _bundled_tool("ptxas")
        if path is None:
            raise RuntimeError(f"cannot find ptxas for sm_{arch}: {_INSTALL_HINT}") from None
        return path


def cuobjdump_path() -> str:
    """The cuobjdump from ``TRITON_CUOBJDUMP_PATH``, the triton wheel, or ``PATH``."""
    _import_triton()
    try:
        import triton

        return triton.knobs.nvidia.cuobjdump.path
    except (RuntimeError, AttributeError, OSError):
        path = _bundled_tool("cuobjdump")
        if path is None:
            raise RuntimeError(f"cannot find cuobjdump: {_INSTALL_HINT}") from None
        return path


def sm_name(arch: int) -> str:
    """The ``--gpu-name`` Triton compiles ``arch`` for: ``sm_80``, but ``sm_90a`` for Hopper.

    Triton targets the arch-specific ``sm_90a`` (wgmma, TMA) rather than plain ``sm_90``;
    ptxas rejects sm_90a PTX compiled with ``--gpu-name sm_90``, so the names must match.
    """
    nv = importlib.import_module("triton.backends.nvidia.compiler")
    if hasattr(nv, "sm_arch_from_capability"):
        return nv.sm_arch_from_capability(arch)
    return f"sm_{arch}{'a' if arch >= 90 else ''}"


def _run(cmd: Sequence[str]) -> str:
    """Run a tool, returning stdout+stderr; a failure is a RuntimeError with the tool's words."""
    proc = subprocess.run(list(cmd), capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{Path(cmd[0]).name} failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"{proc.stdout}{proc.stderr}"
        )
    return proc.stdout + proc.stderr


# --------------------------------------------------------------------------------------------
# Turning an AotSpec into Triton compiler inputs
# --------------------------------------------------------------------------------------------


def divisibility_attrs(spec: AotSpec, arg_names: Sequence[str]) -> dict[tuple[int, ...], list]:
    """The ``attrs`` for ``ASTSource``: ``{(arg_index,): [["tt.divisibility", 16]]}``.

    This is the format the JIT itself builds (``JITFunction._pack_args`` →
    ``BaseBackend.parse_attr("D")``): keys are paths into the argument list — a 1-tuple
    holding the argument's position in the kernel's *full* parameter list, constexprs
    included — and values are lists of ``[attribute name, value]`` pairs that the code
    generator sets on the function argument.
    """
    attrs: dict[tuple[int, ...], list] = {}
    for name in spec.divisible_by_16:
        if name not in arg_names:
            raise ValueError(
                f"{spec.label}: divisible_by_16 names {name!r}, which is not an "
                f"argument of {arg_names}"
            )
        kind = spec.signature.get(name)
        if kind is None or kind == "constexpr" or not (kind.startswith("*") or kind[0] in "iu"):
            raise ValueError(
                f"{spec.label}: divisible_by_16 argument {name!r} has type {kind!r};"
                " only pointer and integer arguments take the hint"
            )
        attrs[(arg_names.index(name),)] = [list(DIVISIBILITY_ATTR)]
    return attrs


def _check_signature(spec: AotSpec, arg_names: Sequence[str]) -> dict[str, str]:
    """The spec's signature in parameter order, after checking it covers every argument."""
    missing = [a for a in arg_names if a not in spec.signature]
    extra = [a for a in spec.signature if a not in arg_names]
    if missing or extra:
        raise ValueError(
            f"{spec.label}: signature must name every kernel argument exactly; "
            f"missing {missing}, unknown {extra}"
        )
    unset = [a for a in arg_names if spec.signature[a] == "constexpr" and a not in spec.constexprs]
    if unset:
        raise ValueError(f"{spec.label}: constexpr arguments without a value: {unset}")
    return {a: spec.signature[a] for a in arg_names}


# --------------------------------------------------------------------------------------------
# Parsing the tools' output
# --------------------------------------------------------------------------------------------

_SASS_OP = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P[T0-9]+\s+)?([A-Z][A-Z0-9_.]*)")
_WIDTH_TOKENS = {"U8": 8, "S8": 8, "U16": 16, "S16": 16, "64": 64, "128": 128, "256": 256}


def sass_opcodes(sass: str) -> Counter[str]:
    """Count every SASS opcode (with its modifiers, predicate stripped) in a disassembly."""
    ops: Counter[str] = Counter()
    for line in sass.splitlines():
        m = _SASS_OP.match(line)
        if m:
            ops[m.group(1)] += 1
    return ops


def access_width(opcode: str) -> int:
    """Bits one LDG/STG/LDGSTS moves: ``LDG.E.128`` → 128, ``LDG.E.U16`` → 16, ``LDG.E`` → 32.

    Only exact modifier tokens count, so cache hints such as ``LTC128B`` are not mistaken
    for a width.
    """
    for token in reversed(opcode.split(".")[1:]):
        if token in _WIDTH_TOKENS:
            return _WIDTH_TOKENS[token]
    return 32


def _global_accesses(ops: Counter[str]) -> tuple[dict[str, int], dict[str, int]]:
    # LDGSTS (cp.async, global → shared) is a global read too; count it with the loads.
    loads = {op: n for op, n in sorted(ops.items()) if op.split(".")[0] in ("LDG", "LDGSTS")}
    stores = {op: n for op, n in sorted(ops.items()) if op.split(".")[0] == "STG"}
    return loads, stores


def _widths(ops: dict[str, int]) -> dict[int, int]:
    out: Counter[int] = Counter()
    for op, n in ops.items():
        out[access_width(op)] += n
    return dict(sorted(out.items()))


def _field(pattern: str, text: str, what: str, tool: str) -> int:
    m = re.search(pattern, text)
    if m is None:
        raise RuntimeError(f"could not find {what} in {tool} output:\n{text}")
    return int(m.group(1))


def parse_ptxas_verbose(log: str) -> dict[str, int]:
    """Registers, stack and spill bytes from ``ptxas -v``."""
    return {
        "registers": _field(r"Used (\d+) registers", log, "the register count", "ptxas -v"),
        "stack_bytes": _field(r"(\d+) bytes stack frame", log, "the stack frame", "ptxas -v"),
        "spill_store_bytes": _field(r"(\d+) bytes spill stores", log, "spill stores", "ptxas -v"),
        "spill_load_bytes": _field(r"(\d+) bytes spill loads", log, "spill loads", "ptxas -v"),
    }


def parse_resource_usage(text: str, kernel: str) -> dict[str, int]:
    """REG/STACK/SHARED/LOCAL of ``kernel`` from ``cuobjdump --dump-resource-usage``."""
    block = re.search(rf"Function {re.escape(kernel)}:\s*\n\s*(.*)", text)
    line = block.group(1) if block else text
    return {
        key.lower(): _field(rf"\b{key}:(\d+)", line, key, "cuobjdump --dump-resource-usage")
        for key in ("REG", "STACK", "SHARED", "LOCAL")
    }


def _ptxas_summary(log: str) -> str:
    """ptxas's own resource lines, prefixes dropped, joined by "; "."""
    keep = (
        re.sub(r"^ptxas[\w-]* info\s*:\s*", "", line.strip())
        for line in log.splitlines()
        if re.search(r"Used \d+ registers|bytes stack frame|bytes smem", line)
    )
    return "; ".join(keep)


def _ptxas_flags(options: Any) -> list[str]:
    """The flags Triton's ``make_cubin`` passes ptxas, so the rerun allocates identically."""
    flags = ["-lineinfo", "-v", "--regAllocOptLevel=2"]
    if not getattr(options, "enable_fp_fusion", True):
        flags.append("--fmad=false")
    if getattr(options, "ptx_options", None):
        flags += options.ptx_options.split(" ")
    return flags


# --------------------------------------------------------------------------------------------
# Compiling and measuring
# --------------------------------------------------------------------------------------------

# Compiled results per process: the bench suite and the tests ask for the same specs. Keyed by
# label and arch plus the spec's contents, so two specs that reuse a label cannot collide.
_CACHE: dict[tuple[Any, ...], KernelReport] = {}
_CACHE_LOCK = threading.Lock()


def _spec_key(spec: AotSpec, arch: int) -> tuple[Any, ...]:
    kernel = getattr(spec.kernel, "fn", spec.kernel)
    return (
        spec.label,
        int(arch),
        getattr(kernel, "__module__", ""),
        getattr(kernel, "__qualname__", repr(kernel)),
        tuple(spec.signature.items()),
        repr(sorted(spec.constexprs.items())),
        spec.num_warps,
        spec.num_stages,
        tuple(spec.divisible_by_16),
    )


def compile_kernel(spec: AotSpec, arch: int) -> Any:
    """``triton.compile`` one spec for ``sm_<arch>``; returns Triton's ``CompiledKernel``.

    FP fusion is passed explicitly at the value the JIT would pick by default
    (``TRITON_DEFAULT_FP_FUSION``, on unless set to 0): same code as at run time, and no
    "TRITON_DEFAULT_FP_FUSION is unset" warning from Triton 3.9.
    """
    triton = _import_triton()
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if _interpreter_on():
        raise RuntimeError(
            "compile_kernel cannot run while TRITON_INTERPRET=1 is set (the interpreter rewires "
            "triton.language); use compile_spec, which compiles in a separate process then"
        )
    fn = spec.kernel
    arg_names = list(fn.arg_names)
    signature = _check_signature(spec, arg_names)
    src = ASTSource(
        fn=fn,
        signature=signature,
        constexprs=dict(spec.constexprs),
        attrs=divisibility_attrs(spec, arg_names),
    )
    options: dict[str, Any] = {"num_warps": spec.num_warps, "num_stages": spec.num_stages}
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        options["enable_fp_fusion"] = bool(knobs.language.default_fp_fusion)
    return triton.compile(src, target=GPUTarget("cuda", int(arch), 32), options=options)


def compile_spec(spec: AotSpec, arch: int) -> KernelReport:
    """Compile ``spec`` for ``sm_<arch>`` (80, 86, 89, 90, …) and measure the result.

    Cached per process. Raises RuntimeError when triton, its NVIDIA backend, ptxas or
    cuobjdump is missing, and ValueError when the spec does not match its kernel.
    """
    key = _spec_key(spec, arch)
    with _CACHE_LOCK:
        if key in _CACHE:
            return _CACHE[key]
    if _interpreter_on():
        return compile_specs([spec], [arch])[0]
    t0 = time.perf_counter()
    kernel = compile_kernel(spec, arch)
    name = kernel.metadata.name
    ptx, cubin = kernel.asm["ptx"], kernel.asm["cubin"]
    ptxas, cuobjdump = ptxas_path(arch), cuobjdump_path()
    with tempfile.TemporaryDirectory(prefix="kernels-aot-") as tmp:
        ptx_file, cubin_file = Path(tmp, f"{name}.ptx"), Path(tmp, f"{name}.cubin")
        ptx_file.write_text(ptx)
        cubin_file.write_bytes(cubin)
        ptxas_log = _run(
            [
                ptxas,
                *_ptxas_flags(kernel.metadata),
                f"--gpu-name={sm_name(arch)}",
                str(ptx_file),
                "-o",
                str(Path(tmp, "rerun.cubin")),
            ]
        )
        usage = parse_resource_usage(
            _run([cuobjdump, "--dump-resource-usage", str(cubin_file)]), name
        )
        sass = _run([cuobjdump, "-sass", str(cubin_file)])
    verbose = parse_ptxas_verbose(ptxas_log)
    ops = sass_opcodes(sass)
    loads, stores = _global_accesses(ops)
    load_widths, store_widths = _widths(loads), _widths(stores)
    report_ = KernelReport(
        label=spec.label,
        kernel=name,
        arch=sm_name(arch),
        capability=int(arch),
        num_warps=int(kernel.metadata.num_warps),
        num_stages=int(kernel.metadata.num_stages),
        # the cubin's own count is authoritative; ptxas -v on the same PTX agrees with it
        registers=usage["reg"],
        ptxas_registers=verbose["registers"],
        spill_store_bytes=verbose["spill_store_bytes"],
        spill_load_bytes=verbose["spill_load_bytes"],
        stack_bytes=usage["stack"],
        local_bytes=usage["local"],
        static_shared_bytes=usage["shared"],
        dynamic_shared_bytes=int(kernel.metadata.shared),
        # LDL/STL in the real cubin: an independent sign of spilling or local arrays
        local_memory_instructions=sum(
            n for op, n in ops.items() if op.split(".")[0] in ("LDL", "STL")
        ),
        global_loads=loads,
        global_stores=stores,
        load_widths=load_widths,
        store_widths=store_widths,
        has_128bit_loads=load_widths.get(128, 0) > 0,
        has_128bit_stores=store_widths.get(128, 0) > 0,
        ptxas_verbose=_ptxas_summary(ptxas_log),
        divisibility_hints=kernel.asm["ttir"].count("tt.divisibility = 16"),
        compile_seconds=time.perf_counter() - t0,
    )
    with _CACHE_LOCK:
        _CACHE[key] = report_
    return report_


# --------------------------------------------------------------------------------------------
# Compiling while the interpreter is on
# --------------------------------------------------------------------------------------------


def _interpreter_on() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _validate(spec: AotSpec) -> None:
    """The spec's mistakes as ValueError here, before any process is started."""
    arg_names = list(spec.kernel.arg_names)
    _check_signature(spec, arg_names)
    divisibility_attrs(spec, arg_names)
    for name, value in spec.constexprs.items():
        if not isinstance(value, (bool, int, float, str)):
            raise ValueError(
                f"{spec.label}: constexpr {name}={value!r} cannot be sent to the "
                "compiler process (use bool/int/float/str values)"
            )


def _request(spec: AotSpec, arch: int) -> dict[str, Any]:
    fn = getattr(spec.kernel, "fn", spec.kernel)
    return {
        "module": fn.__module__,
        "name": fn.__qualname__,
        "label": spec.label,
        "signature": spec.signature,
        "constexprs": spec.constexprs,
        "num_warps": spec.num_warps,
        "num_stages": spec.num_stages,
        "divisible_by_16": list(spec.divisible_by_16),
        "arch": int(arch),
    }


def _compile_in_child(jobs: Sequence[tuple[AotSpec, int]]) -> list[KernelReport]:
    """Compile many (spec, arch) pairs in one fresh Python process with the interpreter off.

    Under ``TRITON_INTERPRET=1`` the interpreter rewires parts of ``triton.language`` for the
    rest of the process once a kernel has run, which the code generator cannot use. A child
    process that imports each kernel anew (by module and name) sees plain Triton, whatever
    this process has run; only JSON crosses the boundary, and one child serves a whole batch.
    """
    _import_triton()  # a missing triton is reported here, not from inside the child
    for spec, _ in jobs:
        _validate(spec)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    # Each kernel's module must import in the child as it did here (test modules live on
    # sys.path entries that pytest added).
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    child = subprocess.run(
        [sys.executable, "-m", "bench.aot", "--child"],
        input=json.dumps([_request(s, a) for s, a in jobs]),
        capture_output=True,
        text=True,
        env=env,
        timeout=3600,
    )
    if child.returncode != 0:
        labels = ", ".join(sorted({s.label for s, _ in jobs}))
        raise RuntimeError(
            f"ahead-of-time compile of {labels} failed in the compiler "
            f"process:\n{child.stderr.strip()[-4000:]}"
        )
    return [_report_from_json(r) for r in json.loads(child.stdout.strip().splitlines()[-1])]


def compile_specs(specs: Sequence[AotSpec], archs: Iterable[int]) -> list[KernelReport]:
    """:func:`compile_spec` for every spec and arch (spec-major order), cached; under the
    interpreter the uncached ones are compiled together in one separate process."""
    jobs = [(spec, int(arch)) for spec in specs for arch in archs]
    if _interpreter_on():
        with _CACHE_LOCK:
            todo = [(s, a) for s, a in jobs if _spec_key(s, a) not in _CACHE]
        if todo:
            for (spec, arch), rep in zip(todo, _compile_in_child(todo)):
                with _CACHE_LOCK:
                    _CACHE[_spec_key(spec, arch)] = rep
    return [compile_spec(spec, arch) for spec, arch in jobs]


def _report_from_json(data: dict[str, Any]) -> KernelReport:
    fields = {f.name for f in dataclasses.fields(KernelReport)}
    data = {k: v for k, v in data.items() if k in fields}
    data["load_widths"] = {int(k): v for k, v in data["load_widths"].items()}
    data["store_widths"] = {int(k): v for k, v in data["store_widths"].items()}
    return KernelReport(**data)


def _child_main() -> int:
    """``python -m bench.aot --child``: a JSON list of compile requests on stdin, a JSON
    list of reports as the last line of stdout."""
    reports = []
    for request in json.loads(sys.stdin.read()):
        kernel = importlib.import_module(request["module"])
        for part in request["name"].split("."):
            kernel = getattr(kernel, part)
        spec = AotSpec(
            label=request["label"],
            kernel=kernel,
            signature=request["signature"],
            constexprs=request["constexprs"],
            num_warps=request["num_warps"],
            num_stages=request["num_stages"],
            divisible_by_16=tuple(request["divisible_by_16"]),
        )
        reports.append(compile_spec(spec, request["arch"]).to_json())
    print(json.dumps(reports))
    return 0


# --------------------------------------------------------------------------------------------
# All kernels, all archs
# --------------------------------------------------------------------------------------------


#: (model width, x dtype, activation, learnable scale) of the ghost-BN sites the default
#: report compiles: the final recipe (CELU, frozen scale) in fp16 and bf16, and ReLU with a
#: learnable scale in fp16 — together every kernel, both dtypes, both activations and both
#: weight modes.
GHOST_BN_RECIPES: tuple[tuple[float, str, str, bool], ...] = (
    (1.0, "fp16", "celu", False),
    (1.0, "bf16", "celu", False),
    (1.0, "fp16", "relu", True),
)


def ghost_bn_act_specs(full: bool = False) -> list[AotSpec]:
    """Every ghost-BN kernel at the trainer's BN sites, deduplicated.

    The sites are the model's own (:func:`bench.shapes.bn_sites`: channels_last, batch 512,
    16 ghost splits; the chunking assumes ``kernels.ghost_bn_act.plan.NOMINAL_SMS``).
    Default (~70 specs, ~1 s each to compile per arch): the six distinct sites at width 1 in
    :data:`GHOST_BN_RECIPES` — every kernel, both dtypes, pool and no pool, both activations,
    both weight modes, train and eval. ``full=True`` is the whole cross product, width 0.25
    included (~290 specs; every one of them compiled without spills when this was written).
    """
    if full:
        recipes = [
            (w, dt, act, hw)
            for w in (1.0, QUARTER)
            for dt in ("fp16", "bf16")
            for act in ("celu", "relu")
            for hw in (False, True)
        ]
    else:
        recipes = list(GHOST_BN_RECIPES)
    # Recipe-major order, as the labels of deduplicated specs depend on it (first one wins).
    return ghost_bn_act_aot_specs(
        aot_site(site, dt, act, has_weight)
        for width, dt, act, has_weight in recipes
        for site in bn_sites(RECIPE_BATCH, width)
    )


def aot_site(site: BNSite, dtype: str, act: str, has_weight: bool) -> AotSite:
    """The :class:`AotSite` of a benchmark site (:class:`bench.shapes.BNSite`): its shape,
    pool, batch and splits, x in ``dtype`` ("fp16", "bf16" or "fp32"), ``act`` after BN and
    a learnable scale with ``has_weight``. Spec labels then name the site as the benchmark
    table does (``ghost_bn_fwd-airbench94.block1.conv1-c64-fp16…``), but for ResNet9 without
    the width suffix (``ghost_bn_fwd-layer1-c128…``: the channels say the width)."""
    name = site.name if site.preset is None else site.label
    return AotSite(
        name,
        site.channels,
        site.height,
        site.width,
        site.pool,
        dtype,
        act,
        has_weight,
        site.batch,
        site.splits,
    )


#: x dtypes of the airbench sites the report compiles: fp16 (the recipe's autocast) and
#: bf16, the two half precisions the kernels are tuned for.
AIRBENCH_DTYPES: tuple[str, ...] = ("fp16", "bf16")


def airbench_specs(preset: str = AIRBENCH_PRESET) -> list[AotSpec]:
    """Every ghost-BN kernel at the BN sites of ``preset``'s airbench network, deduplicated.

    The sites are the model's own (:func:`bench.shapes.airbench_bn_sites`: airbench94 at
    its batch of 1024, plain BN — one split —, GELU, odd sizes 31/15/7 before the floored
    2×2 pool), channels_last, the scale frozen as every airbench recipe has it, x in each
    of :data:`AIRBENCH_DTYPES`: six sites × two dtypes, every training kernel plus the
    eval forward. 33 specs once deduplicated: sites repeat constexprs and divisibility
    hints (every block3 spec compiles as a block2 one, every finalize pass as block1's);
    ~3 s each to compile per arch.
    """
    # Dtype-major order, as the labels of deduplicated specs depend on it (first one wins).
    return ghost_bn_act_aot_specs(
        aot_site(site, dt, site.act, has_weight=False)
        for dt in AIRBENCH_DTYPES
        for site in airbench_bn_sites(preset)
    )


def all_specs(airbench: bool = True) -> list[AotSpec]:
    """Every spec the report compiles: the augmentation kernel at the data's shapes
    (:func:`kernels.augment.aot_specs`), the ghost-BN kernels at ResNet9's BN sites
    (:func:`ghost_bn_act_specs`), then — unless ``airbench`` is False — at airbench94's
    (:func:`airbench_specs`). Raises ValueError if two specs share a label.

    ``airbench=False`` is the list CI compiles in full; it compiles the airbench sites only
    as a sample (``tests/test_aot.py``), as they add 33 compiles per arch.
    """
    specs = [*augment_aot_specs(), *ghost_bn_act_specs()]
    if airbench:
        specs += airbench_specs()
    labels = [s.label for s in specs]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise ValueError(f"AotSpec labels must be unique; repeated: {dupes}")
    return specs


def report(
    archs: Iterable[int] = DEFAULT_ARCHS, specs: Sequence[AotSpec] | None = None
) -> list[KernelReport]:
    """Compile every spec (default: :func:`all_specs`) for every arch, spec-major order."""
    specs = all_specs() if specs is None else specs
    return compile_specs(specs, archs)


def _widths_summary(widths: dict[int, int]) -> str:
    return " ".join(f"{bits}b×{n}" for bits, n in sorted(widths.items(), reverse=True)) or "-"


def format_table(reports: Sequence[KernelReport]) -> str:
    """A plain-text table: one row per kernel and arch."""
    header = (
        "label",
        "kernel",
        "arch",
        "warps",
        "regs",
        "spill st/ld",
        "smem st+dyn",
        "128b ld",
        "loads",
        "stores",
    )
    rows = [header] + [
        (
            r.label,
            r.kernel,
            r.arch,
            str(r.num_warps),
            str(r.registers),
            f"{r.spill_store_bytes}/{r.spill_load_bytes}",
            f"{r.static_shared_bytes}+{r.dynamic_shared_bytes}",
            "yes" if r.has_128bit_loads else "no",
            _widths_summary(r.load_widths),
            _widths_summary(r.store_widths),
        )
        for r in reports
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    """CLI: ``python -m bench.aot [--arch 80 90] [--label SUBSTR] [--json PATH]``."""
    parser = argparse.ArgumentParser(
        prog="python -m bench.aot",
        description="Compile the Triton kernels for NVIDIA GPUs (no GPU needed) and report "
        "registers, spills, shared memory and global load/store widths.",
    )
    parser.add_argument(
        "--arch",
        type=int,
        nargs="+",
        default=list(DEFAULT_ARCHS),
        help="compute capabilities, e.g. 80 (A100) 90 (H100); default 80 90",
    )
    parser.add_argument("--label", default=None, help="only specs whose label contains this string")
    parser.add_argument("--json", type=Path, default=None, help="also write the reports here")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return _child_main()

    specs = [s for s in all_specs() if args.label is None or args.label in s.label]
    if not specs:
        print(f"no AotSpecs found: no label contains {args.label!r}", file=sys.stderr)
        return 1
    reports = report(args.arch, specs)
    print(format_table(reports))
    if args.json is not None:
        args.json.write_text(json.dumps([r.to_json() for r in reports], indent=2) + "\n")
        print(f"wrote {args.json}")
    spilling = [f"{r.label}@{r.arch}" for r in reports if r.spill_bytes]
    if spilling:
        print(f"spills: {', '.join(spilling)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
