"""Linear evaluation: the frozen encoder, a LayerNorm + linear head trained on each fold.

``linear_eval.protocol``: ``cached`` (the default) leaves the input unaugmented, so the frozen
embeddings are computed once and cached; ``paper`` (the reference) runs the frozen encoder on every
step's mixup / SpecAugment / roll batch through the fine-tuning loop (:func:`fit_augmented`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np
import torch

from sslam.config.downstream import LinearEvalConfig
from sslam.downstream.encoder import Encoder, Head, embed, pooled_dim, predict
from sslam.downstream.tasks import Fold, Task, TaskStore, WaveFeatures, folds, normalised_for_fold, targets
from sslam.downstream.training import (
    BestOnValid,
    Evaluation,
    FoldResult,
    Selection,
    evaluate_folds,
    fit_augmented,
    loss_fn,
    score_fold,
)
from sslam.schedule import warmup_cosine_lr


def linear_schedule(cfg: LinearEvalConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Linear evaluation's lr at a step: warm-up over ``warmup_epochs`` then cosine to ``min_lr`` over
    ``epochs`` (``schedule: cosine``), or constant ``lr``."""
    total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return lambda step: warmup_cosine_lr(step, total, warm, cfg.lr, cfg.min_lr)
    return lambda step: cfg.lr


def shuffled_batches(n: int, size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """Index batches of one epoch over ``n`` items, in the generator's random order."""
    order = torch.randperm(n, generator=generator)
    for k in range(0, n, size):
        yield order[k : k + size]


def linear_eval(
    encoder: Encoder,
    task: Task,
    store: TaskStore,
    cfg: LinearEvalConfig,
    seed: int,
    events: dict[str, int] | None = None,
    wave_features: WaveFeatures | None = None,
) -> Evaluation:
    """Frozen encoder, LayerNorm + linear head. ``protocol: cached``: every clip embedded once (no input
    augmentation), so the folds of a cross-validation share one encoder pass; ``paper``: the reference's
    protocol, the frozen encoder run on every step's augmented batch through the fine-tuning loop."""
    if cfg.protocol == "paper":
        return _paper_protocol(encoder, task, store, cfg, seed, events, wave_features)
    if cfg.augmented:  # a task's overrides are merged without validation: check the merged recipe here
        raise ValueError(
            f"task {task.name!r}: linear_eval protocol 'cached' cannot use input augmentation "
            "(mixup, specaug_freq, specaug_time, roll): set them off or use protocol: paper"
        )
    return _cached_protocol(encoder, task, store, cfg, seed, events)


def _cached_protocol(
    encoder: Encoder, task: Task, store: TaskStore, cfg: LinearEvalConfig, seed: int, events: dict[str, int] | None
) -> Evaluation:
    """Every clip a fold uses embedded once (per fold only under ``norm_stats: task``, whose statistics
    depend on the fold), then the head trained on the cached embeddings. The cache's speed-up is a
    timing, not science: bench/linear_eval.py measures it, the metrics never hold it."""
    fold_list = folds(task, store)
    used = np.unique(np.concatenate([r for f in fold_list for r in (f.train, f.test, f.valid) if r is not None]))

    def embed_used(data: TaskStore) -> torch.Tensor:
        """Embeddings of every clip a fold uses, as rows of ``store`` (the others stay zero)."""
        z = torch.zeros(len(store), pooled_dim(encoder, cfg.pooling))
        z[used] = embed(encoder, data, used, cfg.pooling)
        return z

    shared = embed_used(store) if cfg.norm_stats == "pretrain" else None

    def evaluate_fold(fold: Fold) -> FoldResult:
        z = shared if shared is not None else embed_used(normalised_for_fold(store, fold, cfg.norm_stats))
        torch.manual_seed(seed)
        head = Head(z.shape[1], len(task.classes))
        selection = _fit_cached(head, z, task, store, fold, cfg, seed)
        with torch.no_grad():
            logits = head(z[fold.test])
        return score_fold(task, store, fold, logits, selection)

    return evaluate_folds(task, store, fold_list, evaluate_fold, events)


def _fit_cached(
    head: Head, z: torch.Tensor, task: Task, store: TaskStore, fold: Fold, cfg: LinearEvalConfig, seed: int
) -> Selection | None:
    """The head trained on the cached embeddings ``z`` (rows of the store) of the fold's training clips;
    returns the selection (``train_valid_test``), the head left at the selected epoch."""
    y_train = targets(task, store, fold.train)
    select = BestOnValid(task, store, fold, cfg, [head])
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
    g = torch.Generator().manual_seed(seed)
    z_train = z[fold.train]
    lr_at = linear_schedule(cfg, math.ceil(len(fold.train) / cfg.batch_size))
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        for b in shuffled_batches(len(fold.train), cfg.batch_size, g):
            for grp in opt.param_groups:
                grp["lr"] = lr_at(step)
            step += 1
            loss = loss_fn(task, head(z_train[b]), y_train[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
        if select.due(epoch):
            with torch.no_grad():
                select.check(epoch, head(z[fold.valid]))
    return select.restore()


def _paper_protocol(
    encoder: Encoder,
    task: Task,
    store: TaskStore,
    cfg: LinearEvalConfig,
    seed: int,
    events: dict[str, int] | None,
    wave: WaveFeatures | None,
) -> Evaluation:
    """The paper's linear evaluation: the fine-tuning loop (:func:`fit_augmented`) with the encoder frozen
    and one parameter group, the head's, on the linear schedule; mixup, SpecAugment and roll as the
    recipe says."""

    def evaluate_fold(fold: Fold) -> FoldResult:
        data = normalised_for_fold(store, fold, cfg.norm_stats)
        torch.manual_seed(seed)
        head = Head(pooled_dim(encoder, cfg.pooling), len(task.classes))
        groups = [{"params": list(head.parameters()), "lr": cfg.lr, "lr_scale": 1.0, "weight_decay": cfg.weight_decay}]
        lr_at = linear_schedule(cfg, math.ceil(len(fold.train) / cfg.batch_size))
        selection = fit_augmented(
            encoder, head, groups, data, task, store, fold, cfg, seed, lr_at, frozen=True, wave=wave
        )
        return score_fold(task, store, fold, predict(encoder, head, data, fold.test, cfg.pooling), selection)

    return evaluate_folds(task, store, folds(task, store), evaluate_fold, events)
