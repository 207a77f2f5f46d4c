"""Event sounds for the synthetic corpus: small pure functions, one per sound family.

Each returns a float64 waveform of ``n`` samples with peak 1, shaped by a short fade so onsets do not
click. Families differ in what a log-mel spectrogram shows (harmonic stacks, sweeps, noise bands,
vertical impulse lines, modulation), and variants of a family differ in frequency or rate by a margin
that spans several mel bins, so every class is learnable from 128-bin log-mels.
float64 throughout: the quantised 16-bit output then does not depend on last-bit libm differences.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

Rng = np.random.Generator


def _time(n: int, sr: int) -> np.ndarray:
    return np.arange(n, dtype=np.float64) / sr


def _fade(x: np.ndarray, sr: int, ms: float = 10.0) -> np.ndarray:
    k = min(len(x) // 2, int(sr * ms / 1000))
    if k > 0:
        ramp = np.linspace(0.0, 1.0, k, dtype=np.float64)
        x[:k] *= ramp
        x[-k:] *= ramp[::-1]
    return x


def _peak_normalise(x: np.ndarray) -> np.ndarray:
    peak = np.max(np.abs(x)) if len(x) else 0.0
    return x / peak if peak > 0 else x


def _jitter(rng: Rng, value: float, rel: float = 0.03) -> float:
    return value * (1.0 + rel * rng.uniform(-1.0, 1.0))


def bandpass_noise(rng: Rng, n: int, sr: int, low: float, high: float) -> np.ndarray:
    """White noise restricted to [low, high] Hz by zeroing FFT bins (exact, no filter ringing)."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec[(freqs < low) | (freqs > high)] = 0.0
    return np.fft.irfft(spec, n)


def pink_noise(rng: Rng, n: int, sr: int) -> np.ndarray:
    """1/f noise with unit RMS: the unlabelled background of every clip."""
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    spec[1:] /= np.sqrt(freqs[1:])
    spec[0] = 0.0
    x = np.fft.irfft(spec, n)
    rms = np.sqrt(np.mean(x**2))
    return x / rms if rms > 0 else x


# ----------------------------------------------------------------------------- families


def harmonic(rng: Rng, n: int, sr: int, f0: float, partials: int, rolloff: float = 1.0) -> np.ndarray:
    """A harmonic stack: horizontal lines at k*f0 with amplitude k**-rolloff."""
    t = _time(n, sr)
    f = _jitter(rng, f0)
    x = np.zeros(n)
    for k in range(1, partials + 1):
        if k * f < sr / 2 * 0.95:
            x += k**-rolloff * np.sin(2 * np.pi * k * f * t + rng.uniform(0, 2 * np.pi))
    return x


def struck(rng: Rng, n: int, sr: int, f0: float, ratios: tuple[float, ...], decay_s: float) -> np.ndarray:
    """Inharmonic partials with exponential decay (bells, chimes, gongs)."""
    t = _time(n, sr)
    f = _jitter(rng, f0)
    x = np.zeros(n)
    for i, r in enumerate(ratios):
        if r * f < sr / 2 * 0.95:
            x += np.exp(-t / (decay_s / (1 + 0.5 * i))) * np.sin(2 * np.pi * r * f * t) / (1 + i)
    return x


def plucked(rng: Rng, n: int, sr: int, f0: float, partials: int, decay_s: float) -> np.ndarray:
    """A plucked string: harmonics whose decay quickens with the partial number."""
    t = _time(n, sr)
    f = _jitter(rng, f0)
    x = np.zeros(n)
    for k in range(1, partials + 1):
        if k * f < sr / 2 * 0.95:
            x += np.exp(-t * k / decay_s) * np.sin(2 * np.pi * k * f * t) / k
    return x


def sweep(rng: Rng, n: int, sr: int, f_start: float, f_end: float, partials: int = 2) -> np.ndarray:
    """An exponential chirp from f_start to f_end over the event (rising or falling whistles)."""
    t = _time(n, sr)
    dur = max(t[-1], 1.0 / sr)
    fs, fe = _jitter(rng, f_start), _jitter(rng, f_end)
    inst = fs * (fe / fs) ** (t / dur)
    phase = 2 * np.pi * np.cumsum(inst) / sr
    return sum(np.sin(k * phase) / k for k in range(1, partials + 1))


def wail(rng: Rng, n: int, sr: int, low: float, high: float, period_s: float) -> np.ndarray:
    """A siren: frequency swept up and down between low and high with a triangular period."""
    t = _time(n, sr)
    p = _jitter(rng, period_s, 0.1)
    tri = 2 * np.abs((t / p + rng.uniform()) % 1.0 - 0.5)
    inst = low + (high - low) * tri
    phase = 2 * np.pi * np.cumsum(inst) / sr
    return np.sin(phase) + 0.3 * np.sin(2 * phase)


def noise_band(rng: Rng, n: int, sr: int, low: float, high: float, swell_hz: float = 0.0) -> np.ndarray:
    """Band-limited noise, optionally swelling slowly (wind, surf)."""
    x = bandpass_noise(rng, n, sr, _jitter(rng, low), _jitter(rng, high))
    if swell_hz > 0:
        t = _time(n, sr)
        x *= 0.55 + 0.45 * np.sin(2 * np.pi * _jitter(rng, swell_hz, 0.2) * t + rng.uniform(0, 2 * np.pi))
    return x


def impulses(rng: Rng, n: int, sr: int, rate_hz: float, low: float, high: float, decay_ms: float) -> np.ndarray:
    """A train of short filtered clicks: vertical lines on a spectrogram, spaced by 1/rate."""
    period = max(1, int(sr / _jitter(rng, rate_hz, 0.05)))
    klen = max(8, int(sr * decay_ms / 1000 * 5))
    click = bandpass_noise(rng, klen, sr, low, high) * np.exp(-np.arange(klen) / (sr * decay_ms / 1000))
    x = np.zeros(n + klen)
    start = int(rng.integers(0, period))
    for pos in range(start, n, period):
        jitter = int(rng.integers(-period // 20, period // 20 + 1))
        p = min(max(pos + jitter, 0), n - 1)
        x[p : p + klen] += click
    return x[:n]


def amplitude_modulated(rng: Rng, n: int, sr: int, carrier: float, rate_hz: float, gated: bool) -> np.ndarray:
    """A tone whose loudness pulses (tremolo) or is switched on and off (beeping)."""
    t = _time(n, sr)
    c = _jitter(rng, carrier)
    m = np.sin(2 * np.pi * _jitter(rng, rate_hz, 0.05) * t)
    env = (m > 0).astype(np.float64) if gated else 0.5 + 0.5 * m
    return env * (np.sin(2 * np.pi * c * t) + 0.25 * np.sin(4 * np.pi * c * t))


def frequency_modulated(rng: Rng, n: int, sr: int, carrier: float, rate_hz: float, depth_hz: float) -> np.ndarray:
    """A tone whose pitch wobbles (vibrato, trill, warble)."""
    t = _time(n, sr)
    c = _jitter(rng, carrier)
    inst = c + depth_hz * np.sin(2 * np.pi * _jitter(rng, rate_hz, 0.05) * t)
    phase = 2 * np.pi * np.cumsum(inst) / sr
    return np.sin(phase) + 0.3 * np.sin(2 * phase)


@dataclass(frozen=True)
class SoundRecipe:
    """How to make one leaf class: a family function and its fixed arguments."""

    family: Callable[..., np.ndarray]
    kwargs: dict

    def render(self, rng: Rng, n: int, sr: int) -> np.ndarray:
        x = self.family(rng, n, sr, **self.kwargs)
        return _fade(_peak_normalise(np.asarray(x, dtype=np.float64)), sr)
