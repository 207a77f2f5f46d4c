"""A clip's pooled representation: the one definition evaluation, fine-tuning and the embedding API share.

A clip shorter than the encoder's window is zero-padded, so most of a 0.5 s clip's tokens in a 3 s
window describe padding. Pooling therefore reads only the clip's *valid* time patches: a time patch
counts when its centre frame holds audio (:func:`valid_time_patches`). ``pooling``:

- ``mean``: the mean of the valid patch tokens (over time and frequency);
- ``freq_mean``: per frequency row, the mean over the valid time patches; rows concatenated (keeps
  where in frequency a source sits);
- ``cls``: the summary token (the CLS, EAT / SSLAM's utterance embedding; the token mean for an
  encoder without a CLS). It attends to the whole window, padding included, as in the reference.

Tokens are time-major (``t * F' + f``), as every encoder of ``models/contract.py`` promises.
"""

from __future__ import annotations

import math

import torch

POOLINGS = ("mean", "freq_mean", "cls")


def valid_time_patches(frames: int, patch_frames: int, grid_t: int) -> int:
    """Time patches whose centre frame lies within the clip's ``frames`` valid frames (at least 1, at most
    the grid): patch ``i`` covers frames ``[i p, (i + 1) p)`` and its centre is ``i p + (p - 1) / 2``."""
    return min(grid_t, max(1, math.ceil((frames - (patch_frames - 1) / 2) / patch_frames)))


def time_patch_mask(frames: torch.Tensor, patch_frames: int, grid_t: int) -> torch.Tensor:
    """(B, T') bool: the valid time patches of each clip (``frames``: (B,) valid frames)."""
    counts = torch.tensor([valid_time_patches(int(f), patch_frames, grid_t) for f in frames.tolist()])
    return torch.arange(grid_t)[None, :] < counts[:, None]


def pool_tokens(h: torch.Tensor, grid: tuple[int, int], pooling: str, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, 1 + T' F', D) encoder output -> (B, :func:`pooled_width`). ``valid``: (B, T') bool mask of the
    time patches to pool (None: all of them; ``cls`` ignores it)."""
    if pooling == "cls":
        return h[:, 0]
    return pool_patches(h[:, 1:].reshape(h.shape[0], grid[0], grid[1], h.shape[-1]), pooling, valid)


def pool_patches(tokens: torch.Tensor, pooling: str, valid: torch.Tensor | None) -> torch.Tensor:
    """(B, T', F', D) patch tokens -> ``mean`` (B, D) | ``freq_mean`` (B, F' D) over the valid time patches."""
    b, t = tokens.shape[:2]
    if valid is None:
        valid = torch.ones(b, t, dtype=torch.bool)
    w = valid.to(device=tokens.device, dtype=tokens.dtype)[:, :, None, None]  # (B, T', 1, 1)
    per_row = (tokens * w).sum(1) / w.sum(1)  # (B, F', D): mean over the valid time patches
    if pooling == "freq_mean":
        return per_row.flatten(1)
    if pooling == "mean":  # every valid time patch has F' tokens: the mean of the row means
        return per_row.mean(1)
    raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")


def pooled_width(dim: int, grid_f: int, pooling: str) -> int:
    return dim * (grid_f if pooling == "freq_mean" else 1)
