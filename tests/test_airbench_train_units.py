"""The airbench recipes' training and evaluation units (alternating flip, ±2 px translate,
brightness/contrast jitter, lookahead, the optimisers, multi-view and selective TTA) against
hand computations and PyTorch's own ops. Small tensors only: the file runs in seconds."""

from __future__ import annotations

import contextlib
import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from train.batches import AugmentedBatches
from train.config import CIFAR10_MEAN, CIFAR10_STD
from train.evaluate import evaluate, kernel_render
from train.flips import alternating_flips, draw_start_flips, flip_mode
from train.jitter import apply_jitter, draw_jitter
from train.lookahead import AIRBENCH_LOOKAHEAD_BASE, Lookahead, lookahead_decay
from train.optim import set_learning_rate
from train.optim_airbench import (
    CombinedOptimizer,
    FilterMuon,
    airbench94_rates,
    airbench94_sgd,
    matrix_view,
    muon_with_sgd,
    renormalize_,
    scale_learning_rates,
    split_params,
)
from train.tta import (
    MULTIVIEW,
    flip_logits,
    least_confident,
    multiview_logits,
    selected_count,
    selective_logits,
    tta_mode,
    view_of,
)

MEAN = torch.tensor(CIFAR10_MEAN).view(3, 1, 1)
STD = torch.tensor(CIFAR10_STD).view(3, 1, 1)


def batches_for(images, labels, *, seed, batch_size, pad=0, flip="none", jitter=None):
    return AugmentedBatches(
        images,
        labels,
        batch_size=batch_size,
        pad=pad,
        flip=flip,
        cutout=0,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        dtype=torch.float32,
        backend="eager",
        generator=torch.Generator().manual_seed(seed),
        jitter=jitter,
    )


def normalised(images: torch.Tensor) -> torch.Tensor:
    """(x − mean) / std in float32, the augmentation's normalisation written out."""
    return (images.float() - MEAN) / STD


def orientation(inputs: torch.Tensor, labels: torch.Tensor, images: torch.Tensor) -> list:
    """For each output image, True if it is its source (``labels`` index the images) mirrored,
    False if unmirrored (asserting it is one of the two)."""
    out = []
    for x, n in zip(inputs, labels):
        plain = normalised(images[n])
        if torch.equal(x, plain):
            out.append(False)
        else:
            assert torch.equal(x, plain.flip(-1))
            out.append(True)
    return out


# ------------------------------------------------------------------------ alternating flip
def test_start_flips_are_one_randint_draw_and_alternate():
    start = draw_start_flips(1000, generator=torch.Generator().manual_seed(3))
    expected = torch.randint(0, 2, (1000,), generator=torch.Generator().manual_seed(3)).bool()
    assert start.dtype == torch.bool and torch.equal(start, expected)
    assert 400 < int(start.sum()) < 600
    flags = [alternating_flips(start, e) for e in range(5)]
    for e in range(4):
        assert torch.equal(flags[e + 1], ~flags[e])  # every image changes orientation
    for e, f in enumerate(flags):
        assert torch.equal(f, start ^ bool(e % 2))
    with pytest.raises(ValueError):
        alternating_flips(start, -1)
    assert flip_mode(True) == "random" and flip_mode(False) == "none"
    with pytest.raises(ValueError, match="flip must be"):
        flip_mode("sometimes")


def test_batches_with_alternating_flip_show_each_image_both_ways():
    """Each image's orientation, read off the yielded batches, is start XOR (epoch odd); the
    start bits are the constructor's first draw from the generator; an epoch rebuilt from its
    generator state and number (a resume) yields the same batches."""
    count, size = 16, (3, 4, 6)
    images = torch.randint(0, 256, (count, *size), dtype=torch.uint8)
    labels = torch.arange(count)  # the label names the source image
    batches = batches_for(images, labels, seed=11, batch_size=4, flip="alternating")
    start = torch.randint(0, 2, (count,), generator=torch.Generator().manual_seed(11)).bool()
    assert torch.equal(batches.start_flips, start)
    states, epochs = [], []
    for _ in range(4):
        states.append(batches.generator.get_state())
        epochs.append(list(batches.epoch()))
    for e, epoch in enumerate(epochs):
        seen = torch.zeros(count, dtype=torch.bool)
        for inputs, targets in epoch:
            flipped = orientation(inputs, targets, images)
            for n, f in zip(targets.tolist(), flipped):
                assert f == bool(start[n]) ^ bool(e % 2)
                seen[n] = True
        assert seen.all()  # drop-last with 16 = 4·4: every image once per epoch
    # a resume of epoch 2 at batch 1: same seed, then the saved state of its beginning
    again = batches_for(images, labels, seed=11, batch_size=4, flip="alternating")
    again.generator.set_state(states[2])
    resumed = list(again.epoch(start=1, number=2))
    for (a, b), (c, d) in zip(resumed, epochs[2][1:]):
        assert torch.equal(a, c) and torch.equal(b, d)


def test_default_flip_settings_draw_as_before():
    """``True``/"random" and ``False``/"none" are the same settings: identical batches and
    generator use, so the existing behaviour (and its seeds) is kept."""
    images = torch.randint(0, 256, (12, 3, 8, 8), dtype=torch.uint8)
    labels = torch.arange(12)
    for old, new in ((True, "random"), (False, "none")):
        a = batches_for(images, labels, seed=5, batch_size=4, pad=2, flip=old)
        b = batches_for(images, labels, seed=5, batch_size=4, pad=2, flip=new)
        for (x, y), (u, v) in zip(a.epoch(), b.epoch()):
            assert torch.equal(x, u) and torch.equal(y, v)
        assert torch.equal(a.generator.get_state(), b.generator.get_state())


# ------------------------------------------------------------------------ translate ±2 px
def test_pad_two_translates_uniformly_over_the_25_reflect_shifts():
    """Every output is a 8×8 window of its image reflect-padded by 2 (F.pad), at one of the
    5×5 offsets, and the offsets are close to uniform (χ² with 24 degrees of freedom below
    its 99.9% point, 51.2; deterministic seed)."""
    count, side = 1250, 8
    images = torch.randint(0, 256, (count, 3, side, side), dtype=torch.uint8)
    labels = torch.arange(count)
    batches = batches_for(images, labels, seed=2, batch_size=count, pad=2)
    (inputs, targets) = next(iter(batches))
    padded = F.pad(normalised(images[targets]), (2, 2, 2, 2), mode="reflect")
    found = torch.full((count,), -1)
    for dy, dx in itertools.product(range(5), range(5)):
        window = padded[:, :, dy : dy + side, dx : dx + side]
        match = (window == inputs).flatten(1).all(1)
        assert not (match & (found >= 0)).any()  # random images: one offset fits
        found[match] = dy * 5 + dx
    assert (found >= 0).all()
    counts = torch.bincount(found, minlength=25).double()
    expected = count / 25
    assert ((counts - expected) ** 2 / expected).sum() < 51.2
    assert (counts > 0).all()


# ------------------------------------------------------------------------ jitter
def test_jitter_against_a_hand_computation():
    x = torch.tensor([[[[1.0, -2.0], [0.5, 0.0]]], [[[3.0, 1.0], [-1.0, 2.0]]]])  # (2,1,2,2)
    shift = torch.tensor([0.1, -0.05])
    scale = torch.tensor([0.9, 1.1])
    out = apply_jitter(x, shift, scale)
    for b in range(2):
        for i, j in itertools.product(range(2), range(2)):
            hand = (x[b, 0, i, j].item() + shift[b].item()) * scale[b].item()
            assert out[b, 0, i, j].item() == pytest.approx(hand, abs=1e-6)
    # memory format and dtype kept
    half = torch.randn(3, 3, 4, 4).half().to(memory_format=torch.channels_last)
    jittered = apply_jitter(half, torch.zeros(3), torch.ones(3))
    assert jittered.dtype == torch.float16 and torch.equal(jittered, half)
    assert jittered.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError, match="one value per image"):
        apply_jitter(x, shift[:1], scale)


def test_jitter_draws_are_uniform_in_their_ranges():
    shift, scale = draw_jitter(
        4000, brightness=0.1, contrast=0.2, generator=torch.Generator().manual_seed(4)
    )
    g = torch.Generator().manual_seed(4)
    u, v = torch.rand(4000, generator=g), torch.rand(4000, generator=g)
    torch.testing.assert_close(shift, (u * 2 - 1) * 0.1)
    torch.testing.assert_close(scale, (v * 2 - 1) * 0.2 + 1)
    assert shift.abs().max() <= 0.1 and (scale - 1).abs().max() <= 0.2
    assert shift.abs().max() > 0.099 and abs(float(shift.mean())) < 0.01


def test_batches_apply_the_jitter_drawn_after_the_other_choices():
    images = torch.randint(0, 256, (8, 3, 6, 6), dtype=torch.uint8)
    labels = torch.arange(8)
    plain = batches_for(images, labels, seed=9, batch_size=4, pad=1, flip=True)
    plain_batches = list(plain.epoch())
    shift, scale = draw_jitter(8, brightness=0.1, contrast=0.1, generator=plain.generator)
    jittered = batches_for(
        images, labels, seed=9, batch_size=4, pad=1, flip=True, jitter=(0.1, 0.1)
    )
    for k, ((x, y), (u, v)) in enumerate(zip(plain_batches, jittered.epoch())):
        s = slice(4 * k, 4 * k + 4)
        assert torch.equal(y, v)
        torch.testing.assert_close(u, (x + shift[s].view(-1, 1, 1, 1)) * scale[s].view(-1, 1, 1, 1))


# ------------------------------------------------------------------------ lookahead
def test_lookahead_decay_schedule():
    assert AIRBENCH_LOOKAHEAD_BASE == pytest.approx(0.7737809375)
    assert lookahead_decay(0, 100) == 0.0
    assert lookahead_decay(50, 100) == pytest.approx(0.95**5 / 8)
    assert lookahead_decay(100, 100) == pytest.approx(0.95**5)
    with pytest.raises(ValueError):
        lookahead_decay(101, 100)


@pytest.mark.parametrize("total", [23, 20])
def test_lookahead_matches_airbench_loop_by_hand(total):
    """Random 'optimiser steps' on two tensors (float32 and float64); after each, the class
    and airbench94's loop written out in Python floats agree, final reset included."""
    gen = torch.Generator().manual_seed(total)
    a = torch.randn(3, 4, generator=gen)
    b = torch.randn(5, generator=gen, dtype=torch.float64)
    look = Lookahead([a, b], total_steps=total)
    fast = [a.flatten().tolist(), b.tolist()]
    slow = [list(v) for v in fast]
    for t in range(1, total + 1):
        steps = [torch.randn(3, 4, generator=gen), torch.randn(5, generator=gen).double()]
        a.add_(steps[0])
        b.add_(steps[1])
        for f, s in zip(fast, steps):
            for i, d in enumerate(s.flatten().tolist()):
                f[i] += d
        look.after_step(t)
        # airbench94, by hand
        if t % 5 == 0:
            decay = 0.95**5 * (t / total) ** 3
            for f, s in zip(fast, slow):
                for i in range(len(f)):
                    s[i] = s[i] + (1 - decay) * (f[i] - s[i])
                    f[i] = s[i]
        if t >= total:
            for f, s in zip(fast, slow):
                f[:] = s
        torch.testing.assert_close(a.flatten(), torch.tensor(fast[0]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b, torch.tensor(fast[1], dtype=torch.float64))
        torch.testing.assert_close(look.slow[1], torch.tensor(slow[1], dtype=torch.float64))
    assert look.finished and torch.equal(look.slow[0], a)
    before = a.clone()
    a.add_(1.0)
    look.after_step(total + 5)  # after the end: nothing more
    torch.testing.assert_close(a, before + 1.0)


def test_lookahead_from_module_covers_parameters_and_bn_statistics_and_resumes():
    def model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(2, 3, 1, bias=False), nn.BatchNorm2d(3))

    net = model()
    look = Lookahead.from_module(net, total_steps=10, every=2)
    assert look.names == ["0.weight", "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    gen = torch.Generator().manual_seed(1)
    net.train()
    for t in range(1, 5):
        net(torch.randn(4, 2, 3, 3, generator=gen))  # moves the running statistics
        with torch.no_grad():
            net[0].weight.add_(0.1)
        look.after_step(t)
    assert torch.equal(net[1].running_mean, look.slow[3])  # the reset reached the buffers
    saved = {k: (v.clone() if torch.is_tensor(v) else v) for k, v in look.state_dict().items()}
    saved["slow"] = {k: v.clone() for k, v in saved["slow"].items()}
    twin = model()
    twin.load_state_dict(net.state_dict())
    resumed = Lookahead.from_module(twin, total_steps=10, every=2)
    resumed.load_state_dict(saved)
    for t in range(5, 11):
        for m in (net, twin):
            with torch.no_grad():
                m[0].weight.mul_(1.5).add_(0.01 * t)
        look.after_step(t)
        resumed.after_step(t)
    for x, y in zip(net.state_dict().values(), twin.state_dict().values()):
        assert torch.equal(x, y)


# ------------------------------------------------------------------------ SGD
def test_airbench94_rates_are_per_1024_examples():
    lr, decay = airbench94_rates(batch_size=1024)
    scale = 1024 * (1 + 1 / 0.15)
    assert lr == pytest.approx(11.5 / scale) and lr == pytest.approx(1.4648e-3, rel=1e-4)
    assert decay == pytest.approx(0.0153 * 1024 / scale) and decay == pytest.approx(
        1.9957e-3, rel=1e-4
    )
    assert airbench94_rates(batch_size=512)[1] == pytest.approx(decay / 2)  # per example
    assert airbench94_rates(batch_size=512)[0] == pytest.approx(lr)


class _Roles(nn.Module):
    def __init__(self):
        super().__init__()
        self.whiten = nn.Conv2d(3, 4, 2)
        self.whiten.weight.requires_grad_(False)
        self.conv = nn.Conv2d(4, 4, 3, bias=False)
        self.norm = nn.BatchNorm2d(4)
        self.norm.weight.requires_grad_(False)
        self.head = nn.Linear(4, 3, bias=False)


ROLES = {
    "whiten_bias": lambda n, p: n == "whiten.bias",
    "bn_biases": lambda n, p: n.startswith("norm."),
    "head": lambda n, p: n.startswith("head."),
}


def test_split_params_by_role():
    m = _Roles()
    roles = split_params(m.named_parameters(), ROLES, default="filters")
    assert list(roles) == ["whiten_bias", "bn_biases", "head", "filters"]
    assert roles["whiten_bias"][0] is m.whiten.bias and roles["bn_biases"] == [m.norm.bias]
    assert roles["head"] == [m.head.weight] and roles["filters"] == [m.conv.weight]
    with pytest.raises(ValueError, match="matches no role"):
        split_params(m.named_parameters(), ROLES, default=None)


@pytest.mark.parametrize("fused", [False, True])
def test_airbench94_sgd_against_a_hand_written_update(fused):
    """Nesterov SGD, momentum 0.85, wd = decay/peak lr through the gradient, rates scaled by
    a schedule factor each step, BN biases at 64× the rate with the same decay."""
    m = _Roles()
    roles = split_params(m.named_parameters(), ROLES, default="filters")
    params = {k: [p.detach().clone().double() for p in v] for k, v in roles.items()}
    opt = airbench94_sgd(roles, batch_size=256, fused=fused)
    assert [g["name"] for g in opt.param_groups] == list(roles)
    lr, decay = airbench94_rates(batch_size=256)
    mults = {"whiten_bias": 1.0, "bn_biases": 64.0, "head": 1.0, "filters": 1.0}
    bufs: dict = {}
    gen = torch.Generator().manual_seed(0)
    for step, factor in enumerate((0.2, 1.0, 0.5)):
        scale_learning_rates(opt, factor)
        for role, ps in roles.items():
            for i, p in enumerate(ps):
                p.grad = torch.randn(p.shape, generator=gen)
                # by hand, in float64
                peak = lr * mults[role]
                g = p.grad.double() + (decay / peak) * params[role][i]
                buf = g if step == 0 else 0.85 * bufs[role, i] + g
                bufs[role, i] = buf
                params[role][i] = params[role][i] - peak * factor * (g + 0.85 * buf)
        opt.step()
        for role, ps in roles.items():
            for p, ref in zip(ps, params[role]):
                torch.testing.assert_close(p.detach().double(), ref, rtol=1e-5, atol=1e-6)
    # set_learning_rate(opt, f) of train.optim sets the same rates (lr_mult = peak)
    set_learning_rate(opt, 0.3)
    for g in opt.param_groups:
        assert float(g["lr"]) == pytest.approx(0.3 * g["initial_lr"])


def test_decay_per_step_is_the_same_for_every_group_at_the_peak():
    w, b = torch.ones(3, requires_grad=True), torch.ones(3, requires_grad=True)
    opt = airbench94_sgd({"filters": [w], "bn_biases": [b]}, batch_size=1024)
    scale_learning_rates(opt, 1.0)
    w.grad, b.grad = torch.zeros(3), torch.zeros(3)
    opt.step()
    _, decay = airbench94_rates(batch_size=1024)
    expected = 1 - decay * (1 + 0.85)  # first Nesterov step: (1 + μ)·(decay·p)
    torch.testing.assert_close(w.detach(), torch.full((3,), expected))
    torch.testing.assert_close(b.detach(), torch.full((3,), expected))


# ------------------------------------------------------------------------ Muon
def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The public Muon's quintic Newton–Schulz iteration, written out in float64."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.double() / max(float(g.double().norm()), 1e-7)
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if tall else x


def test_hand_newton_schulz_roughly_orthogonalises():
    g = torch.randn(6, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    singular = torch.linalg.svdvals(newton_schulz(g))
    assert singular.min() > 0.6 and singular.max() < 1.25
    # a tall matrix goes through its transpose
    torch.testing.assert_close(newton_schulz(g.T), newton_schulz(g).T)


@pytest.mark.parametrize("channels_last", [False, True])
def test_filter_muon_against_a_hand_written_update(channels_last):
    """Three steps on a 4-D filter bank (4, 3, 2, 2): momentum as a sum, Nesterov,
    renormalisation to norm √4 before each update, the update lr·NS₅(…) on the (4, 12)
    flattening. torch's Newton–Schulz runs in bfloat16: compared to 3% of the update."""
    gen = torch.Generator().manual_seed(1)
    weight = torch.randn(4, 3, 2, 2, generator=gen)
    if channels_last:
        weight = weight.to(memory_format=torch.channels_last)
    weight.requires_grad_(True)
    ref = weight.detach().double().clone()
    opt = FilterMuon([weight], lr=0.1, momentum=0.6, ns_steps=5, renormalize_every=1)
    buf = torch.zeros_like(ref)
    for _ in range(3):
        weight.grad = torch.randn(weight.shape, generator=gen)
        if channels_last:
            weight.grad = weight.grad.to(memory_format=torch.channels_last)
        g = weight.grad.double()
        buf = 0.6 * buf + g
        update = newton_schulz((g + 0.6 * buf).reshape(4, -1)).reshape(ref.shape)
        ref = ref * (2.0 / ref.norm())
        ref = ref - 0.1 * update
        opt.step()
        opt.zero_grad()
        assert weight.grad is None
        torch.testing.assert_close(weight.detach().double(), ref, rtol=0, atol=0.03 * 0.1)


def test_filter_muon_is_torch_muon_on_the_flattened_weight():
    """No renormalisation: FilterMuon on a contiguous 4-D weight and torch.optim.Muon on a
    2-D copy of it take bit-identical steps; the state dict round-trips."""
    gen = torch.Generator().manual_seed(2)
    weight = torch.randn(3, 2, 3, 3, generator=gen).requires_grad_(True)
    flat = weight.detach().reshape(3, -1).clone().requires_grad_(True)
    ours = FilterMuon([weight], lr=0.05, momentum=0.7)
    theirs = torch.optim.Muon([flat], lr=0.05, momentum=0.7, weight_decay=0.0)
    for _ in range(3):
        grad = torch.randn(weight.shape, generator=gen)
        weight.grad, flat.grad = grad.clone(), grad.reshape(3, -1).clone()
        ours.step()
        theirs.step()
        assert torch.equal(weight.detach().reshape(3, -1), flat.detach())
    state = ours.state_dict()
    copy = FilterMuon([weight.detach().clone().requires_grad_(True)], lr=0.05, momentum=0.7)
    copy.load_state_dict(state)
    assert copy.steps == 3
    assert torch.equal(
        copy.optimizer.state_dict()["state"][0]["momentum_buffer"],
        theirs.state_dict()["state"][0]["momentum_buffer"],
    )


def test_matrix_view_and_renormalize():
    w = torch.randn(4, 3, 2, 2).to(memory_format=torch.channels_last)
    view, order = matrix_view(w)
    assert order == (0, 2, 3, 1) and view.shape == (4, 12) and view.data_ptr() == w.data_ptr()
    with pytest.raises(ValueError, match="dense block"):
        matrix_view(torch.randn(4, 6)[:, ::2])
    ws = [torch.randn(4, 3, 2, 2), torch.randn(9, 5)]
    renormalize_(ws)
    assert float(ws[0].norm()) == pytest.approx(2.0) and float(ws[1].norm()) == pytest.approx(3.0)


def test_muon_with_sgd_groups_schedule_and_state():
    m = _Roles()
    roles = split_params(m.named_parameters(), ROLES, default="filters")
    filters = roles.pop("filters")
    opt = muon_with_sgd(filters, roles, batch_size=2000)
    names = [g["name"] for g in opt.param_groups]
    assert names == ["whiten_bias", "bn_biases", "head", "filters"]
    lrs = {g["name"]: g["initial_lr"] for g in opt.param_groups}
    assert lrs == {"whiten_bias": 0.053, "bn_biases": 0.053, "head": 0.67, "filters": 0.24}
    head = opt.param_groups[2]
    assert head["weight_decay"] == pytest.approx(2e-6 * 2000 / 0.67)
    scale_learning_rates(opt, 0.5, {"whiten_bias": 0.0})
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.0, 0.0265, 0.335, 0.12])
    before = [p.detach().clone() for p in m.parameters()]
    for p in m.parameters():
        if p.requires_grad:
            p.grad = torch.ones_like(p)
    opt.step()
    changed = [not torch.equal(b, p.detach()) for b, p in zip(before, m.parameters())]
    # whiten weight frozen, whiten bias at rate 0 → unchanged; the rest moved
    assert changed == [False, False, True, False, True, True]
    opt.zero_grad()
    assert all(p.grad is None for p in m.parameters())
    state = opt.state_dict()
    assert len(state["optimizers"]) == 2
    opt.load_state_dict(state)
    with pytest.raises(ValueError, match="optimiser states"):
        CombinedOptimizer(opt.optimizers[0]).load_state_dict(state)


# ------------------------------------------------------------------------ TTA
def reflect(i: int, n: int) -> int:
    return -i if i < 0 else (2 * (n - 1) - i if i >= n else i)


def view_by_hand(x: torch.Tensor, shift: int, flip: bool) -> torch.Tensor:
    """The view written out pixel by pixel: out[i, j] = x[r(i+s), r(j+s)], then mirrored."""
    height, width = x.shape[-2:]
    out = torch.empty_like(x)
    for i, j in itertools.product(range(height), range(width)):
        out[..., i, j] = x[..., reflect(i + shift, height), reflect(j + shift, width)]
    return out.flip(-1) if flip else out


def test_multiview_weights():
    assert sum(v.weight for v in MULTIVIEW) == 1.0
    assert sum(v.weight for v in MULTIVIEW if v.shift == 0) == 0.5
    for shift in (-1, 1):
        assert sum(v.weight for v in MULTIVIEW if v.shift == shift) == 0.25
    assert {(v.shift, v.flip) for v in MULTIVIEW} == set(itertools.product((0, -1, 1), (0, 1)))
    assert tta_mode(True) == "flip" and tta_mode(False) == "none"
    with pytest.raises(ValueError):
        tta_mode("all")


def test_views_pixel_by_pixel():
    x = torch.randn(2, 3, 5, 6)
    for view in MULTIVIEW:
        assert torch.equal(view_of(x, view), view_by_hand(x, view.shift, view.flip))
    cl = torch.randn(2, 3, 5, 6).to(torch.bfloat16).to(memory_format=torch.channels_last)
    shifted = view_of(cl, MULTIVIEW[3])
    assert shifted.dtype == torch.bfloat16
    assert shifted.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(shifted.float(), view_by_hand(cl.float(), -1, True))


def _linear_model(side: int = 6, classes: int = 10) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(3 * side * side, classes)).double()


def test_multiview_of_a_linear_model_is_the_model_of_the_weighted_image():
    """f linear (with bias) and the weights summing to 1: Σ w·f(view) = f(Σ w·view), the
    views built pixel by pixel."""
    model = _linear_model()
    x = torch.randn(4, 3, 6, 6, dtype=torch.float64)
    average = sum(v.weight * view_by_hand(x, v.shift, v.flip) for v in MULTIVIEW)
    with torch.no_grad():
        torch.testing.assert_close(multiview_logits(model, x), model(average).float())
        torch.testing.assert_close(
            flip_logits(model, x), model((x + x.flip(-1)) / 2).float(), rtol=1e-6, atol=1e-6
        )


def test_selected_count_is_the_ceiling():
    assert selected_count(2000, 0.25) == 500
    assert selected_count(10, 0.25) == 3
    assert selected_count(30, 0.1) == 3  # 0.1·30 = 3.0000000000000004 in floats
    assert selected_count(7, 0.0) == 0 and selected_count(7, 1.0) == 7
    with pytest.raises(ValueError):
        selected_count(7, 1.5)


def test_selective_tta_is_multiview_on_the_least_confident_and_flip_elsewhere():
    model = _linear_model()
    x = 3 * torch.randn(10, 3, 6, 6, dtype=torch.float64)
    with torch.no_grad():
        flip = flip_logits(model, x)
        full = multiview_logits(model, x)
        out = selective_logits(model, x, 0.25)
        # least confident, independently: ascending max softmax probability
        probs = torch.softmax(flip.double(), dim=1).max(dim=1).values
        chosen = sorted(probs.argsort()[:3].tolist())
        assert sorted(least_confident(flip, 3).tolist()) == chosen
        others = [i for i in range(10) if i not in chosen]
        torch.testing.assert_close(out[chosen], full[chosen])
        assert torch.equal(out[others], flip[others])
        assert not torch.allclose(out[chosen], flip[chosen])
        # the flip logits passed in give the same result; fraction 0 is flip TTA
        assert torch.equal(selective_logits(model, x, 0.25, base=flip), out)
        assert torch.equal(selective_logits(model, x, 0.0), flip)
        torch.testing.assert_close(selective_logits(model, x, 1.0), full)


@pytest.mark.parametrize("backend", ["eager", "triton"])
def test_the_augmentation_kernel_renders_every_view(backend):
    """Each view made from the uint8 images by the augmentation kernel (pad 1, crop at
    1 + shift, mirror) equals the view written out pixel by pixel from the normalised
    images, for the whole batch and for chosen rows, in fp32 and bf16, channels_last."""
    images = torch.randint(0, 256, (7, 3, 6, 5), dtype=torch.uint8)
    indices = torch.tensor([6, 0, 3, 2])
    rows = torch.tensor([3, 1])
    for dtype in (torch.float32, torch.bfloat16):
        render = kernel_render(
            images, indices, mean=CIFAR10_MEAN, std=CIFAR10_STD, out_dtype=dtype,
            backend=backend, validate=True,
        )  # fmt: skip
        x = normalised(images).to(dtype).float()
        for view in MULTIVIEW:
            whole = render(view, None)
            assert whole.dtype == dtype and whole.shape == (4, 3, 6, 5)
            assert whole.is_contiguous(memory_format=torch.channels_last)
            expected = view_by_hand(x[indices], view.shift, view.flip)
            assert torch.equal(whole.float(), expected)
            assert torch.equal(render(view, rows).float(), expected[rows])


@pytest.mark.parametrize("tta", [False, True, "multiview", "selective"])
def test_evaluate_with_each_tta_mode(tta):
    """evaluate() on uint8 images equals the TTA functions on the normalised images."""
    images = torch.randint(0, 256, (12, 3, 6, 6), dtype=torch.uint8)
    labels = torch.randint(0, 10, (12,))
    model = _linear_model().float().eval()
    result = evaluate(
        model,
        images,
        labels,
        tta=tta,
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
        dtype=torch.float32,
        backend="eager",
        batch_size=4,
        smoothing=0.0,
        autocast=contextlib.nullcontext(),
        tta_fraction=0.5,
    )
    x = normalised(images)
    with torch.no_grad():
        per_batch = []
        for batch in x.split(4):
            if tta is False:
                per_batch.append(model(batch))
            elif tta is True:
                per_batch.append(flip_logits(model, batch))
            elif tta == "multiview":
                per_batch.append(multiview_logits(model, batch))
            else:
                per_batch.append(selective_logits(model, batch, 0.5))
        logits = torch.cat(per_batch)
    loss, acc = result.read()
    assert loss == pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-5)
    assert acc == pytest.approx(float((logits.argmax(1) == labels).float().mean()))
    assert math.isfinite(loss)
