"""Fine-tuning augmentations as small pure functions on (batch, frames, mel) tensors.

Each takes its randomness as arguments (or a generator), so a test can pin it and check the output by
hand. The fine-tuning recipe (reference): mixup alpha 0.8 with probability 0.9 on the batch and its
flip, then SpecAugment masks (value 0 after normalisation), roll along time, optional noise.
"""

from __future__ import annotations

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


def spec_augment(x: torch.Tensor, max_time: int, max_freq: int, generator: torch.Generator | None = None) -> torch.Tensor:
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


def mixup(x: torch.Tensor, y: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x_i = lam_i x_i + (1 - lam_i) x_partner(i), same for the (soft) targets. lam: (B,)."""
    lx = lam.view(-1, *([1] * (x.dim() - 1)))
    ly = lam.view(-1, *([1] * (y.dim() - 1)))
    return lx * x + (1 - lx) * x[partner], ly * y + (1 - ly) * y[partner]


def draw_mixup(batch: int, alpha: float, prob: float) -> tuple[torch.Tensor, torch.Tensor]:
    """lam ~ Beta(alpha, alpha) for a share ``prob`` of clips (1 for the rest); partner = flipped batch.
    Uses the global torch generator (torch.distributions takes no other), seeded by the training loop."""
    lam = torch.distributions.Beta(alpha, alpha).sample((batch,)) if alpha > 0 else torch.ones(batch)
    apply = torch.rand(batch) < prob
    return torch.where(apply, lam, torch.ones_like(lam)), torch.arange(batch - 1, -1, -1)


def add_noise(x: torch.Tensor, std: float, generator: torch.Generator | None = None) -> torch.Tensor:
    return x + std * torch.randn(x.shape, generator=generator).to(x.device)
