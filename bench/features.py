"""Benchmark: the feature cache, compute side and read side.

Prints, measured in the same run on the synthetic corpus (`make repro` first, or --corpus):
1. caching: clips/s to compute and write shards with the stage's pool (total and per core) against a
   plain per-clip loop (decode, fbank with torch's default threads, one .npy per clip);
2. reading: clips/s of training batches from the cache through a DataLoader against decoding FLAC and
   computing fbank on the fly in the same DataLoader. Target: cache >= 20x.

    python bench/features.py [--corpus data/corpus] [--clips 480] [--batch 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import DataLoader, Dataset

from sslam.config import load_config
from sslam.data.manifest import read_manifest
from sslam.features.dataset import FeatureStore, PretrainDataset, batched_loader
from sslam.features.fbank import kaldi_fbank
from sslam.features.store import build_features, pad_or_crop


class OnTheFly(Dataset):
    """The naive data path: decode the FLAC and compute fbank for every sample, every epoch."""

    def __init__(self, corpus: Path, paths: list[str], target: int, mean: float, std: float):
        self.corpus, self.paths, self.target, self.mean, self.std = corpus, paths, target, mean, std

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> torch.Tensor:
        wav, sr = sf.read(self.corpus / self.paths[i], dtype="float32")
        fb = pad_or_crop(kaldi_fbank(torch.from_numpy(wav), sr), self.target)
        return (fb - self.mean) / (2 * self.std)


def loader_rate(ds: Dataset, batch: int, workers: int, epochs: int = 2, batched: bool = False) -> float:
    if batched:
        dl = batched_loader(ds, batch, shuffle=True, num_workers=workers)
    else:
        dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    n, t0 = 0, None
    for epoch in range(epochs + 1):
        if epoch == 1:  # the first epoch warms workers and the page cache
            t0, n = time.perf_counter(), 0
        for x in dl:
            n += x.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--corpus", default=None)
    ap.add_argument("--clips", type=int, default=480)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    cfg = load_config()
    corpus = Path(args.corpus or cfg.data.corpus_dir)
    manifest = read_manifest(corpus / "manifests" / "unbalanced.csv", only_ok=True).head(args.clips)
    paths = list(manifest["path"])
    n = len(paths)

    with tempfile.TemporaryDirectory() as tmp:
        sub = Path(tmp) / "corpus"
        (sub / "manifests").mkdir(parents=True)
        (sub / "audio").symlink_to((corpus / "audio").resolve())
        manifest.assign(labels=[",".join(x) for x in manifest["labels"]]).to_csv(sub / "manifests" / "unbalanced.csv", index=False)

        t0 = time.perf_counter()
        naive_dir = Path(tmp) / "naive"
        naive_dir.mkdir()
        for i, p in enumerate(paths):
            wav, sr = sf.read(corpus / p, dtype="float32")
            fb = pad_or_crop(kaldi_fbank(torch.from_numpy(wav), sr), cfg.features.target_frames)
            np.save(naive_dir / f"{i}.npy", fb.numpy().astype(np.float16))
        naive_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        build_features(sub, Path(tmp) / "cache", cfg.features, cfg.data.sample_rate, workers=args.workers)
        cache_s = time.perf_counter() - t0
        print(f"caching {n} clips: stage pool ({args.workers} procs) {n / cache_s:.0f} clips/s "
              f"({n / cache_s / args.workers:.0f} per core); plain per-clip loop {n / naive_s:.0f} clips/s "
              f"-> {naive_s / cache_s:.1f}x")

        store = FeatureStore(Path(tmp) / "cache", "unbalanced")
        cached = max(loader_rate(PretrainDataset(store), args.batch, w, batched=True) for w in (0, args.workers))
        fly = loader_rate(OnTheFly(corpus, paths, cfg.features.target_frames, store.mean, store.std), args.batch, args.workers)
        print(f"reading batches of {args.batch} ({args.workers} loader workers): cache {cached:.0f} clips/s, "
              f"decode + fbank on the fly {fly:.0f} clips/s -> {cached / fly:.1f}x (target >= 20x)")


if __name__ == "__main__":
    main()
