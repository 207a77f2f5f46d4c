"""Streaming mean and standard deviation: numerically stable, mergeable across shards and processes.

Chan et al.'s pairwise update of (count, mean, M2): merging per-shard partial results gives the same
answer as one pass over all the data, without the catastrophic cancellation of sum(x^2) - n*mean^2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class RunningStats:
    count: int = 0
    mean: float = 0.0
    m2: float = 0.0  # sum of squared deviations from the mean

    @classmethod
    def of(cls, values: np.ndarray) -> "RunningStats":
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return cls()
        mean = float(v.mean())
        return cls(int(v.size), mean, float(((v - mean) ** 2).sum()))

    def merge(self, other: "RunningStats") -> "RunningStats":
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
