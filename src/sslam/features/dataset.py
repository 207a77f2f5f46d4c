"""Datasets over the feature cache, and samplers that shard an epoch across processes.

Readers memory-map the shards lazily (in each DataLoader worker, after fork/spawn), so a clip is one
slice of a page-cached file, and normalise on the fly with the stored statistics.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class FeatureStore:
    """One clip set of the cache: ``store[i]`` is (frames, mel) float32, normalised."""

    def __init__(self, features_dir: str | Path, set_name: str, stats: dict | None = None):
        self.root = Path(features_dir)
        self.set_dir = self.root / set_name
        index = self.set_dir / "index.csv"
        if not index.is_file():
            raise FileNotFoundError(f"{index}: no such feature set (run the features stage; sets: "
                                    f"{sorted(str(p.parent.relative_to(self.root)) for p in self.root.glob('**/index.csv'))})")
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
        idx = np.asarray(indices, dtype=np.int64)
        shards, rows = self._shard[idx], self._row[idx]
        first = self._mmap(self._shards, "shard", int(shards[0]))
        out = np.empty((len(idx), *first.shape[1:]), dtype=np.float16)
        for s in np.unique(shards):
            where = np.nonzero(shards == s)[0]
            order = np.argsort(rows[where])
            out[where[order]] = self._mmap(self._shards, "shard", int(s))[rows[where[order]]]
        x = torch.from_numpy(out).float()
        return x.sub_(self.mean).div_(2.0 * self.std)

    def waves(self, indices: Sequence[int]) -> torch.Tensor:
        """(B, samples) float32 waveforms of many clips, zero-padded at the end like the stored fbanks."""
        return torch.stack([self.waveform(int(i)) for i in indices])

    def wave_lengths(self, indices: Sequence[int]) -> torch.Tensor:
        """(B,) valid samples of each stored waveform (the rest is padding)."""
        if "samples" not in self.index:
            raise ValueError(f"{self.set_dir}/index.csv has no 'samples' column: an older cache; rerun the features stage")
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


class PretrainDataset(Dataset):
    """Unlabelled clips for pretraining; an optional random crop of ``crop_frames`` within valid frames."""

    def __init__(self, store: FeatureStore, crop_frames: int | None = None, seed: int = 0):
        self.store, self.crop_frames, self.seed = store, crop_frames, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.store)

    def _crop_start(self, i: int, frames: int) -> int | None:
        if self.crop_frames is None or self.crop_frames >= frames:
            return None
        valid = max(self.crop_frames, self.store.frames(i))
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch * 10_007 + i)
        return int(torch.randint(0, valid - self.crop_frames + 1, (1,), generator=g))

    def __getitem__(self, i: int) -> torch.Tensor:
        x = self.store[i]
        start = self._crop_start(i, x.shape[0])
        return x if start is None else x[start : start + self.crop_frames]

    def __getitems__(self, indices: Sequence[int]) -> torch.Tensor:
        """A whole batch at once (the DataLoader calls this when defined): see FeatureStore.batch."""
        x = self.store.batch(indices)
        starts = [self._crop_start(i, x.shape[1]) for i in indices]
        if all(s is None for s in starts):
            return x
        return torch.stack([x[k, s : s + self.crop_frames] for k, s in enumerate(starts)])


def batched_loader(dataset: Dataset, batch_size: int, sampler: Sampler | None = None, num_workers: int = 0,
                   drop_last: bool = False, shuffle: bool = False) -> DataLoader:
    """A DataLoader for datasets with ``__getitems__``: they return ready batches, so no re-collation."""
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, shuffle=shuffle if sampler is None else False,
                      num_workers=num_workers, drop_last=drop_last, collate_fn=_identity,
                      persistent_workers=num_workers > 0)


def _identity(batch):
    return batch


class LabelledDataset(Dataset):
    """Clips with targets: a multi-hot vector (multi-label) or a class index (single-label)."""

    def __init__(self, store: FeatureStore, classes: Sequence[str], multi_label: bool = True,
                 rows: Sequence[int] | None = None):
        self.store = store
        self.classes = list(classes)
        self.class_index = {c: k for k, c in enumerate(self.classes)}
        self.multi_label = multi_label
        self.rows = list(range(len(store))) if rows is None else list(rows)
        for r in self.rows:
            labs = [lab for lab in store.labels[r] if lab in self.class_index]
            if not multi_label and len(labs) != 1:
                raise ValueError(f"clip {store.index['clip_id'].iat[r]}: a single-label task needs exactly one "
                                 f"known label, got {store.labels[r]}")

    def __len__(self) -> int:
        return len(self.rows)

    def target(self, j: int) -> torch.Tensor:
        labs = [self.class_index[lab] for lab in self.store.labels[self.rows[j]] if lab in self.class_index]
        if self.multi_label:
            y = torch.zeros(len(self.classes))
            y[labs] = 1.0
            return y
        return torch.tensor(labs[0])

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.store[self.rows[j]], self.target(j)


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

    def __init__(self, n: int, rank: int = 0, world_size: int = 1, shuffle: bool = True, seed: int = 0,
                 weights: torch.Tensor | None = None, num_samples: int | None = None):
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
