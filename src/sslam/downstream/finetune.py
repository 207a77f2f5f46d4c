"""Fine-tuning: the whole network trained on each fold, with layer-wise lr decay and the recipe's
augmentation, through the loop paper-protocol linear evaluation shares (:func:`fit_augmented`)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from sslam.config.downstream import FinetuneConfig
from sslam.downstream.encoder import Head, pooled_dim, predict
from sslam.downstream.tasks import Fold, Task, TaskStore, WaveFeatures, folds, normalised_for_fold
from sslam.downstream.training import Evaluation, FoldResult, evaluate_folds, fit_augmented, score_fold
from sslam.features.reader import class_balanced_weights
from sslam.models.contract import PatchEncoder
from sslam.schedule import warmup_cosine_lr


def layer_decay_groups(
    encoder: PatchEncoder, head: Head, lr: float, decay: float, weight_decay: float, decay_norm_and_bias: bool = True
) -> list[dict]:
    """Block i gets ``lr_scale`` decay^(depth - i); patch embedding, CLS, the pre-norm and the head keep
    scale 1 (reference). ``decay_norm_and_bias: false`` puts the 1-D parameters (every bias and norm
    weight) of each scale into a twin group without weight decay (the paper's fine-tuning recipe).
    ``lr`` starts as scale x lr; the training loop sets it every step with :func:`apply_schedule`."""
    outside, *blocks = encoder.layer_groups()
    depth = len(blocks)
    scaled = [(decay ** (depth - i), params) for i, params in enumerate(blocks)]
    scaled.append((1.0, outside + list(head.parameters())))
    groups = []
    for scale, params in scaled:
        if decay_norm_and_bias:
            parts = [(params, weight_decay)]
        else:
            parts = [([p for p in params if p.ndim > 1], weight_decay), ([p for p in params if p.ndim <= 1], 0.0)]
        groups += [{"params": ps, "lr": lr * scale, "lr_scale": scale, "weight_decay": wd} for ps, wd in parts if ps]
    return groups


def finetune(
    make_encoder: Callable[[], PatchEncoder],
    task: Task,
    store: TaskStore,
    cfg: FinetuneConfig,
    seed: int,
    events: dict[str, int] | None = None,
    wave_features: WaveFeatures | None = None,
) -> Evaluation:
    """Whole network: layer-wise lr decay (each group's lr and floor scaled), drop path, mixup (soft
    labels), SpecAugment, roll, noise, optional class-balanced sampling; warm-up then cosine to
    ``min_lr``. Evaluated after the last epoch, or, for ``train_valid_test``, at the epoch with the best
    validation score. ``make_encoder``: a fresh encoder per fold."""

    def evaluate_fold(fold: Fold) -> FoldResult:
        data = normalised_for_fold(store, fold, cfg.norm_stats)
        encoder = make_encoder()
        encoder.set_drop_path(cfg.drop_path)
        torch.manual_seed(seed)
        head = Head(pooled_dim(encoder, cfg.pooling), len(task.classes))
        groups = layer_decay_groups(encoder, head, cfg.lr, cfg.layer_decay, cfg.weight_decay, cfg.decay_norm_and_bias)
        weights = (
            class_balanced_weights([store.labels[r] for r in fold.train], task.classes)
            if cfg.weighted_sampling
            else None
        )
        steps = cfg.epochs * math.ceil(len(fold.train) / cfg.batch_size)
        warm = max(1, int(cfg.warmup_share * steps))
        selection = fit_augmented(
            encoder,
            head,
            groups,
            data,
            task,
            store,
            fold,
            cfg,
            seed,
            lambda step: warmup_cosine_lr(step, steps, warm, cfg.lr, cfg.min_lr),
            frozen=False,
            weights=weights,
            wave=wave_features,
        )
        return score_fold(task, store, fold, predict(encoder, head, data, fold.test, cfg.pooling), selection)

    return evaluate_folds(task, store, folds(task, store), evaluate_fold, events)
