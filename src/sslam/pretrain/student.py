"""The pretraining student (encoder + what the objective trains beside it: what the optimizer trains) and
its EMA teacher.

The student reaches its encoder only through the contract (``models/contract.py``), so the objectives
run unchanged on every encoder ``model.encoder`` names; what it trains beside the encoder is the
objective's (``pretrain/objectives/``), so an objective added as one module needs nothing here."""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from sslam.models.contract import PatchEncoder
from sslam.models.registry import build_encoder
from sslam.pretrain.objectives import get_objective

if TYPE_CHECKING:  # an annotation only: the model section is built from the registry this package fills
    from sslam.config.model import ModelConfig


class Student(nn.Module):
    """The encoder and the modules ``objective`` trains on top of it, each set as the attribute the
    objective names (``bootstrap``: the CNN ``decoder`` to the teacher's targets; ``ssast``: the two
    ``heads``; ``msm``: one ``head``), built right after the encoder. Downstream use reads ``encoder.*``
    only."""

    def __init__(self, cfg: ModelConfig, frames: int, mel: int, objective: str = "bootstrap"):
        super().__init__()
        trained = get_objective(objective)
        self.encoder = build_encoder(cfg, frames, mel, predicts_masked=trained.predicts_masked)
        for name, module in trained.heads(cfg, self.encoder).items():
            setattr(self, name, module)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, clones: int, noise: torch.Generator | None = None):
        """For an objective with a ``decoder`` (``bootstrap``): -> (summary outputs (B*C, D), patch
        predictions (B*C, N, D)). The decoder places the encoder's tokens at their patch positions (the
        visible ones, or all of them for a ``mask_token`` encoder)."""
        h, _ = self.encoder(x, keep=keep, clones=clones)
        return h[:, 0], self.decoder(h[:, 1:], self.encoder.output_positions(keep), noise)


def make_teacher(student: Student) -> PatchEncoder:
    """A full copy of the encoder (own patch conv, CLS, norms), fp32, never trained by gradients."""
    teacher = copy.deepcopy(student.encoder).float()
    teacher.requires_grad_(False)
    return teacher.eval()
