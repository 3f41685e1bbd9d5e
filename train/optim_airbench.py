"""The airbench family's optimisers: Nesterov SGD with per-role groups and airbench's
"decoupled" hyperparameters, and Muon on the conv filters beside it.

Parameters come in by *role* (conv filters, BN biases, the head, the whitening bias, …) as
plain lists of tensors, so this module knows no model class: :func:`split_params` sorts a
model's ``named_parameters()`` into roles with predicates, or the caller passes the lists.

Every group built here carries ``name`` (its role), ``initial_lr`` (its peak rate) and
``lr_mult`` (= ``initial_lr``), so that a schedule factor ``f`` in [0, 1] sets the rates
either with :func:`scale_learning_rates` (``f`` per group name where roles have their own
schedules: airbench94_muon decays the whitening bias's rate to 0 over its first epochs) or
with the project's ``train.optim.set_learning_rate(optimizer, f)`` (``lr = f · lr_mult``).

Weight decay, "decoupled" the airbench way
-------------------------------------------
airbench94 states its rate and decay "per 1024 examples, decoupled": the decay's strength is
set apart from the learning rate. It passes ``weight_decay = decay / lr_peak`` to PyTorch's
SGD, which adds ``weight_decay · p`` to the gradient before the momentum; the decay per step
is then ``lr_t · decay / lr_peak = decay · (lr_t / lr_peak)``: the stated ``decay`` at the
peak, following the schedule, the same for a group whatever its rate multiplier (the BN
biases' ×64 raises their rate, not their decay). We do exactly that (rather than
``p.mul_(1 − lr·wd)`` after the step): it reproduces airbench's update to the bit, the decay
goes through the momentum as in the reference, and the update stays one torch SGD call
(foreach, or one fused kernel per group on a GPU) with no extra pass over the weights.

Muon on 4-D filters
-------------------
``torch.optim.Muon`` (torch ≥ 2.9) accepts only 2-D parameters. :class:`FilterMuon` hands it
a 2-D alias of each filter bank: ``(out, in·kh·kw)`` in the order the weight's memory
already has (for a channels_last weight that is ``(out, kh·kw·in)``), a view sharing the
storage, so Muon's in-place update is the filter's update. Before each step the 4-D
gradients are laid out the same way. The column order does not matter: Newton–Schulz
orthogonalisation commutes with permuting columns (``(XP)(XP)ᵀ = XXᵀ``) and the Frobenius
norm ignores it. Differences from airbench94_muon's own Muon, all harmless or chosen:

* torch keeps the momentum as an EMA (``buf ← μ·buf + (1−μ)·g``, Nesterov
  ``(1−μ)·g + μ·buf``), airbench as a sum (``buf ← μ·buf + g``, ``g + μ·buf``): the update
  differs by the factor ``1 − μ`` only, which the normalisation inside Newton–Schulz
  removes (up to its eps of 1e-7).
* torch scales the rate by ``√max(1, out/(in·kh·kw))`` ("original"): 1 for every
  airbench conv (out ≤ 9·in), so the same.
* airbench94_muon runs 3 Newton–Schulz steps, torch defaults to 5: ``ns_steps`` chooses.
* airbench94_muon renormalises each filter bank to Frobenius norm √out before every update
  (the 2025 speedrun every 8 steps): ``renormalize_every``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence

import torch

#: A role test on one named parameter: ``(name, tensor) -> bool``.
RolePredicate = Callable[[str, torch.Tensor], bool]

#: airbench94 (legacy/airbench94.py): rate and decay per 1024 examples, Nesterov momentum, the
#: BN biases' rate multiplier.
AIRBENCH94_SGD = {"lr": 11.5, "weight_decay": 0.0153, "momentum": 0.85, "bias_scaler": 64.0}

#: airbench94_muon: Muon on the filters, Nesterov SGD (absolute per-step rates) on the rest;
#: decay 2e-6 per example of the batch.
AIRBENCH94_MUON = {
    "muon_lr": 0.24,
    "muon_momentum": 0.6,
    "ns_steps": 3,
    "renormalize_every": 1,
    "sgd_lrs": {"whiten_bias": 0.053, "bn_biases": 0.053, "head": 0.67},
    "sgd_momentum": 0.85,
    "decay_per_example": 2e-6,
}


# --------------------------------------------------------------------------------- roles
def split_params(
    named_params: Iterable[tuple[str, torch.Tensor]],
    roles: Mapping[str, RolePredicate],
    *,
    default: str | None = "weights",
) -> dict[str, list[torch.Tensor]]:
    """Sort the trainable parameters into roles.

    Each parameter with ``requires_grad`` goes to the first role (in ``roles``' order) whose
    predicate accepts it, else to ``default``; frozen ones are left out (frozen BN scales,
    the whitening filters). With ``default=None`` an unmatched parameter is an error.

    Returns ``{role: [tensors]}`` in ``roles``' order then ``default``, without empty roles.
    Example (airbench naming)::

        split_params(model.named_parameters(), {
            "whiten_bias": lambda n, p: n == "whiten.bias",
            "bn_biases": lambda n, p: "norm" in n,
            "head": lambda n, p: n.startswith("head."),
        }, default="filters")
    """
    out: dict[str, list[torch.Tensor]] = {role: [] for role in roles}
    if default is not None:
        out.setdefault(default, [])
    for name, param in named_params:
        if not param.requires_grad:
            continue
        role = next((r for r, test in roles.items() if test(name, param)), default)
        if role is None:
            raise ValueError(f"parameter {name!r} matches no role and there is no default")
        out[role].append(param)
    return {role: params for role, params in out.items() if params}


# ----------------------------------------------------------------------------------- SGD
def airbench94_rates(
    *,
    batch_size: int,
    lr: float = AIRBENCH94_SGD["lr"],
    weight_decay: float = AIRBENCH94_SGD["weight_decay"],
    momentum: float = AIRBENCH94_SGD["momentum"],
) -> tuple[float, float]:
    """airbench94's per-1024-example rate and decay as PyTorch SGD's per-step numbers.

    Nesterov momentum ``μ`` amplifies a constant gradient by about ``1 + 1/(1−μ)``, so
    airbench divides by ``1024·(1 + 1/(1−μ))``: the rate (the loss is summed over the batch,
    so it is per example and independent of the batch size) and the decay per step
    (proportional to the batch, i.e. "per 1024 examples").

    Returns ``(lr_step, decay_step)``: 11.5 → 1.4648e-3 and, at batch 1024,
    0.0153 → 1.9957e-3 for μ = 0.85.
    """
    scale = 1024 * (1 + 1 / (1 - momentum))
    return lr / scale, weight_decay * batch_size / scale


def sgd_param_groups(
    params_by_role: Mapping[str, Sequence[torch.Tensor]],
    *,
    lrs: Mapping[str, float],
    decay: float | Mapping[str, float],
) -> list[dict]:
    """One SGD group per non-empty role, with airbench's decoupled decay.

    Args:
        params_by_role: ``{role: [tensors]}`` (:func:`split_params`).
        lrs: each role's peak per-step rate (every role needs one).
        decay: the decay per step at the peak rate, for all roles or per role; the group's
            ``weight_decay`` is ``decay / lr`` (see the module docstring).

    Returns:
        dicts with ``params``, ``name``, ``lr``, ``initial_lr``, ``lr_mult`` (all three the
        peak rate) and ``weight_decay``.
    """
    groups = []
    for role, params in params_by_role.items():
        if not params:
            continue
        if role not in lrs:
            raise KeyError(f"no learning rate for the role {role!r}")
        lr = float(lrs[role])
        role_decay = float(decay[role] if isinstance(decay, Mapping) else decay)
        if role_decay and lr <= 0:
            raise ValueError(f"role {role!r}: a decay needs a positive peak rate; got {lr}")
        groups.append(
            {
                "params": list(params),
                "name": role,
                "lr": lr,
                "initial_lr": lr,
                "lr_mult": lr,
                "weight_decay": role_decay / lr if role_decay else 0.0,
            }
        )
    return groups


def nesterov_sgd(groups: list[dict], *, momentum: float, fused: bool = False) -> torch.optim.SGD:
    """``torch.optim.SGD`` with Nesterov momentum over ``groups`` (:func:`sgd_param_groups`).

    ``fused``: one fused kernel per group with each group's rate a 0-d float32 tensor on the
    parameters' device, set in place by the schedule (no host value baked into the update:
    what a CUDA graph needs), as ``train.optim.make_optimizer`` does on a GPU; otherwise
    foreach SGD with float rates (the CPU choice).
    """
    if fused:
        device = groups[0]["params"][0].device
        for group in groups:
            group["lr"] = torch.tensor(group["lr"], dtype=torch.float32, device=device)
        return torch.optim.SGD(
            groups,
            lr=torch.zeros((), dtype=torch.float32, device=device),
            momentum=momentum,
            nesterov=True,
            fused=True,
        )
    return torch.optim.SGD(groups, lr=0.0, momentum=momentum, nesterov=True, foreach=True)


def airbench94_sgd(
    params_by_role: Mapping[str, Sequence[torch.Tensor]],
    *,
    batch_size: int,
    lr: float = AIRBENCH94_SGD["lr"],
    weight_decay: float = AIRBENCH94_SGD["weight_decay"],
    momentum: float = AIRBENCH94_SGD["momentum"],
    lr_mults: Mapping[str, float] | None = None,
    fused: bool = False,
) -> torch.optim.SGD:
    """airbench94's optimiser: Nesterov SGD, rate ``lr`` and decay ``weight_decay`` per 1024
    examples (:func:`airbench94_rates`), each role's rate × ``lr_mults[role]`` (default:
    ``{"bn_biases": 64}``, every other role ×1: the filters, the head and the whitening bias
    each in their own group at the base rate) and the same decay for every group.

    The trainer then sets each step's rates with a schedule factor ``f``:
    ``scale_learning_rates(opt, f)`` (airbench94: linear from 0.2 to 1 over the first 23% of
    steps, then down to 0.07), or per group for the whitening bias.
    """
    lr_step, decay_step = airbench94_rates(
        batch_size=batch_size, lr=lr, weight_decay=weight_decay, momentum=momentum
    )
    mults = {"bn_biases": AIRBENCH94_SGD["bias_scaler"]} if lr_mults is None else lr_mults
    lrs = {role: lr_step * mults.get(role, 1.0) for role in params_by_role}
    return nesterov_sgd(
        sgd_param_groups(params_by_role, lrs=lrs, decay=decay_step),
        momentum=momentum,
        fused=fused,
    )


def scale_learning_rates(
    optimizer, factor: float, per_group: Mapping[str, float] | None = None
) -> None:
    """Set every group's rate to ``initial_lr × factor`` (``per_group[name]`` instead of
    ``factor`` for the groups it names). A tensor rate is filled in place (a host scalar
    fill: no sync); ``optimizer`` is anything with ``param_groups`` (torch optimisers,
    :class:`FilterMuon`, :class:`CombinedOptimizer`)."""
    for group in optimizer.param_groups:
        f = factor if per_group is None else per_group.get(group.get("name"), factor)
        value = group["initial_lr"] * f
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(value)
        else:
            group["lr"] = value


# ---------------------------------------------------------------------------------- Muon
def matrix_view(weight: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A 2-D alias ``(out, rest)`` of a ≥2-D weight, sharing its storage.

    The trailing dimensions are flattened in the order of the weight's memory (decreasing
    stride): ``(out, in·kh·kw)`` for a contiguous conv weight, ``(out, kh·kw·in)`` for a
    channels_last one. Returns the detached 2-D view (a leaf, so an optimiser accepts it)
    and the dimension order used, to lay the gradients out the same way.
    """
    if weight.dim() < 2:
        raise ValueError(f"Muon needs weights of 2 or more dimensions; got {tuple(weight.shape)}")
    rest = sorted(range(1, weight.dim()), key=lambda d: -weight.stride(d))  # stable
    order = (0, *rest)
    permuted = weight.detach().permute(order)
    if not permuted.is_contiguous():
        raise ValueError(
            "the weight's memory is not one dense block with the output channel outermost: "
            "make it contiguous or channels_last before building the optimiser"
        )
    return permuted.view(weight.shape[0], -1), order


@torch.no_grad()
def renormalize_(weights: Sequence[torch.Tensor]) -> None:
    """Scale each weight in place to Frobenius norm √(out) (``out`` = its first dimension),
    as airbench94_muon does before each Muon update: the direction is all that Muon's
    orthogonalised steps are meant to change. Device ops only (no sync)."""
    weights = [w.detach() for w in weights]
    if not weights:
        return
    norms = torch._foreach_norm(weights)
    scales = [math.sqrt(w.shape[0]) / n.to(torch.float32) for w, n in zip(weights, norms)]
    torch._foreach_mul_(weights, [s.to(w.dtype) for s, w in zip(scales, weights)])


class FilterMuon:
    """``torch.optim.Muon`` over the 2-D views of ≥2-D weights (conv filters).

    Args:
        weights: the filter tensors (e.g. 4-D conv weights, contiguous or channels_last),
            the model's parameters themselves; keep their storage for the whole run.
        lr, momentum, nesterov, ns_steps, weight_decay: as ``torch.optim.Muon``; the decay
            defaults to 0 here (torch's default is 0.1; airbench94_muon has none on the
            filters).
        renormalize_every: rescale the filters to norm √out before every this-many-th step
            (:func:`renormalize_`; airbench94_muon: 1, the 2025 speedrun: 8; 0: never).
        name: the group's name (for :func:`scale_learning_rates`).

    It has one group: ``param_groups[0]`` with ``lr``, ``initial_lr``, ``lr_mult``, ``name``.
    How the trainer calls it: after ``backward()``, ``step()`` (which lays each filter's
    gradient out as its 2-D view first), then ``zero_grad()``; the schedule sets the rate
    through ``param_groups``. Float rates only (torch's Muon reads a tensor rate back).
    """

    def __init__(
        self,
        weights: Sequence[torch.Tensor],
        *,
        lr: float,
        momentum: float,
        nesterov: bool = True,
        ns_steps: int = 5,
        weight_decay: float = 0.0,
        renormalize_every: int = 0,
        name: str = "filters",
    ) -> None:
        self.weights = list(weights)
        if not self.weights:
            raise ValueError("FilterMuon needs at least one weight")
        views = [matrix_view(w) for w in self.weights]
        self.views = [v for v, _ in views]
        self.orders = [order for _, order in views]
        group = {"params": self.views, "name": name, "initial_lr": lr, "lr_mult": lr}
        self.optimizer = torch.optim.Muon(
            [group],
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            weight_decay=weight_decay,
        )
        self.renormalize_every = renormalize_every
        self.steps = 0

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    @torch.no_grad()
    def step(self) -> None:
        """One Muon step on every filter that has a gradient."""
        for weight, view, order in zip(self.weights, self.views, self.orders):
            grad = weight.grad
            # reshape: a view when the gradient has the weight's layout, else one copy.
            view.grad = None if grad is None else grad.permute(order).reshape(view.shape)
        self.steps += 1
        if self.renormalize_every and self.steps % self.renormalize_every == 0:
            renormalize_([w for w in self.weights if w.grad is not None])
        self.optimizer.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for weight, view in zip(self.weights, self.views):
            view.grad = None
            if weight.grad is not None:
                if set_to_none:
                    weight.grad = None
                else:
                    weight.grad.zero_()

    def state_dict(self) -> dict:
        return {"muon": self.optimizer.state_dict(), "steps": self.steps}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["muon"])
        self.steps = int(state["steps"])


class CombinedOptimizer:
    """Several optimisers stepped as one: ``param_groups`` is all their groups (the same
    dicts, so a schedule writing ``group["lr"]`` reaches them), ``step``/``zero_grad`` call
    each in turn, ``state_dict`` holds each one's."""

    def __init__(self, *optimizers) -> None:
        self.optimizers = list(optimizers)

    @property
    def param_groups(self) -> list[dict]:
        return [group for opt in self.optimizers for group in opt.param_groups]

    def step(self) -> None:
        for opt in self.optimizers:
            opt.step()

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.optimizers:
            opt.zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict:
        return {"optimizers": [opt.state_dict() for opt in self.optimizers]}

    def load_state_dict(self, state: dict) -> None:
        saved = state["optimizers"]
        if len(saved) != len(self.optimizers):
            raise ValueError(f"{len(saved)} saved optimiser states for {len(self.optimizers)}")
        for opt, one in zip(self.optimizers, saved):
            opt.load_state_dict(one)


def muon_with_sgd(
    filters: Sequence[torch.Tensor],
    params_by_role: Mapping[str, Sequence[torch.Tensor]],
    *,
    batch_size: int,
    muon_lr: float = AIRBENCH94_MUON["muon_lr"],
    muon_momentum: float = AIRBENCH94_MUON["muon_momentum"],
    ns_steps: int = AIRBENCH94_MUON["ns_steps"],
    renormalize_every: int = AIRBENCH94_MUON["renormalize_every"],
    sgd_lrs: Mapping[str, float] | None = None,
    sgd_momentum: float = AIRBENCH94_MUON["sgd_momentum"],
    decay_per_example: float = AIRBENCH94_MUON["decay_per_example"],
    fused: bool = False,
) -> CombinedOptimizer:
    """airbench94_muon's optimiser (its numbers are the defaults): :class:`FilterMuon` on
    ``filters`` and Nesterov SGD on the other roles (``params_by_role``, e.g. "whiten_bias",
    "bn_biases", "head") at the absolute per-step rates ``sgd_lrs`` with the decoupled decay
    ``decay_per_example × batch_size`` per step.

    The trainer: ``opt.step(); opt.zero_grad()`` per step, and the rates with
    ``scale_learning_rates(opt, 1 - t/T, {"whiten_bias": max(0, 1 - t/T_bias)})`` (the
    airbench94_muon schedule: linear decay to 0, the whitening bias over its own steps).
    """
    sgd_lrs = dict(AIRBENCH94_MUON["sgd_lrs"]) if sgd_lrs is None else dict(sgd_lrs)
    optimizers = []
    groups = sgd_param_groups(params_by_role, lrs=sgd_lrs, decay=decay_per_example * batch_size)
    if groups:
        optimizers.append(nesterov_sgd(groups, momentum=sgd_momentum, fused=fused))
    optimizers.append(
        FilterMuon(
            filters,
            lr=muon_lr,
            momentum=muon_momentum,
            ns_steps=ns_steps,
            renormalize_every=renormalize_every,
        )
    )
    return CombinedOptimizer(*optimizers)
