"""Benchmark: synthetic corpus generation, the download stage's hot path.

Needs no data: the corpora it times are generated in temporary folders. Prints, measured in the same run:
- band-limited noise (used by noise bands, clicks and the background) by FFT bin masking against a
  naive time-domain FIR filter (windowed-sinc band-pass, np.convolve) of the same band;
- whole-corpus generation with a process pool against one process.

    python bench/synthetic.py [--clips 200]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np

from sslam.config.base import load_sections, merged
from sslam.config.data import DownloadParams
from sslam.data.sounds import bandpass_noise
from sslam.data.synthetic import generate_corpus


def naive_bandpass_noise(
    rng: np.random.Generator, n: int, sr: int, low: float, high: float, taps: int = 1025
) -> np.ndarray:
    t = np.arange(taps) - (taps - 1) / 2
    h = (2 * high / sr) * np.sinc(2 * high / sr * t) - (2 * low / sr) * np.sinc(2 * low / sr * t)
    return np.convolve(rng.standard_normal(n), h * np.hamming(taps), mode="same")


def timeit(fn, repeat: int) -> float:
    fn()
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    return (time.perf_counter() - t0) / repeat


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clips", type=int, default=200, help="clips in the unbalanced split for the corpus run")
    args = ap.parse_args()
    sr, n = 16000, 3 * 16000
    rng = np.random.default_rng(0)
    fft_s = timeit(lambda: bandpass_noise(rng, n, sr, 300.0, 1200.0), 50)
    fir_s = timeit(lambda: naive_bandpass_noise(rng, n, sr, 300.0, 1200.0), 10)
    print(
        f"band-limited noise, 3 s: FFT mask {fft_s * 1e3:.2f} ms, naive FIR {fir_s * 1e3:.2f} ms "
        f"-> {fir_s / fft_s:.1f}x faster"
    )

    download = load_sections(DownloadParams, Path(__file__).resolve().parent.parent / "params.yaml").download
    cfg = merged(
        download.synthetic,
        {
            "clips": {"unbalanced": args.clips, "balanced": 0, "eval": 0},
            "tasks": {
                "mono": {"num_classes": 8, "clips_per_class_per_fold": 1},
                "poly": {"environments": ["square"], "clips_train": 1, "clips_eval": 1},
            },
        },
    )
    workers = os.cpu_count() or 1
    times = {}
    for w in sorted({1, workers}):
        with tempfile.TemporaryDirectory() as d:
            t0 = time.perf_counter()
            summary = generate_corpus(cfg, d, sr, download.clips_per_shard, workers=w)
            times[w] = time.perf_counter() - t0
        clips = summary["num_clips"]
        print(f"corpus of {clips} clips, {w} process(es): {times[w]:.2f} s = {clips / times[w]:.0f} clips/s")
    if workers > 1:
        print(f"process pool ({workers}) vs one process: {times[1] / times[workers]:.2f}x")


if __name__ == "__main__":
    main()
