"""The ViT encoder of EAT / SSLAM (data2vec 2.0 layout), in plain PyTorch; one implementation of the
encoder contract (``models/contract.py``). Its layer target is the MLP output before the residual.

Reference details (the public EAT and SSLAM code):
- patch embedding Conv2d(1, D, 16, stride 16) over (frames, mel); tokens time-major (t * F' + f);
- fixed 2-D sin-cos positions added BEFORE masking: first half of the channels encodes the frequency
  index, the second half the time index; the CLS token has no position and is N(0, 1) initialised;
- a LayerNorm (eps 1e-6) on [CLS; tokens] before block 0; post-LN blocks
  ``x = x + attn(x); r = ln1(x); t = mlp(r); x = ln2(r + t)``; the layer target is ``t`` (the MLP
  output before the residual); no final norm;
- Linear layers N(0, 0.02) with zero bias (BERT init); the patch conv's weight, seen as a
  (D, patch * patch) matrix, xavier-uniform (``patch_init: xavier``, EAT) or PyTorch's Conv2d default
  (``pytorch``: kaiming-uniform with a = sqrt(5), about 3x smaller at dim 128); no dropout in pretraining.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sslam.models.contract import ModelSettings, PatchEncoder, drop_path
from sslam.models.registry import register_encoder


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v)  # fused kernels on the GPU
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Post-LN transformer block; returns the new state and the layer target (MLP output)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.drop_path = 0.0  # fine-tuning only (pretraining uses none, as the reference)
        self.attn = Attention(dim, heads)
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x + drop_path(self.attn(x), self.drop_path, self.training)
        r = self.norm1(x)
        t = self.mlp(r)
        return self.norm2(r + drop_path(t, self.drop_path, self.training)), t


@register_encoder("transformer", masked_tokens="drop")
class ViTEncoder(PatchEncoder):
    """Patch embedding, positions, CLS, pre-norm and post-LN blocks (``model.encoder: transformer``, sized
    by ``model.embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``: no section of its own).

    ``masked_tokens: drop`` (the default here): the patch conv runs once per clip and the tokens are
    repeated per clone before gathering the visible ones (the reference's clone batch), so masked tokens
    never enter the blocks. ``mask_token``: the SSAST-style full sequence with a learned mask embedding.
    """

    def __init__(
        self,
        dim: int,
        depth: int,
        heads: int,
        mlp_ratio: float = 4.0,
        patch: int | tuple[int, int] = 16,
        frames: int = 1024,
        mel: int = 128,
        patch_init: str = "xavier",
        masked_tokens: str = "drop",
    ):
        super().__init__(dim, patch, frames, mel, masked_tokens)
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
        self.pre_norm = nn.LayerNorm(dim, eps=1e-6)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp_ratio) for _ in range(depth))
        self.apply(_bert_init)
        self.init_front_end(patch_init)

    @classmethod
    def from_config(cls, cfg: ModelSettings, options: None, frames: int, mel: int, masked_tokens: str) -> ViTEncoder:
        return cls(
            cfg.embed_dim,
            cfg.depth,
            cfg.num_heads,
            cfg.mlp_ratio,
            cfg.patch,
            frames,
            mel,
            cfg.patch_init,
            masked_tokens,
        )

    @classmethod
    def check_config(cls, cfg: ModelSettings, options: None) -> None:
        if cfg.embed_dim % cfg.num_heads:
            raise ValueError(f"embed_dim ({cfg.embed_dim}) must be divisible by num_heads ({cfg.num_heads})")

    def forward(
        self, x: torch.Tensor, keep: torch.Tensor | None = None, clones: int = 1, return_layers: bool = False
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Returns (final states incl. CLS at index 0, per-layer targets of the ``keep`` patch tokens)."""
        tok = self.input_tokens(x, keep, clones)
        h = torch.cat([self.cls_token.expand(tok.shape[0], -1, -1).to(tok.dtype), tok], dim=1)
        h = self.pre_norm(h)
        layers = []
        for blk in self.blocks:
            h, t = blk(h)
            if return_layers:
                layers.append(self.layer_targets_at(t[:, 1:], keep))
        return h, layers


def _bert_init(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm) and m.elementwise_affine:
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)
