"""``pretrain.objective: msm``: the masked spectrogram modelling of the Transformer / Mamba / xLSTM overview,
stage 1 only; options in ``pretrain.msm``. The student trains one raw-patch ``head`` beside its encoder
(Linear -> GELU -> Linear); the shared math is in ``pretrain/raw_patch.py``."""

from __future__ import annotations

import torch
from torch import nn

from sslam.config.model import ModelConfig
from sslam.config.pretrain import MsmConfig
from sslam.models.contract import PatchEncoder
from sslam.models.heads import RawPatchHead
from sslam.pretrain.masking import visible_indices
from sslam.pretrain.objectives import LossSetup, Objective, StepLosses
from sslam.pretrain.raw_patch import patch_mse, random_mask, raw_patches, require_mask_tokens


def msm_losses(
    encoder: PatchEncoder, head: nn.Module, x: torch.Tensor, msm: MsmConfig, seed: int
) -> dict[str, torch.Tensor]:
    """The overview's masked spectrogram modelling: ``mask_ratio`` of the patches masked at random (kept in
    the sequence with the mask embedding), a head to the raw patch, MSE on the masked patches (``loss_on:
    all``: on every patch, as the public code)."""
    require_mask_tokens(encoder, "msm")
    g = torch.Generator().manual_seed(seed)
    masked = random_mask(x.shape[0], encoder.num_patches, msm.mask_ratio, g).to(x.device)
    h, _ = encoder(x, keep=visible_indices(masked))
    pred = head(h[:, 1:])
    target = raw_patches(x.float(), encoder.patch_size)
    chosen = masked if msm.loss_on == "masked" else torch.ones_like(masked)
    mse = patch_mse(pred[chosen], target[chosen])
    return {"loss": mse, "mse": mse}


def build_heads(cfg: ModelConfig, encoder: PatchEncoder) -> dict[str, nn.Module]:
    """One head from a token to its raw patch."""
    return {"head": RawPatchHead(cfg.embed_dim, encoder.patch_size[0] * encoder.patch_size[1], "gelu")}


def stage1_step(setup: LossSetup) -> StepLosses:
    student, options = setup.student, setup.cfg.pretrain.msm
    return lambda x, idx, seed: msm_losses(student.encoder, student.head, x, options, seed)


OBJECTIVE = Objective(heads=build_heads, stage1=stage1_step, predicts_masked=True, options="msm")
