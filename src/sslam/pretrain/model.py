"""The student (encoder + decoder, what the optimizer trains) and one stage-1 step's losses."""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from sslam.config import ModelConfig
from sslam.models.decoder import CnnDecoder
from sslam.models.vit import Encoder
from sslam.pretrain.losses import cls_loss, patch_loss
from sslam.pretrain.masking import inverse_block_mask, visible_indices
from sslam.pretrain.targets import cls_target, layer_averaged_targets


class Student(nn.Module):
    def __init__(self, cfg: ModelConfig, frames: int, mel: int):
        super().__init__()
        if cfg.encoder != "transformer":
            raise NotImplementedError(f"model.encoder {cfg.encoder!r}: only 'transformer' is built so far")
        self.encoder = Encoder(cfg.embed_dim, cfg.depth, cfg.num_heads, cfg.mlp_ratio, cfg.patch_size, frames, mel)
        self.decoder = CnnDecoder(cfg.embed_dim, self.encoder.grid, cfg.decoder_layers, cfg.decoder_kernel,
                                  cfg.decoder_groups, fill=cfg.decoder_fill)

    def forward(self, x: torch.Tensor, keep: torch.Tensor, clones: int, noise: torch.Generator | None = None):
        """-> (CLS outputs (B*C, D), patch predictions (B*C, N, D))."""
        h, _ = self.encoder(x, keep=keep, clones=clones)
        return h[:, 0], self.decoder(h[:, 1:], keep, noise)


def make_teacher(student: Student) -> Encoder:
    """A full copy of the encoder (own patch conv, CLS, norms), fp32, never trained by gradients."""
    teacher = copy.deepcopy(student.encoder).float()
    teacher.requires_grad_(False)
    return teacher.eval()


@dataclass(frozen=True)
class StepSettings:
    clones: int
    mask_ratio: float
    block: int
    adjust: float
    top_k: int
    cls_weight: float
    cls_reduction: str


def stage1_losses(student: nn.Module, teacher: Encoder, x: torch.Tensor, s: StepSettings, seed: int) -> dict[str, torch.Tensor]:
    """Masked latent bootstrapping (paper Section 3.1): local loss on masked patches, global on CLS.

    ``seed`` fixes this step's masks and decoder noise, so a resumed run repeats an uninterrupted one.
    """
    b = x.shape[0]
    grid = teacher.grid
    g_mask = torch.Generator().manual_seed(seed)
    mask = inverse_block_mask(b * s.clones, grid, s.mask_ratio, s.block, s.adjust, g_mask).to(x.device)
    keep = visible_indices(mask)
    with torch.no_grad():  # the teacher sees each whole clip once, not once per clone
        _, layers = teacher(x.float(), return_layers=True)
        y = layer_averaged_targets(layers, s.top_k)
        y_cls = cls_target(y).repeat_interleave(s.clones, dim=0)
        y = y.repeat_interleave(s.clones, dim=0)
    g_noise = torch.Generator(device=x.device).manual_seed(seed + 1)
    cls, pred = student(x, keep, s.clones, g_noise)
    local = patch_loss(pred, y, mask)
    glob = cls_loss(cls, y_cls, s.cls_reduction)
    return {"loss": local + s.cls_weight * glob, "local": local, "global": glob}
