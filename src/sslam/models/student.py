"""The pretraining student (encoder + light decoder: what the optimizer trains) and its EMA teacher.

The student reaches its encoder only through the contract (``models/contract.py``), so the objectives
run unchanged on every encoder ``model.encoder`` names."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from sslam.models.contract import PatchEncoder
from sslam.models.decoder import CnnDecoder
from sslam.models.heads import RawPatchHead
from sslam.models.registry import build_encoder

if TYPE_CHECKING:  # an annotation only: the model section is built from the registry this package fills
    from sslam.config.model import ModelConfig


class Student(nn.Module):
    """The encoder and what ``objective`` trains on top of it: the CNN decoder to the teacher's targets
    (``bootstrap``), SSAST's ``heads`` (discriminative and generative, Linear -> ReLU -> Linear to the raw
    patch) or the overview's ``head`` (Linear -> GELU -> Linear). Downstream use reads ``encoder.*`` only."""

    def __init__(self, cfg: ModelConfig, frames: int, mel: int, objective: str = "bootstrap"):
        super().__init__()
        self.encoder = build_encoder(cfg, frames, mel, objective)
        patch_dim = self.encoder.patch_size[0] * self.encoder.patch_size[1]
        if objective == "bootstrap":
            self.decoder = CnnDecoder(
                cfg.embed_dim,
                self.encoder.grid,
                cfg.decoder_layers,
                cfg.decoder_kernel,
                cfg.decoder_groups,
                fill=cfg.decoder_fill,
            )
        elif objective == "ssast":
            self.heads = nn.ModuleDict(
                {k: RawPatchHead(cfg.embed_dim, patch_dim, "relu") for k in ("discriminative", "generative")}
            )
        elif objective == "msm":
            self.head = RawPatchHead(cfg.embed_dim, patch_dim, "gelu")
        else:
            raise ValueError(f"pretrain.objective must be one of bootstrap, ssast, msm, got {objective!r}")

    def forward(self, x: torch.Tensor, keep: torch.Tensor, clones: int, noise: torch.Generator | None = None):
        """-> (summary outputs (B*C, D), patch predictions (B*C, N, D)). The decoder places the encoder's
        tokens at their patch positions (the visible ones, or all of them for a ``mask_token`` encoder)."""
        h, _ = self.encoder(x, keep=keep, clones=clones)
        return h[:, 0], self.decoder(h[:, 1:], self.encoder.output_positions(keep), noise)


def make_teacher(student: Student) -> PatchEncoder:
    """A full copy of the encoder (own patch conv, CLS, norms), fp32, never trained by gradients."""
    teacher = copy.deepcopy(student.encoder).float()
    teacher.requires_grad_(False)
    return teacher.eval()
