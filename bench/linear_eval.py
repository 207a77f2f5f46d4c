"""Benchmark: linear evaluation with cached frozen embeddings against re-running the frozen encoder
every epoch (what a loop over a DataLoader of spectrograms does), measured in the same run.

Both train the same LayerNorm + linear head with the same batches; the naive way's head ends equal to
the cached way's (checked), so the ratio is pure cost.

    python bench/linear_eval.py [--task square] [--epochs 10] [--encoder stage2|random0]
"""

from __future__ import annotations

import argparse
import time

import torch

from sslam.config import load_config
from sslam.downstream.evaluate import Head, _batches, build_encoder, embed, folds, load_task, loss_fn, pool, pooled_dim, targets


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--features", default="data/features")
    ap.add_argument("--task", default="square")
    ap.add_argument("--encoder", default="random0")
    ap.add_argument("--epochs", type=int, default=10)
    args = ap.parse_args()
    cfg = load_config(args.params)
    lin = cfg.linear_recipe(args.task)
    task, store = load_task(cfg.data.corpus_dir, args.task, cfg.tasks[args.task], args.features)
    fold = folds(task, store)[0]
    encoder = build_encoder(cfg, args.encoder, *store.raw(0).shape).eval()
    y = targets(task, store, fold.train)

    def run(cached: bool) -> tuple[float, Head]:
        t0 = time.perf_counter()
        z = embed(encoder, store, fold.train, lin.pooling) if cached else None
        torch.manual_seed(0)
        head = Head(pooled_dim(encoder, lin.pooling), len(task.classes))
        opt = torch.optim.AdamW(head.parameters(), lr=lin.lr, weight_decay=lin.weight_decay)
        g = torch.Generator().manual_seed(0)
        for _ in range(args.epochs):
            for b in _batches(len(fold.train), lin.batch_size, g):
                if cached:
                    feats = z[b]
                else:
                    with torch.no_grad():
                        feats = pool(encoder, store.batch(fold.train[b.numpy()]), lin.pooling)
                loss = loss_fn(task, head(feats), y[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        return time.perf_counter() - t0, head

    naive_s, naive_head = run(cached=False)
    cached_s, cached_head = run(cached=True)
    same = all(torch.allclose(a, b, atol=1e-4) for a, b in zip(naive_head.parameters(), cached_head.parameters()))
    print(f"linear evaluation, task {args.task}, {len(fold.train)} training clips, {args.epochs} epochs, encoder {args.encoder}")
    print(f"  encoder every epoch: {naive_s:7.2f} s")
    print(f"  cached embeddings  : {cached_s:7.2f} s  (one encoder pass, then the head alone)")
    print(f"  speed-up {naive_s / cached_s:.1f}x; heads equal: {same}")
    if not same:
        raise SystemExit("the cached and naive heads differ: the cache is not exact")


if __name__ == "__main__":
    main()
