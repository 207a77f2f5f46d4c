"""Is the student learning content, or only where a patch sits?

Masked latent bootstrapping regresses teacher features. When those features are mostly a function of
the patch position (fixed sin-cos positions, a background that looks the same in every clip, a teacher
that has barely moved from its initialisation), a predictor that knows only the position does well and
the student learns little about the sound. These numbers make that visible after a run:

- ``position_only_loss``: the local loss of predicting, for each position, the mean target at that
  position over the other half of the batch;
- ``zero_loss``: the loss of predicting zeros (the targets' scale);
- ``position_share`` = 1 - position_only / zero: the share of the target that position alone explains;
- ``student_loss``: the student's local loss on the same clips and masks.
"""

from __future__ import annotations

import torch

from sslam.pretrain.losses import token_loss
from sslam.pretrain.masking import inverse_block_mask, visible_indices
from sslam.pretrain.targets import layer_averaged_targets


@torch.no_grad()
def target_diagnostics(student: torch.nn.Module, teacher: torch.nn.Module, x: torch.Tensor, top_k: int,
                       mask_ratio: float, block: int, adjust: float, seed: int = 0,
                       center_targets: bool = False) -> dict[str, float]:
    if x.shape[0] < 4:
        raise ValueError(f"target diagnostics need at least 4 clips, got {x.shape[0]}")
    student.eval()
    teacher.eval()
    _, layers = teacher(x.float(), return_layers=True)
    y = layer_averaged_targets(layers, top_k, center=center_targets)
    g = torch.Generator().manual_seed(seed)
    mask = inverse_block_mask(x.shape[0], teacher.grid, mask_ratio, block, adjust, g).to(x.device)
    _, pred = student(x, visible_indices(mask), 1, torch.Generator(device=x.device).manual_seed(seed + 1))
    half = x.shape[0] // 2
    a, b = slice(0, half), slice(half, None)
    by_position = y[a].mean(0, keepdim=True).expand_as(y[b])
    m = mask[b]
    zero = token_loss(torch.zeros_like(y[b]), y[b])[m].mean()
    pos = token_loss(by_position, y[b])[m].mean()
    stu = token_loss(pred[b], y[b])[m].mean()
    return {"student_loss": round(float(stu), 4), "position_only_loss": round(float(pos), 4),
            "zero_loss": round(float(zero), 4), "position_share": round(float(1 - pos / zero), 4)}
