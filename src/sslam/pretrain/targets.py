"""Teacher targets, as the reference builds them (data2vec 2.0 / EAT).

Per layer take the MLP output ``t`` of the patch tokens, instance-normalise it over tokens per channel,
average the top-k layers, then layer-normalise over channels without affine; all in fp32. The CLS
target is the mean over patches of that final target.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def layer_averaged_targets(layers: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """layers: per-block (B, N, D) -> (B, N, D) target from the last ``top_k`` blocks."""
    if not 1 <= top_k <= len(layers):
        raise ValueError(f"top_k_layers must lie in 1..{len(layers)} (the encoder depth), got {top_k}")
    acc = None
    for t in layers[-top_k:]:
        t = t.float()
        t = F.instance_norm(t.transpose(1, 2)).transpose(1, 2)  # over tokens, per channel
        acc = t if acc is None else acc + t
    y = acc / top_k
    return F.layer_norm(y, y.shape[-1:])


def cls_target(target: torch.Tensor) -> torch.Tensor:
    return target.mean(dim=1)
