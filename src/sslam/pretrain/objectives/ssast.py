"""``pretrain.objective: ssast``: SSAST's joint discriminative / generative masked patch modelling (also
SSAMBA's objective), stage 1 only; options in ``pretrain.ssast``. The student trains two raw-patch ``heads``
beside its encoder (Linear -> ReLU -> Linear each); the shared math is in ``pretrain/raw_patch.py``."""

from __future__ import annotations

import torch
from torch import nn

from sslam.config.model import ModelConfig
from sslam.config.pretrain import SsastConfig
from sslam.models.contract import PatchEncoder, gather_tokens
from sslam.models.heads import RawPatchHead
from sslam.pretrain.masking import visible_indices
from sslam.pretrain.objectives import LossSetup, Objective, StepLosses
from sslam.pretrain.raw_patch import cluster_mask, info_nce, patch_mse, raw_patches, require_mask_tokens


def ssast_losses(
    encoder: PatchEncoder,
    heads: nn.ModuleDict,
    x: torch.Tensor,
    ssast: SsastConfig,
    seed: int,
) -> dict[str, torch.Tensor]:
    """SSAST's joint objective: cluster-masked patches kept in the sequence with the mask embedding; the
    ``discriminative`` head's InfoNCE against the clip's other masked patches and the ``generative`` head's
    MSE, both to the raw (normalised log-mel) patch; loss = nce + ``mse_weight`` * mse. With
    ``two_passes`` each head reads its own forward pass with its own mask (the reference), else one."""
    require_mask_tokens(encoder, "ssast")
    g = torch.Generator().manual_seed(seed)
    target = raw_patches(x.float(), encoder.patch_size)
    passes = []
    for _ in range(2 if ssast.two_passes else 1):
        masked = cluster_mask(x.shape[0], encoder.grid, ssast.mask_count, tuple(ssast.cluster_sizes), g).to(x.device)
        h, _ = encoder(x, keep=visible_indices(masked))
        where = visible_indices(~masked)  # the masked patches' indices, sorted
        passes.append((gather_tokens(h[:, 1:], where), gather_tokens(target, where)))
    (tok_d, tgt_d), (tok_g, tgt_g) = passes[0], passes[-1]
    nce, accuracy = info_nce(heads["discriminative"](tok_d), tgt_d)
    mse = patch_mse(heads["generative"](tok_g), tgt_g)
    return {"loss": nce + ssast.mse_weight * mse, "nce": nce, "mse": mse, "accuracy": accuracy}


def build_heads(cfg: ModelConfig, encoder: PatchEncoder) -> dict[str, nn.Module]:
    """The discriminative and the generative head, each from a token to its raw patch."""
    patch_dim = encoder.patch_size[0] * encoder.patch_size[1]
    return {
        "heads": nn.ModuleDict(
            {k: RawPatchHead(cfg.embed_dim, patch_dim, "relu") for k in ("discriminative", "generative")}
        )
    }


def stage1_step(setup: LossSetup) -> StepLosses:
    student, options = setup.student, setup.cfg.pretrain.ssast
    return lambda x, idx, seed: ssast_losses(student.encoder, student.heads, x, options, seed)


OBJECTIVE = Objective(heads=build_heads, stage1=stage1_step, predicts_masked=True, options="ssast")
