"""Tests of the airbench network family (:mod:`model.airbench`) and what it added to
:mod:`model.layers` and :mod:`model.whitening`.

All on the CPU at tiny widths (8/16/16) and batches of 4–8. References are written here
independently: a hand-written forward with ``torch.nn.functional``, ``torch.linalg.eigh`` of
a covariance built from ``F.unfold`` patches, ``F.conv2d`` for the Dirac identity, FLOPs
written out layer by layer and :class:`torch.utils.flop_counter.FlopCounterMode`.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import kernels
from model import (
    AirbenchConfig,
    AirbenchNet,
    BNSiteShape,
    GhostBNAct,
    airbench_bn_site_shapes,
    airbench_flops_per_image,
    airbench_whitening_filters,
    dirac_init_,
    patch_whitening_filters,
    pytorch_momentum,
)

MEAN = (125.31, 122.95, 113.87)
STD = (62.99, 62.09, 66.70)
TINY = (8, 16, 16)

#: The activations by name, written independently of model.layers.activation.
ACT = {
    "gelu": lambda x: F.gelu(x),
    "gelu_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "silu": F.silu,
    "relu": F.relu,
    "celu": lambda x: F.celu(x, alpha=0.3),
    None: lambda x: x,
}


# ---- helpers ---------------------------------------------------------------------------
def correlated_images(n: int, size: int = 12, seed: int = 0) -> torch.Tensor:
    """float64 (n, 3, size, size) with spatial and cross-channel correlation and a non-zero
    mean (a fixed random 3×3 mixing conv of noise, plus an offset per channel)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, size + 2, size + 2, generator=g, dtype=torch.float64)
    mix = torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64)
    offset = 0.3 * torch.randn(3, dtype=torch.float64, generator=g)[:, None, None]
    return F.conv2d(noise, mix) + offset


def tiny_model(**overrides) -> AirbenchNet:
    """An AirbenchNet at widths 8/16/16 with whitening filters from random images."""
    model = AirbenchNet(AirbenchConfig(widths=TINY, **overrides))
    filters = patch_whitening_filters(torch.randn(6, 3, 10, 10), 2, eps=5e-4, negate=True)
    model.set_whitening(filters.filters)
    return model


def randomise(model: AirbenchNet) -> None:
    """Non-trivial BN biases, running stats and whitening bias, so that the comparisons see
    every one of them."""
    with torch.no_grad():
        model.whitening_bias.normal_(0, 0.3)
        for site in model.bn_sites():
            site.bias.normal_(0, 0.5)
            site.running_mean.normal_(0, 0.3)
            site.running_var.uniform_(0.5, 2.0)


def hand_forward(
    model: AirbenchNet,
    x: torch.Tensor,
    stats: list[tuple[torch.Tensor, torch.Tensor]],
    *,
    training: bool,
) -> torch.Tensor:
    """airbench's forward written out with torch.nn.functional, on ``model``'s weights and on
    the running stats ``stats`` (one (mean, var) pair per BN site, updated in place)."""
    cfg = model.config
    act = ACT[cfg.activation]
    y = F.conv2d(x, model.whitening.filters, model.whitening.bias)  # no padding
    y = ACT[cfg.whitening_activation](y)
    sites = iter(stats)
    for block in (model.block1, model.block2, model.block3):
        for conv_block, pool in ((block.conv1, True), (block.conv2, False)):
            y = F.conv2d(y, conv_block.conv.weight, padding=1)
            if pool:
                y = F.max_pool2d(y, 2)
            mean, var = next(sites)
            y = F.batch_norm(
                y,
                mean,
                var,
                weight=None,
                bias=conv_block.bn.bias,
                training=training,
                momentum=cfg.bn_momentum,
                eps=cfg.bn_eps,
            )
            y = act(y)
    y = F.max_pool2d(y, 3).flatten(1)
    return F.linear(y, model.head.linear.weight) * cfg.output_scale


# ---- shapes ----------------------------------------------------------------------------
def test_stage_shapes_31_15_7_3_1():
    model = tiny_model()
    seen: dict[str, tuple[int, ...]] = {}
    for name in ("whitening", "block1", "block2", "block3", "head.linear"):
        model.get_submodule(name).register_forward_hook(
            lambda m, args, out, name=name: seen.update({name: tuple(out.shape)})
        )
    model.head.linear.register_forward_pre_hook(
        lambda m, args: seen.update({"head.pool": tuple(args[0].shape)})
    )
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert seen == {
        "whitening": (4, 24, 31, 31),
        "block1": (4, 8, 15, 15),
        "block2": (4, 16, 7, 7),
        "block3": (4, 16, 3, 3),
        "head.pool": (4, 16),  # the 3×3 max-pool leaves 1×1, flattened
        "head.linear": (4, 10),
    }
    assert out.shape == (4, 10) and out.dtype == torch.float32 and torch.isfinite(out).all()
    out.sum().backward()
    model.eval()
    with torch.no_grad():
        assert model(x[:3]).shape == (3, 10)


def test_bn_site_shapes_match_what_the_sites_receive():
    model = tiny_model()
    seen = []
    for path, site in model.named_modules():
        if isinstance(site, GhostBNAct):
            site.register_forward_pre_hook(
                lambda m, args, path=path: seen.append(
                    BNSiteShape(
                        path.removesuffix(".bn"), args[0].shape[1], args[0].shape[2], m.pool
                    )
                )
            )
    model(torch.randn(4, 3, 32, 32))
    assert tuple(seen) == airbench_bn_site_shapes(model.config)
    assert airbench_bn_site_shapes() == (
        BNSiteShape("block1.conv1", 64, 31, True),
        BNSiteShape("block1.conv2", 64, 15, False),
        BNSiteShape("block2.conv1", 256, 15, True),
        BNSiteShape("block2.conv2", 256, 7, False),
        BNSiteShape("block3.conv1", 256, 7, True),
        BNSiteShape("block3.conv2", 256, 3, False),
    )


# ---- whitening ---------------------------------------------------------------------------
def test_2x2_whitening_filters_against_eigh_of_unfolded_patches():
    images = correlated_images(30)
    eps = 5e-4
    filters, eigenvalues = patch_whitening_filters(images, 2, eps=eps, negate=True)
    assert filters.shape == (24, 3, 2, 2) and filters.dtype == torch.float32
    # The independent reference: patches by F.unfold, Σ = XᵀX/(n − 1), eigh.
    x = F.unfold(images, 2).transpose(1, 2).reshape(-1, 12)  # (n, 12), (C, kh, kw) order
    sigma = x.T @ x / (x.shape[0] - 1)
    lam, vec = torch.linalg.eigh(sigma)
    lam, vec = lam.flip(0), vec.flip(1)
    torch.testing.assert_close(eigenvalues[:12], lam, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(eigenvalues[12:], eigenvalues[:12], rtol=0, atol=0)
    w = filters.double().reshape(24, 12)
    # The negations are exact negations.
    assert torch.equal(filters[12:], -filters[:12])
    # Each kept filter is ± its eigenvector over √(λ + eps).
    expected = (vec / torch.sqrt(lam + eps)).T
    signs = torch.sign((w[:12] * expected).sum(1, keepdim=True))
    torch.testing.assert_close(w[:12], signs * expected, rtol=1e-4, atol=1e-6)
    # They whiten: the filtered patches have covariance diag(λ/(λ + eps)) ≈ I where λ ≫ eps.
    y = x @ w[:12].T
    cov = y.T @ y / (x.shape[0] - 1)
    torch.testing.assert_close(cov, torch.diag(lam / (lam + eps)), rtol=1e-4, atol=1e-4)
    strong = lam > 100 * eps
    assert strong.sum() >= 6
    torch.testing.assert_close(
        torch.diagonal(cov)[strong],
        torch.ones(int(strong.sum()), dtype=cov.dtype),
        atol=1e-2,
        rtol=0,
    )


def test_airbench_whitening_filters_use_the_configured_images_and_eps():
    data = torch.randint(0, 256, (10, 3, 9, 9), dtype=torch.uint8)
    config = AirbenchConfig(whitening_images=6, whitening_eps=1e-3)
    got = airbench_whitening_filters(data, MEAN, STD, config, chunk_size=4)
    mean = torch.tensor(MEAN)[:, None, None]
    std = torch.tensor(STD)[:, None, None]
    ref = patch_whitening_filters(
        (data[:6].float() - mean) / std, 2, eps=1e-3, chunk_size=None, negate=True
    )
    torch.testing.assert_close(got.filters, ref.filters, rtol=1e-5, atol=1e-6)
    assert got.filters.shape == (24, 3, 2, 2)


def test_whitening_conv_has_no_padding_a_bias_and_fixed_filters():
    model = tiny_model()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        model.whitening_bias.normal_()
    ref = F.conv2d(x, model.whitening.filters, model.whitening_bias)
    torch.testing.assert_close(model.whitening(x), ref)
    assert "whitening.filters" in dict(model.named_buffers())
    assert "whitening.filters" not in dict(model.named_parameters())
    assert dict(model.named_parameters())["whitening.bias"] is model.whitening_bias
    assert model.whitening_bias.shape == (24,)
    with pytest.raises(ValueError, match="shape"):
        model.set_whitening(torch.randn(12, 3, 2, 2))  # the negations are part of the filters
    with pytest.raises(RuntimeError, match="set_whitening"):
        AirbenchNet(widths=TINY)(x)


def test_whitening_bias_init_per_recipe():
    assert torch.equal(AirbenchNet(widths=TINY).whitening_bias, torch.zeros(24))
    bias = AirbenchNet(AirbenchConfig.speedrun2025(widths=TINY)).whitening_bias
    bound = 1 / math.sqrt(12)  # nn.Conv2d's default: 1/√fan_in, fan_in = 3·2·2
    assert bias.abs().max() <= bound and bias.abs().max() > 0


# ---- init ------------------------------------------------------------------------------
@pytest.mark.parametrize("c_in,c_out", [(3, 5), (5, 5), (5, 3)])
def test_dirac_init_passes_the_first_channels_through(c_in, c_out):
    conv = torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    before = conv.weight.detach().clone()
    dirac_init_(conv.weight)
    m = min(c_in, c_out)
    x = torch.randn(2, c_in, 7, 6)
    out = F.conv2d(x, conv.weight, padding=1)
    assert torch.equal(out[:, :m], x[:, :m])
    # The other filters keep PyTorch's default init.
    assert torch.equal(conv.weight[m:], before[m:])


def test_model_convs_are_dirac_initialised():
    model = AirbenchNet(widths=TINY)
    convs = [m.conv for b in (model.block1, model.block2, model.block3) for m in (b.conv1, b.conv2)]
    assert [(c.in_channels, c.out_channels) for c in convs] == [
        (24, 8),
        (8, 8),
        (8, 16),
        (16, 16),
        (16, 16),
        (16, 16),
    ]
    for conv in convs:
        m = min(conv.in_channels, conv.out_channels)
        x = torch.randn(2, conv.in_channels, 5, 5)
        assert torch.equal(F.conv2d(x, conv.weight, padding=1)[:, :m], x[:, :m])
        assert conv.bias is None
    for m in model.bn_sites():
        assert torch.equal(m.bias, torch.zeros_like(m.bias))
    plain = AirbenchNet(widths=TINY, dirac_init=False)
    x = torch.randn(2, 8, 5, 5)
    assert not torch.allclose(F.conv2d(x, plain.block1.conv2.conv.weight, padding=1), x)


def test_frozen_bn_scale_has_no_parameter_and_counts():
    model = AirbenchNet(widths=TINY)
    assert all(site.weight is None and not site.learnable_scale for site in model.bn_sites())
    assert not [n for n, _ in model.named_parameters() if n.endswith("bn.weight")]
    w1, w2, w3 = TINY
    convs = 24 * w1 * 9 + w1 * w1 * 9 + w1 * w2 * 9 + w2 * w2 * 9 + w2 * w3 * 9 + w3 * w3 * 9
    biases = 2 * (w1 + w2 + w3)  # one per BN channel
    expected = 24 + convs + biases + w3 * 10  # whitening bias, convs, BN biases, head
    assert sum(p.numel() for p in model.parameters()) == expected
    learnable = AirbenchNet(widths=TINY, frozen_bn_scale=False)
    assert sum(p.numel() for p in learnable.parameters()) == expected + biases


def test_head_unit_std_and_output_scale():
    speedrun = AirbenchNet(AirbenchConfig.speedrun2025(widths=TINY))
    torch.testing.assert_close(speedrun.head.linear.weight.std(), torch.tensor(1.0))
    assert speedrun.head.output_scale == 1 / 16  # 1 / w3
    assert AirbenchNet(widths=TINY).head.output_scale == 1 / 9


# ---- the forward against a hand-written one --------------------------------------------
@pytest.mark.parametrize(
    "config",
    [AirbenchConfig(widths=TINY), AirbenchConfig.speedrun2025(widths=TINY)],
    ids=["airbench94", "speedrun2025"],
)
def test_forward_matches_hand_written_functional_forward(config):
    model = AirbenchNet(config)
    model.set_whitening(patch_whitening_filters(torch.randn(6, 3, 10, 10), 2, negate=True).filters)
    randomise(model)
    stats = [(s.running_mean.clone(), s.running_var.clone()) for s in model.bn_sites()]
    x = torch.randn(6, 3, 32, 32)
    # Training mode: batch statistics, and the running stats move by PyTorch's momentum.
    out = model(x)
    ref = hand_forward(model, x, stats, training=True)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)
    for site, (mean, var) in zip(model.bn_sites(), stats):
        torch.testing.assert_close(site.running_mean, mean, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(site.running_var, var, rtol=1e-4, atol=1e-6)
    # The gradients of every parameter agree too.
    grads = torch.autograd.grad(out.square().sum(), list(model.parameters()))
    ref_grads = torch.autograd.grad(ref.square().sum(), list(model.parameters()))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-3, atol=1e-5)
    # Eval mode: the running statistics.
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model(x), hand_forward(model, x, stats, training=False), rtol=1e-4, atol=1e-5
        )


# ---- BN options per recipe -----------------------------------------------------------------
def test_momentum_and_eps_per_recipe_reach_every_bn_site():
    assert pytorch_momentum(0.6) == pytest.approx(0.4)
    cases = [
        (AirbenchConfig(widths=TINY), 0.4, 1e-12, "gelu"),
        (AirbenchConfig.airbench94(widths=TINY), 0.4, 1e-12, "gelu"),
        (AirbenchConfig.speedrun2025(widths=TINY), 1 - 0.5566, 1e-12, "silu"),
        (
            AirbenchConfig(widths=TINY, bn_momentum=0.25, bn_eps=1e-5, ghost_splits=2),
            0.25,
            1e-5,
            "gelu",
        ),
    ]
    for config, momentum, eps, act in cases:
        sites = list(AirbenchNet(config).bn_sites())
        assert len(sites) == 6
        for site in sites:
            assert site.momentum == pytest.approx(momentum) and site.eps == eps
            assert site.act == act and site.splits == config.ghost_splits
            assert site.backend == "eager"
    assert AirbenchConfig.speedrun2025().whitening_activation == "gelu"
    assert AirbenchConfig.speedrun2025().whitening_images == 960
    assert AirbenchConfig().whitening_images == 5000
    assert AirbenchConfig().whitening_eps == 5e-4


def test_config_validation():
    for bad in (
        dict(widths=(8, 16)),
        dict(widths=(8, 0, 16)),
        dict(activation=None),
        dict(activation="tanh"),
        dict(whitening_activation="tanh"),
        dict(bn_momentum=1.5),
        dict(bn_eps=0.0),
        dict(ghost_splits=0),
        dict(whitening_bias_init="ones"),
        dict(backend="auto"),
    ):
        with pytest.raises(ValueError):
            AirbenchConfig(**bad)
    assert AirbenchConfig(widths=[8, 16, 16]).widths == (8, 16, 16)  # hashable


def test_ghost_bn_act_accepts_the_kernels_activations():
    for act in kernels.ACTIVATIONS:
        GhostBNAct(4, act=act)
    with pytest.raises(ValueError, match="act must be one of"):
        GhostBNAct(4, act="tanh")


# ---- the whitening bias's freeze ---------------------------------------------------------------
def test_freezing_the_whitening_bias_stops_its_gradient():
    model = tiny_model()
    x = torch.randn(4, 3, 32, 32)
    model(x).square().sum().backward()
    assert model.whitening_bias.grad is not None and model.whitening_bias.grad.abs().sum() > 0
    model.freeze_whitening_bias()
    # Its old gradient is dropped too: an optimiser skips a parameter whose .grad is None
    # (no update, no weight decay), even one that zeroes gradients instead of freeing them.
    assert model.whitening_bias_frozen and model.whitening_bias.grad is None
    model.zero_grad(set_to_none=False)
    model(x).square().sum().backward()
    assert model.whitening_bias.grad is None
    assert model.block1.conv1.conv.weight.grad.abs().sum() > 0  # the rest still trains
    model.freeze_whitening_bias(False)
    model(x).square().sum().backward()
    assert model.whitening_bias.grad is not None


def test_param_groups_hold_every_parameter_once():
    model = AirbenchNet(widths=TINY, frozen_bn_scale=False)
    groups = model.param_groups()
    assert groups["whiten_bias"] == [model.whitening_bias]
    assert groups["head"] == [model.head.linear.weight]
    assert len(groups["filters"]) == 6 and all(p.dim() == 4 for p in groups["filters"])
    assert len(groups["bn_biases"]) == 6 and len(groups["bn_weights"]) == 6
    listed = [id(p) for ps in groups.values() for p in ps]
    assert sorted(listed) == sorted(id(p) for p in model.parameters())
    model.freeze_whitening_bias()
    assert model.param_groups()["whiten_bias"] == [model.whitening_bias]


# ---- FLOPs ---------------------------------------------------------------------------------
def test_flop_count_against_layer_shapes_by_hand():
    # airbench94 at 32×32, each layer 2·c_in·c_out·k²·H_out·W_out, written out.
    forward = {
        "whitening": 2 * 3 * 24 * 2 * 2 * 31 * 31,
        "block1.conv1": 2 * 24 * 64 * 9 * 31 * 31,
        "block1.conv2": 2 * 64 * 64 * 9 * 15 * 15,
        "block2.conv1": 2 * 64 * 256 * 9 * 15 * 15,
        "block2.conv2": 2 * 256 * 256 * 9 * 7 * 7,
        "block3.conv1": 2 * 256 * 256 * 9 * 7 * 7,
        "block3.conv2": 2 * 256 * 256 * 9 * 3 * 3,
        "head": 2 * 256 * 10,
    }
    fwd = sum(forward.values())
    # Backward: weight + input gradients of all but the whitening conv (fixed, input = data).
    train = fwd + 2 * (fwd - forward["whitening"])
    assert airbench_flops_per_image(training=False) == fwd
    assert airbench_flops_per_image() == train
    assert (
        airbench_flops_per_image(whitening_bias_trainable=False) == train - forward["block1.conv1"]
    )
    assert train == pytest.approx(0.71e9, rel=0.01)  # RECIPE.md: 0.71 GFLOP fwd + bwd


@pytest.mark.parametrize("frozen_bias", [False, True])
def test_flop_count_matches_flop_counter_mode(frozen_bias):
    model = tiny_model()
    if frozen_bias:
        model.freeze_whitening_bias()
    x = torch.randn(4, 3, 32, 32)
    with FlopCounterMode(display=False) as counter:
        model(x).sum().backward()
    per_image = airbench_flops_per_image(model.config, whitening_bias_trainable=not frozen_bias)
    assert counter.get_total_flops() == 4 * per_image


# ---- memory format, precision, backends ------------------------------------------------------
def test_channels_last():
    model = tiny_model()
    randomise(model)
    reference = copy.deepcopy(model)
    model = model.to(memory_format=torch.channels_last)
    layouts = []
    for site in model.bn_sites():
        site.register_forward_hook(
            lambda m, args, out: layouts.append(
                out.is_contiguous(memory_format=torch.channels_last)
            )
        )
    x = torch.randn(4, 3, 32, 32)
    out = model(x.to(memory_format=torch.channels_last))
    assert layouts == [True] * 6
    torch.testing.assert_close(out, reference(x), rtol=1e-4, atol=1e-5)
    out.sum().backward()
    assert model.block1.conv1.conv.weight.grad is not None


def test_mixed_precision_keeps_bn_in_float32():
    model = tiny_model().to_mixed_precision(torch.bfloat16)
    assert model.whitening.filters.dtype == torch.bfloat16
    assert model.whitening_bias.dtype == torch.bfloat16
    assert model.block2.conv1.conv.weight.dtype == torch.bfloat16
    for site in model.bn_sites():
        assert site.bias.dtype == site.running_mean.dtype == torch.float32
    out = model(torch.randn(4, 3, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out).all()


def test_backend_reaches_every_site():
    model = AirbenchNet(widths=TINY, backend="compile")
    assert {s.backend for s in model.bn_sites()} == {"compile"} and model.backend == "compile"
    model.set_backend("eager")
    assert {s.backend for s in model.bn_sites()} == {"eager"}
    model.set_ghost_splits(2)
    assert {s.splits for s in model.bn_sites()} == {2}
    with pytest.raises(ValueError, match="unknown model backend"):
        model.set_backend("cuda")


def _triton_ready() -> bool:
    from kernels._common import interpreting, triton_available

    return triton_available() and interpreting()


@pytest.mark.skipif(
    not _triton_ready(), reason="needs the triton package and TRITON_INTERPRET=1 (conftest)"
)
@pytest.mark.parametrize("act", ["gelu", "silu"])  # airbench94's, the 2025 speedrun's
def test_triton_backend_matches_eager(act):
    eager = tiny_model(activation=act)
    randomise(eager)
    triton_model = copy.deepcopy(eager)
    triton_model.set_backend("triton")
    # 20×20 images keep the interpreter quick and still pool odd sides: 19 → 9 → 4 → 2.
    x = torch.randn(2, 3, 20, 20)
    out, ref = triton_model(x), eager(x)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-4)
    for a, b in zip(triton_model.bn_sites(), eager.bn_sites()):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-4, atol=1e-5)
    out.square().sum().backward()
    ref.square().sum().backward()
    for (name, a), b in zip(triton_model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-3, atol=1e-4, msg=name)
    triton_model.eval(), eager.eval()
    with torch.no_grad():
        torch.testing.assert_close(triton_model(x), eager(x), rtol=1e-4, atol=1e-4)


def test_airbench_sites_run_pytorchs_batch_norm_on_the_eager_backend(monkeypatch):
    """Plain BN by design: every airbench site takes ghost_bn_act_native on the eager backend
    (and the written-out reference is what ResNet9's ghost BN keeps)."""
    import model.layers as layers
    from model import ResNet9, ResNet9Config

    calls = []
    native = layers.ghost_bn_act_native

    def spy(*args, **kwargs):
        calls.append(kwargs["splits"])
        return native(*args, **kwargs)

    monkeypatch.setattr(layers, "ghost_bn_act_native", spy)
    net = AirbenchNet(widths=TINY)
    assert all(site.native_eager for site in net.bn_sites())
    assert not any(site.native_eager for site in ResNet9(ResNet9Config(width=0.0625)).bn_sites())
    net.set_whitening(torch.randn(24, 3, 2, 2))
    net(torch.randn(4, 3, 32, 32)).sum().backward()
    assert calls == [1] * 6
