"""The Mamba encoder of SSAMBA (Vim's bidirectional block) and of the overview (unidirectional block), in
plain PyTorch; one implementation of the encoder contract (``models/contract.py``).

Block: pre-norm residual ``x = x + drop_path(mixer(norm(x)))`` (norm LayerNorm or RMSNorm, eps 1e-5, per
``model.mamba.norm``), a final norm ``norm_f`` after the last block. The mixer is mamba-ssm's ``Mamba``
(parameter names and inits kept, so checkpoints move between this code and that package):
``in_proj`` -> (x, z); x -> causal depthwise ``conv1d`` -> SiLU -> ``x_proj`` -> (dt, B, C); delta =
softplus(``dt_proj``(dt)); selective scan h_t = exp(delta_t A) h_{t-1} + delta_t B_t x_t,
y_t = C_t . h_t + D x_t, gated by SiLU(z); ``out_proj``. The bidirectional block (Vim "v2" bimamba, SSAMBA)
adds a backward scan over the flipped sequence with its own ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``,
``A_b_log``, ``D_b`` (in/out projections shared) and averages: out_proj((y_fwd + flip(y_bwd)) / 2).

Layer target (what the EMA teacher's top-k average is built from): the mixer output before the residual
add, the analogue of the Transformer's MLP output before its residual. It is what the block adds to the
residual stream, so it is comparable across blocks, and it excludes the identity path, which would make the
top-k average mostly a copy of the input embedding.

The selective scan: with mamba-ssm's CUDA kernel when that package imports and the tensors are on CUDA;
otherwise :func:`selective_scan_torch`, parallel over time in plain PyTorch: the linear recurrence
h_t = a_t h_{t-1} + x_t as an odd-even recursion (:func:`_linear_scan`: O(L) work, 2 log2 L passes), which
only multiplies decays in [0, 1] (no exp(-cumsum) overflow: float32 stays within ~1e-6 of a float64
reference). It runs over blocks of channels (``TILE_ELEMENTS``) so its passes stay in the CPU cache and the
(batch, E*D, L, d_state) temporaries stay small, and its hand-written backward recomputes the states and
scans the adjoint in reverse instead of storing intermediates. :func:`selective_scan_sequential` is the
step-by-step reference (tests, benchmarks).

Init (mamba-ssm / Vim): A = -(1..d_state) per channel (``A_log`` its log), D = 1, ``dt_proj`` weight
uniform +-dt_rank^-0.5, its bias the inverse softplus of dt log-uniform in [1e-3, 1e-1] (floored at 1e-4);
``in_proj``, ``x_proj``, ``conv1d`` PyTorch's defaults; ``out_proj`` PyTorch's default divided by
sqrt(depth) (mamba-ssm's prenorm-residual rescaling); CLS and mask token N(0, 0.02); the patch conv per
``model.patch_init`` as in ``vit.py``. ``A_log``/``D`` (and ``_b``) carry ``_no_weight_decay`` as there.
"""

from __future__ import annotations

import math
import warnings
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslam.config.base import Positive, Section
from sslam.models.contract import ModelSettings, SequenceEncoder, drop_path
from sslam.models.registry import register_encoder

try:  # CUDA-only package, never a dependency: used when importable and the tensors are on the GPU
    from mamba_ssm.ops.selective_scan_interface import selective_scan_fn as _cuda_selective_scan
except Exception:  # ImportError, or a broken CUDA extension
    _cuda_selective_scan = None

HAS_MAMBA_KERNEL = _cuda_selective_scan is not None
TILE_ELEMENTS = (
    2**20
)  # numbers per (batch, channel block, L, N) tile of the CPU scan (4 MiB in float32: 2**19-2**23 within 15%)


# ----------------------------------------------------------------------------- the linear recurrence


def _linear_scan(a: torch.Tensor, x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """h_t = a_t h_{t-1} + x_t along dim -2 of (..., L, N) tensors, h_{-1} = 0 (``reverse``: h_t = a_t h_{t+1}
    + x_t, h_L = 0), in place: x becomes h (returned), ``a`` is overwritten.

    Odd-even recursion (a work-efficient parallel scan, O(L) work in 2 log2(L) passes): fold each pair of
    neighbours into one step (x_hi += a_hi x_lo, a_hi *= a_lo), scan the folded half the same way, then
    finish the other half from its scanned neighbour. Only products of decays in [0, 1] and sums of bounded
    terms: no exp(-cumsum) overflow, float32-accurate. Strided views, no copies."""
    n = x.shape[-2]
    if n < 2:
        return x
    pairs, rest = n // 2, (n - 1) // 2  # rest: the steps finished from a scanned neighbour afterwards
    lo, hi = slice(0, 2 * pairs, 2), slice(1, 2 * pairs, 2)
    if not reverse:  # fold (2i, 2i+1) into 2i+1; scan the odd steps; then h_2i = a_2i h_2i-1 + x_2i
        x[..., hi, :].addcmul_(a[..., hi, :], x[..., lo, :])
        a[..., hi, :].mul_(a[..., lo, :])
        _linear_scan(a[..., hi, :], x[..., hi, :])
        x[..., 2::2, :].addcmul_(a[..., 2::2, :], x[..., 1 : 2 * rest : 2, :])
    else:  # fold (2i+1, 2i) into 2i; scan every even step (the last one unfolded when n is odd); finish odds
        x[..., lo, :].addcmul_(a[..., lo, :], x[..., hi, :])
        a[..., lo, :].mul_(a[..., hi, :])
        _linear_scan(a[..., ::2, :], x[..., ::2, :], reverse=True)
        x[..., 1 : 2 * rest : 2, :].addcmul_(a[..., 1 : 2 * rest : 2, :], x[..., 2::2, :])
    return x


def _channel_tiles(u: torch.Tensor, n: int) -> list[slice]:
    """Channel blocks whose (batch, block, L, N) tensors hold about ``TILE_ELEMENTS`` numbers (on the CPU:
    the passes of the scan then run in cache, 3-4x faster at SSAMBA sizes, and the temporaries stay small)."""
    b, d, length = u.shape
    budget = TILE_ELEMENTS if u.device.type == "cpu" else 64 * TILE_ELEMENTS
    step = max(1, budget // (b * length * n))
    return [slice(i, min(i + step, d)) for i in range(0, d, step)]


class _Scan(torch.autograd.Function):
    """y = C . h with h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t, channel block by channel block; the
    backward recomputes h and runs the adjoint recurrence g_t = dLoss/dh_t = C_t dy_t + exp(delta_{t+1} A)
    g_{t+1} as a reverse scan, so nothing of shape (batch, E*D, L, N) is kept between the passes."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C):
        ctx.save_for_backward(u, delta, A, B, C)
        bt, ct = B.transpose(1, 2)[:, None], C.transpose(1, 2)[:, None]  # (b, 1, L, N)
        y = torch.empty_like(u)
        for c in _channel_tiles(u, A.shape[1]):
            a = torch.exp_(delta[:, c, :, None] * A[c, None, :])
            x = (delta[:, c] * u[:, c])[..., None] * bt
            y[:, c] = (_linear_scan(a, x) * ct).sum(-1)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dy):
        u, delta, A, B, C = ctx.saved_tensors
        bt, ct = B.transpose(1, 2)[:, None], C.transpose(1, 2)[:, None]
        du, ddelta, dA = torch.empty_like(u), torch.empty_like(delta), torch.empty_like(A)
        dB, dC = bt.new_zeros(bt.shape[0], *bt.shape[2:]), ct.new_zeros(ct.shape[0], *ct.shape[2:])
        for c in _channel_tiles(u, A.shape[1]):
            d_, du_ = delta[:, c], delta[:, c] * u[:, c]
            a = torch.exp_(d_[..., None] * A[c, None, :])
            h = _linear_scan(a.clone(), du_[..., None] * bt)
            s = torch.empty_like(a)  # s_t = a_{t+1}: the decay from h_t to h_{t+1}
            s[..., :-1, :] = a[..., 1:, :]
            s[..., -1, :] = 0.0
            g = _linear_scan(s, dy[:, c, :, None] * ct, reverse=True)
            del s
            dC += (h * dy[:, c, :, None]).sum(1)
            # w_t = dLoss / d(delta_t A) = g_t a_t h_{t-1} (zero at t = 0): a becomes w in place
            a[..., 0, :] = 0.0
            a[..., 1:, :].mul_(g[..., 1:, :]).mul_(h[..., :-1, :])
            del h
            gB = (g * bt).sum(-1)  # (multiply-and-sum: faster than einsum here on the CPU)
            du[:, c] = d_ * gB
            ddelta[:, c] = (a @ A[c, :, None]).squeeze(-1) + u[:, c] * gB  # batched matmul: no big temporary
            dA[c] = (d_[..., None, :] @ a).squeeze(-2).sum(0)
            dB += (g * du_[..., None]).sum(1)
        return du, ddelta, dA, dB.transpose(1, 2), dC.transpose(1, 2)


# ----------------------------------------------------------------------------- selective scans


def _prepare(u, delta, A, B, C, delta_bias, delta_softplus):
    """The inputs in the working precision (float32, float64 for float64 input) and delta made final."""
    work = torch.float64 if u.dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(work) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(work)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    return u, delta, A, B, C


def _finish(y, u, D, z, dtype):
    if D is not None:
        y = y + u * D.to(y.dtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(y.dtype))
    return y.to(dtype)


def selective_scan_torch(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """mamba-ssm's ``selective_scan_ref`` semantics, parallel over time in plain PyTorch (any device).

    u, delta, z (batch, E*D, L); A (E*D, N); B, C (batch, N, L); D, delta_bias (E*D,); returns (batch, E*D, L)
    in u's dtype, computed in float32 (float64 for float64 input). The recurrence is an odd-even parallel
    scan (:func:`_linear_scan`) with a hand-written backward."""
    dtype = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    return _finish(_Scan.apply(u, delta, A, B, C), u, D, z, dtype)


def selective_scan_sequential(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """The step-by-step reference (a Python loop over time, autograd throughout): tests and benchmarks."""
    dtype = u.dtype
    u, delta, A, B, C = _prepare(u, delta, A, B, C, delta_bias, delta_softplus)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    for t in range(u.shape[2]):
        h = torch.exp(delta[:, :, t, None] * A) * h + (delta[:, :, t] * u[:, :, t])[..., None] * B[:, None, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    return _finish(torch.stack(ys, dim=2), u, D, z, dtype)


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = True,
) -> torch.Tensor:
    """mamba-ssm's CUDA kernel where it imports and the input is a CUDA float32/16/bf16 tensor, else
    :func:`selective_scan_torch`; mamba-ssm's ``selective_scan_fn`` arguments and result (but delta_softplus
    defaults to True, as every Mamba block calls it)."""
    if _cuda_selective_scan is not None and u.is_cuda and u.dtype != torch.float64:
        D = None if D is None else D.float()  # the kernel wants float32 weights
        delta_bias = None if delta_bias is None else delta_bias.float()
        return _cuda_selective_scan(u, delta, A.float(), B.to(u.dtype), C.to(u.dtype), D, z, delta_bias, delta_softplus)
    return selective_scan_torch(u, delta, A, B, C, D, z, delta_bias, delta_softplus)


# ----------------------------------------------------------------------------- the mixer and the block


class Mamba(nn.Module):
    """mamba-ssm's ``Mamba`` mixer (same parameter names, shapes and init); ``bidirectional``: Vim's v2
    bimamba (a second scan over the flipped sequence with its own ``*_b`` parameters, outputs averaged)."""

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        bidirectional: bool = True,
        dt_min: float = 1e-3,
        dt_max: float = 1e-1,
        dt_init_floor: float = 1e-4,
    ):
        super().__init__()
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16)
        self.bidirectional = bidirectional
        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        for suffix in ("", "_b") if bidirectional else ("",):
            self._add_scan(suffix, dt_min, dt_max, dt_init_floor)
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _add_scan(self, suffix: str, dt_min: float, dt_max: float, dt_init_floor: float) -> None:
        """One direction's conv1d / x_proj / dt_proj / A_log / D (mamba-ssm's init; Vim's ``_b`` names)."""
        e, n, r = self.d_inner, self.d_state, self.dt_rank
        setattr(self, f"conv1d{suffix}", nn.Conv1d(e, e, self.d_conv, groups=e, padding=self.d_conv - 1, bias=True))
        setattr(self, f"x_proj{suffix}", nn.Linear(e, r + 2 * n, bias=False))
        dt_proj = nn.Linear(r, e, bias=True)
        nn.init.uniform_(dt_proj.weight, -(r**-0.5), r**-0.5)
        dt = torch.exp(torch.rand(e) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        with torch.no_grad():
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus: softplus(bias) = dt
        dt_proj.bias._no_reinit = True
        setattr(self, f"dt_proj{suffix}", dt_proj)
        a_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(e, 1))
        d = nn.Parameter(torch.ones(e))
        a_log._no_weight_decay = d._no_weight_decay = True
        setattr(self, "A_log" if not suffix else "A_b_log", a_log)
        setattr(self, f"D{suffix}", d)

    def _scan(self, x: torch.Tensor, z: torch.Tensor, suffix: str) -> torch.Tensor:
        """One direction over (B, E, L) x and gate z: conv, SiLU, input-dependent (delta, B, C), scan."""
        length = x.shape[-1]
        x = F.silu(getattr(self, f"conv1d{suffix}")(x)[..., :length])
        dt, b, c = getattr(self, f"x_proj{suffix}")(x.transpose(1, 2)).split(
            [self.dt_rank, self.d_state, self.d_state], dim=-1
        )
        dt_proj = getattr(self, f"dt_proj{suffix}")
        delta = (dt @ dt_proj.weight.t()).transpose(1, 2)  # the bias goes in as delta_bias (as mamba-ssm)
        a_log = self.A_log if not suffix else self.A_b_log
        return selective_scan(
            x,
            delta,
            -torch.exp(a_log),
            b.transpose(1, 2),
            c.transpose(1, 2),
            getattr(self, f"D{suffix}"),
            z,
            delta_bias=dt_proj.bias,
            delta_softplus=True,
        )

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """(B, L, D) -> (B, L, D)."""
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
        y = self._scan(x, z, "")
        if self.bidirectional:
            y = (y + self._scan(x.flip(-1), z.flip(-1), "_b").flip(-1)) / 2
        return self.out_proj(y.transpose(1, 2).to(hidden.dtype))


def _norm(kind: str, dim: int) -> nn.Module:
    if kind == "layernorm":
        return nn.LayerNorm(dim, eps=1e-5)
    if kind == "rmsnorm":
        return nn.RMSNorm(dim, eps=1e-5)
    raise ValueError(f"model.mamba.norm must be 'layernorm' or 'rmsnorm', got {kind!r}")


class MambaBlock(nn.Module):
    """Pre-norm residual block; returns the new state and the layer target (the mixer output)."""

    def __init__(self, dim: int, d_state: int, d_conv: int, expand: int, bidirectional: bool, norm: str):
        super().__init__()
        self.drop_path = 0.0  # fine-tuning only
        self.norm = _norm(norm, dim)
        self.mixer = Mamba(dim, d_state, d_conv, expand, bidirectional)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        t = self.mixer(self.norm(x))
        return x + drop_path(t, self.drop_path, self.training), t


# ----------------------------------------------------------------------------- the encoder


class MambaConfig(Section):
    """``model.mamba`` (``model.encoder: mamba``): SSAMBA's bidirectional Vim block (a forward and a backward
    selective scan, shared in/out projections, outputs averaged) or the overview's unidirectional one."""

    d_state: Positive
    d_conv: Positive
    expand: Positive
    bidirectional: bool  # true: SSAMBA / Vim; false: the overview's unidirectional Mamba (d_state 24, expand 3)
    norm: Literal["layernorm", "rmsnorm"]  # pre-norm of every residual block (SSAMBA: LayerNorm)
    cls_position: Literal["start", "middle", "none"]  # none: the summary is the mean of the tokens


@register_encoder("mamba", options=MambaConfig, masked_tokens="mask_token")
class MambaEncoder(SequenceEncoder):
    """Patch embedding, positions, CLS at ``cls_position`` (start, middle as SSAMBA, none: mean pooling),
    Mamba blocks, final norm. ``masked_tokens: mask_token`` (the default for this encoder) reads the whole
    sequence in order with a learned mask embedding; ``drop`` reads the visible tokens in order."""

    def __init__(
        self,
        dim: int,
        depth: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        bidirectional: bool = True,
        norm: str = "layernorm",
        cls_position: str = "start",
        patch: int | tuple[int, int] = 16,
        frames: int = 1024,
        mel: int = 128,
        patch_init: str = "pytorch",
        masked_tokens: str = "mask_token",
    ):
        super().__init__(dim, patch, frames, mel, masked_tokens, cls_position)
        if cls_position == "start" and not bidirectional:
            warnings.warn(
                "a CLS token at the start of a unidirectional Mamba sees no token: its summary is a constant "
                "(use model.mamba.cls_position: none or middle)",
                stacklevel=2,
            )
        self.blocks = nn.ModuleList(MambaBlock(dim, d_state, d_conv, expand, bidirectional, norm) for _ in range(depth))
        self.norm_f = _norm(norm, dim)  # mamba-ssm's name for the final norm
        for blk in self.blocks:  # mamba-ssm's rescaling of the residual-branch output projection
            w = blk.mixer.out_proj.weight
            nn.init.kaiming_uniform_(w, a=math.sqrt(5))
            with torch.no_grad():
                w /= math.sqrt(depth)
        self.init_front_end(patch_init)

    @property
    def final_norm(self) -> nn.Module:
        return self.norm_f

    @classmethod
    def from_config(
        cls, cfg: ModelSettings, options: MambaConfig, frames: int, mel: int, masked_tokens: str
    ) -> MambaEncoder:
        m = options
        return cls(
            cfg.embed_dim,
            cfg.depth,
            m.d_state,
            m.d_conv,
            m.expand,
            m.bidirectional,
            m.norm,
            m.cls_position,
            cfg.patch,
            frames,
            mel,
            cfg.patch_init,
            masked_tokens,
        )
