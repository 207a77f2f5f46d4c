"""Log-mel filterbanks exactly as the SSLAM/EAT reference computes them."""

from __future__ import annotations

import torch
import torchaudio


def kaldi_fbank(
    wave: torch.Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 128,
    frame_shift_ms: float = 10.0,
    frame_length_ms: float = 25.0,
) -> torch.Tensor:
    """(samples,) float waveform -> (frames, mel) log-mel.

    Reference arguments: HTK-compatible mel scale, Hann window, no energy term, no dither, the
    waveform mean removed first; other arguments at Kaldi defaults (pre-emphasis 0.97, snip edges).
    """
    wave = wave.to(torch.float32)
    wave = wave - wave.mean()
    return torchaudio.compliance.kaldi.fbank(
        wave[None],
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=frame_shift_ms,
        frame_length=frame_length_ms,
    )
