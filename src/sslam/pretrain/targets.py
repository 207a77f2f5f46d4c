"""Teacher targets, as the reference builds them (data2vec 2.0 / EAT), and the optional centring.

Per layer take the MLP output ``t`` of the patch tokens, instance-normalise it over tokens per channel,
average the top-k layers, then layer-normalise over channels without affine; all in fp32. The CLS
target is the mean over patches of that final target.

Centring (``pretrain.<stage>.center_targets``; not in the reference, whose value is ``none``) removes,
before the final layer norm, what the patch position alone predicts: ``batch`` subtracts the mean at
each position over the clips of the (per-process) batch, so a clip's target depends on its batch
mates; ``running`` subtracts a per-position mean kept like the EMA teacher (updated after use with
``center_momentum``, averaged over processes), so a clip's target depends on the run's history only.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Centering = Literal["none", "batch", "running"]


def average_top_layers(layers: list[torch.Tensor], top_k: int) -> torch.Tensor:
    """layers: per-block (B, N, D) -> (B, N, D) mean of the instance-normalised last ``top_k`` blocks."""
    if not 1 <= top_k <= len(layers):
        raise ValueError(f"top_k_layers must lie in 1..{len(layers)} (the encoder depth), got {top_k}")
    acc = None
    for t in layers[-top_k:]:
        t = t.float()
        t = F.instance_norm(t.transpose(1, 2)).transpose(1, 2)  # over tokens, per channel
        acc = t if acc is None else acc + t
    return acc / top_k


def center_by_position(
    y: torch.Tensor, positions: torch.Tensor | None = None, num_positions: int | None = None
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


def running_mean_update(mean: torch.Tensor, batch_mean: torch.Tensor, momentum: float) -> torch.Tensor:
    """``momentum * mean + (1 - momentum) * batch_mean``: the EMA of the per-position target mean."""
    return momentum * mean + (1.0 - momentum) * batch_mean


class PositionCentring:
    """Applies ``center_targets`` to pre-norm targets; holds the running means (one per top-k, since
    the local and the global targets average different layers). Its state goes into checkpoints, so a
    resumed run centres exactly as an uninterrupted one."""

    def __init__(self, mode: Centering = "none", momentum: float = 0.99):
        if mode not in ("none", "batch", "running"):
            raise ValueError(f"center_targets must be 'none', 'batch' or 'running', got {mode!r}")
        self.mode, self.momentum = mode, momentum
        self.means: dict[str, torch.Tensor] = {}

    def __call__(
        self, y: torch.Tensor, key: str, positions: torch.Tensor | None = None, update: bool = True
    ) -> torch.Tensor:
        """y (B, M, D) pre-norm targets; ``positions`` (B, M) their grid indices when the teacher saw a
        subset of the tokens (then the running mean is only read, never updated)."""
        if self.mode == "none":
            return y
        if self.mode == "batch":
            return center_by_position(y, positions)
        mean = self.means.get(key)
        if positions is None:
            batch_mean = _mean_over_processes(y.mean(dim=0))
            if mean is None:  # the first batch starts the running mean
                mean = batch_mean
            out = y - mean
            if update:
                self.means[key] = running_mean_update(mean, batch_mean, self.momentum)
            return out
        if mean is None:
            raise ValueError(f"running centring of a token subset needs the full-sequence mean {key!r} first")
        return y - mean[positions]

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v.detach().cpu().contiguous() for k, v in self.means.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.means = {k: v.clone() for k, v in state.items()}

    def to(self, device: torch.device) -> PositionCentring:
        self.means = {k: v.to(device) for k, v in self.means.items()}
        return self


def _mean_over_processes(t: torch.Tensor) -> torch.Tensor:
    """The average over DDP processes (every rank then keeps the same running mean)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = t.clone()
        torch.distributed.all_reduce(t)
        t /= torch.distributed.get_world_size()
    return t


def final_target(y: torch.Tensor) -> torch.Tensor:
    """Layer norm over channels without affine: the target the student regresses."""
    return F.layer_norm(y, y.shape[-1:])


def layer_averaged_targets(
    layers: list[torch.Tensor], top_k: int, center: bool = False, positions: torch.Tensor | None = None
) -> torch.Tensor:
    """The reference target (``center`` False), or with per-position batch centring before the norm."""
    y = average_top_layers(layers, top_k)
    if center:
        y = center_by_position(y, positions)
    return final_target(y)


def cls_target(target: torch.Tensor) -> torch.Tensor:
    return target.mean(dim=1)
