"""Partial audio mixtures (SSLAM Section 3.2.1, Figure 2), as small pure functions.

Which time patches carry the partner (``mixed`` True) is decided on the patch grid, so regions are
patch-aligned in every mode:
- ``reference`` (default; the public SSLAM code): two UNMIXED windows of ``w`` time patches, drawn once
  per batch (shared by all clips): ``idx1`` in [0, T/2 - 1], ``idx2`` in [idx1 + w, T - w - 1]; the
  partner shows in up to three regions around them. On 64 time patches w = 15, so 34/64 patches mix
  (the reference's frames: idx1 in range(0, 501, 16), idx2 in range(idx1 + 240, 783, 16)).
  ``w = round((1 - mixed_fraction) * T / 2)`` scales it to any clip length.
- ``per_clip`` (the paper's text): for each clip, 3 disjoint mixed regions (each at least one patch)
  holding ``round(mixed_fraction * T)`` patches in all, separated by unmixed gaps.
- ``full`` (``mix.partial: false``, Table 4): every patch mixes.
The partner of clip i is clip i - 1 (``torch.roll(batch, 1, 0)``, as the reference).
"""

from __future__ import annotations

import torch

from sslam.config.features import FeaturesConfig
from sslam.features.fbank import log_mel
from sslam.features.store import pad_or_crop


def partner(x: torch.Tensor) -> torch.Tensor:
    return torch.roll(x, shifts=1, dims=0)


def reference_regions(
    time_patches: int, mixed_fraction: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(T,) bool: True where the partner is mixed in; one draw shared by the batch."""
    t = time_patches
    w = max(1, round((1.0 - mixed_fraction) * t / 2))
    hi1 = min(t // 2 - 1, t - 2 * w - 1)
    if hi1 < 0:
        raise ValueError(f"{t} time patches cannot hold two unmixed windows of {w} patches")
    idx1 = int(torch.randint(0, hi1 + 1, (1,), generator=generator))
    idx2 = int(torch.randint(idx1 + w, t - w, (1,), generator=generator))
    mixed = torch.ones(t, dtype=torch.bool)
    mixed[idx1 : idx1 + w] = False
    mixed[idx2 : idx2 + w] = False
    return mixed


def per_clip_regions(
    batch: int, time_patches: int, mixed_fraction: float, regions: int = 3, generator: torch.Generator | None = None
) -> torch.Tensor:
    """(B, T) bool: per clip, ``regions`` disjoint mixed runs totalling round(fraction * T) patches."""
    t = time_patches
    m = min(t - (regions - 1), max(regions, round(mixed_fraction * t)))
    u = t - m
    out = torch.zeros(batch, t, dtype=torch.bool)
    for b in range(batch):
        # mixed lengths: a random composition of m into `regions` positive parts
        cuts = torch.randperm(m - 1, generator=generator)[: regions - 1].sort().values + 1
        lengths = torch.diff(torch.cat([torch.tensor([0]), cuts, torch.tensor([m])]))
        # unmixed gaps: 2 inner gaps of >= 1, outer gaps >= 0, summing to u
        spare = u - (regions - 1)
        gcuts = torch.randint(0, spare + 1, (regions,), generator=generator).sort().values
        gaps = torch.diff(torch.cat([torch.tensor([0]), gcuts, torch.tensor([spare])]))
        gaps[1:regions] += 1
        pos = int(gaps[0])
        for r in range(regions):
            out[b, pos : pos + int(lengths[r])] = True
            pos += int(lengths[r]) + int(gaps[r + 1])
    return out


def mixed_time_patches(
    batch: int,
    time_patches: int,
    partial: bool,
    mode: str,
    mixed_fraction: float,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """(B, T) bool for any mode."""
    if not partial:
        return torch.ones(batch, time_patches, dtype=torch.bool)
    if mode == "reference":
        return reference_regions(time_patches, mixed_fraction, generator).expand(batch, -1).clone()
    if mode == "per_clip":
        return per_clip_regions(batch, time_patches, mixed_fraction, generator=generator)
    raise ValueError(f"mix.partial_mode must be 'reference' or 'per_clip', got {mode!r}")


def frames_mask(mixed_patches: torch.Tensor, patch: int, frames: int) -> torch.Tensor:
    """(B, T') patch flags -> (B, frames) frame flags."""
    m = mixed_patches.repeat_interleave(patch, dim=1)
    if m.shape[1] < frames:
        m = torch.cat([m, torch.zeros(m.shape[0], frames - m.shape[1], dtype=torch.bool)], dim=1)
    return m[:, :frames]


def mix_spectrograms(x: torch.Tensor, frames_mixed: torch.Tensor, strategy: str) -> torch.Tensor:
    """x (B, frames, mel) normalised log-mels; the partner enters where ``frames_mixed`` (B, frames).

    ``max``: element-wise max of the log-mels (eq. 3; the reference sets the partner to -inf outside the
    mixed regions, then takes the max); ``average``: their mean in the mixed regions."""
    p = partner(x)
    where = frames_mixed[:, :, None].to(x.device)
    if strategy == "max":
        return torch.where(where, torch.maximum(x, p), x)
    if strategy == "average":
        return torch.where(where, 0.5 * (x + p), x)
    raise ValueError(f"mix_spectrograms handles 'max' and 'average', got {strategy!r}")


def mix_waveforms(
    waves: torch.Tensor,
    lengths: torch.Tensor,
    frames_mixed: torch.Tensor,
    mean: float,
    std: float,
    sample_rate: int,
    features: FeaturesConfig,
    target_frames: int,
) -> torch.Tensor:
    """``waveform`` strategy (Table 10): average the waveforms over the samples of the mixed frames, then
    compute the normalised log-mel of each mixture (fbank on whatever device ``waves`` lives on).

    Each mixture is cut to its clip's own ``lengths`` (the partner is zero past its end) and its fbank
    zero-padded to ``target_frames`` before normalising, exactly as the features stage stores a clip: a
    mixture with no mixed frames is the stored clip again, and the waveform mean is never taken over
    padding. ``features``: the features stage's settings (front end, mel bins, frame shift and length), so
    a mixture goes through exactly the stage's log-mel."""
    b, n = waves.shape
    hop = int(sample_rate * features.frame_shift_ms / 1000)
    samples = frames_mixed.repeat_interleave(hop, dim=1)
    if samples.shape[1] < n:  # the tail beyond the last hop belongs to the last frame
        samples = torch.cat([samples, samples[:, -1:].expand(-1, n - samples.shape[1])], dim=1)
    samples = samples[:, :n].to(waves.device)
    mixed = torch.where(samples, 0.5 * (waves + partner(waves)), waves)
    out = []
    for w, length in zip(mixed, lengths.tolist()):
        fb = pad_or_crop(log_mel(w[: int(length)], sample_rate, features), target_frames)
        out.append((fb - mean) / (2 * std))
    return torch.stack(out)
