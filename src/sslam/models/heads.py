"""Heads from an encoder token to its raw input patch (the raw-patch objectives of ``pretrain/raw_patch.py``)."""

from __future__ import annotations

import torch
from torch import nn


class RawPatchHead(nn.Module):
    """Linear -> activation -> Linear from an encoder token to its raw patch (SSAST: ReLU, the overview:
    GELU), hidden width the encoder's."""

    def __init__(self, dim: int, patch_dim: int, activation: str = "relu"):
        super().__init__()
        if activation not in ("relu", "gelu"):
            raise ValueError(f"activation must be relu or gelu, got {activation!r}")
        self.fc1, self.fc2 = nn.Linear(dim, dim), nn.Linear(dim, patch_dim)
        self.act = nn.ReLU() if activation == "relu" else nn.GELU()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(h)))
