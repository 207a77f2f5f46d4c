"""Benchmark: the feature cache, compute side and read side.

Prints, measured in the same run on a synthetic corpus it generates in a temporary folder with the download
stage's generator (or on an existing corpus, --corpus):
1. caching: clips/s to compute and write shards with the stage's pool (total and per core) against a
   plain per-clip loop (decode, fbank with torch's default threads, one .npy per clip);
2. reading: clips/s of training batches read the way pretraining reads them (ShardedSampler indices, one
   FeatureStore.batch call per batch) against a DataLoader that decodes the FLAC and computes fbank for
   every clip on the fly. Target: cache >= 20x.

    python bench/features.py [--corpus data/corpus] [--clips 480] [--batch 32] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _corpus import synthetic_corpus
from torch.utils.data import DataLoader, Dataset

from sslam.config.params import load_config
from sslam.data.manifest import read_manifest
from sslam.data.shards import read_audio
from sslam.features.fbank import kaldi_fbank
from sslam.features.reader import FeatureStore, ShardedSampler
from sslam.features.store import build_features, pad_or_crop

REPO = Path(__file__).resolve().parents[1]


# the generator always writes every task: the smallest each allows, since only the unbalanced split is read
class OnTheFly(Dataset):
    """The naive data path: decode the FLAC and compute fbank for every sample, every epoch."""

    def __init__(self, corpus: Path, clips: list[tuple[str, str]], target: int, mean: float, std: float):
        self.corpus, self.clips, self.target, self.mean, self.std = corpus, clips, target, mean, std

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, i: int) -> torch.Tensor:
        wav, sr = read_audio(self.corpus, *self.clips[i])
        fb = pad_or_crop(kaldi_fbank(torch.from_numpy(wav), sr), self.target)
        return (fb - self.mean) / (2 * self.std)


def loader_rate(ds: Dataset, batch: int, workers: int, epochs: int = 2) -> float:
    """Clips/s through a shuffling DataLoader: the best of ``epochs`` after one that starts the workers
    (best, not mean, on both sides: the machine may be shared, and other jobs only ever slow a run down)."""
    dl = DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers, persistent_workers=workers > 0)
    best = 0.0
    for epoch in range(epochs + 1):
        t0, n = time.perf_counter(), 0
        for x in dl:
            n += x.shape[0]
        if epoch > 0:
            best = max(best, n / (time.perf_counter() - t0))
    return best


def store_rate(store: FeatureStore, batch: int, min_seconds: float = 1.0) -> float:
    """Clips/s as src/sslam/pretrain/loop.py's micro_batch reads: full batches of a reshuffled epoch,
    one ``FeatureStore.batch`` each. Best epoch after one that fills the page cache, epochs repeated for
    at least ``min_seconds`` (an epoch of the default 480 clips takes milliseconds)."""
    sampler = ShardedSampler(len(store), seed=0)
    per_epoch = len(sampler) // batch
    best, epoch, start = 0.0, 0, time.perf_counter()
    while epoch < 3 or time.perf_counter() - start < min_seconds:
        sampler.set_epoch(epoch)
        ids = list(sampler)
        t0, n = time.perf_counter(), 0
        for b in range(per_epoch):
            n += store.batch(ids[b * batch : (b + 1) * batch]).shape[0]
        if epoch > 0:
            best = max(best, n / (time.perf_counter() - t0))
        epoch += 1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default=None, help="an existing corpus (default: generate one in a temporary folder)")
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--clips", type=int, default=480)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args()
    cfg = load_config(args.params)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if args.corpus:
            corpus = Path(args.corpus)
        else:
            t0 = time.perf_counter()
            corpus = synthetic_corpus(tmp / "generated", {"unbalanced": args.clips}, cfg.data.sample_rate, args.workers)
            print(f"generated a synthetic corpus in {time.perf_counter() - t0:.1f} s")
        manifest = read_manifest(corpus / "manifests" / "unbalanced.csv", only_ok=True).head(args.clips)
        paths = list(zip(manifest["path"], manifest["member"]))  # (shard, member), or (file, "")
        n = len(paths)
        # the unbalanced split alone, so the stage's build caches exactly the clips the plain loop does
        sub = tmp / "corpus"
        (sub / "manifests").mkdir(parents=True)
        (sub / "audio").symlink_to((corpus / "audio").resolve())
        manifest.assign(labels=[",".join(x) for x in manifest["labels"]]).to_csv(
            sub / "manifests" / "unbalanced.csv", index=False
        )

        t0 = time.perf_counter()
        naive_dir = tmp / "naive"
        naive_dir.mkdir()
        for i, p in enumerate(paths):
            wav, sr = read_audio(corpus, *p)
            fb = pad_or_crop(kaldi_fbank(torch.from_numpy(wav), sr), cfg.features.target_frames)
            np.save(naive_dir / f"{i}.npy", fb.numpy().astype(np.float16))
        naive_s = time.perf_counter() - t0

        t0 = time.perf_counter()
        build_features(sub, tmp / "cache", cfg.features, cfg.data.sample_rate, workers=args.workers)
        cache_s = time.perf_counter() - t0
        print(
            f"caching {n} clips: stage pool ({args.workers} procs) {n / cache_s:.0f} clips/s "
            f"({n / cache_s / args.workers:.0f} per core); plain per-clip loop {n / naive_s:.0f} clips/s "
            f"-> {naive_s / cache_s:.1f}x"
        )

        store = FeatureStore(tmp / "cache", "unbalanced")
        cached = store_rate(store, args.batch)
        fly_ds = OnTheFly(corpus, paths, cfg.features.target_frames, store.mean, store.std)
        fly = loader_rate(fly_ds, args.batch, args.workers)
        print(
            f"reading batches of {args.batch}: cache (sampler + FeatureStore.batch, one process) "
            f"{cached:.0f} clips/s, decode + fbank on the fly ({args.workers} loader workers) {fly:.0f} clips/s "
            f"-> {cached / fly:.1f}x (target >= 20x)"
        )


if __name__ == "__main__":
    main()
