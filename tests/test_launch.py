"""Every Triton launch runs on its tensors' device and is counted (:mod:`kernels._launch`);
the supported version range and its one version branch (:mod:`kernels._versions`)."""

from __future__ import annotations

import contextlib
import pathlib
import re

import pytest
import torch

import kernels
import kernels._launch as launch_module
from kernels._launch import count_launches, device_guard, launch
from kernels._versions import (
    MIN_TORCH,
    MIN_TRITON,
    aot_spill_allowance,
    interpreter_fma_is_exact,
    interpreter_problem,
    unsupported_versions,
    version_tuple,
)

KERNELS_DIR = pathlib.Path(kernels.__file__).parent
REPO = KERNELS_DIR.parent


class _DeviceContextRecorder:
    """Stands in for ``torch.cuda.device``: records which device each context made current
    and what was current at each moment (a stack, as nested contexts would leave it)."""

    def __init__(self) -> None:
        self.current: list[torch.device] = []
        self.entered: list[torch.device] = []

    def __call__(self, device):
        recorder = self

        @contextlib.contextmanager
        def context():
            recorder.entered.append(torch.device(device))
            recorder.current.append(torch.device(device))
            try:
                yield
            finally:
                recorder.current.pop()

        return context()


class _FakeCudaTensor(torch.Tensor):
    """A tensor that says it lives on a given CUDA device, with no GPU in the machine: only
    its metadata is ever read here (the launch is intercepted)."""

    @staticmethod
    def __new__(cls, device: torch.device):
        return torch.Tensor._make_wrapper_subclass(cls, (4,), dtype=torch.float32, device=device)

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise AssertionError(f"{func} was called on a fake CUDA tensor")


class _RecordingKernel:
    """A stand-in ``@triton.jit`` kernel: ``kernel[grid](*args)`` records the device that
    the patched ``torch.cuda.device`` made current at the moment of the launch."""

    __name__ = "_recording_kernel"

    def __init__(self, recorder: _DeviceContextRecorder) -> None:
        self.recorder = recorder
        self.launched_on: list[torch.device | None] = []

    def __getitem__(self, grid):
        def run(*args, **kwargs):
            current = self.recorder.current[-1] if self.recorder.current else None
            self.launched_on.append(current)

        return run


def test_a_launch_on_cuda_1_runs_with_cuda_1_current(monkeypatch):
    """The failure the guard fixes: Triton launches on the *current* device. A tensor on
    cuda:1 must be launched with cuda:1 current, and the previous device restored after."""
    recorder = _DeviceContextRecorder()
    monkeypatch.setattr(torch.cuda, "device", recorder)
    kernel = _RecordingKernel(recorder)
    for index in (1, 0, 3):
        launch(kernel, (1,), _FakeCudaTensor(torch.device("cuda", index)), 7, BLOCK=16)
    assert kernel.launched_on == [torch.device("cuda", i) for i in (1, 0, 3)]
    assert recorder.current == []  # every context left again


def test_device_guard_only_touches_cuda(monkeypatch):
    recorder = _DeviceContextRecorder()
    monkeypatch.setattr(torch.cuda, "device", recorder)
    with device_guard(torch.device("cpu")):
        pass
    assert recorder.entered == []
    with device_guard(torch.device("cuda", 2)):
        assert recorder.current == [torch.device("cuda", 2)]
    assert recorder.entered == [torch.device("cuda", 2)]


def test_a_launch_without_tensors_is_refused():
    with pytest.raises(TypeError, match="at least one tensor"):
        launch(_RecordingKernel(_DeviceContextRecorder()), (1,), 3, 4)


def test_no_kernel_is_launched_past_the_guard():
    """Every ``@triton.jit`` launch in the package goes through ``launch``: a direct
    ``some_kernel[grid](...)`` anywhere else would skip the device guard and the count."""
    direct = re.compile(r"\b_\w+_kernel\s*\[")
    offenders = [
        f"{path.relative_to(REPO)}:{number}"
        for path in KERNELS_DIR.rglob("*.py")
        for number, line in enumerate(path.read_text().splitlines(), 1)
        if direct.search(line)
    ]
    assert offenders == []


@pytest.mark.gpu
def test_ops_launch_on_their_inputs_device_and_are_counted(monkeypatch):
    """Each op's launches, by kernel, through the interpreter, with the device each launch
    ran under observed at the launch: ghost BN is three kernels forward (statistics,
    finalize, normalise) and three backward (reduce, finalize, dx); augmentation is one."""
    guarded: list[tuple[str, torch.device]] = []
    real_run = launch_module._run
    real_guard = launch_module.device_guard
    current: list[torch.device] = []

    @contextlib.contextmanager
    def observing_guard(device):
        current.append(device)
        with real_guard(device):
            yield
        current.pop()

    def observing_run(kernel, grid, args, kwargs):
        guarded.append((kernel.__name__, current[-1]))
        real_run(kernel, grid, args, kwargs)

    monkeypatch.setattr(launch_module, "device_guard", observing_guard)
    monkeypatch.setattr(launch_module, "_run", observing_run)

    x = torch.randn(4, 3, 4, 4, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)
    running = (torch.zeros(3), torch.ones(3))
    with count_launches() as forward:
        y = kernels.ghost_bn_act(x, bias, *running, splits=2, pool=True, backend="triton")
    with count_launches() as backward:
        y.sum().backward()
    data = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8)
    params = kernels.random_augment_params(2, pad=1, cutout_size=2, height=6, width=6)
    with count_launches() as augmentation:
        kernels.augment(
            data,
            torch.tensor([0, 3]),
            *params,
            cutout_size=2,
            pad=1,
            mean=(0.0,) * 3,
            std=(1.0,) * 3,
            out_dtype=torch.float32,
            backend="triton",
        )
    assert forward == {
        "_ghost_bn_act_fwd_stats_kernel": 1,
        "_ghost_bn_act_fwd_finalize_kernel": 1,
        "_ghost_bn_act_fwd_kernel": 1,
    }
    assert backward == {
        "_ghost_bn_act_bwd_reduce_kernel": 1,
        "_ghost_bn_act_bwd_finalize_kernel": 1,
        "_ghost_bn_act_bwd_kernel": 1,
    }
    assert augmentation == {"_augment_fwd_kernel": 1}
    # The launch counts the roofline model charges host time for are these.
    from bench.workloads import TRITON_LAUNCHES

    assert TRITON_LAUNCHES == {
        "bn_fwd": sum(forward.values()),
        "bn_bwd": sum(backward.values()),
        "augment": sum(augmentation.values()),
    }
    assert len(guarded) == 7
    assert all(device == x.device for _, device in guarded)


def test_nested_counters_both_count():
    with count_launches() as outer:
        with count_launches() as inner:
            launch(_RecordingKernel(_DeviceContextRecorder()), (1,), torch.zeros(1))
        launch(_RecordingKernel(_DeviceContextRecorder()), (1,), torch.zeros(1))
    assert inner == {"_recording_kernel": 1}
    assert outer == {"_recording_kernel": 2}


# ------------------------------------------------------------------------------- versions


def test_version_tuple_reads_local_and_dev_versions():
    assert version_tuple("2.13.0+cpu") == (2, 13)
    assert version_tuple("3.6.0") == (3, 6)
    assert version_tuple("2.11.0a0+git1234") == (2, 11)
    with pytest.raises(ValueError, match="not a version"):
        version_tuple("nightly")


def test_the_supported_range_is_stated_alike_everywhere():
    """pyproject.toml and the README name the same oldest versions as the code."""
    pyproject = (REPO / "pyproject.toml").read_text()
    readme = (REPO / "README.md").read_text()
    torch_min = f"{MIN_TORCH[0]}.{MIN_TORCH[1]}"
    triton_min = f"{MIN_TRITON[0]}.{MIN_TRITON[1]}"
    assert f'"torch>={torch_min}"' in pyproject
    assert f'"triton>={triton_min}' in pyproject
    assert f"torch ≥ {torch_min}" in readme and f"Triton ≥ {triton_min}" in readme


def test_installed_versions_are_in_the_supported_range():
    assert unsupported_versions() == []


def test_versions_older_than_the_range_are_named():
    problems = unsupported_versions((2, 9), (3, 4))
    assert len(problems) == 2
    assert problems[0].startswith("torch 2.9 is older") and "torch>=2.11" in problems[0]
    assert problems[1].startswith("triton 3.4 is older") and "triton>=3.6" in problems[1]


@pytest.mark.parametrize(
    "triton_version,numpy_version,broken",
    [
        ((3, 6), (2, 4), True),
        ((3, 6), (2, 3), False),
        ((3, 7), (2, 4), False),
        ((3, 9), (2, 4), False),
    ],
)
def test_interpreter_problem_names_the_pair_that_cannot_run(triton_version, numpy_version, broken):
    problem = interpreter_problem(triton_version, numpy_version)
    assert (problem is not None) == broken
    if broken:
        assert "numpy<2.4" in problem and "triton>=3.7" in problem


def test_interpreter_fma_is_exact_from_triton_3_9():
    assert not interpreter_fma_is_exact((3, 6))
    assert not interpreter_fma_is_exact((3, 8))
    assert interpreter_fma_is_exact((3, 9))
    assert not interpreter_fma_is_exact(None)


def test_spills_are_allowed_only_before_the_tuned_triton():
    assert aot_spill_allowance((3, 9)) == aot_spill_allowance((3, 12)) == 0
    assert aot_spill_allowance((3, 6)) == 48


def test_a_triton_op_registration_runs_the_kernels(monkeypatch):
    """On a GPU the ops are ``torch.library.triton_op``s and every launch goes through
    ``wrap_triton``. That path, called outside a compiled graph, runs the same kernels: here
    through the interpreter, on the augmentation, against its reference. (What a compiled
    graph makes of it, Inductor launching the kernels itself, needs a GPU: see
    ``test_compiled_graph_launches_the_kernels_itself``.)"""
    import kernels._common as common
    from kernels.augment.op import _augment_op_impl

    monkeypatch.setattr(common, "registers_triton_ops", lambda: True)
    monkeypatch.setattr(launch_module, "registers_triton_ops", lambda: True)
    wrapped: list[str] = []
    real_wrap = torch.library.wrap_triton

    def recording_wrap(kernel):
        wrapped.append(kernel.__name__)
        return real_wrap(kernel)

    monkeypatch.setattr(torch.library, "wrap_triton", recording_wrap)
    op = common.register_kernel_op("augment_as_triton_op", _augment_op_impl, mutates_args=())
    assert type(op).__name__ == "CustomOpDef"
    data = torch.randint(0, 256, (5, 3, 6, 6), dtype=torch.uint8)
    indices = torch.tensor([4, 0, 2])
    crop, flip, cutout = kernels.random_augment_params(3, pad=1, cutout_size=2, height=6, width=6)
    mean, std = [120.0, 110.0, 100.0], [60.0, 61.0, 62.0]
    got = op(data, indices, crop, flip, cutout, 2, 1, mean, std, torch.float32)
    want = kernels.augment_reference(
        data,
        indices,
        crop,
        flip,
        cutout,
        cutout_size=2,
        pad=1,
        mean=mean,
        std=std,
        out_dtype=torch.float32,
    )
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    assert wrapped == ["_augment_fwd_kernel"]


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and not kernels.interpreting()),
    reason="Inductor emits its own launches of a triton_op's kernels only when it compiles "
    "for a GPU (gpu-check runs this with TRITON_INTERPRET=0 on CUDA)",
)
def test_compiled_graph_launches_the_kernels_itself():
    """A compiled function around the fused BN op: Inductor's generated code launches the
    Triton kernels itself, with no call back into the ``cifar_kernels`` op."""
    from torch._inductor.utils import run_and_get_code

    x = torch.randn(8, 16, 8, 8, device="cuda", requires_grad=True)
    bias = torch.zeros(16, device="cuda", requires_grad=True)
    running = (torch.zeros(16, device="cuda"), torch.ones(16, device="cuda"))

    def site(x, bias):
        return kernels.ghost_bn_act(x, bias, *running, splits=2, pool=True, backend="triton")

    out, (code, *_) = run_and_get_code(torch.compile(site), x, bias)
    assert "_ghost_bn_act_fwd_kernel" in code
    assert "torch.ops.cifar_kernels" not in code
    torch.testing.assert_close(out, site(x, bias))


def test_launch_plans_are_cached_per_shape():
    """A second call at the same shape looks its launch plan up: every plan function hits
    its cache and none computes afresh."""
    import importlib

    plan = importlib.import_module("kernels.ghost_bn_act.plan")
    functions = [plan._tile_shape, plan._chunking, plan._finalize_blocks, plan._argmax_vec]
    x = torch.randn(4, 3, 5, 6, requires_grad=True)
    bias = torch.zeros(3, requires_grad=True)

    def call():
        y = kernels.ghost_bn_act(
            x, bias, torch.zeros(3), torch.ones(3), splits=2, pool=True, backend="triton"
        )
        y.sum().backward()

    call()
    before = [f.cache_info() for f in functions]
    call()
    after = [f.cache_info() for f in functions]
    assert [a.misses for a in after] == [b.misses for b in before]
    assert all(a.hits > b.hits for a, b in zip(after, before))
