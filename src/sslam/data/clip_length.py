"""The shortest clip the front ends can use: one analysis window. It sits below both the conversion
(``data/folder.py`` fails a shorter clip before writing it) and the front ends (``features/fbank.py``
refuses one), so the two can never disagree and ``data`` never imports ``features``."""

from __future__ import annotations


def min_samples(sample_rate: int, frame_length_ms: float) -> int:
    """Samples in one analysis window: the shortest clip either front end turns into a frame. Kaldi
    truncates the window (``int(rate * ms * 0.001)``), the log-mel rounds it; they differ only when the
    window is not a whole number of samples (11025 Hz, 25 ms: 275 and 276), so the larger one counts."""
    return max(int(sample_rate * frame_length_ms * 0.001), int(round(sample_rate * frame_length_ms / 1000)))


class ClipTooShortError(ValueError):
    """A clip shorter than one analysis window: it has no log-mel frame, so it is a failure row, never a
    crash (torchaudio's Kaldi fbank asserts, the log-mel would give 0 frames)."""

    def __init__(self, num_samples: int, sample_rate: int, frame_length_ms: float):
        self.num_samples, self.sample_rate, self.frame_length_ms = num_samples, sample_rate, frame_length_ms
        self.window = min_samples(sample_rate, frame_length_ms)
        super().__init__(
            f"too short: {num_samples} samples ({1000 * num_samples / sample_rate:.1f} ms) is shorter than one "
            f"{float(frame_length_ms)} ms analysis window ({self.window} samples)"
        )

    def __reduce__(self):  # rebuilt from its fields when it crosses a worker pool
        return type(self), (self.num_samples, self.sample_rate, self.frame_length_ms)


def check_clip_length(num_samples: int, sample_rate: int, frame_length_ms: float) -> None:
    """Raise :class:`ClipTooShortError` when ``num_samples`` do not fill one analysis window."""
    if num_samples < min_samples(sample_rate, frame_length_ms):
        raise ClipTooShortError(num_samples, sample_rate, frame_length_ms)
