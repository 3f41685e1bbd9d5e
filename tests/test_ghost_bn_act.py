"""Tests of the fused ghost BN op (:mod:`kernels.ghost_bn_act`), on the CPU.

The Triton kernels run through Triton's interpreter (``TRITON_INTERPRET=1``, set by
conftest.py). Every case is checked two ways:
  * against ``ghost_bn_act_reference`` (plain PyTorch, fp32 statistics) and its autograd;
  * against PyTorch's own ops in float64 on the same input values — F.max_pool2d (which
    floors odd sizes), then F.batch_norm(training=True) on each split (running buffers
    updated per split, then averaged), F.celu / F.relu / F.gelu (exact and tanh) / F.silu —
    and their autograd.
Shapes are small because the interpreter costs ~3 ms per program instance.
"""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from conftest import KERNEL_DEVICE  # tests/ is on sys.path

import bench.aot as aot
from bench.shapes import bn_sites
from kernels import ghost_bn_act, ghost_bn_act_bytes, ghost_bn_act_native, ghost_bn_act_reference
from kernels.ghost_bn_act import launch, plan  # ``kernels.ghost_bn_act`` is the function
from kernels.ghost_bn_act.op import ghost_bn_act_bwd_op, ghost_bn_act_fwd_op, ghost_bn_stats_op
from kernels.ghost_bn_act.specs import AIRBENCH_SHAPES, airbench_sites, aot_specs

# ---- tolerances: one table per dtype ------------------------------------------------------
# atol is relative to max(1, max |expected|): outputs and grads are compared at their scale.
TOL = {
    torch.float32: dict(rtol=1e-5, atol=1e-5),
    torch.float16: dict(rtol=1e-3, atol=1e-3),
    torch.bfloat16: dict(rtol=2e-2, atol=2e-2),
}
#: Running statistics are fp32 whatever x's dtype (fp32 accumulation on both sides).
STATS_TOL = dict(rtol=1e-5, atol=1e-5)
if KERNEL_DEVICE.type == "cuda":
    # Compiled on a GPU (gpu-check): the kernels' reduction order and the GPU's own fp32
    # arithmetic (FMA contraction, fast reciprocal square root) differ from the
    # interpreter's, so fp32 gets the tolerance of a few fp32 rounding steps over a
    # reduction, not of one.
    TOL[torch.float32] = dict(rtol=1e-4, atol=1e-4)
    STATS_TOL = dict(rtol=1e-4, atol=1e-4)

CL = torch.channels_last


def assert_close(actual: torch.Tensor, expected: torch.Tensor, tol: dict, what: str) -> None:
    scale = max(1.0, expected.detach().abs().max().item()) if expected.numel() else 1.0
    torch.testing.assert_close(
        actual.detach().double(),
        expected.detach().double(),
        rtol=tol["rtol"],
        atol=tol["atol"] * scale,
        msg=lambda m: f"{what}: {m}",
    )


# ---- PyTorch's own ops in float64 ---------------------------------------------------------
def torch_ops(
    x, bias, weight, running_mean, running_var, *, splits, pool, act, alpha, eps, momentum, training
):
    """F.max_pool2d → F.batch_norm per split → the activation by its own F function;
    returns (y, new rm, new rv)."""
    if pool:
        x = F.max_pool2d(x, 2)
    if training:
        outs, means, variances = [], [], []
        for part in x.split(x.shape[0] // splits):
            rm, rv = running_mean.clone(), running_var.clone()
            outs.append(
                F.batch_norm(part, rm, rv, weight, bias, training=True, momentum=momentum, eps=eps)
            )
            means.append(rm)
            variances.append(rv)
        y = torch.cat(outs)
        new_rm, new_rv = torch.stack(means).mean(0), torch.stack(variances).mean(0)
    else:
        y = F.batch_norm(x, running_mean, running_var, weight, bias, training=False, eps=eps)
        new_rm, new_rv = running_mean, running_var
    if act == "celu":
        y = F.celu(y, alpha)
    elif act == "relu":
        y = F.relu(y)
    elif act == "gelu":
        y = F.gelu(y)
    elif act == "gelu_tanh":
        y = F.gelu(y, approximate="tanh")
    elif act == "silu":
        y = F.silu(y)
    return y, new_rm, new_rv


# ---- cases ----------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Case:
    dtype: torch.dtype
    shape: tuple[int, int, int, int]
    splits: int
    pool: bool
    act: str | None
    weight: bool
    channels_last: bool

    def __str__(self) -> str:
        b, c, h, w = self.shape
        return (
            f"{str(self.dtype)[6:]}-{b}x{c}x{h}x{w}-s{self.splits}"
            f"{'-pool' if self.pool else ''}-{self.act}-{'w' if self.weight else 'frozen'}"
            f"-{'cl' if self.channels_last else 'nchw'}"
        )


F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
CASES = [
    # C = 3, 7, 64; H = W = 6 (odd pooled size 3); splits 1, 2, 4 with k = B/splits of 1..3
    Case(F32, (4, 3, 6, 6), 2, False, "celu", True, True),
    Case(F32, (4, 3, 6, 6), 2, True, "celu", True, True),
    Case(F32, (6, 7, 6, 6), 3, True, "relu", False, False),
    Case(F32, (4, 7, 6, 6), 4, False, None, True, False),
    Case(F32, (4, 64, 6, 6), 1, True, "celu", False, True),
    Case(F32, (2, 7, 32, 32), 1, False, "relu", True, False),  # 32×32, tiny B; 2 channel blocks
    Case(F32, (2, 5, 32, 32), 2, True, "celu", False, True),
    Case(F16, (4, 3, 6, 6), 2, True, "celu", False, True),
    Case(F16, (6, 7, 6, 6), 2, False, "relu", True, True),
    Case(F16, (4, 7, 6, 6), 4, True, None, True, False),
    Case(F16, (8, 64, 6, 6), 4, True, "celu", True, True),
    Case(F16, (4, 64, 6, 6), 2, False, "celu", False, False),
    Case(F16, (2, 3, 32, 32), 1, True, "relu", False, False),
    Case(F16, (2, 264, 4, 4), 2, False, "celu", True, True),  # C > 256: 2 channel blocks
    Case(BF16, (4, 3, 6, 6), 2, False, "celu", True, True),
    Case(BF16, (6, 7, 6, 6), 3, True, "relu", True, True),
    Case(BF16, (4, 64, 6, 6), 4, True, "celu", False, False),
    Case(BF16, (4, 7, 6, 6), 1, False, None, False, False),
    Case(BF16, (2, 16, 32, 32), 2, True, "celu", True, True),
]


def make_inputs(case: Case, *, mean: float = 0.5, std: float = 2.0):
    b, c, h, w = case.shape
    x = (mean + std * torch.randn(b, c, h, w)).to(case.dtype)
    if case.channels_last:
        x = x.contiguous(memory_format=CL)
    bias = 0.5 * torch.randn(c)
    weight = 0.5 + torch.rand(c) if case.weight else None
    running_mean = 0.3 * torch.randn(c)
    running_var = 0.5 + torch.rand(c)
    return x, bias, weight, running_mean, running_var


def run_all(
    case: Case,
    training: bool = True,
    alpha: float = 0.3,
    *,
    inputs=None,
    eps: float = 1e-5,
    momentum: float = 0.1,
):
    """Triton, reference and float64 torch ops: outputs, grads and running stats of each."""
    x, bias, weight, rm, rv = inputs if inputs is not None else make_inputs(case)
    kw = dict(
        splits=case.splits if training else 1,
        pool=case.pool,
        act=case.act,
        alpha=alpha,
        eps=eps,
        momentum=momentum,
        training=training,
    )
    results = {}
    for name in ("triton", "reference", "float64"):
        if name == "float64":
            xs = x.detach().double().requires_grad_()
            bs = bias.double().requires_grad_()
            ws = weight.double().requires_grad_() if weight is not None else None
            rms, rvs = rm.double(), rv.double()
            y, new_rm, new_rv = torch_ops(xs, bs, ws, rms, rvs, **kw)
        else:
            xs = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
            bs = bias.clone().requires_grad_()
            ws = weight.clone().requires_grad_() if weight is not None else None
            new_rm, new_rv = rm.clone(), rv.clone()
            if name == "triton":
                y = ghost_bn_act(xs, bs, new_rm, new_rv, weight=ws, backend="triton", **kw)
            else:
                y = ghost_bn_act_reference(xs, bs, new_rm, new_rv, weight=ws, **kw)
        results[name] = dict(y=y, x=xs, bias=bs, weight=ws, rm=new_rm, rv=new_rv)
    dy = torch.randn(results["triton"]["y"].shape).to(case.dtype)
    for name, r in results.items():
        r["y"].backward(dy.double() if name == "float64" else dy)
    return results


def check_all(case: Case, results: dict, training: bool = True) -> None:
    tol = TOL[case.dtype]
    tri = results["triton"]
    y = tri["y"]
    assert y.dtype == case.dtype
    b, c, h, w = case.shape
    assert y.shape == ((b, c, h // 2, w // 2) if case.pool else (b, c, h, w))  # floored
    # output memory format follows x (as the reference's)
    assert y.is_contiguous(memory_format=CL if case.channels_last else torch.contiguous_format)
    assert y.stride() == results["reference"]["y"].stride()
    for other in ("reference", "float64"):
        exp = results[other]
        assert_close(y, exp["y"], tol, f"y vs {other}")
        assert_close(tri["x"].grad, exp["x"].grad, tol, f"dx vs {other}")
        assert_close(tri["bias"].grad, exp["bias"].grad, tol, f"dbias vs {other}")
        if case.weight:
            assert_close(tri["weight"].grad, exp["weight"].grad, tol, f"dweight vs {other}")
        assert_close(tri["rm"], exp["rm"], STATS_TOL, f"running_mean vs {other}")
        assert_close(tri["rv"], exp["rv"], STATS_TOL, f"running_var vs {other}")
    assert tri["x"].grad.dtype == case.dtype and tri["x"].grad.shape == case.shape
    if case.weight:
        assert tri["weight"].grad is not None
    else:
        assert tri["weight"] is None


# ---- forward + backward + running stats ---------------------------------------------------
@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.gpu
def test_training_step_matches_reference_and_torch_ops(case):
    check_all(case, run_all(case))


# The airbench family: GELU (exact and tanh) and SiLU, odd sizes where the 2×2 pool floors
# (31→15, 15→7, 7→3: the last row and column are dropped), plain BN (one split) as well as
# ghost splits. Every activation in every dtype, both layouts, odd H and W alone and together.
AIRBENCH_CASES = [
    Case(F32, (2, 3, 7, 7), 1, True, "gelu", False, True),  # 7 → 3
    Case(F32, (4, 5, 6, 7), 2, True, "silu", True, False),  # odd W only
    Case(F32, (2, 4, 15, 15), 1, False, "gelu_tanh", False, True),  # odd, no pool
    Case(F16, (2, 16, 15, 15), 1, True, "gelu", False, True),  # 15 → 7
    Case(F16, (4, 3, 7, 6), 2, True, "gelu_tanh", True, False),  # odd H only
    Case(F16, (2, 6, 3, 3), 1, False, "silu", False, False),  # the 3×3 site
    Case(BF16, (2, 3, 31, 31), 1, True, "silu", False, True),  # 31 → 15
    Case(BF16, (2, 5, 7, 7), 1, True, "gelu_tanh", True, False),
    Case(BF16, (4, 7, 5, 5), 2, True, "gelu", True, True),
]


@pytest.mark.parametrize("case", AIRBENCH_CASES, ids=str)
@pytest.mark.gpu
def test_airbench_activations_and_odd_sizes(case):
    """y, dx (x's full odd shape, zero in the dropped row/column), dbias, dweight and the
    running stats against the reference and float64 F.max_pool2d → F.batch_norm → F.gelu /
    F.silu."""
    results = run_all(case)
    check_all(case, results)
    if case.pool:
        dx = results["triton"]["x"].grad
        h, w = case.shape[2:]
        # PyTorch's pool never reads them, so their gradient is exactly zero
        assert not dx[:, :, 2 * (h // 2) :, :].any() and not dx[:, :, :, 2 * (w // 2) :].any()


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("case", CASES[:8] + AIRBENCH_CASES, ids=str)
def test_native_eager_op_matches_the_reference(case, training):
    """:func:`ghost_bn_act_native` (PyTorch's own batch norm for one split or in evaluation,
    the reference for ghost splits) against the reference: y, its dtype and strides, dx,
    dbias, dweight and the running statistics."""
    x, bias, weight, rm, rv = make_inputs(case)
    kw = dict(
        splits=case.splits if training else 1,
        pool=case.pool,
        act=case.act,
        alpha=0.3,
        eps=1e-5,
        momentum=0.1,
        training=training,
    )
    dy = None
    out = {}
    for name in ("eager", "reference"):
        xs = x.detach().clone(memory_format=torch.preserve_format).requires_grad_()
        bs = bias.clone().requires_grad_()
        ws = weight.clone().requires_grad_() if weight is not None else None
        new_rm, new_rv = rm.clone(), rv.clone()
        if name == "eager":
            y = ghost_bn_act_native(xs, bs, new_rm, new_rv, weight=ws, **kw)
        else:
            y = ghost_bn_act_reference(xs, bs, new_rm, new_rv, weight=ws, **kw)
        dy = torch.randn(y.shape).to(case.dtype) if dy is None else dy
        y.backward(dy)
        out[name] = dict(y=y, x=xs.grad, bias=bs.grad, weight=ws, rm=new_rm, rv=new_rv)
    eager, ref = out["eager"], out["reference"]
    assert eager["y"].dtype == case.dtype and eager["y"].stride() == ref["y"].stride()
    # PyTorch's CPU batch-norm backward rounds more than the reference's: measured dx
    # within 4e-6 to 1.3e-5 of float64 (relative to its largest value; the reference 7e-7
    # to 1.5e-6), so fp32 gets 5e-5 here.
    tol = {**TOL, F32: dict(rtol=5e-5, atol=5e-5)}[case.dtype]
    for what in ("y", "x", "bias"):
        assert_close(eager[what], ref[what], tol, what)
    if case.weight:
        assert_close(eager["weight"].grad, ref["weight"].grad, tol, "dweight")
    assert_close(eager["rm"], ref["rm"], STATS_TOL, "running_mean")
    assert_close(eager["rv"], ref["rv"], STATS_TOL, "running_var")


@pytest.mark.parametrize("act", ["gelu", "gelu_tanh", "silu"])
@pytest.mark.gpu
# sigmoid(−large) = 1 / (1 + exp(large)) = 1 / inf = 0, as meant; NumPy (the interpreter)
# warns about the inf
@pytest.mark.filterwarnings("ignore:overflow encountered in exp:RuntimeWarning")
def test_new_activations_over_a_wide_range(act):
    """z from −12 to 12 (GELU's and SiLU's tails, where the erf/sigmoid saturate and the
    slopes go to 0 or 1) in fp32: y and dL/dz against F.gelu / F.silu in float64. Eval mode
    with mean 0, var 1 − eps, bias 0 makes z = x exactly."""
    case = Case(F32, (1, 2, 8, 8), 1, False, act, False, True)
    x = torch.linspace(-12.0, 12.0, 128).reshape(1, 2, 8, 8).contiguous(memory_format=CL)
    eps = 1e-5
    inputs = (x, torch.zeros(2), None, torch.zeros(2), torch.full((2,), 1.0 - eps))
    results = run_all(case, training=False, inputs=inputs, eps=eps)
    check_all(case, results, training=False)


class _PoisonedTorch:
    """``torch`` for :mod:`kernels.ghost_bn_act.launch`, except that ``torch.empty`` comes
    back filled with NaN (floats) or 255 (integers): whatever a kernel leaves unwritten
    shows."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        t = torch.empty(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else 255)


@pytest.mark.parametrize(
    "shape,channels_last", [((2, 3, 7, 5), True), ((2, 3, 5, 7), False), ((2, 16, 5, 5), True)]
)
@pytest.mark.gpu
def test_odd_pool_backward_writes_every_dx_element(monkeypatch, shape, channels_last):
    """dx is allocated uninitialised and the backward writes each element once, zeros in the
    row/column the floored pool dropped included: with every ``torch.empty`` of the launcher
    poisoned (dx, the partial sums, mean/rstd, pooled, argmax), nothing NaN survives and dx
    equals float64 F.max_pool2d's gradient, zeros bit for bit."""
    case = Case(F16, shape, 1, True, "gelu", True, channels_last)
    inputs = make_inputs(case)
    monkeypatch.setattr(launch, "torch", _PoisonedTorch())
    results = run_all(case, inputs=inputs)
    monkeypatch.undo()
    dx = results["triton"]["x"].grad
    assert not dx.isnan().any() and not results["triton"]["y"].isnan().any()
    check_all(case, results)
    assert torch.equal(dx == 0, results["float64"]["x"].grad == 0)


@pytest.mark.gpu
def test_plain_bn_statistics_at_airbench_batch(monkeypatch):
    """Plain BN (one split) over the airbench batch, 1024, with more reduction programs than
    the finalize kernel takes in one load (PLAIN_FIN_BLOCK_K) and a ragged last one, so the
    partials are folded in several masked steps: mean, rstd and the running stats against
    float64 F.batch_norm. The interpreter costs ~5 ms per tile and a tile never spans two
    images, so C and H·W are tiny and only the statistics op runs (pass 3 is one program
    per tile, the same code at any batch; batch 2000's plan is checked without running)."""
    # ~100 programs of ≥ 1 row each (a GPU gets ~1000 at this batch and real sizes)
    monkeypatch.setattr(launch, "_target_programs", lambda device: 100)
    monkeypatch.setattr(plan, "MIN_ROWS_PER_PROG", 1)
    b, c = 1024, 2
    x = (0.5 + 2.0 * torch.randn(b, c, 1, 1)).contiguous(memory_format=CL)
    tiles_per_prog, n_chunks = launch._chunking(b, 1, 1, 100, 1)
    assert n_chunks > plan.PLAIN_FIN_BLOCK_K == plan._finalize_blocks(1)[1]
    assert b % tiles_per_prog  # the last program has fewer tiles
    rm, rv = 0.3 * torch.randn(c), 0.5 + torch.rand(c)
    rm_ref, rv_ref = rm.double(), rv.double()
    mean, rstd, _, _ = ghost_bn_stats_op(x, rm, rv, 1, False, False, 1e-5, 0.1, True)
    x64 = x.double()
    F.batch_norm(x64, rm_ref, rv_ref, training=True, momentum=0.1, eps=1e-5)
    var = x64.var(dim=(0, 2, 3), unbiased=False)
    assert_close(mean[0], x64.mean(dim=(0, 2, 3)), STATS_TOL, "mean")
    assert_close(rstd[0], torch.rsqrt(var + 1e-5), STATS_TOL, "rstd")
    assert_close(rm, rm_ref, STATS_TOL, "running_mean")
    assert_close(rv, rv_ref, STATS_TOL, "running_var")


@pytest.mark.parametrize("batch", [1024, 2000])
def test_plain_bn_plan_at_airbench_sites(batch):
    """On a GPU of NOMINAL_SMS SMs, at each airbench site and batch 1024 or 2000: the
    reduction programs cover every tile exactly once (the last one possibly short) and the
    finalize folds ~1000+ partials per channel in PLAIN_FIN_BLOCK_K-chunk steps; the AOT
    specs' constexprs (what is compiled) do not depend on the batch."""
    for _, channels, size, pool in AIRBENCH_SHAPES:
        pixels = (size // 2) ** 2 if pool else size * size
        block_q, block_c = plan._tile_shape(
            channels, pixels, True, plan.TILE_POOL if pool else plan.TILE
        )
        tiles = batch * plan._cdiv(pixels, block_q)
        per_prog, n_chunks = plan._chunking(
            tiles, 1, plan._cdiv(channels, block_c), plan._target_programs(None), block_q
        )
        assert (n_chunks - 1) * per_prog < tiles <= n_chunks * per_prog
        assert plan._finalize_blocks(1) == (1, plan.PLAIN_FIN_BLOCK_K)

    def compiled(specs):
        return {(s.kernel, tuple(sorted(s.constexprs.items())), s.num_warps) for s in specs}

    assert compiled(aot_specs(airbench_sites(batch))) == compiled(aot_specs(airbench_sites()))


# ---- custom ops -----------------------------------------------------------------------------
def _op_inputs(pool: bool, training: bool, dtype=F16, channels_last=True, weight=True):
    case = Case(dtype, (4, 6, 4, 4), 2, pool, "celu", weight, channels_last)
    x, bias, w, rm, rv = make_inputs(case)
    splits = 2 if training else 1
    mean, rstd, pooled, argmax = ghost_bn_stats_op(
        x, rm.clone(), rv.clone(), splits, pool, pool, 1e-5, 0.1, training
    )
    return x, bias, w, rm, rv, splits, mean, rstd, pooled, argmax


@pytest.mark.parametrize("pool,training", [(True, True), (False, False)])
@pytest.mark.gpu
def test_opcheck_stats(pool, training):
    x, _, _, rm, rv, splits, *_ = _op_inputs(pool, training)
    torch.library.opcheck(ghost_bn_stats_op, (x, rm, rv, splits, pool, True, 1e-5, 0.1, training))


@pytest.mark.parametrize("pool,training,weight", [(True, True, False), (False, False, True)])
@pytest.mark.gpu
def test_opcheck_fwd(pool, training, weight):
    x, bias, w, _, _, _, mean, rstd, pooled, argmax = _op_inputs(pool, training, weight=weight)
    x.requires_grad_()
    bias.requires_grad_()
    if w is not None:
        w.requires_grad_()
    torch.library.opcheck(
        ghost_bn_act_fwd_op, (x, pooled, argmax, mean, rstd, bias, w, pool, "celu", 0.3, training)
    )


@pytest.mark.parametrize("pool", [True, False])
@pytest.mark.gpu
def test_opcheck_bwd(pool):
    x, bias, w, _, _, _, mean, rstd, pooled, argmax = _op_inputs(pool, True, channels_last=False)
    src = pooled if pool else x
    dy = torch.randn(src.shape).to(src.dtype)
    h, w_ = x.shape[2:]
    torch.library.opcheck(
        ghost_bn_act_bwd_op,
        (dy, src, argmax, mean, rstd, bias, w, pool, False, "relu", 0.3, True, h, w_),
    )


# Two cases (~5 s each under the interpreter): the activation is only a string to the ops'
# registration, and the numbers of all three are checked by the tests above.
@pytest.mark.parametrize("act,channels_last", [("gelu", True), ("silu", False)])
@pytest.mark.gpu
def test_opcheck_odd_pool_and_new_activations(act, channels_last):
    """The three ops at an odd size with pool (5×7 → 2×3; dx back at 5×7) and a new
    activation, both layouts: schema, fake functions (the floored pooled shapes and dx's odd
    one), autograd registration and AOT dispatch."""
    case = Case(F16, (2, 3, 5, 7), 1, True, act, True, channels_last)
    x, bias, w, rm, rv = make_inputs(case)
    stats_args = (x, rm.clone(), rv.clone(), 1, True, True, 1e-5, 0.1, True)
    torch.library.opcheck(ghost_bn_stats_op, stats_args)
    mean, rstd, pooled, argmax = ghost_bn_stats_op(*stats_args)
    assert pooled.shape == argmax.shape == (2, 3, 2, 3)
    fwd_args = (x, pooled, argmax, mean, rstd, bias, w, True, act, 0.3, True)
    torch.library.opcheck(
        ghost_bn_act_fwd_op,
        tuple(t.requires_grad_() if t is x or t is bias or t is w else t for t in fwd_args),
    )
    dy = torch.randn(pooled.shape).to(F16)
    bwd_args = (dy, pooled, argmax, mean, rstd, bias.detach(), w.detach(), True)
    bwd_args += (channels_last, act, 0.3, True, 5, 7)
    torch.library.opcheck(ghost_bn_act_bwd_op, bwd_args)
    assert ghost_bn_act_bwd_op(*bwd_args)[0].shape == x.shape


@pytest.mark.gpu
def test_torch_compile_graph_holds_the_ops():
    """A compiled function (AOT autograd, functionalised running-stat mutation) gives the
    eager Triton results and updates the buffers."""
    case = Case(F16, (4, 6, 4, 4), 2, True, "celu", True, True)
    x, bias, weight, rm, rv = make_inputs(case)

    def step(x, bias, weight, rm, rv):
        y = ghost_bn_act(x, bias, rm, rv, weight=weight, splits=2, pool=True, backend="triton")
        return (y.float() ** 2).sum()

    results = []
    for fn in (step, torch.compile(step, backend="aot_eager", fullgraph=True)):
        xs, bs, ws = (t.clone().requires_grad_() for t in (x, bias, weight))
        r_m, r_v = rm.clone(), rv.clone()
        loss = fn(xs, bs, ws, r_m, r_v)
        loss.backward()
        results.append((loss, xs.grad, bs.grad, ws.grad, r_m, r_v))
    for eager, compiled_ in zip(*results):
        assert_close(compiled_, eager, TOL[F16], "compiled vs eager")
    assert not torch.equal(results[1][4], rm)  # the buffer really was updated


# ---- clear errors ---------------------------------------------------------------------------
def _call(x=None, bias=None, rm=None, rv=None, **kw):
    c = 4
    x = torch.randn(4, c, 6, 6) if x is None else x
    bias = torch.zeros(c) if bias is None else bias
    rm = torch.zeros(c) if rm is None else rm
    rv = torch.ones(c) if rv is None else rv
    kw.setdefault("splits", 2)
    return ghost_bn_act(x, bias, rm, rv, backend="triton", **kw)


def test_error_wrong_dtype():
    with pytest.raises(TypeError, match="x must have dtype"):
        _call(x=torch.randn(4, 4, 6, 6).double())
    with pytest.raises(TypeError, match="bias must have dtype float32"):
        _call(bias=torch.zeros(4, dtype=torch.float16))


def test_error_wrong_param_shape():
    with pytest.raises(ValueError, match="running_mean must have shape 4"):
        _call(rm=torch.zeros(5))
    with pytest.raises(ValueError, match="weight must have shape 4"):
        _call(weight=torch.ones(4, 1))
    with pytest.raises(ValueError, match="x must be 4-D"):
        _call(x=torch.randn(4, 4, 6))


def test_error_batch_not_divisible_by_splits():
    with pytest.raises(ValueError, match="not divisible by splits=3"):
        _call(splits=3)


def test_error_pool_of_a_single_row():
    """Odd sizes pool (floored), but a side of 1 would pool to nothing."""
    with pytest.raises(ValueError, match="at least 2"):
        _call(x=torch.randn(4, 4, 1, 6), pool=True)
    with pytest.raises(ValueError, match="at least 2"):
        x = torch.randn(4, 4, 6, 1)
        ghost_bn_act(x, torch.zeros(4), torch.zeros(4), torch.ones(4), splits=2, pool=True)


def test_error_bad_activation():
    with pytest.raises(ValueError, match="act must be"):
        _call(act="swish")
    with pytest.raises(ValueError, match="alpha must be positive"):
        _call(act="celu", alpha=0.0)


def test_error_triton_on_cpu_without_interpreter(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        _call()
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        ghost_bn_stats_op(
            torch.randn(2, 4, 2, 2), torch.zeros(4), torch.ones(4), 1, False, False, 1e-5, 0.1, True
        )


# ---- bytes model ----------------------------------------------------------------------------
@pytest.mark.parametrize("site", bn_sites(512), ids=lambda s: s.name)
def test_bytes_model_at_trainer_shapes(site):
    _, c, h, w = site.shape
    pool = site.pool
    counted = ghost_bn_act_bytes((512, c, h, w), torch.float16, pool, True, True)
    n = 512 * c * h * w
    # the fused step reads x once and writes dx once at least; eager moves strictly more
    assert counted["triton"] >= 4 * n
    assert counted["eager"] > counted["triton"]
    assert counted["triton"] == sum(counted["triton_detail"].values())
    assert counted["eager"] == sum(counted["eager_detail"].values())
    no_grad = ghost_bn_act_bytes((512, c, h, w), torch.float16, pool, False, False)
    assert no_grad["triton"] < counted["triton"]


def test_bytes_model_counts_floored_pool():
    """31×31 pools to 15×15 like 30×30: every count is the same except dx (x's full size,
    the dropped row and column written as zeros) and eager's max_pool2d backward (which
    writes all of dx too); the pooled pass reads only the windows (4·M elements)."""
    b, c = 64, 64
    odd = ghost_bn_act_bytes((b, c, 31, 31), torch.float16, True, True, True, splits=1)
    even = ghost_bn_act_bytes((b, c, 30, 30), torch.float16, True, True, True, splits=1)
    extra = b * c * (31 * 31 - 30 * 30) * 2  # fp16 bytes of the dropped row and column
    m = b * c * 15 * 15
    for kind, dx_key in (("triton_detail", "bwd"), ("eager_detail", "max_pool2d_backward")):
        for key, counted in odd[kind].items():
            assert counted == even[kind][key] + (extra if key == dx_key else 0), (kind, key)
    # pass 3 reads the pooled copy and writes y: M elements each
    assert odd["triton_detail"]["fwd"] == 2 * m * 2 + 2 * c * 4 + 2 * c * 4


# ---- ahead-of-time compilation ----------------------------------------------------------
# bench.aot compiles in a child process when TRITON_INTERPRET is on (the interpreter
# leaves triton.language patched once a kernel has run), one child per batch of specs.
# Every spec at the trainer's sites is compiled once, in tests/test_aot.py.
def _compile(labels: list[str], archs: list[int]) -> list:
    specs = [s for s in aot.ghost_bn_act_specs() if s.label in labels]
    assert len(specs) == len(labels)
    return aot.compile_specs(specs, archs)


def _representative_labels() -> list[str]:
    """One fp16 spec per kernel × pool/no pool × train/eval, plus the bf16 pooling kernels
    (the max compares and the dtype conversions differ): ~12 specs, ~25 s for both archs."""
    seen, out = set(), []
    for spec in aot.ghost_bn_act_specs():
        dtype = spec.signature.get("x_ptr", spec.signature.get("src_ptr"))
        pool = spec.constexprs.get("POOL")
        if dtype == "*bf16" and not pool:
            continue
        key = (spec.kernel, pool, spec.constexprs.get("TRAINING"), dtype)
        if key not in seen:
            seen.add(key)
            out.append(spec.label)
    return out


def _check_reports(reports: list) -> None:
    assert reports
    for r in reports:
        where = f"{r.label}@{r.arch}"
        assert r.spill_bytes == 0 and r.local_bytes == 0, f"{where} spills: {r}"
        assert r.local_memory_instructions == 0, where
        if "finalize" not in r.label:
            # channels_last with C a multiple of 16: the streaming loads are 16-byte vectors
            assert r.has_128bit_loads, f"{where}: {r.global_loads}"


def test_aot_representative_specs_compile_without_spills():
    _check_reports(_compile(_representative_labels(), [80, 90]))
