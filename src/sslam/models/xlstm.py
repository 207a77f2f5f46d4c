"""The xLSTM encoder of the masked-spectrogram overview (Yadav et al. 2025): mLSTM blocks whose direction
alternates from block to block (even blocks read the token sequence forward, odd blocks the flipped
sequence, flipped back afterwards); one implementation of the encoder contract (``models/contract.py``).

The mLSTM block (Beck et al. 2024, "xLSTM", the pre-up-projection mLSTM block), per token sequence x:

    u, z = split(W_up LayerNorm(x))                    # two branches of width E = expand * D
    c = SiLU(causal depthwise conv1d(u))               # the q / k input
    q, k = headwise(c), v = headwise(u)                # per-head (block-diagonal) projections
    i~, f~ = Linear([q, k, v]) per head                # scalar gate pre-activations
    h = GroupNorm_heads(mLSTM(q, k, v, i~, f~)) + s * c    # s: a learnable per-channel skip
    block(x) = W_down (h * SiLU(z));   x <- x + drop_path(block(x))

The mLSTM cell keeps a matrix memory C_t = f_t C_{t-1} + i_t v_t k_t^T / sqrt(d) and a normaliser
n_t = f_t n_{t-1} + i_t k_t / sqrt(d), with an exponential input gate i_t = exp(i~_t), a sigmoid forget gate
f_t = sigmoid(f~_t), and reads out h_t = o (C_t q_t) / max(|n_t^T q_t|, 1) (here the output gate o is the
block's SiLU(z) branch). :func:`mlstm_parallel` computes all steps at once through the stabilised (L x L)
decay matrix; :func:`mlstm_chunkwise` runs it chunk by chunk (memory linear in L, for long inputs);
:func:`mlstm_recurrent` runs the stabilised recurrence step by step (tests, benchmarks).

Layer target (what the EMA teacher's top-k average is built from): the block output before the residual
add, ``block(x)`` above. It is the mLSTM analogue of the Transformer's MLP output before the residual
(``models/vit.py``): the new information the block writes into the residual stream, at the token's
position, in the original (unflipped) order, without the residual's running sum that would make
neighbouring layers' targets nearly identical.

The PyPI ``xlstm`` package (Apache-2.0, 2.0.6) was not used. Its wheel is pure Python, but its METADATA
requires ``ninja`` (sLSTM's CUDA extension is JIT-compiled) and ``mlstm_kernels`` on Python >= 3.11 (our
3.11.7), a separate package under the "NXAI Community License" (not Apache-2.0) carrying the triton
kernels and pulling matplotlib / einops; its mLSTM layer also needs ``context_length`` fixed at build
time. The parallel stabilised mLSTM is a few lines of PyTorch, so it is written here from the paper's
equations, runs on the CPU and the GPU alike, and is tested against the step-by-step recurrence.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from sslam.config.base import Positive, Section
from sslam.models.contract import ModelSettings, SequenceEncoder, drop_path
from sslam.models.registry import register_encoder

MLSTM_CHUNK = 256  # steps: the parallel form up to this length, the chunkwise form beyond


def _gate_dtype(dtype: torch.dtype) -> torch.dtype:
    """Gates and decays in float32 at least: cumulative log-forget sums lose too much in bf16 / fp16."""
    return torch.promote_types(dtype, torch.float32)


def mlstm_parallel(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor
) -> torch.Tensor:
    """All L steps of the stabilised mLSTM at once. q, k, v (B, heads, L, d); i_pre, f_pre (B, heads, L)
    the input / forget gate pre-activations; returns h (B, heads, L, d) (before the output gate).

    log D_ts = sum_{r=s+1..t} log f_r + i~_s for s <= t (-inf above the diagonal), m_t = max_s log D_ts;
    H = ((Q K^T / sqrt(d)) * exp(log D - m)) V / max(|row sum|, exp(-m)). The result does not depend on m
    (it cancels), so m is detached: exact, and no gradient through the max's ties."""
    length = q.shape[-2]
    gd = _gate_dtype(q.dtype)
    log_f = F.logsigmoid(f_pre.to(gd))
    cum = torch.cumsum(log_f, dim=-1)  # (B, H, L): sum_{r<=t} log f_r
    log_d = cum[..., :, None] - cum[..., None, :] + i_pre.to(gd)[..., None, :]  # (B, H, L_t, L_s)
    causal = torch.ones(length, length, dtype=torch.bool, device=q.device).tril()
    log_d = log_d.masked_fill(~causal, float("-inf"))
    m = log_d.amax(dim=-1, keepdim=True).detach()  # (B, H, L, 1); finite: the diagonal is always there
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1]) * torch.exp(log_d - m)
    norm = torch.maximum(scores.sum(dim=-1, keepdim=True).abs(), torch.exp(-m))
    return ((scores / norm).to(v.dtype) @ v).to(q.dtype)


def mlstm_chunkwise(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    i_pre: torch.Tensor,
    f_pre: torch.Tensor,
    chunk: int = 64,
) -> torch.Tensor:
    """The same cell as :func:`mlstm_parallel` in O(L chunk) memory: the parallel form inside chunks of
    ``chunk`` steps, the stabilised state (C~, n~, m) of :func:`mlstm_recurrent` carried from chunk to chunk.

    Inside a chunk, with F_t = sum of log f over the chunk up to t: the carried state contributes with
    log-weight F_t + m_prev, step s <= t with F_t - F_s + i~_s; m_t, the max of those, is the parallel form's
    row max exactly (so the max(|n q|, exp(-m)) floor and every value agree). The state at the chunk's end is
    the same sums taken at its last step. Long sequences (16k tokens) fit where the L x L form does not."""
    b, heads, length, d = q.shape
    gd = _gate_dtype(q.dtype)
    log_f, i_pre = F.logsigmoid(f_pre.to(gd)), i_pre.to(gd)
    scale = 1.0 / math.sqrt(d)
    c = q.new_zeros(b, heads, d, d, dtype=gd)  # C~: (value dim, key dim), as mlstm_recurrent
    n = q.new_zeros(b, heads, d, dtype=gd)
    m = q.new_full((b, heads), float("-inf"), dtype=gd)
    causal = torch.ones(chunk, chunk, dtype=torch.bool, device=q.device).tril()
    out = []
    for start in range(0, length, chunk):
        sl = slice(start, min(start + chunk, length))
        qc, kc, vc = q[..., sl, :].to(gd), k[..., sl, :].to(gd) * scale, v[..., sl, :].to(gd)
        t = qc.shape[-2]
        cum = torch.cumsum(log_f[..., sl], dim=-1)  # (B, H, T)
        log_d = cum[..., :, None] - cum[..., None, :] + i_pre[..., None, sl]  # (B, H, T_t, T_s)
        log_d = log_d.masked_fill(~causal[:t, :t], float("-inf"))
        log_c = cum + m[..., None]  # (B, H, T): the carried state's log-weight at each step
        m_t = torch.maximum(log_d.amax(dim=-1), log_c).detach()
        w = torch.exp(log_d - m_t[..., None])
        wc = torch.exp(log_c - m_t)[..., None]  # exp(-inf) = 0 before the first chunk
        scores = (qc @ kc.transpose(-2, -1)) * w
        num = scores @ vc + wc * (qc @ c.transpose(-2, -1))
        den = scores.sum(-1, keepdim=True) + wc * (qc @ n[..., :, None])
        out.append(num / torch.maximum(den.abs(), torch.exp(-m_t)[..., None]))
        # the state after the chunk's last step, stabilised by that step's m: its weights are the last row's
        w_end, wc_end = w[..., -1, :], wc[..., -1, :]  # (B, H, T_s), (B, H, 1)
        c = wc_end[..., None] * c + (vc * w_end[..., None]).transpose(-2, -1) @ kc
        n = wc_end * n + (w_end[..., None] * kc).sum(-2)
        m = m_t[..., -1]
    return torch.cat(out, dim=-2).to(q.dtype)


def mlstm(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor) -> torch.Tensor:
    """The mLSTM cell as the encoder runs it: the one-matrix parallel form up to ``MLSTM_CHUNK`` steps (the
    CPU default's 153 tokens), the chunkwise form beyond (memory linear in L)."""
    if q.shape[-2] <= MLSTM_CHUNK:
        return mlstm_parallel(q, k, v, i_pre, f_pre)
    return mlstm_chunkwise(q, k, v, i_pre, f_pre, MLSTM_CHUNK)


def mlstm_recurrent(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, i_pre: torch.Tensor, f_pre: torch.Tensor
) -> torch.Tensor:
    """The same cell as :func:`mlstm_parallel`, one step at a time (Python loop): the reference it is tested
    against. Stabilised state C~ = C exp(-m), n~ = n exp(-m) with m_t = max(log f_t + m_{t-1}, i~_t), m_0 = -inf
    (empty memory), so m_t equals the parallel form's row max exactly."""
    b, heads, length, d = q.shape
    gd = _gate_dtype(q.dtype)
    log_f, i_pre = F.logsigmoid(f_pre.to(gd)), i_pre.to(gd)
    k = k / math.sqrt(d)
    c = q.new_zeros(b, heads, d, d, dtype=gd)  # C~: (value dim, key dim)
    n = q.new_zeros(b, heads, d, dtype=gd)
    m = q.new_full((b, heads), float("-inf"), dtype=gd)
    out = []
    for t in range(length):
        m_new = torch.maximum(log_f[..., t] + m, i_pre[..., t]).detach()
        f_s = torch.exp(log_f[..., t] + m - m_new)[..., None]  # exp(-inf) = 0 at t = 0
        i_s = torch.exp(i_pre[..., t] - m_new)[..., None]
        kt, vt, qt = k[..., t, :].to(gd), v[..., t, :].to(gd), q[..., t, :].to(gd)
        c = f_s[..., None] * c + i_s[..., None] * vt[..., :, None] * kt[..., None, :]
        n = f_s * n + i_s * kt
        num = (c @ qt[..., None])[..., 0]
        den = torch.maximum((n * qt).sum(-1, keepdim=True).abs(), torch.exp(-m_new)[..., None])
        out.append(num / den)
        m = m_new
    return torch.stack(out, dim=-2).to(q.dtype)


class HeadwiseLinear(nn.Module):
    """Block-diagonal linear map: each head's d channels mixed among themselves only (xLSTM's q/k/v)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads, self.d = heads, width // heads
        self.weight = nn.Parameter(torch.empty(heads, self.d, self.d))
        self.bias = nn.Parameter(torch.zeros(width))
        nn.init.trunc_normal_(self.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, width) -> (B, heads, L, d)."""
        b, n, _ = x.shape
        x = x.view(b, n, self.heads, self.d)
        y = torch.einsum("blhi,hoi->bhlo", x, self.weight.to(x.dtype))
        return y + self.bias.view(self.heads, 1, self.d).to(y.dtype)


class MlstmLayer(nn.Module):
    """The mLSTM block between its pre-LayerNorm and the residual: (B, L, D) -> (B, L, D), causal."""

    def __init__(self, dim: int, heads: int = 4, expand: int = 2, conv_kernel: int = 4):
        super().__init__()
        inner = expand * dim
        if inner % heads:
            raise ValueError(f"expand * dim ({inner}) must be divisible by num_heads ({heads})")
        self.heads = heads
        self.up = nn.Linear(dim, 2 * inner)
        self.conv = nn.Conv1d(inner, inner, conv_kernel, groups=inner, padding=conv_kernel - 1)
        self.q, self.k, self.v = (HeadwiseLinear(inner, heads) for _ in range(3))
        self.igate = nn.Linear(3 * inner, heads)
        self.fgate = nn.Linear(3 * inner, heads)
        self.out_norm = nn.GroupNorm(heads, inner)  # per-head normalisation of the cell output
        self.skip = nn.Parameter(torch.ones(inner))
        self.down = nn.Linear(inner, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, _ = x.shape
        u, z = self.up(x).chunk(2, dim=-1)
        # causal: pad k-1 on both sides, keep the first n outputs (each sees itself and the k-1 before)
        c = F.silu(self.conv(u.transpose(1, 2))[..., :n].transpose(1, 2))
        q, k, v = self.q(c), self.k(c), self.v(u)  # (B, heads, L, d)
        gate_in = torch.cat([t.transpose(1, 2).reshape(b, n, -1) for t in (q, k, v)], dim=-1)
        i_pre = self.igate(gate_in).transpose(1, 2)  # (B, heads, L)
        f_pre = self.fgate(gate_in).transpose(1, 2)
        h = mlstm(q, k, v, i_pre, f_pre).transpose(1, 2).reshape(b * n, -1)
        h = self.out_norm(h).view(b, n, -1) + self.skip.to(c.dtype) * c
        return self.down(h * F.silu(z))


class MlstmBlock(nn.Module):
    """Pre-LN residual mLSTM block; ``reverse`` reads the sequence flipped. Returns (new state, layer target)."""

    def __init__(self, dim: int, heads: int, expand: int, conv_kernel: int, reverse: bool):
        super().__init__()
        self.drop_path = 0.0
        self.reverse = reverse
        self.norm = nn.LayerNorm(dim)
        self.layer = MlstmLayer(dim, heads, expand, conv_kernel)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.reverse:
            t = self.layer(self.norm(x.flip(1))).flip(1)
        else:
            t = self.layer(self.norm(x))
        return x + drop_path(t, self.drop_path, self.training), t


class XlstmConfig(Section):
    """``model.xlstm`` (``model.encoder: xlstm``): mLSTM blocks, direction alternating from block to block
    (the overview)."""

    num_heads: Positive
    expand: Positive
    conv_kernel: Positive
    cls_position: Literal["start", "middle", "none"]


@register_encoder("xlstm", options=XlstmConfig, masked_tokens="mask_token")
class XlstmEncoder(SequenceEncoder):
    """Patch embedding, positions, an optional CLS token (``cls_position``), alternating-direction mLSTM
    blocks, a final LayerNorm. ``masked_tokens: mask_token`` (the default here) keeps the whole sequence in
    order (the overview's SSAST-style input); ``drop`` runs the blocks on the visible tokens only."""

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int = 4,
        expand: int = 2,
        conv_kernel: int = 4,
        cls_position: str = "none",
        patch: int | tuple[int, int] = 16,
        frames: int = 1024,
        mel: int = 128,
        patch_init: str = "pytorch",
        masked_tokens: str = "mask_token",
    ):
        super().__init__(dim, patch, frames, mel, masked_tokens, cls_position)
        self.blocks = nn.ModuleList(
            MlstmBlock(dim, heads, expand, conv_kernel, reverse=i % 2 == 1) for i in range(depth)
        )
        self.final_norm = nn.LayerNorm(dim)
        self._init_weights(patch_init)

    @classmethod
    def from_config(
        cls, cfg: ModelSettings, options: XlstmConfig, frames: int, mel: int, masked_tokens: str
    ) -> XlstmEncoder:
        """The encoder ``model`` (``embed_dim``, ``depth``, ``patch_size``, ``patch_init``, ``xlstm.*``) sizes."""
        x = options
        return cls(
            cfg.embed_dim,
            cfg.depth,
            x.num_heads,
            x.expand,
            x.conv_kernel,
            x.cls_position,
            cfg.patch,
            frames,
            mel,
            cfg.patch_init,
            masked_tokens,
        )

    @classmethod
    def check_config(cls, cfg: ModelSettings, options: XlstmConfig) -> None:
        if (cfg.embed_dim * options.expand) % options.num_heads:
            raise ValueError(
                f"embed_dim x xlstm.expand ({cfg.embed_dim * options.expand}) must be divisible by "
                f"xlstm.num_heads ({options.num_heads})"
            )

    def _init_weights(self, patch_init: str) -> None:
        """Linears trunc-normal(0.02) with zero bias; gates as the xLSTM code: zero weights, the forget bias
        spread over 3..6 per head (sigmoid 0.95..0.998: long memory at the start), input bias 0 (i = 1)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        for blk in self.blocks:
            layer = blk.layer
            nn.init.zeros_(layer.igate.weight)
            nn.init.zeros_(layer.igate.bias)
            nn.init.zeros_(layer.fgate.weight)
            with torch.no_grad():
                layer.fgate.bias.copy_(torch.linspace(3.0, 6.0, layer.heads))
        self.init_front_end(patch_init)
