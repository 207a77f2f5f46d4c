"""The reference's regression losses (data2vec 2.0 / EAT).

Per token: the sum over channels of the squared error, divided by sqrt(dim). The patch (local) loss is
the mean over all masked tokens (eq. 2); the CLS (global) loss is SUMMED over the CLS tokens of the
per-device batch (eq. 1), so with B clips x C clones it weighs B*C times a mean. ``cls_reduction:
mean`` with ``cls_loss_weight`` multiplied by B*C gives the same gradients.
"""

from __future__ import annotations

import math

import torch


def token_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """(..., D) -> (...): sum of squared errors over channels / sqrt(D), in fp32."""
    return (pred.float() - target.float()).pow(2).sum(-1) / math.sqrt(pred.shape[-1])


def patch_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over masked tokens. pred, target (B, N, D); mask (B, N) True = masked."""
    per = token_loss(pred, target)
    return per[mask].mean()


def cls_loss(pred: torch.Tensor, target: torch.Tensor, reduction: str = "sum") -> torch.Tensor:
    per = token_loss(pred, target)
    if reduction == "sum":
        return per.sum()
    if reduction == "mean":
        return per.mean()
    raise ValueError(f"cls reduction must be 'sum' or 'mean', got {reduction!r}")
