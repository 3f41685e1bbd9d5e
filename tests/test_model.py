"""Tests of the model package: ResNet9's architecture and options, the BN sites, whitening.

All on the CPU at small widths; references are plain ``torch.nn`` modules or numpy.
"""

from __future__ import annotations

import copy
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from model import (
    ConvBlock,
    GhostBNAct,
    ResNet9,
    ResNet9Config,
    channel_widths,
    patch_whitening_filters,
    whitening_filters_from_data,
)
from model.whitening import patch_second_moment

MEAN = (125.31, 122.95, 113.87)
STD = (62.99, 62.09, 66.70)


# ---- helpers ---------------------------------------------------------------------------
def correlated_images(n: int, size: int = 16, seed: int = 0) -> torch.Tensor:
    """float64 (n, 3, size, size) with strong spatial and cross-channel correlation, and
    well-separated covariance eigenvalues (a fixed random 3×3 mixing conv of noise)."""
    g = torch.Generator().manual_seed(seed)
    noise = torch.randn(n, 3, size + 2, size + 2, generator=g, dtype=torch.float64)
    mix = torch.randn(3, 3, 3, 3, generator=g, dtype=torch.float64)
    offset = 0.3 * torch.randn(3, dtype=torch.float64, generator=g)[:, None, None]
    return F.conv2d(noise, mix) + offset


def numpy_patches(images: np.ndarray, k: int = 3) -> np.ndarray:
    """Every k×k patch of (N, C, H, W) as rows of (n, C·k·k), ordered (C, kh, kw) like a conv
    weight; built with numpy's sliding windows, independently of F.unfold."""
    win = np.lib.stride_tricks.sliding_window_view(images, (k, k), axis=(2, 3))  # N,C,H',W',k,k
    win = win.transpose(0, 2, 3, 1, 4, 5)  # N,H',W',C,k,k
    return win.reshape(-1, images.shape[1] * k * k)


def set_random_whitening(model: ResNet9) -> None:
    if model.whitening is not None:
        model.set_whitening(patch_whitening_filters(torch.randn(8, 3, 12, 12)).filters)


def randomise_bn(model: nn.Module) -> None:
    """Non-trivial BN parameters and running stats, so copies and orders are really tested."""
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (GhostBNAct, nn.BatchNorm2d)):
                m.bias.normal_(0, 0.5)
                if m.weight is not None:
                    m.weight.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.3)
                m.running_var.uniform_(0.5, 2.0)


# ---- shapes, widths, parameter counts -----------------------------------------------------
@pytest.mark.parametrize(
    "activation,pool_before_bn,whitening,frozen,splits",
    list(itertools.product(("relu", "celu"), (False, True), (False, True), (False, True), (1, 2))),
)
def test_output_shapes_every_option(activation, pool_before_bn, whitening, frozen, splits):
    model = ResNet9(
        width=0.125,
        activation=activation,
        pool_before_bn=pool_before_bn,
        whitening=whitening,
        frozen_bn_scale=frozen,
        ghost_splits=splits,
    )
    set_random_whitening(model)
    x = torch.randn(4, 3, 32, 32)
    out = model(x)
    assert out.shape == (4, 10) and out.dtype == torch.float32
    assert torch.isfinite(out).all()
    out.sum().backward()
    model.eval()
    with torch.no_grad():
        assert model(x[:3]).shape == (3, 10)  # eval ignores splits: any batch size


def _expected_trainable(widths, *, whitening: bool, frozen: bool, classes: int = 10) -> int:
    """Trainable parameter count of ResNet9, written out layer by layer from the recipe."""
    c0, c1, c2, c3 = widths
    convs = [
        (27 * c0 * 1 * 1) if whitening else (3 * c0 * 3 * 3),  # prep (whitening conv: fixed)
        c0 * c1 * 9,
        c1 * c1 * 9,
        c1 * c1 * 9,  # layer1 conv + residual pair
        c1 * c2 * 9,  # layer2
        c2 * c3 * 9,
        c3 * c3 * 9,
        c3 * c3 * 9,  # layer3 conv + residual pair
    ]
    bn_channels = [c0, c1, c1, c1, c2, c3, c3, c3]
    per_bn = 1 if frozen else 2  # bias (+ scale)
    return sum(convs) + per_bn * sum(bn_channels) + c3 * classes


def _conv_channels(model: ResNet9) -> list[tuple[int, int]]:
    return [(m.in_channels, m.out_channels) for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize(
    "width,widths",
    [(1.0, (64, 128, 256, 512)), (0.25, (16, 32, 64, 128)), (0.0625, (4, 8, 16, 32))],
)
def test_channel_widths(width, widths):
    assert channel_widths(width) == widths
    c0, c1, c2, c3 = widths
    model = ResNet9(width=width)
    assert _conv_channels(model) == [
        (27, c0),
        (c0, c1),
        (c1, c1),
        (c1, c1),
        (c1, c2),
        (c2, c3),
        (c3, c3),
        (c3, c3),
    ]
    assert model.whitening.filters.shape == (27, 3, 3, 3)
    assert model.head.linear.in_features == c3 and model.head.linear.bias is None
    assert all(m.bias is None for m in model.modules() if isinstance(m, nn.Conv2d))
    plain = ResNet9(width=width, whitening=False)
    assert _conv_channels(plain)[0] == (3, c0)
    assert plain.prep.conv.kernel_size == (3, 3)
    assert model.prep.conv.kernel_size == (1, 1)


@pytest.mark.parametrize("width", [1.0, 0.25])
@pytest.mark.parametrize("whitening,frozen", [(True, True), (False, False), (True, False)])
def test_trainable_parameter_count(width, whitening, frozen):
    model = ResNet9(width=width, whitening=whitening, frozen_bn_scale=frozen)
    n = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert n == _expected_trainable(channel_widths(width), whitening=whitening, frozen=frozen)


def test_parameter_count_literals():
    # Hand-summed at width 1: convs 6,563,520; linear 5,120; BN channels 2,240 per vector.
    assert sum(p.numel() for p in ResNet9().parameters()) == 6_570_880
    assert sum(p.numel() for p in ResNet9(ResNet9Config.baseline()).parameters()) == 6_573_120


def test_config_defaults_are_the_networks_the_trainer_builds():
    """ResNet9() is the network the trainer builds for the final recipe (the default
    TrainConfig) and ResNet9Config.baseline() the one of the seed's baseline preset: the
    model's defaults and the trainer's cannot drift apart."""
    from train.config import TrainConfig
    from train.presets import preset_config
    from train.trainer import model_config

    assert ResNet9Config() == model_config(TrainConfig(), "eager")
    assert ResNet9Config.baseline() == model_config(preset_config("baseline"), "eager")
    with pytest.raises(ValueError, match="activation"):
        ResNet9Config(activation="gelu")
    with pytest.raises(ValueError, match="backend"):
        ResNet9Config(backend="auto")


# ---- the BN site against torch.nn ---------------------------------------------------------
@pytest.mark.parametrize("learnable", [True, False])
@pytest.mark.parametrize("act", [None, "relu", "celu"])
def test_ghost_bn_equals_batchnorm_per_split(learnable, act):
    splits, per_split, channels = 3, 2, 5
    site = GhostBNAct(channels, splits=splits, act=act, alpha=0.3, learnable_scale=learnable)
    if learnable:
        with torch.no_grad():
            site.weight.uniform_(0.5, 1.5)
    with torch.no_grad():
        site.bias.normal_()
    refs = []
    for _ in range(splits):
        bn = nn.BatchNorm2d(channels)
        with torch.no_grad():
            bn.weight.copy_(site.weight if learnable else torch.ones(channels))
            bn.bias.copy_(site.bias)
        refs.append(bn)
    activation = {None: nn.Identity(), "relu": nn.ReLU(), "celu": nn.CELU(0.3)}[act]

    x = torch.randn(splits * per_split, channels, 6, 7, requires_grad=True)
    x_ref = x.detach().clone().requires_grad_(True)
    out = site(x)
    ref = torch.cat([activation(bn(part)) for bn, part in zip(refs, x_ref.split(per_split))])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)

    grad = torch.randn_like(out)
    out.backward(grad)
    ref.backward(grad)
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        site.bias.grad, sum(bn.bias.grad for bn in refs), rtol=1e-4, atol=1e-5
    )
    if learnable:
        torch.testing.assert_close(
            site.weight.grad, sum(bn.weight.grad for bn in refs), rtol=1e-4, atol=1e-5
        )

    # Running stats: the mean of the per-split BatchNorm2d buffers (the seed's averaging).
    torch.testing.assert_close(
        site.running_mean, torch.stack([bn.running_mean for bn in refs]).mean(0)
    )
    torch.testing.assert_close(
        site.running_var, torch.stack([bn.running_var for bn in refs]).mean(0)
    )

    # Eval: F.batch_norm with the running stats, then the activation.
    site.eval()
    y = torch.randn(3, channels, 4, 4)
    expected = activation(
        F.batch_norm(
            y, site.running_mean, site.running_var, site.weight, site.bias, training=False, eps=1e-5
        )
    )
    torch.testing.assert_close(site(y), expected, rtol=1e-5, atol=1e-6)


def _copy_conv_bn(block: ConvBlock, conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    with torch.no_grad():
        conv.weight.copy_(block.conv.weight)
        bn.weight.copy_(block.bn.weight)
        bn.bias.copy_(block.bn.bias)
        bn.running_mean.copy_(block.bn.running_mean)
        bn.running_var.copy_(block.bn.running_var)


@pytest.mark.parametrize("placement", ["before_bn", "after_bn"])
def test_pool_placement_matches_hand_built_sequential(placement):
    block = ConvBlock(3, 6, pool=placement, splits=1, act="celu", alpha=0.3)
    randomise_bn(block)
    conv, pool = nn.Conv2d(3, 6, 3, padding=1, bias=False), nn.MaxPool2d(2)
    bn, act = nn.BatchNorm2d(6), nn.CELU(0.3)
    _copy_conv_bn(block, conv, bn)
    ref = (
        nn.Sequential(conv, pool, bn, act)
        if placement == "before_bn"
        else nn.Sequential(conv, bn, act, pool)
    )
    # Copies, so that running the wrong order leaves ``bn``'s running stats alone.
    wrong = copy.deepcopy(
        nn.Sequential(conv, bn, act, pool)
        if placement == "before_bn"
        else nn.Sequential(conv, pool, bn, act)
    )
    x = torch.randn(4, 3, 10, 10)
    out = block(x)
    expected = ref(x)
    assert out.shape == (4, 6, 5, 5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(block.bn.running_mean, bn.running_mean)
    torch.testing.assert_close(block.bn.running_var, bn.running_var)
    assert not torch.allclose(out, wrong(x), atol=1e-3)  # the order is observable
    block.eval(), ref.eval()
    torch.testing.assert_close(block(x), ref(x), rtol=1e-5, atol=1e-5)


class _Residual(nn.Module):
    def __init__(self, *layers: nn.Module) -> None:
        super().__init__()
        self.branch = nn.Sequential(*layers)

    def forward(self, x):
        return x + self.branch(x)


class _Scale(nn.Module):
    def __init__(self, s: float) -> None:
        super().__init__()
        self.s = s

    def forward(self, x):
        return x * self.s


def _reference_resnet9(model: ResNet9) -> nn.Sequential:
    """The recipe's network out of torch.nn modules, weights copied from ``model``."""
    cfg = model.config
    blocks = iter(m for m in model.modules() if isinstance(m, ConvBlock))
    act = (lambda: nn.CELU(cfg.celu_alpha)) if cfg.activation == "celu" else nn.ReLU

    def conv_bn(pool: bool) -> list[nn.Module]:
        block = next(blocks)
        c = block.conv
        conv = nn.Conv2d(
            c.in_channels, c.out_channels, c.kernel_size, padding=c.padding, bias=False
        )
        bn = nn.BatchNorm2d(c.out_channels)
        _copy_conv_bn(block, conv, bn)
        if not pool:
            return [conv, bn, act()]
        if cfg.pool_before_bn:
            return [conv, nn.MaxPool2d(2), bn, act()]
        return [conv, bn, act(), nn.MaxPool2d(2)]

    layers: list[nn.Module] = []
    if cfg.whitening:
        whiten = nn.Conv2d(3, 27, 3, padding=1, bias=False)
        with torch.no_grad():
            whiten.weight.copy_(model.whitening.filters)
        layers.append(whiten)
    layers += conv_bn(False)  # prep
    layers += conv_bn(True) + [_Residual(*conv_bn(False), *conv_bn(False))]  # layer1
    layers += conv_bn(True)  # layer2
    layers += conv_bn(True) + [_Residual(*conv_bn(False), *conv_bn(False))]  # layer3
    linear = nn.Linear(model.head.linear.in_features, cfg.num_classes, bias=False)
    with torch.no_grad():
        linear.weight.copy_(model.head.linear.weight)
    layers += [nn.MaxPool2d(4), nn.Flatten(), linear, _Scale(cfg.output_scale)]
    return nn.Sequential(*layers)


@pytest.mark.parametrize(
    "config",
    [
        ResNet9Config(width=0.125, ghost_splits=1, frozen_bn_scale=False),
        ResNet9Config.baseline(width=0.125),
    ],
    ids=["final", "baseline"],
)
def test_resnet9_matches_torch_nn_reference(config):
    model = ResNet9(config)
    set_random_whitening(model)
    randomise_bn(model)
    ref = _reference_resnet9(model)
    x = torch.randn(4, 3, 32, 32)
    torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)
    model.eval(), ref.eval()
    torch.testing.assert_close(model(x), ref(x), rtol=1e-4, atol=1e-5)


# ---- whitening ------------------------------------------------------------------------
def test_whitening_whitens_and_is_ordered():
    images = correlated_images(40)
    eps = 1e-2
    filters, eigenvalues = patch_whitening_filters(images, eps=eps)
    assert filters.shape == (27, 3, 3, 3) and filters.dtype == torch.float32
    assert eigenvalues.shape == (27,) and eigenvalues.dtype == torch.float64
    assert (eigenvalues[:-1] >= eigenvalues[1:]).all()  # descending

    x = numpy_patches(images.numpy())
    sigma = x.T @ x / (x.shape[0] - 1)
    w = filters.double().reshape(27, 27).numpy()
    expected = np.diag(eigenvalues.numpy() / (eigenvalues.numpy() + eps))
    np.testing.assert_allclose(w @ sigma @ w.T, expected, atol=2e-5)
    strong = eigenvalues.numpy() > 100 * eps
    assert strong.sum() >= 5
    np.testing.assert_allclose(np.diag(w @ sigma @ w.T)[strong], 1.0, atol=1.1e-2)


def test_whitening_conv_output_is_white():
    """The filters used as a conv (the model's layout) whiten the patches: ties the patch
    vector order to the (C, kh, kw) weight layout."""
    images = correlated_images(40)
    filters, eigenvalues = patch_whitening_filters(images)
    out = F.conv2d(images, filters.double())  # no padding: all patches
    flat = out.permute(0, 2, 3, 1).reshape(-1, 27)
    cov = flat.T @ flat / (flat.shape[0] - 1)
    torch.testing.assert_close(
        cov, torch.diag(eigenvalues / (eigenvalues + 1e-2)), atol=2e-5, rtol=0
    )


def test_whitening_matches_numpy_eigendecomposition():
    images = correlated_images(30)
    eps = 1e-2
    filters, eigenvalues = patch_whitening_filters(images, eps=eps)
    x = numpy_patches(images.numpy())
    lam, vec = np.linalg.eigh(x.T @ x / (x.shape[0] - 1))
    lam, vec = lam[::-1], vec[:, ::-1]
    # XᵀX per chunk is a float32 product (see model.whitening): float32-level agreement.
    np.testing.assert_allclose(eigenvalues.numpy(), lam, rtol=2e-6, atol=1e-9)
    ref = (vec / np.sqrt(lam + eps)).T  # row i: filter i
    mine = filters.double().reshape(27, 27).numpy()
    signs = np.sign(np.sum(mine * ref, axis=1))  # eigenvector sign is free
    assert np.all(signs != 0)
    np.testing.assert_allclose(mine, ref * signs[:, None], rtol=1e-4, atol=1e-5 * np.abs(ref).max())


def test_whitening_chunked_equals_one_shot():
    images = correlated_images(23).float()
    xtx_one, n_one = patch_second_moment(images, chunk_size=None)
    xtx_chunk, n_chunk = patch_second_moment(images, chunk_size=5)
    assert n_one == n_chunk == 23 * 14 * 14
    torch.testing.assert_close(xtx_chunk, xtx_one, rtol=1e-5, atol=1e-3)
    a = patch_whitening_filters(images, chunk_size=None)
    b = patch_whitening_filters(images, chunk_size=4)
    torch.testing.assert_close(a.filters, b.filters, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(a.eigenvalues, b.eigenvalues, rtol=2e-6, atol=1e-9)


def test_whitening_from_uint8_data():
    data = torch.randint(0, 256, (20, 3, 12, 12), dtype=torch.uint8)
    got = whitening_filters_from_data(data, MEAN, STD, n_images=13, chunk_size=4)
    shape = (1, 3, 1, 1)
    normalised = (
        data[:13].double() - torch.tensor(MEAN, dtype=torch.float64).reshape(shape)
    ) / torch.tensor(STD, dtype=torch.float64).reshape(shape)
    ref = patch_whitening_filters(normalised, chunk_size=None)
    torch.testing.assert_close(got.filters, ref.filters, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got.eigenvalues, ref.eigenvalues, rtol=1e-5, atol=1e-8)
    with pytest.raises(TypeError, match="whitening_filters_from_data"):
        patch_whitening_filters(data)
    with pytest.raises(ValueError, match="permute"):
        whitening_filters_from_data(data.permute(0, 2, 3, 1), MEAN, STD)


# ---- the whitening conv in the model ------------------------------------------------------
def test_model_refuses_to_run_without_whitening_filters():
    model = ResNet9(width=0.0625, ghost_splits=1)
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(RuntimeError, match="set_whitening"):
        model(x)
    with pytest.raises(ValueError, match="shape"):
        model.set_whitening(torch.randn(27, 3, 2, 2))
    with pytest.raises(ValueError, match="NaN"):
        model.set_whitening(torch.full((27, 3, 3, 3), float("nan")))
    with pytest.raises(RuntimeError, match="whitening=False"):
        ResNet9(width=0.0625, whitening=False).set_whitening(torch.randn(27, 3, 3, 3))
    set_random_whitening(model)
    out = model(x)
    # Filters that arrive through state_dict (a fresh model, an EMA copy) also count as set.
    fresh = ResNet9(width=0.0625, ghost_splits=1)
    fresh.load_state_dict(model.state_dict())
    torch.testing.assert_close(fresh(x), model(x))
    assert out.shape == (2, 10)
    # ... and loading unset filters over set ones makes the model refuse again.
    model.load_state_dict(ResNet9(width=0.0625, ghost_splits=1).state_dict())
    with pytest.raises(RuntimeError, match="set_whitening"):
        model(x)


def test_whitening_conv_is_fixed():
    model = ResNet9(width=0.0625, ghost_splits=2)
    set_random_whitening(model)
    filters = model.whitening.filters
    assert "whitening.filters" in dict(model.named_buffers())
    assert all(p is not filters for p in model.parameters())
    assert not filters.requires_grad

    groups = model.param_groups()
    trainable = [p for p in model.parameters() if p.requires_grad]
    grouped = [p for g in groups.values() for p in g]
    assert len(grouped) == len(trainable) and {id(p) for p in grouped} == {id(p) for p in trainable}
    assert groups["bn_weights"] == []  # frozen scales: no BN weights
    assert len(groups["bn_biases"]) == 8
    assert len(groups["weights"]) == 9  # 8 convs + the linear layer

    before = filters.clone()
    opt = torch.optim.SGD(
        [
            {"params": groups["weights"]},
            {"params": groups["bn_biases"], "lr": 0.64, "weight_decay": 5e-4 / 64},
        ],
        lr=0.01,
        momentum=0.9,
        nesterov=True,
        weight_decay=5e-4,
    )
    model(torch.randn(4, 3, 32, 32)).sum().backward()
    assert filters.grad is None
    opt.step()
    assert torch.equal(model.whitening.filters, before)


def test_param_groups_with_learnable_scales():
    model = ResNet9(ResNet9Config.baseline(width=0.0625))
    groups = model.param_groups()
    assert len(groups["bn_weights"]) == len(groups["bn_biases"]) == 8
    sites = list(model.bn_sites())
    assert [id(p) for p in groups["bn_biases"]] == [id(s.bias) for s in sites]
    assert [id(p) for p in groups["bn_weights"]] == [id(s.weight) for s in sites]


# ---- setters, memory format, precision ---------------------------------------------------
def test_set_ghost_splits_and_backend():
    model = ResNet9(width=0.0625, whitening=False, ghost_splits=16)
    model.set_ghost_splits(2)
    assert {s.splits for s in model.bn_sites()} == {2}
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(3, 3, 32, 32))
    model.eval()
    model(torch.randn(3, 3, 32, 32))  # eval: no splits
    model.set_backend("compile")
    assert model.backend == "compile" and {s.backend for s in model.bn_sites()} == {"compile"}
    with pytest.raises(ValueError, match="unknown model backend"):
        model.set_backend("cuda")


def test_ghost_splits_change_training_output():
    model = ResNet9(width=0.0625, whitening=False, ghost_splits=1)
    x = torch.randn(4, 3, 32, 32)
    one = copy.deepcopy(model)(x)
    model.set_ghost_splits(2)
    two = copy.deepcopy(model)(x)
    assert not torch.allclose(one, two, atol=1e-4)
    # Splits of 2 images normalise each pair alone, like running pairs through plain BN.
    model.set_ghost_splits(1)
    torch.testing.assert_close(
        two, torch.cat([copy.deepcopy(model)(p) for p in x.split(2)]), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("training", [True, False])
def test_channels_last_matches_contiguous(training):
    model = ResNet9(width=0.125, ghost_splits=2)
    set_random_whitening(model)
    randomise_bn(model)
    model.train(training)
    cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    assert cl.layer1[0].conv.weight.is_contiguous(memory_format=torch.channels_last)
    assert cl.whitening.filters.is_contiguous(memory_format=torch.channels_last)
    x = torch.randn(4, 3, 32, 32)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    features = cl.prep(cl.whitening(x_cl))
    assert features.is_contiguous(memory_format=torch.channels_last)
    cl.load_state_dict(model.state_dict())  # undo the running-stat update above
    torch.testing.assert_close(cl(x_cl), model(x), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(
        cl.layer3[1].block2.bn.running_var, model.layer3[1].block2.bn.running_var
    )


def test_mixed_precision_keeps_bn_in_float32():
    model = ResNet9(width=0.0625, ghost_splits=2).to_mixed_precision(torch.bfloat16)
    set_random_whitening(model)
    assert model.whitening.filters.dtype == torch.bfloat16
    assert model.prep.conv.weight.dtype == torch.bfloat16
    assert model.head.linear.weight.dtype == torch.bfloat16
    for site in model.bn_sites():
        assert site.bias.dtype == site.running_mean.dtype == site.running_var.dtype == torch.float32
    out = model(torch.randn(4, 3, 32, 32, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()


# ---- the Triton backend -----------------------------------------------------------------
NO_TRITON_REASON = (
    "needs the triton package (Linux only) and TRITON_INTERPRET=1, which "
    "tests/conftest.py sets before kernels are imported"
)


def _triton_ready() -> bool:
    from kernels._common import interpreting, triton_available

    return triton_available() and interpreting()


@pytest.mark.skipif(not _triton_ready(), reason=NO_TRITON_REASON)
def test_triton_backend_matches_eager():
    model = ResNet9(width=0.0625, ghost_splits=2)
    set_random_whitening(model)
    randomise_bn(model)
    triton_model = copy.deepcopy(model)
    triton_model.set_backend("triton")
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(triton_model(x), model(x), rtol=1e-4, atol=1e-4)
    for a, b in zip(triton_model.bn_sites(), model.bn_sites()):
        torch.testing.assert_close(a.running_mean, b.running_mean, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(a.running_var, b.running_var, rtol=1e-4, atol=1e-5)
    model.eval(), triton_model.eval()
    torch.testing.assert_close(triton_model(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not _triton_ready(), reason=NO_TRITON_REASON)
def test_triton_and_eager_train_alike():
    """Convergence: four recipe steps (Nesterov SGD, bias groups, summed smoothed loss, EMA)
    of a small ResNet9 through the Triton kernels and through the eager reference ops give
    the same losses, and end with the same weights."""
    from train.config import TrainConfig
    from train.runtime import Runtime
    from train.step import TrainStep

    config = TrainConfig(width=0.0625, batch_size=8, ghost_batch=4, epochs=2, ema_every=2)
    runtime = Runtime(torch.device("cpu"), "eager", torch.float32, channels_last=False)
    torch.manual_seed(0)
    eager = ResNet9(width=0.0625, ghost_splits=2)
    set_random_whitening(eager)
    triton_model = copy.deepcopy(eager)
    triton_model.set_backend("triton")
    steps = {
        name: TrainStep(m, m, config, runtime, steps_per_epoch=2)
        for name, m in (("eager", eager), ("triton", triton_model))
    }
    losses: dict[str, list[float]] = {"eager": [], "triton": []}
    for _ in range(4):
        inputs, labels = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
        for name, step in steps.items():
            loss, _ = step(inputs, labels)
            losses[name].append(loss.item())
    # Independent batches each step, so a step that diverged would show in the later losses.
    torch.testing.assert_close(
        torch.tensor(losses["triton"]), torch.tensor(losses["eager"]), rtol=1e-4, atol=1e-4
    )
    assert losses["eager"][0] != losses["eager"][-1]  # the weights really moved
    for (name, a), b in zip(triton_model.named_parameters(), eager.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4, msg=name)
