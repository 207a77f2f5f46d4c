"""The feature front ends: the Kaldi fbank exactly as the SSLAM / EAT reference computes it, and the
overview's standardised log-mel (``features.front_end``)."""

from __future__ import annotations

import functools

import torch
import torchaudio

from sslam.config.features import FeaturesConfig
from sslam.data.clip_length import ClipTooShortError, check_clip_length, min_samples  # noqa: F401 (re-exported)


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
    A clip shorter than one window raises :class:`ClipTooShortError`.
    """
    check_clip_length(wave.shape[0], sample_rate, frame_length_ms)
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


def overview_logmel(
    wave: torch.Tensor,
    sample_rate: int = 16000,
    num_mel_bins: int = 80,
    frame_shift_ms: float = 10.0,
    frame_length_ms: float = 25.0,
    f_min: float = 50.0,
    f_max: float = 8000.0,
) -> torch.Tensor:
    """(samples,) float waveform -> (frames, mel): the overview's front end, each clip standardised.

    torchaudio's power mel spectrogram (n_fft = window = ``frame_length_ms``, hop ``frame_shift_ms``: 400 /
    160 at 16 kHz; Hann window; HTK mel scale; f_min..f_max), natural log of (mel + 1e-6), then the clip's
    own mean and standard deviation removed. Frames are not centred (no reflection padding), so a clip gives
    as many frames as the Kaldi front end and every frame-indexed path (padding, mixing) stays the same.
    A clip shorter than one window raises :class:`ClipTooShortError`, as the Kaldi front end does."""
    check_clip_length(wave.shape[0], sample_rate, frame_length_ms)
    n_fft = int(round(sample_rate * frame_length_ms / 1000))
    hop = int(round(sample_rate * frame_shift_ms / 1000))
    wave = wave.to(torch.float32)
    mel = _mel_spectrogram(sample_rate, n_fft, hop, f_min, f_max, num_mel_bins, str(wave.device))(wave)
    logmel = torch.log(mel + 1e-6).T  # (frames, mel)
    return standardise_clip(logmel)


@functools.lru_cache(maxsize=16)
def _mel_spectrogram(
    sample_rate: int, n_fft: int, hop: int, f_min: float, f_max: float, n_mels: int, device: str
) -> torch.nn.Module:
    """One transform (window and mel filters built once) per setting and device: 2.5x faster per clip than
    building it for every clip (0.25 against 0.62 ms for a 3 s clip on the CPU)."""
    return torchaudio.transforms.MelSpectrogram(
        sample_rate, n_fft=n_fft, hop_length=hop, f_min=f_min, f_max=f_max, n_mels=n_mels, center=False
    ).to(device)


def standardise_clip(logmel: torch.Tensor) -> torch.Tensor:
    """(frames, mel) -> zero mean, unit standard deviation over the clip's values (a constant clip -> 0)."""
    return (logmel - logmel.mean()) / logmel.std(unbiased=False).clamp_min(1e-6)


def log_mel(wave: torch.Tensor, sample_rate: int, cfg: FeaturesConfig) -> torch.Tensor:
    """(samples,) -> (frames, mel) by ``features.front_end``: the one entry every waveform path uses. A clip
    shorter than one analysis window raises :class:`ClipTooShortError` under either front end."""
    if cfg.front_end == "logmel":
        return overview_logmel(
            wave, sample_rate, cfg.num_mel_bins, cfg.frame_shift_ms, cfg.frame_length_ms, cfg.f_min, cfg.f_max
        )
    return kaldi_fbank(wave, sample_rate, cfg.num_mel_bins, cfg.frame_shift_ms, cfg.frame_length_ms)
