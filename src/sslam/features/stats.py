"""Streaming mean and standard deviation: numerically stable, mergeable across shards and processes.

Chan et al.'s pairwise update of (count, mean, M2): merging per-shard partial results gives the same
answer as one pass over all the data, without the catastrophic cancellation of sum(x^2) - n*mean^2.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunningStats:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean

    @classmethod
    def of(cls, values: np.ndarray) -> RunningStats:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return cls()
        mean = float(v.mean())
        return cls(int(v.size), mean, float(((v - mean) ** 2).sum()))

    def merge(self, other: RunningStats) -> RunningStats:
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * other.count / n
        m2 = self.m2 + other.m2 + delta * delta * self.count * other.count / n
        return RunningStats(n, mean, m2)

    @property
    def std(self) -> float:
        """Population standard deviation (what the reference's dataset statistics use)."""
        return float(np.sqrt(self.m2 / self.count)) if self.count else 0.0


def clip_stats(logmel: np.ndarray, frames: int) -> RunningStats:
    """Statistics of one clip's valid frames: rows ``[0, frames)`` of its (target_frames, mel) log-mel.

    The zero rows after them are padding, not audio; counting them would pull the mean towards 0 and
    inflate the std by an amount that depends on how short the clips are (the reference's dataset
    statistics are over real frames). The one rule for every statistic of the project: the features
    stage's ``stats.json`` and a downstream task's own statistics.
    """
    return RunningStats.of(np.asarray(logmel)[:frames])


def valid_frame_stats(clips: Iterable[tuple[np.ndarray, int]]) -> RunningStats:
    """:func:`clip_stats` of each (log-mel, valid frames) pair, merged with Chan's update (float64),
    in the order given: what the features stage computes for a clip set, for any clips."""
    total = RunningStats()
    for logmel, frames in clips:
        total = total.merge(clip_stats(logmel, frames))
    return total
