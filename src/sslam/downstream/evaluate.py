"""Downstream evaluation: linear evaluation and fine-tuning of an encoder on a task of the corpus.

Protocols: ``cross_validation`` tasks (the ESC-50 analogue) train on four folds and test on the fifth,
for each fold, and report the mean accuracy; ``train_eval`` tasks (the SPASS-like soundscapes) train on
``train`` and report mAP on ``eval``, with the breakdown by degree of polyphony from strong labels. The
reported model is the one after the last epoch (no selection on the evaluation data).

Representation for linear evaluation: the CLS output (``linear_eval.pooling: cls``), as the reference
(the pretraining's global loss trains exactly that token to summarise the clip), followed by LayerNorm
and a linear layer. With ``linear_eval.augment: false`` the frozen embeddings are computed once and
cached, which is exact because nothing about the input changes between epochs.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from sslam.config import Config, FinetuneConfig, LinearEvalConfig
from sslam.downstream.metrics import accuracy, mean_average_precision, polyphony_breakdown
from sslam.features import augment as A
from sslam.features.dataset import FeatureStore
from sslam.models.vit import Encoder
from sslam.pretrain.model import Student


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # single_label | multi_label
    protocol: str  # cross_validation | train_eval
    classes: list[str]
    splits: list[str]

    @property
    def multi_label(self) -> bool:
        return self.kind == "multi_label"


def load_task(corpus: str | Path, name: str) -> Task:
    path = Path(corpus) / "tasks" / name / "task.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no task {name!r} in the corpus (tasks in params.yaml must exist there)")
    t = json.loads(path.read_text())
    return Task(name, t["kind"], t["protocol"], t["classes"], t["splits"])


def build_encoder(cfg: Config, name: str, frames: int, mel: int, checkpoints: str | Path = "checkpoints") -> Encoder:
    """``randomN``: a fresh encoder from seed N (random0 is exactly pretraining's starting point);
    otherwise the student encoder of ``checkpoints/<name>/final``."""
    m = re.fullmatch(r"random(\d+)", name)
    torch.manual_seed(int(m.group(1)) if m else 0)
    student = Student(cfg.model, frames, mel)
    if not m:
        path = Path(checkpoints) / name / "final" / "student.safetensors"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no final checkpoint for encoder {name!r}")
        student.load_state_dict(load_file(path))
    return student.encoder


class Head(nn.Module):
    """LayerNorm + Linear on the pooled representation (trunc-normal 0.02, as the reference)."""

    def __init__(self, dim: int, classes: int):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, classes)
        nn.init.trunc_normal_(self.fc.weight, std=0.02)
        nn.init.zeros_(self.fc.bias)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(z))


def pool(encoder: Encoder, x: torch.Tensor, pooling: str) -> torch.Tensor:
    h, _ = encoder(x)
    return h[:, 0] if pooling == "cls" else h[:, 1:].mean(dim=1)


def targets(task: Task, store: FeatureStore, rows: np.ndarray) -> torch.Tensor:
    idx = {c: k for k, c in enumerate(task.classes)}
    if task.multi_label:
        y = torch.zeros(len(rows), len(task.classes))
        for j, r in enumerate(rows):
            for lab in store.labels[r]:
                if lab in idx:
                    y[j, idx[lab]] = 1.0
        return y
    return torch.tensor([idx[store.labels[r][0]] for r in rows])


def loss_fn(task: Task, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if task.multi_label:
        return F.binary_cross_entropy_with_logits(logits, y)
    if y.dim() == 2:  # soft targets after mixup
        return -(y * F.log_softmax(logits, dim=1)).sum(1).mean()
    return F.cross_entropy(logits, y)


def score(task: Task, y: torch.Tensor, logits: torch.Tensor) -> float:
    if task.multi_label:
        return mean_average_precision(y.numpy(), torch.sigmoid(logits).numpy())[0]
    return accuracy(y.numpy(), logits.numpy())


def folds(task: Task, store: FeatureStore) -> list[tuple[str, np.ndarray, np.ndarray]]:
    split = store.index["split"].to_numpy()
    if task.protocol == "cross_validation":
        return [(f, np.nonzero(split != f)[0], np.nonzero(split == f)[0]) for f in task.splits]
    return [("eval", np.nonzero(split == "train")[0], np.nonzero(split == "eval")[0])]


def _batches(n: int, size: int, generator: torch.Generator | None = None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for k in range(0, n, size):
        yield order[k : k + size]


def embed(encoder: Encoder, store: FeatureStore, rows: np.ndarray, pooling: str, batch: int = 64) -> torch.Tensor:
    encoder.eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(rows), batch):
            out.append(pool(encoder, store.batch(rows[k : k + batch]), pooling))
    return torch.cat(out)


def linear_eval(encoder: Encoder, task: Task, store: FeatureStore, cfg: LinearEvalConfig, seed: int,
                events: dict[str, int] | None = None) -> dict:
    """Frozen encoder, LayerNorm + linear head; every clip embedded once (no input augmentation), so the
    folds of a cross-validation share one encoder pass."""
    t0 = time.perf_counter()
    z_all = embed(encoder, store, np.arange(len(store)), cfg.pooling)
    embed_s_per_clip = (time.perf_counter() - t0) / len(store)
    results, speed = [], None
    for name, train, test in folds(task, store):
        z_train, z_test = z_all[train], z_all[test]
        uncached_epoch_s = embed_s_per_clip * len(train)  # what every epoch would cost without the cache
        y_train, y_test = targets(task, store, train), targets(task, store, test)
        torch.manual_seed(seed)
        head = Head(z_train.shape[1], len(task.classes))
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(seed)
        t1 = time.perf_counter()
        for _ in range(cfg.epochs):
            for b in _batches(len(train), cfg.batch_size, g):
                loss = loss_fn(task, head(z_train[b]), y_train[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
        cached_epoch_s = (time.perf_counter() - t1) / cfg.epochs
        with torch.no_grad():
            results.append((name, score(task, y_test, head(z_test)), y_test, head(z_test), test))
        speed = uncached_epoch_s / max(cached_epoch_s, 1e-9) if speed is None else speed
    return _summarise(task, store, results, {"embedding_cache_speedup": round(speed, 1)}, events)


def layer_decay_groups(encoder: Encoder, head: Head, lr: float, decay: float, weight_decay: float) -> list[dict]:
    """Block i gets lr * decay^(depth - i); patch embedding, CLS, norms and head keep lr (reference)."""
    depth = len(encoder.blocks)
    groups = []
    for i, blk in enumerate(encoder.blocks):
        groups.append({"params": list(blk.parameters()), "lr": lr * decay ** (depth - i), "weight_decay": weight_decay})
    in_blocks = {id(p) for blk in encoder.blocks for p in blk.parameters()}
    rest = [p for p in encoder.parameters() if id(p) not in in_blocks] + list(head.parameters())
    groups.append({"params": rest, "lr": lr, "weight_decay": weight_decay})
    for g in groups:
        g["base_lr"] = g["lr"]
    return groups


def finetune(make_encoder, task: Task, store: FeatureStore, cfg: FinetuneConfig, seed: int, mixup: bool,
             events: dict[str, int] | None = None) -> dict:
    """Whole network: layer-wise lr decay, drop path, mixup (soft labels), SpecAugment, roll; warm-up
    then cosine to ``min_lr``; the model after the last epoch is evaluated."""
    results = []
    for name, train, test in folds(task, store):
        encoder = make_encoder()
        encoder.set_drop_path(cfg.drop_path)
        torch.manual_seed(seed)
        head = Head(encoder.dim, len(task.classes))
        groups = layer_decay_groups(encoder, head, cfg.lr, cfg.layer_decay, cfg.weight_decay)
        opt = torch.optim.AdamW(groups, betas=(0.9, 0.999))
        y_train, y_test = targets(task, store, train), targets(task, store, test)
        steps = cfg.epochs * math.ceil(len(train) / cfg.batch_size)
        warm = max(1, int(0.1 * steps))
        g = torch.Generator().manual_seed(seed)
        step = 0
        for _ in range(cfg.epochs):
            encoder.train()
            for b in _batches(len(train), cfg.batch_size, g):
                scale = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, steps - warm)))
                for grp in opt.param_groups:
                    grp["lr"] = cfg.min_lr + (grp["base_lr"] - cfg.min_lr) * scale
                x = store.batch(train[b.numpy()])
                y = y_train[b]
                if not task.multi_label:
                    y = F.one_hot(y, len(task.classes)).float()
                if mixup and cfg.mixup_alpha > 0:
                    lam, partner = A.draw_mixup(len(b), cfg.mixup_alpha, cfg.mixup_prob)
                    x, y = A.mixup(x, y, lam, partner)
                if cfg.roll:
                    x = A.roll_time(x, torch.randint(0, x.shape[1], (len(b),), generator=g))
                x = A.spec_augment(x, int(cfg.specaug_time * x.shape[1]), int(cfg.specaug_freq * x.shape[2]), g)
                loss = loss_fn(task, head(pool(encoder, x, cfg.pooling)), y)
                opt.zero_grad()
                loss.backward()
                opt.step()
                step += 1
        encoder.eval()
        with torch.no_grad():
            logits = torch.cat([head(pool(encoder, store.batch(test[k : k + 64]), cfg.pooling)) for k in range(0, len(test), 64)])
        results.append((name, score(task, y_test, logits), y_test, logits, test))
    return _summarise(task, store, results, {}, events)


def _summarise(task: Task, store: FeatureStore, results: list, extra: dict, events: dict[str, int] | None) -> dict:
    metric = "map" if task.multi_label else "accuracy"
    out = {metric: round(float(np.mean([r[1] for r in results])), 5), "folds": {r[0]: round(r[1], 5) for r in results}}
    if task.multi_label and task.protocol == "train_eval":
        _, _, y, logits, rows = results[0]
        if events is not None:
            per_clip = np.array([events.get(i, 0) for i in store.index["clip_id"].to_numpy()[rows]])
            out["polyphony"] = polyphony_breakdown(y.numpy(), torch.sigmoid(logits).numpy(), per_clip)
    return out | extra


def distinct_events(strong_tsv: str | Path) -> dict[str, int] | None:
    """Distinct events per clip from a task's strong labels; None when the task has none."""
    if not Path(strong_tsv).is_file():
        return None
    df = pd.read_csv(strong_tsv, sep="\t", dtype={"segment_id": str, "label": str})
    return df.groupby("segment_id")["label"].nunique().to_dict()
