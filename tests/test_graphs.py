"""The training step under CUDA-graph capture (:mod:`train.graphs`), checked on the CPU.

A CUDA graph replays the step's kernels with the arguments they had at capture, so a step is
capturable only if everything that changes between steps is read from device memory. The
emulator in ``graph_emulator.py`` replays recorded ATen ops the same way; a replayed step
must then give what an uncaptured step gives, step after step, while the learning rate
changes, the weight average comes due, and new batches arrive. A control shows the emulator
catches a step that keeps its learning rate on the host.
"""

from __future__ import annotations

import pytest
import torch
from graph_emulator import EmulatedGraphs
from test_no_sync import watch_step_loops
from tiny_training import TINY_CONFIG, tiny_data
from torch.utils._python_dispatch import TorchDispatchMode

import train.step as step_module
import train.trainer as trainer_module
from bench.workloads import graphed_launches
from model.resnet9 import ResNet9
from train.config import ConfigError, model_config
from train.graphs import GraphCaptureError, resolve_graph_mode
from train.optim import make_optimizer
from train.runtime import Runtime
from train.step import TrainStep
from train.trainer import Trainer

RUNTIME = Runtime(torch.device("cpu"), "eager", torch.float32, channels_last=False)
# Six steps over two "epochs" of three: the rate changes every step (warm-up, then decay),
# and the weight average comes due on steps 3 and 6.
CONFIG = TINY_CONFIG.replace(batch_size=8, ghost_batch=4, ema_every=3, whitening=False)
STEPS_PER_EPOCH = 3
STEPS = 6


pytestmark = pytest.mark.usefixtures("one_thread")


def new_model() -> ResNet9:
    torch.manual_seed(0)
    return ResNet9(model_config(CONFIG, "eager"))


def batches(count: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(1)
    return [
        (
            torch.randn(8, 3, 32, 32, generator=generator),
            torch.randint(0, 10, (8,), generator=generator),
        )
        for _ in range(count)
    ]


def new_step(model: ResNet9, backend, **options) -> TrainStep:
    """A step with the fused optimiser (device-tensor rates) whatever ``options`` say about
    capture, so that captured and uncaptured steps run the same optimiser."""
    return TrainStep(
        model,
        model,
        CONFIG,
        RUNTIME,
        steps_per_epoch=STEPS_PER_EPOCH,
        graphs=options.pop("graphs", "on"),
        graph_backend=backend,
        **options,
    )


def uncaptured(model: ResNet9) -> TrainStep:
    return new_step(model, EmulatedGraphs(), capture_after=10**9)


def state(step: TrainStep) -> list[torch.Tensor]:
    return [t.clone() for t in step._state_tensors()]


def run(step: TrainStep, data) -> list[tuple[torch.Tensor, torch.Tensor]]:
    # Clones: a captured step's outputs are overwritten by the next replay.
    return [tuple(t.clone() for t in step(x, y)) for x, y in data]


def test_replayed_steps_are_the_uncaptured_steps():
    data = batches(STEPS)
    reference = uncaptured(new_model())
    backend = EmulatedGraphs()
    graphed = new_step(new_model(), backend)
    expected, got = run(reference, data), run(graphed, data)

    assert graphed.captured and not reference.captured
    step_graph, ema_graph = backend.graphs
    assert step_graph.replays == STEPS - step_module.EAGER_STEPS_BEFORE_CAPTURE
    assert ema_graph.replays == 2  # steps 3 and 6, both after the capture
    assert graphed.ema.updates == reference.ema.updates == 2
    for (loss, correct), (loss_ref, correct_ref) in zip(got, expected):
        torch.testing.assert_close(loss, loss_ref)
        assert correct == correct_ref
    # Weights, BN statistics, momentum, step counters and the weight average.
    for a, b in zip(state(graphed), state(reference), strict=True):
        torch.testing.assert_close(a, b)
    assert int(graphed.step_index) == STEPS
    assert expected[0][0] != expected[-1][0]  # the steps really trained


def test_the_emulator_catches_a_rate_kept_on_the_host():
    """Control: with float learning rates (foreach SGD) the capture bakes the rate of its
    step into the update, and the replayed steps no longer follow the schedule."""
    data = batches(STEPS)
    reference = uncaptured(new_model())
    reference.optimizer = make_optimizer(reference.model, CONFIG, fused=False)
    graphed = new_step(new_model(), EmulatedGraphs())
    graphed.optimizer = make_optimizer(graphed.model, CONFIG, fused=False)
    run(reference, data), run(graphed, data)
    assert graphed.captured
    weights = [p for p in graphed.model.parameters()]
    gaps = [(a - b).abs().max() for a, b in zip(weights, reference.model.parameters())]
    assert max(gaps) > 1e-3


def test_check_capture_leaves_the_state_one_step_on():
    data = batches(2)
    reference = uncaptured(new_model())
    checked = new_step(new_model(), EmulatedGraphs(), capture_after=10**9)
    for step in (reference, checked):
        step(*data[0])  # the optimiser's state exists before a capture
    assert checked.check_capture(*data[1])
    reference._device_step(*data[1])
    for a, b in zip(state(checked), state(reference), strict=True):
        torch.testing.assert_close(a, b)


class ForgetfulGraphs(EmulatedGraphs):
    """Captures (running the work once) but replays nothing: a replay that disagrees."""

    def capture(self, body):
        graph, outputs = super().capture(body)
        graph.ops = []
        return graph, outputs


class FailingGraphs(EmulatedGraphs):
    def capture(self, body):
        raise RuntimeError("operation not permitted when stream is capturing")


def test_a_disagreeing_replay_falls_back_under_auto_and_raises_under_on():
    data = batches(2)
    lines: list[str] = []
    reference = uncaptured(new_model())
    step = new_step(new_model(), ForgetfulGraphs(), graphs="auto", log=lines.append)
    for s in (reference, step):
        s(*data[0])
    assert not step.check_capture(*data[1])
    assert step.graphs == "off" and not step.captured
    assert len(lines) == 1 and "CUDA graphs off: a replay differs" in lines[0]
    reference._device_step(*data[1])  # the fallback kept the uncaptured step's result
    for a, b in zip(state(step), state(reference), strict=True):
        torch.testing.assert_close(a, b)

    strict = new_step(new_model(), ForgetfulGraphs(), graphs="on")
    strict(*data[0])
    with pytest.raises(GraphCaptureError, match="--cuda-graphs on: a replay differs"):
        strict.check_capture(*data[1])


def test_a_failed_capture_falls_back_under_auto_and_raises_under_on():
    data = batches(STEPS)
    lines: list[str] = []
    reference = uncaptured(new_model())
    step = new_step(new_model(), FailingGraphs(), graphs="auto", log=lines.append)
    expected, got = run(reference, data), run(step, data)
    assert lines == [
        "CUDA graphs off: capturing the step failed (RuntimeError: operation not permitted "
        "when stream is capturing); steps run uncaptured"
    ]
    for (loss, _), (loss_ref, _) in zip(got, expected):
        torch.testing.assert_close(loss, loss_ref)

    strict = new_step(new_model(), FailingGraphs(), graphs="on")
    with pytest.raises(GraphCaptureError, match="capturing the step failed"):
        run(strict, data)


def test_resuming_recaptures_on_the_loaded_state():
    """A loaded checkpoint replaces the optimiser's state tensors, which a graph holds by
    address: the step drops its graph and captures again after its uncaptured steps."""
    data = batches(STEPS)
    backend = EmulatedGraphs()
    step = new_step(new_model(), backend)
    run(step, data[:3])
    assert step.captured
    step.load_state_dict(step.state_dict())
    assert not step.captured
    run(step, data[3:])
    assert step.captured and len(backend.graphs) == 4  # step and average, twice


@pytest.mark.parametrize(
    "requested,device,parallel,expected",
    [
        ("auto", "cuda", False, "auto"),
        ("on", "cuda", False, "on"),
        ("off", "cuda", False, "off"),
        ("auto", "cpu", False, "off"),
        ("auto", "cuda", True, "off"),
        ("off", "cpu", False, "off"),
    ],
)
def test_graph_mode_resolution(requested, device, parallel, expected):
    assert resolve_graph_mode(requested, torch.device(device), parallel) == expected


@pytest.mark.parametrize(
    "device,parallel,message",
    [
        ("cpu", False, "CUDA graphs need a CUDA device and this run is on cpu"),
        ("cuda", True, "not supported with data parallelism"),
    ],
)
def test_graphs_on_where_they_cannot_run_is_a_clear_error(device, parallel, message):
    with pytest.raises(ConfigError, match=message):
        resolve_graph_mode("on", torch.device(device), parallel)


def test_cuda_graphs_flag_is_validated():
    with pytest.raises(ConfigError, match="--cuda-graphs must be one of auto, on, off"):
        TINY_CONFIG.replace(cuda_graphs="yes")


def _emulate_graphs(monkeypatch) -> EmulatedGraphs:
    backend = EmulatedGraphs()
    monkeypatch.setattr(trainer_module, "resolve_graph_mode", lambda *args: "auto")
    monkeypatch.setattr(step_module, "default_backend", lambda device: backend)
    return backend


def test_a_run_with_captured_steps_trains_like_one_without(monkeypatch):
    """The trainer end to end: the warm-up captures and checks a step, every run captures
    its own after its first steps, and the epochs' figures match a run without graphs."""
    data = tiny_data(4 * CONFIG.batch_size, 32)
    config = CONFIG.replace(epochs=2, warmup_steps=2, eval_batch_size=32, cutout=0)
    plain = Trainer(config.replace(cuda_graphs="off"), RUNTIME, data, log=lambda line: None)
    expected = plain.run(seed=0)

    backend = _emulate_graphs(monkeypatch)
    lines: list[str] = []
    graphed = Trainer(config, RUNTIME, data, log=lines.append)
    assert graphed.graph_mode == "auto" and len(backend.graphs) == 2  # the warm-up's check
    got = graphed.run(seed=0)
    assert len(backend.graphs) == 4  # and the run's own capture
    assert backend.graphs[2].replays == 2 * 4 - step_module.EAGER_STEPS_BEFORE_CAPTURE
    assert not any("CUDA graphs off" in line for line in lines)
    for a, b in zip(got.rows, expected.rows, strict=True):
        assert a.train_acc == b.train_acc
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-4)
        assert a.test_loss == pytest.approx(b.test_loss, rel=1e-4)


def test_captured_epochs_run_without_a_host_sync(monkeypatch):
    _emulate_graphs(monkeypatch)
    data = tiny_data(4 * CONFIG.batch_size, 32)
    config = CONFIG.replace(epochs=1, warmup_steps=1, tta=False, eval_batch_size=32)
    trainer = Trainer(config, RUNTIME, data, log=lambda line: None)
    modes = watch_step_loops(monkeypatch)
    trainer.run(seed=0)
    assert len(modes) == 1 and modes[0].ops > 100


def test_one_line_when_auto_has_no_warm_up_to_check_in(monkeypatch):
    _emulate_graphs(monkeypatch)
    lines: list[str] = []
    trainer = Trainer(
        CONFIG.replace(warmup_steps=0), RUNTIME, tiny_data(CONFIG.batch_size, 8), log=lines.append
    )
    assert trainer.graph_mode == "off"
    assert lines == ["CUDA graphs off: --warmup-steps 0 leaves no warm-up to check a capture in"]


def test_a_step_without_graphs_keeps_its_float_rates():
    """Off (the CPU default): foreach SGD with host-float rates, as before."""
    model = new_model()
    step = TrainStep(model, model, CONFIG, RUNTIME, steps_per_epoch=STEPS_PER_EPOCH)
    step(*batches(1)[0])
    assert not step.captured
    assert all(isinstance(g["lr"], float) for g in step.optimizer.param_groups)


class _OpCount(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(func.__name__)
        return func(*args, **(kwargs or {}))


def test_a_captured_step_launches_what_the_roofline_charges():
    """Around the replays the host launches only the batch copies and the rate fills: three
    captured steps (one with the weight average) launch 3 × ``graphed_launches``."""
    data = batches(STEPS)
    backend = EmulatedGraphs()
    step = new_step(new_model(), backend)
    run(step, data[:3])
    assert step.captured
    replays: list[int] = []
    for graph in backend.graphs:
        graph.replay = lambda: replays.append(1)  # the replay itself is one launch
    with _OpCount() as counted:
        for inputs, labels in data[3:]:
            step(inputs, labels)
    groups = len(step.optimizer.param_groups)
    assert sorted(set(counted.ops)) == ["copy_.default", "fill_.Scalar"]
    assert counted.ops.count("fill_.Scalar") == 3 * groups
    assert len(replays) == 3 + 1  # three steps, one weight-average update (step 6)
    total = len(counted.ops) + len(replays)
    assert total == pytest.approx(3 * graphed_launches(groups, CONFIG.ema_every))
