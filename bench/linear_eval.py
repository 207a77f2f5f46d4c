"""Benchmark: linear evaluation with cached frozen embeddings against re-running the frozen encoder
every epoch (what a loop over a DataLoader of spectrograms does), measured in the same run.

Both train the same LayerNorm + linear head with the same batches; the naive way's head ends equal to
the cached way's (checked), so the ratio is pure cost. Runs on the pipeline's features when they hold
the task (after `dvc repro`); otherwise, as on a fresh clone, or with --synthetic, on a small synthetic
corpus built in a temporary folder: the task at its params.yaml size, everything else token-sized.

    python bench/linear_eval.py [--task square] [--epochs 10] [--encoder stage2|random0] [--synthetic]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _corpus import TINY_TASKS

from sslam.config.params import Config, load_config
from sslam.data.synthetic import generate_corpus
from sslam.downstream.encoder import Head, embed, load_encoder, pool, pooled_dim, valid_frames
from sslam.downstream.linear import shuffled_batches
from sslam.downstream.tasks import Fold, Task, TaskStore, folds, load_task, targets
from sslam.downstream.training import loss_fn
from sslam.features.store import build_features
from sslam.models.contract import PatchEncoder

REPO = Path(__file__).resolve().parents[1]


def synthetic_data(cfg: Config, task: str, root: Path) -> tuple[Path, Path]:
    """(corpus, features) of a small synthetic corpus under ``root``: ``task`` at its params.yaml size,
    the pretraining splits and the other tasks at a few clips each, so building it takes seconds."""
    syn = cfg.download.synthetic.model_dump()
    syn["clips"] = {"unbalanced": 8, "balanced": 4, "eval": 4}
    t = syn["tasks"]
    poly_task = task not in TINY_TASKS  # a soundscape environment of the poly task
    t["poly"]["environments"] = [task] if poly_task else t["poly"]["environments"][:1]
    for name, small in TINY_TASKS.items():
        if name != ("poly" if poly_task else task):
            t[name].update(small)
    corpus, features = root / "corpus", root / "features"
    generate_corpus(
        type(cfg.download.synthetic).model_validate(syn), corpus, cfg.data.sample_rate, cfg.download.clips_per_shard
    )
    build_features(corpus, features, cfg.features, cfg.data.sample_rate)
    return corpus, features


def load(cfg: Config, task: str, features: Path, synthetic: bool, tmp: Path) -> tuple[Task, TaskStore, str]:
    """The task from the pipeline's data when it is there (and not --synthetic), else from synthetic data."""
    corpus = Path(cfg.data.corpus_dir)
    if not synthetic and (features / cfg.tasks[task].feature_set(task) / "index.csv").is_file():
        return *load_task(corpus, task, cfg.tasks[task], features), f"{features}"
    corpus, features = synthetic_data(cfg, task, tmp)
    return *load_task(corpus, task, cfg.tasks[task], features), "synthetic corpus (temporary)"


def train_head(
    encoder: PatchEncoder, task: Task, store: TaskStore, fold: Fold, cfg: Config, epochs: int, cached: bool
) -> tuple[float, Head]:
    """Seconds to train the head on the fold's training clips, and the head; ``cached``: one encoder pass
    first, then the head alone; otherwise the frozen encoder on every batch of every epoch."""
    lin = cfg.linear_recipe(task.name)
    y = targets(task, store, fold.train)
    t0 = time.perf_counter()
    z = embed(encoder, store, fold.train, lin.pooling) if cached else None
    torch.manual_seed(0)
    head = Head(pooled_dim(encoder, lin.pooling), len(task.classes))
    opt = torch.optim.AdamW(head.parameters(), lr=lin.lr, weight_decay=lin.weight_decay)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for b in shuffled_batches(len(fold.train), lin.batch_size, g):
            if cached:
                feats = z[b]
            else:
                with torch.no_grad():
                    rows = fold.train[b.numpy()]
                    feats = pool(encoder, store.batch(rows), lin.pooling, valid_frames(store, rows))
            loss = loss_fn(task, head(feats), y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return time.perf_counter() - t0, head


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default=str(REPO / "params.yaml"))
    ap.add_argument("--features", default="data/features")
    ap.add_argument("--task", default="square")
    ap.add_argument("--encoder", default="random0")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--synthetic", action="store_true", help="build a small synthetic corpus even if data/ exists")
    args = ap.parse_args()
    cfg = load_config(args.params)
    with tempfile.TemporaryDirectory() as tmp:
        task, store, source = load(cfg, args.task, Path(args.features), args.synthetic, Path(tmp))
        fold = folds(task, store)[0]
        encoder = load_encoder(cfg, args.encoder, *store.raw(0).shape).eval()
        naive_s, naive_head = train_head(encoder, task, store, fold, cfg, args.epochs, cached=False)
        cached_s, cached_head = train_head(encoder, task, store, fold, cfg, args.epochs, cached=True)
    same = all(
        torch.allclose(a, b, atol=1e-4) for a, b in zip(naive_head.parameters(), cached_head.parameters(), strict=True)
    )
    print(
        f"linear evaluation, task {args.task} ({source}), {len(fold.train)} training clips, {args.epochs} epochs, "
        f"encoder {args.encoder}"
    )
    print(f"  encoder every epoch: {naive_s:7.2f} s")
    print(f"  cached embeddings  : {cached_s:7.2f} s  (one encoder pass, then the head alone)")
    print(f"  speed-up {naive_s / cached_s:.1f}x; heads equal: {same}")
    if not same:
        raise SystemExit("the cached and naive heads differ: the cache is not exact")


if __name__ == "__main__":
    main()
