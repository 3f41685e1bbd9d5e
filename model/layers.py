"""The building blocks of both network families: one batch-norm site, a conv block, a
residual pair (ResNet9), Dirac initialisation (airbench) and what a model does to all its BN
sites at once.

Every BN site of the network is a :class:`GhostBNAct`, a thin module around the fused op
:func:`kernels.ghost_bn_act` (``[2×2 max-pool →] ghost batch norm [frozen scale] →
activation``). The recipe's BN tricks are its options:

* **ghost BN** — ``splits``: the batch is normalised in ``splits`` groups of consecutive
  images (32 images each in the final recipe); ``splits=1`` is plain batch norm.
* **frozen BN scales** — ``learnable_scale=False``: no ``weight`` parameter, the scale is 1.
* **max-pool before BN** — ``pool=True``: the 2×2 max-pool is fused into the op, before
  the statistics are taken.
* **the activation** — ``act``: any of :data:`kernels.ACTIVATIONS` — ``"celu"`` with
  ``alpha`` (0.3 in ResNet9's final recipe), ``"relu"``, exact ``"gelu"`` (airbench94),
  ``"gelu_tanh"``, ``"silu"`` (the 2025 speedrun's blocks) — or ``None``.

:class:`ConvBlock` with ``dirac=True`` starts its conv as the identity on the first
min(c_in, c_out) channels (:func:`dirac_init_`), airbench's initialisation.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from kernels import ACTIVATIONS, ghost_bn_act, ghost_bn_act_native

__all__ = [
    "ACTIVATIONS",
    "MODEL_BACKENDS",
    "BNSiteControls",
    "ConvBlock",
    "GhostBNAct",
    "Residual",
    "activation",
    "bn_site_options",
    "dirac_init_",
    "op_backend",
]

#: Backends a model can be built for. ``"compile"`` means the *trainer* wraps the whole model
#: in ``torch.compile``; inside the module it runs the op's plain-PyTorch reference.
MODEL_BACKENDS = ("eager", "compile", "triton")


def activation(x: torch.Tensor, act: str | None, alpha: float = 0.3) -> torch.Tensor:
    """The element-wise activation ``act`` (any of :data:`kernels.ACTIVATIONS`) outside a BN
    site — airbench's GELU after the whitening conv. ``x`` any float tensor; same shape,
    dtype and memory format out. ``alpha`` is CELU's only."""
    if act == "celu":
        return F.celu(x, alpha=alpha)
    if act == "relu":
        return F.relu(x)
    if act == "gelu":
        return F.gelu(x)
    if act == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if act == "silu":
        return F.silu(x)
    if act is None:
        return x
    raise ValueError(f"act must be one of {ACTIVATIONS}; got {act!r}")


@torch.no_grad()
def dirac_init_(weight: torch.Tensor) -> torch.Tensor:
    """Airbench's conv initialisation, in place on ``weight`` (C_out, C_in, k, k) with k odd.

    Filters 0 … m − 1, m = min(C_in, C_out), become the identity (filter i is 1 at the
    centre of input channel i, 0 elsewhere), as ``torch.nn.init.dirac_`` makes them; filters
    m … C_out − 1 keep what they had (PyTorch's default init). Airbench writes this as
    ``dirac_(w[:C_in])``: the same thing, since that slice has min(C_in, C_out) rows. Each
    conv then starts by passing its first channels through unchanged. Returns ``weight``.
    """
    if weight.dim() != 4 or weight.shape[2] % 2 == 0 or weight.shape[3] % 2 == 0:
        raise ValueError(
            f"dirac init needs a conv weight (C_out, C_in, k, k) with odd k; got "
            f"{tuple(weight.shape)}"
        )
    nn.init.dirac_(weight[: min(weight.shape[0], weight.shape[1])])
    return weight


def op_backend(model_backend: str) -> str:
    """The :func:`kernels.ghost_bn_act` backend that a model-level backend runs at each site.

    ``"eager"`` and ``"compile"`` both map to the op's ``"eager"`` reference: under
    ``"compile"`` the trainer compiles the whole model, so the compiler must see plain
    PyTorch ops rather than a separately compiled graph per BN site. ``"triton"`` maps to the
    fused Triton kernels.
    """
    if model_backend not in MODEL_BACKENDS:
        raise ValueError(
            f"unknown model backend {model_backend!r}: choose one of "
            f"{', '.join(MODEL_BACKENDS)} (resolve 'auto' before building the model)"
        )
    return "triton" if model_backend == "triton" else "eager"


class GhostBNAct(nn.Module):
    """One batch-norm site: ``[2×2 max-pool →] ghost BN [frozen scale] → activation``.

    Parameters and buffers (all float32, shape (C,), kept in float32 even when the convs
    run in fp16 — "fp16 everywhere except BN"):
      * ``bias`` — learnable shift, initialised to 0;
      * ``weight`` — learnable scale initialised to 1, or ``None`` when the scale is frozen
        at 1 (``learnable_scale=False``);
      * ``running_mean`` (zeros) and ``running_var`` (ones) buffers. In training they are
        updated with the per-split statistics averaged over the splits, which equals the
        seed's per-split buffers averaged when switching to eval.

    ``splits`` applies in training only; eval always normalises with the running stats.
    ``native_eager``: on the eager backend, run PyTorch's own batch norm where it computes the
    same thing (one split, or eval; :func:`kernels.ghost_bn_act_native`) instead of the
    written-out reference: a dozen fewer passes each way, for a network whose batch norm is
    plain by design.
    """

    def __init__(
        self,
        channels: int,
        *,
        splits: int = 1,
        pool: bool = False,
        act: str | None = "celu",
        alpha: float = 0.3,
        learnable_scale: bool = True,
        eps: float = 1e-5,
        momentum: float = 0.1,
        backend: str = "eager",
        native_eager: bool = False,
    ) -> None:
        super().__init__()
        # What the fused op supports is the one list: a new activation there is one here.
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}; got {act!r}")
        self.channels = channels
        self.splits = splits
        self.pool = pool
        self.act = act
        self.alpha = alpha
        self.eps = eps
        self.momentum = momentum
        self.backend = backend
        self.native_eager = native_eager
        op_backend(backend)  # validate early, with the clear message
        self.bias = nn.Parameter(torch.zeros(channels))
        if learnable_scale:
            self.weight: nn.Parameter | None = nn.Parameter(torch.ones(channels))
        else:
            # Frozen scale: no parameter at all, so no optimizer, EMA or weight decay sees it.
            self.register_parameter("weight", None)
        self.register_buffer("running_mean", torch.zeros(channels))
        self.register_buffer("running_var", torch.ones(channels))

    @property
    def learnable_scale(self) -> bool:
        return self.weight is not None

    def reset_running_stats(self) -> None:
        """Running mean 0 and running variance 1, as at construction."""
        with torch.no_grad():
            self.running_mean.zero_()
            self.running_var.fill_(1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` float32/float16/bfloat16 (B, C, H, W), contiguous or channels_last.

        Returns ``x``'s dtype and memory format, (B, C, H/2, W/2) with ``pool`` else
        (B, C, H, W). In training B must be a multiple of ``splits``.
        """
        backend = op_backend(self.backend)
        op = ghost_bn_act_native if self.native_eager and backend == "eager" else ghost_bn_act
        options = {} if op is ghost_bn_act_native else {"backend": backend}
        return op(
            x,
            self.bias,
            self.running_mean,
            self.running_var,
            weight=self.weight,
            splits=self.splits if self.training else 1,
            pool=self.pool,
            act=self.act,
            alpha=self.alpha,
            eps=self.eps,
            momentum=self.momentum,
            training=self.training,
            **options,
        )

    def extra_repr(self) -> str:
        scale = "learnable" if self.learnable_scale else "frozen=1"
        return (
            f"{self.channels}, splits={self.splits}, pool={self.pool}, act={self.act}, "
            f"alpha={self.alpha}, scale={scale}, eps={self.eps}, momentum={self.momentum}, "
            f"backend={self.backend!r}"
        )


class ConvBlock(nn.Module):
    """Conv (no bias) → BN → activation, with an optional 2×2 max-pool.

    ``pool="before_bn"`` — the seed's **max-pool before BN**: conv → pool → BN → act, the
    pool fused into the BN op (BN and the activation then touch 4× fewer pixels).
    ``pool="after_bn"`` — the earlier baseline: conv → BN → act → pool.
    ``pool=None`` — no pooling.

    The conv starts with PyTorch's default (Kaiming-uniform) initialisation, as the seed
    used; ``dirac=True`` then makes its first min(c_in, c_out) filters the identity
    (:func:`dirac_init_`), as airbench does.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        *,
        kernel_size: int = 3,
        pool: str | None = None,
        dirac: bool = False,
        **bn_options,
    ) -> None:
        super().__init__()
        if pool not in (None, "before_bn", "after_bn"):
            raise ValueError(f"pool must be None, 'before_bn' or 'after_bn'; got {pool!r}")
        self.pool = pool
        self.conv = nn.Conv2d(c_in, c_out, kernel_size, padding=kernel_size // 2, bias=False)
        if dirac:
            dirac_init_(self.conv.weight)
        self.bn = GhostBNAct(c_out, pool=(pool == "before_bn"), **bn_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, c_in, H, W) → (B, c_out, H/2, W/2) when pooling, else (B, c_out, H, W)."""
        y = self.bn(self.conv(x))
        if self.pool == "after_bn":
            y = F.max_pool2d(y, 2)
        return y

    def extra_repr(self) -> str:
        return f"pool={self.pool}"


class Residual(nn.Module):
    """The residual pair: ``out = x + block2(block1(x))``, two 3×3 ConvBlocks at ``channels``."""

    def __init__(self, channels: int, **bn_options) -> None:
        super().__init__()
        self.block1 = ConvBlock(channels, channels, **bn_options)
        self.block2 = ConvBlock(channels, channels, **bn_options)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (B, C, H, W) → (B, C, H, W)."""
        return x + self.block2(self.block1(x))


def bn_site_options(config: Any) -> dict[str, Any]:
    """The :class:`GhostBNAct` options a network's config gives every BN site (ResNet9's and
    the airbench family's configs name them alike)."""
    return dict(
        splits=config.ghost_splits,
        act=config.activation,
        alpha=config.celu_alpha,
        learnable_scale=not config.frozen_bn_scale,
        eps=config.bn_eps,
        momentum=config.bn_momentum,
        backend=config.backend,
    )


class BNSiteControls:
    """What a network does to all its BN sites at once; mixed into an ``nn.Module`` whose BN
    sites are :class:`GhostBNAct` modules (ResNet9 and the airbench family).
    """

    def bn_sites(self) -> Iterator[GhostBNAct]:
        """Every batch-norm site, in forward order."""
        return (m for m in self.modules() if isinstance(m, GhostBNAct))  # type: ignore[attr-defined]

    def set_ghost_splits(self, splits: int) -> None:
        """Ghost-BN splits per training batch at every BN site (1 = plain BN). Eval is
        unaffected: it always uses the running statistics."""
        if not isinstance(splits, int) or splits < 1:
            raise ValueError(f"splits must be a positive int; got {splits!r}")
        for site in self.bn_sites():
            site.splits = splits

    def set_backend(self, backend: str) -> None:
        """Switch every BN site to ``backend`` ("eager", "compile" or "triton")."""
        op_backend(backend)
        for site in self.bn_sites():
            site.backend = backend

    @property
    def backend(self) -> str:
        """The model-level backend of the BN sites."""
        return next(self.bn_sites()).backend

    def to_mixed_precision(self, dtype: torch.dtype = torch.float16) -> BNSiteControls:
        """Cast every parameter and floating-point buffer outside the BN sites (convs, linear
        layer, whitening filters and bias) to ``dtype`` and keep every BN site in float32 —
        "fp16 everywhere except BN". Call it before building the optimiser; feed inputs of
        ``dtype``. Returns ``self``."""
        for module in self.modules():  # type: ignore[attr-defined]
            if isinstance(module, GhostBNAct):
                continue
            for param in module.parameters(recurse=False):
                param.data = param.data.to(dtype)
            for name, buf in module.named_buffers(recurse=False):
                if buf.is_floating_point():
                    module._buffers[name] = buf.to(dtype)
        return self
