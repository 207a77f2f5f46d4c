"""The light CNN decoder of data2vec 2.0 / EAT: puts visible tokens back in place and predicts all.

Reference: masked slots filled with N(0, 0.01^2) noise (or a learned token, ``fill="learned"``), no
positional embedding, reshaped to (B, D, T', F'); ``layers`` x [Conv2d(D, D, k, pad=k//2, groups) ->
LayerNorm over channels without affine -> GELU], a residual around every layer; then Linear(D, D).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W), no affine parameters."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2]).permute(0, 3, 1, 2)


class CnnDecoder(nn.Module):
    def __init__(
        self,
        dim: int,
        grid: tuple[int, int],
        layers: int = 6,
        kernel: int = 3,
        groups: int = 16,
        fill: str = "noise",
        fill_std: float = 0.01,
    ):
        super().__init__()
        self.grid, self.fill, self.fill_std = grid, fill, fill_std
        self.blocks = nn.ModuleList(
            nn.Sequential(nn.Conv2d(dim, dim, kernel, padding=kernel // 2, groups=groups), ChannelNorm(), nn.GELU())
            for _ in range(layers)
        )
        self.proj = nn.Linear(dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim)) if fill == "learned" else None

    def forward(
        self, tokens: torch.Tensor, positions: torch.Tensor | None, generator: torch.Generator | None = None
    ) -> torch.Tensor:
        """tokens (B, K, D) student outputs without the summary token at their patch ``positions`` (B, K);
        ``positions`` None: all N patches in order (a ``mask_token`` encoder), nothing to fill -> (B, N, D)."""
        b, k, d = tokens.shape
        n = self.grid[0] * self.grid[1]
        if positions is None:
            x = tokens
        else:
            if self.mask_token is not None:
                x = self.mask_token.expand(b, n, d).to(tokens.dtype).clone()
            else:
                noise = torch.randn(
                    (b, n, d), generator=generator, device=generator.device if generator is not None else tokens.device
                )
                x = (noise.to(tokens.device) * self.fill_std).to(tokens.dtype)
            x = x.scatter(1, positions[:, :, None].expand(-1, -1, d), tokens)
        x = x.transpose(1, 2).reshape(b, d, *self.grid)
        for blk in self.blocks:
            x = x + blk(x)
        return self.proj(x.flatten(2).transpose(1, 2))
