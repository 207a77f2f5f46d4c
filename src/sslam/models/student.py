"""The pretraining student (encoder + light decoder: what the optimizer trains) and its EMA teacher."""

from __future__ import annotations

import copy

import torch
from torch import nn

from sslam.config import ModelConfig
from sslam.models.decoder import CnnDecoder
from sslam.models.vit import Encoder


class Student(nn.Module):
    def __init__(self, cfg: ModelConfig, frames: int, mel: int):
        super().__init__()
        if cfg.encoder != "transformer":
            raise NotImplementedError(f"model.encoder {cfg.encoder!r}: only 'transformer' is built so far")
        self.encoder = Encoder(
            cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.patch_size, frames, mel, cfg.patch_init
        )
        self.decoder = CnnDecoder(
            cfg.embed_dim,
            self.encoder.grid,
            cfg.decoder_layers,
            cfg.decoder_kernel,
            cfg.decoder_groups,
            fill=cfg.decoder_fill,
        )

    def forward(self, x: torch.Tensor, keep: torch.Tensor, clones: int, noise: torch.Generator | None = None):
        """-> (CLS outputs (B*C, D), patch predictions (B*C, N, D))."""
        h, _ = self.encoder(x, keep=keep, clones=clones)
        return h[:, 0], self.decoder(h[:, 1:], keep, noise)


def make_teacher(student: Student) -> Encoder:
    """A full copy of the encoder (own patch conv, CLS, norms), fp32, never trained by gradients."""
    teacher = copy.deepcopy(student.encoder).float()
    teacher.requires_grad_(False)
    return teacher.eval()
