"""The reader of the feature cache, and the sampler that shards an epoch across processes.

Training reads whole batches with ``FeatureStore.batch`` over the indices a ``ShardedSampler`` gives
(src/sslam/pretrain/loop.py), no DataLoader: a batch is one fancy-indexed read per memory-mapped,
page-cached shard, normalised on the fly with the stored statistics. Shards are mapped lazily, in the
process that reads them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Sampler


class FeatureStore:
    """One clip set of the cache: ``store[i]`` is (frames, mel) float32, normalised."""

    def __init__(self, features_dir: str | Path, set_name: str, stats: dict | None = None):
        self.root = Path(features_dir)
        self.set_dir = self.root / set_name
        index = self.set_dir / "index.csv"
        if not index.is_file():
            sets = sorted(str(p.parent.relative_to(self.root)) for p in self.root.glob("**/index.csv"))
            raise FileNotFoundError(f"{index}: no such feature set (run the features stage; sets: {sets})")
        self.index = pd.read_csv(index, dtype={"clip_id": str, "split": str, "labels": str}, keep_default_na=False)
        self.labels = [[x for x in s.split(",") if x] for s in self.index["labels"]]
        stats = stats or json.loads((self.root / "stats.json").read_text())
        self.mean, self.std = float(stats["mean"]), float(stats["std"])
        self._shards: dict[int, np.ndarray] = {}
        self._waves: dict[int, np.ndarray] = {}
        self._shard = self.index["shard"].to_numpy()
        self._row = self.index["row"].to_numpy()
        self._frames = self.index["frames"].to_numpy()

    def __len__(self) -> int:
        return len(self.index)

    def _mmap(self, cache: dict, prefix: str, shard: int) -> np.ndarray:
        arr = cache.get(shard)
        if arr is None:
            arr = cache[shard] = np.load(self.set_dir / f"{prefix}-{shard:05d}.npy", mmap_mode="r")
        return arr

    def raw(self, i: int) -> np.ndarray:
        """The stored float16 log-mel, unnormalised (zero padding included)."""
        return self._mmap(self._shards, "shard", int(self._shard[i]))[self._row[i]]

    def __getitem__(self, i: int) -> torch.Tensor:
        x = torch.from_numpy(self.raw(i).astype(np.float32))
        return (x - self.mean) / (2.0 * self.std)  # the reference's normalisation, after padding

    def batch(self, indices: Sequence[int]) -> torch.Tensor:
        """(B, frames, mel) normalised float32 for many clips: one fancy-indexed read per shard touched,
        rows in file order, instead of B separate slices and conversions."""
        return self.normalise(self.read(indices))

    def normalise(self, raw: np.ndarray) -> torch.Tensor:
        """Stored float16 log-mel -> normalised float32 (the reference's normalisation, after padding)."""
        return torch.from_numpy(raw).float().sub_(self.mean).div_(2.0 * self.std)

    def read(self, indices: Sequence[int]) -> np.ndarray:
        """(B, frames, mel) stored float16 of many clips, unnormalised: the I/O part of :meth:`batch`, numpy
        only (no torch thread pool), so a reader thread never competes with training for cores."""
        idx = np.asarray(indices, dtype=np.int64)
        shards, rows = self._shard[idx], self._row[idx]
        first = self._mmap(self._shards, "shard", int(shards[0]))
        out = np.empty((len(idx), *first.shape[1:]), dtype=np.float16)
        for s in np.unique(shards):
            where = np.nonzero(shards == s)[0]
            order = np.argsort(rows[where])
            out[where[order]] = self._mmap(self._shards, "shard", int(s))[rows[where[order]]]
        return out

    def waves(self, indices: Sequence[int]) -> torch.Tensor:
        """(B, samples) float32 waveforms of many clips, zero-padded at the end like the stored fbanks."""
        return torch.stack([self.waveform(int(i)) for i in indices])

    def wave_lengths(self, indices: Sequence[int]) -> torch.Tensor:
        """(B,) valid samples of each stored waveform (the rest is padding)."""
        if "samples" not in self.index:
            raise ValueError(
                f"{self.set_dir}/index.csv has no 'samples' column: an older cache; rerun the features stage"
            )
        return torch.as_tensor(self.index["samples"].to_numpy()[np.asarray(indices, dtype=np.int64)])

    def waveform(self, i: int) -> torch.Tensor:
        """The stored waveform as float32 in [-1, 1), for waveform-domain mixing."""
        w = self._mmap(self._waves, "wave", int(self._shard[i]))[self._row[i]]
        return torch.from_numpy(w.astype(np.float32) / 32768.0)

    def frames(self, i: int) -> int:
        return int(self._frames[i])

    def __getstate__(self) -> dict:  # memory maps are reopened in each worker
        state = self.__dict__.copy()
        state["_shards"], state["_waves"] = {}, {}
        return state


def class_balanced_weights(label_lists: Sequence[Sequence[str]], classes: Sequence[str]) -> torch.Tensor:
    """Per-clip sampling weights for class-balanced sampling (AS-2M fine-tuning).

    A class's weight is 1 / (its clip count + 0.01); a clip's weight is the sum over its labels, so
    rare classes are drawn about as often as common ones (the AST/EAT recipe, whose weights file for
    AS-2M was never published: this computes it from the labels).
    """
    idx = {c: k for k, c in enumerate(classes)}
    counts = np.zeros(len(classes))
    for labs in label_lists:
        for lab in set(labs):
            if lab in idx:
                counts[idx[lab]] += 1
    class_w = 1.0 / (counts + 0.01)
    w = np.array([sum(class_w[idx[lab]] for lab in set(labs) if lab in idx) for labs in label_lists])
    return torch.from_numpy(w)


class ShardedSampler(Sampler[int]):
    """This process's share of an epoch: a seeded permutation (same on every rank), padded to a
    multiple of the world size and strided by rank, so ranks never see the same clip in one epoch
    (except the few repeated to pad). With ``weights``, draws ``num_samples`` with replacement."""

    def __init__(
        self,
        n: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        weights: torch.Tensor | None = None,
        num_samples: int | None = None,
    ):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n, self.rank, self.world, self.shuffle, self.seed = n, rank, world_size, shuffle, seed
        self.weights = weights
        self.total = num_samples if num_samples is not None else n
        self.per_rank = math.ceil(self.total / world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed + self.epoch)
        if self.weights is not None:
            order = torch.multinomial(self.weights.double(), self.total, replacement=True, generator=g).tolist()
        elif self.shuffle:
            order = torch.randperm(self.n, generator=g).tolist()
        else:
            order = list(range(self.n))
        padded = self.per_rank * self.world
        order = (order * math.ceil(padded / max(1, len(order))))[:padded]
        return iter(order[self.rank :: self.world])
