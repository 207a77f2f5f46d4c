"""Fine-tuning augmentations as small pure functions on (batch, frames, mel) tensors.

Each takes its randomness as arguments (or a generator), so a test can pin it and check the output by
hand. The fine-tuning recipe (reference): roll of the waveform with a gain, mixup alpha 0.8 with
probability 0.9 on the batch and its flip, then SpecAugment masks (value 0 after normalisation);
optional noise.
"""

from __future__ import annotations

import math

import torch


def time_mask(x: torch.Tensor, start: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Zero frames [start, start + width) of each clip. x: (B, T, F); start, width: (B,)."""
    t = torch.arange(x.shape[1], device=x.device)[None, :]
    keep = ~((t >= start[:, None]) & (t < (start + width)[:, None]))
    return x * keep[:, :, None]


def freq_mask(x: torch.Tensor, start: torch.Tensor, width: torch.Tensor) -> torch.Tensor:
    """Zero mel bins [start, start + width) of each clip."""
    f = torch.arange(x.shape[2], device=x.device)[None, :]
    keep = ~((f >= start[:, None]) & (f < (start + width)[:, None]))
    return x * keep[:, None, :]


def spec_augment(
    x: torch.Tensor, max_time: int, max_freq: int, generator: torch.Generator | None = None
) -> torch.Tensor:
    """One time mask of width U[0, max_time] and one frequency mask of width U[0, max_freq] per clip."""
    b, t, f = x.shape
    tw = torch.randint(0, max_time + 1, (b,), generator=generator)
    fw = torch.randint(0, max_freq + 1, (b,), generator=generator)
    ts = (torch.rand(b, generator=generator) * (t - tw + 1)).long()
    fs = (torch.rand(b, generator=generator) * (f - fw + 1)).long()
    return freq_mask(time_mask(x, ts.to(x.device), tw.to(x.device)), fs.to(x.device), fw.to(x.device))


def roll_time(x: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """Circularly shift each clip along time by its own number of frames."""
    t = x.shape[1]
    idx = (torch.arange(t, device=x.device)[None, :] - shifts.to(x.device)[:, None]) % t
    return torch.gather(x, 1, idx[:, :, None].expand(-1, -1, x.shape[2]))


def mixup(
    x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """x_i = lam_i x_i + (1 - lam_i) x_partner(i), same for the (soft) targets. lam: (B,)."""
    lx = lam.view(-1, *([1] * (x.dim() - 1)))
    ly = lam.view(-1, *([1] * (y.dim() - 1)))
    return lx * x + (1 - lx) * x[partner], ly * y + (1 - ly) * y[partner]


def draw_mixup(batch: int, alpha: float, prob: float, per_batch: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """lam ~ Beta(alpha, alpha) for a share ``prob`` of clips (1 for the rest); partner = flipped batch.

    ``per_batch``: one lam and one apply draw for the whole batch, the reference's mixup (timm's
    ``mode='batch'``): with the flipped partner the batch's soft labels then sum to its hard positives,
    which the per-positive BCE divides by. The per-clip default draws both for each clip.
    Uses the global torch generator (torch.distributions takes no other), seeded by the training loop."""
    n = 1 if per_batch else batch
    lam = torch.distributions.Beta(alpha, alpha).sample((n,)) if alpha > 0 else torch.ones(n)
    apply = torch.rand(n) < prob
    lam = torch.where(apply, lam, torch.ones_like(lam))
    return lam.expand(batch).clone(), torch.arange(batch - 1, -1, -1)


def draw_gain(batch: int) -> torch.Tensor:
    """The reference's roll gain: Beta(10, 10) + 0.5 per clip, in [0.5, 1.5] around 1 (global generator)."""
    return torch.distributions.Beta(10.0, 10.0).sample((batch,)) + 0.5


KALDI_LOG_FLOOR = math.log(torch.finfo(torch.float32).eps)  # Kaldi fbank: log(max(mel energy, eps))


def logmel_gain(x: torch.Tensor, gain: torch.Tensor, frames: torch.Tensor, mean: float, std: float) -> torch.Tensor:
    """A waveform gain applied to a normalised log-mel, as the log-mel of the scaled waveform would be.

    Scaling the waveform by g scales the power spectrum, hence every mel energy E, by g^2, and Kaldi's
    log(max(E, eps)) becomes max(log E + 2 ln g, log eps) wherever E was above the floor. Bins at the
    floor (empty mel filters at 128 bins, digital silence) stay there (exact for E = 0). Undone and
    redone around the reference normalisation x = (raw - mean) / (2 std). The zero padding after
    ``frames`` is not audio and is left as it is. x: (B, T, F); gain, frames: (B,).
    """
    raw = x * (2 * std) + mean
    valid = torch.arange(x.shape[1], device=x.device)[None, :, None] < frames.to(x.device)[:, None, None]
    live = valid & (raw > KALDI_LOG_FLOOR + 0.01)  # 0.01: float16 storage of the floor value
    shifted = torch.clamp(raw + 2 * torch.log(gain.to(x.device))[:, None, None], min=KALDI_LOG_FLOOR)
    return torch.where(live, (shifted - mean) / (2 * std), x)


def roll_waveform(wave: torch.Tensor, shift: int, gain: float = 1.0) -> torch.Tensor:
    """The reference's roll augmentation on one clip's (valid) waveform: a circular shift by ``shift``
    samples, times ``gain``."""
    return torch.roll(wave, shift) * gain


def add_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=generator).to(x.device)
