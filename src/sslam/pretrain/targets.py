"""Teacher targets, as the reference builds them (data2vec 2.0 / EAT).

Per layer take the MLP output ``t`` of the patch tokens, instance-normalise it over tokens per channel,
average the top-k layers, then layer-normalise over channels without affine; all in fp32. The CLS
target is the mean over patches of that final target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def center_by_position(y: torch.Tensor, positions: torch.Tensor | None = None, num_positions: int | None = None
                       ) -> torch.Tensor:
    """Subtract, at each patch position, the mean over the clips of the batch that have it: what the
    position alone predicts. ``positions`` (B, M): the grid index of each of the M tokens (default: all)."""
    if positions is None:
        return y - y.mean(dim=0, keepdim=True)
    b, m, d = y.shape
    n = num_positions or int(positions.max()) + 1
    flat = positions.reshape(-1)
    total = torch.zeros(n, d, dtype=y.dtype, device=y.device).index_add_(0, flat, y.reshape(-1, d))
    count = torch.zeros(n, dtype=y.dtype, device=y.device).index_add_(0, flat, torch.ones_like(flat, dtype=y.dtype))
    return y - (total / count.clamp_min(1)[:, None])[positions]


def layer_averaged_targets(layers: list[torch.Tensor], top_k: int, center: bool = False,
                           positions: torch.Tensor | None = None) -> torch.Tensor:
    """layers: per-block (B, N, D) -> (B, N, D) target from the last ``top_k`` blocks.

    ``center`` (not in the reference; ``pretrain.<stage>.center_targets``): before the final layer
    norm, remove the per-position batch mean, so the target holds what differs between clips rather
    than where a patch sits (see ``pretrain/diagnostics.py``: on the tiny CPU model position alone
    explains most of the reference target). ``positions``: the grid index of each token when the
    teacher saw a subset of them."""
    if not 1 <= top_k <= len(layers):
        raise ValueError(f"top_k_layers must lie in 1..{len(layers)} (the encoder depth), got {top_k}")
    acc = None
    for t in layers[-top_k:]:
        t = t.float()
        t = F.instance_norm(t.transpose(1, 2)).transpose(1, 2)  # over tokens, per channel
        acc = t if acc is None else acc + t
    y = acc / top_k
    if center:
        y = center_by_position(y, positions)
    return F.layer_norm(y, y.shape[-1:])


def cls_target(target: torch.Tensor) -> torch.Tensor:
    return target.mean(dim=1)
