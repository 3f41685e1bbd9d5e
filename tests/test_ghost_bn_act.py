"""Tests of the fused ghost BN op (:mod:`kernels.ghost_bn_act`), on the CPU.

The Triton kernels run through Triton's interpreter (``TRITON_INTERPRET=1``, set by
conftest.py). Every case is checked two ways:
  * against ``ghost_bn_act_reference`` (plain PyTorch, fp32 statistics) and its autograd;
  * against PyTorch's own ops in float64 on the same input values — F.max_pool2d, then
    F.batch_norm(training=True) on each split (running buffers updated per split, then
    averaged), F.celu / F.relu — and their autograd.
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
from kernels import ghost_bn_act, ghost_bn_act_bytes, ghost_bn_act_reference
from kernels.ghost_bn_act import launch  # ``kernels.ghost_bn_act`` itself is the function
from kernels.ghost_bn_act.op import ghost_bn_act_bwd_op, ghost_bn_act_fwd_op, ghost_bn_stats_op

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
    """F.max_pool2d → F.batch_norm per split → F.celu/F.relu; returns (y, new rm, new rv)."""
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
    assert y.shape == ((b, c, h // 2, w // 2) if case.pool else (b, c, h, w))
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


EVAL_CASES = [
    Case(F32, (3, 5, 6, 6), 1, True, "celu", True, True),
    Case(F16, (3, 7, 6, 6), 1, False, "relu", False, False),
    Case(BF16, (2, 64, 4, 4), 1, True, None, True, False),
    Case(F16, (5, 3, 8, 8), 1, True, "celu", False, True),
]


@pytest.mark.parametrize("case", EVAL_CASES, ids=str)
@pytest.mark.gpu
def test_eval_mode_forward_and_backward(case):
    """Running stats used, not updated; B needs no split; the backward has no mean terms."""
    results = run_all(case, training=False)
    check_all(case, results, training=False)


@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.gpu
def test_eval_without_grad_pools_on_the_fly(channels_last):
    """Eval under no_grad pools inside the normalise pass (nothing saved): same values."""
    case = Case(F16, (3, 6, 6, 6), 1, True, "celu", True, channels_last)
    x, bias, weight, rm, rv = make_inputs(case)
    with torch.no_grad():
        y = ghost_bn_act(
            x, bias, rm, rv, weight=weight, splits=1, pool=True, training=False, backend="triton"
        )
        ref = ghost_bn_act_reference(
            x, bias, rm.clone(), rv.clone(), weight=weight, splits=1, pool=True, training=False
        )
    assert_close(y, ref, TOL[F16], "y")
    assert y.stride() == ref.stride()


@pytest.mark.gpu
def test_training_without_grad_updates_running_stats():
    case = Case(F32, (4, 5, 6, 6), 2, True, "relu", False, True)
    x, bias, _, rm, rv = make_inputs(case)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    with torch.no_grad():
        y = ghost_bn_act(x, bias, rm, rv, splits=2, pool=True, act="relu", backend="triton")
        ref = ghost_bn_act_reference(x, bias, rm_ref, rv_ref, splits=2, pool=True, act="relu")
    assert_close(y, ref, TOL[F32], "y")
    assert_close(rm, rm_ref, STATS_TOL, "running_mean")
    assert_close(rv, rv_ref, STATS_TOL, "running_var")


@pytest.mark.gpu
def test_two_steps_and_momentum():
    """Running stats compound over steps like BatchNorm2d's; momentum 0.5 and eps 1e-3."""
    case = Case(F32, (4, 5, 4, 4), 2, False, "celu", True, True)
    x, bias, weight, rm, rv = make_inputs(case)
    rm_ref, rv_ref = rm.clone(), rv.clone()
    for _ in range(2):
        x = torch.randn_like(x)
        ghost_bn_act(
            x, bias, rm, rv, weight=weight, splits=2, momentum=0.5, eps=1e-3, backend="triton"
        )
        ghost_bn_act_reference(
            x, bias, rm_ref, rv_ref, weight=weight, splits=2, momentum=0.5, eps=1e-3
        )
    assert_close(rm, rm_ref, STATS_TOL, "running_mean")
    assert_close(rv, rv_ref, STATS_TOL, "running_var")


@pytest.mark.parametrize("dtype", [F16, BF16])
@pytest.mark.parametrize("channels_last", [True, False])
@pytest.mark.gpu
def test_max_pool_ties_route_gradient_like_pytorch(dtype, channels_last):
    """Small integers make most 2×2 windows tie; the gradient must go to the element
    F.max_pool2d's backward picks (the first maximum in row-major order)."""
    case = Case(dtype, (4, 6, 6, 6), 2, True, "celu", True, channels_last)
    _, bias, weight, rm, rv = make_inputs(case)
    x = torch.randint(-2, 3, case.shape).to(dtype)
    if channels_last:
        x = x.contiguous(memory_format=CL)
    results = run_all(case, inputs=(x, bias, weight, rm, rv))
    check_all(case, results)
    dx = results["triton"]["x"].grad
    # exactly one nonzero-capable slot per window: zeros elsewhere match PyTorch's exactly
    assert torch.equal(dx == 0, results["float64"]["x"].grad == 0)


@pytest.mark.gpu
def test_large_mean_statistics_do_not_cancel():
    """x = 1000 + N(0, 1): naive fp32 Σx²/n − (Σx/n)² would lose the variance to cancellation
    (≈ 6 % error here); the shifted sums keep it to fp32 precision. x itself is quantised
    at ulp(1000) = 6e-5 in fp32, so y is compared at that resolution."""
    case = Case(F32, (4, 6, 8, 8), 2, False, None, False, True)
    x, bias, _, rm, rv = make_inputs(case, mean=1000.0, std=1.0)
    results = run_all(case, inputs=(x, bias, None, rm, rv))
    tri, exact = results["triton"], results["float64"]
    assert_close(tri["y"], exact["y"], dict(rtol=0, atol=2e-4), "y vs float64")
    assert_close(tri["x"].grad, exact["x"].grad, dict(rtol=0, atol=2e-4), "dx vs float64")
    assert_close(tri["rm"], exact["rm"], dict(rtol=1e-6, atol=0), "running_mean")
    assert_close(tri["rv"], exact["rv"], dict(rtol=1e-5, atol=0), "running_var")


@pytest.mark.gpu
def test_irregular_strides_are_copied_to_contiguous():
    case = Case(F32, (4, 5, 6, 6), 2, True, "celu", True, False)
    x, bias, weight, rm, rv = make_inputs(case)
    x_t = x.transpose(2, 3)  # neither contiguous nor channels_last
    y = ghost_bn_act(
        x_t, bias, rm.clone(), rv.clone(), weight=weight, splits=2, pool=True, backend="triton"
    )
    ref = ghost_bn_act_reference(
        x_t, bias, rm.clone(), rv.clone(), weight=weight, splits=2, pool=True
    )
    assert_close(y, ref, TOL[F32], "y")
    assert y.is_contiguous()


@pytest.mark.gpu
def test_chunked_reduction_is_deterministic():
    """Several programs per split (two-stage reduction, no atomics): bitwise repeatable."""
    case = Case(F32, (8, 4, 6, 6), 1, False, "celu", True, True)
    x, bias, weight, rm, rv = make_inputs(case)
    block_q = launch._tile_shape(4, 36, True, launch.TILE)[0]
    tiles = 8 * launch._cdiv(36, block_q)
    assert launch._chunking(tiles, 1, 1, launch._target_programs(x.device), block_q)[1] > 1
    outs = []
    for _ in range(2):
        xs = x.clone().requires_grad_()
        y = ghost_bn_act(
            xs, bias, rm.clone(), rv.clone(), weight=weight, splits=1, backend="triton"
        )
        y.backward(torch.ones_like(y))
        outs.append((y, xs.grad))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


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
    torch.library.opcheck(
        ghost_bn_act_bwd_op, (dy, src, argmax, mean, rstd, bias, w, pool, False, "relu", 0.3, True)
    )


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


def test_error_odd_height_with_pool():
    with pytest.raises(ValueError, match="even H and W"):
        _call(x=torch.randn(4, 4, 5, 6), pool=True)


def test_error_bad_activation():
    with pytest.raises(ValueError, match="act must be"):
        _call(act="gelu")
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
