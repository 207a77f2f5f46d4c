"""What every downstream regime shares: fold -> train -> select -> score, and the training step's pieces.

A regime (:mod:`sslam.downstream.linear`, :mod:`sslam.downstream.finetune`) trains a head, and maybe the
encoder, on each fold's training clips and returns a :class:`FoldResult`; :func:`evaluate_folds` runs
the folds and :func:`summarise` turns the results into the metrics. Under ``train_valid_test`` the
state at the epoch with the best validation score is kept (:class:`BestOnValid`); otherwise the reported
model is the one after the last epoch: nothing is selected on evaluation data.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslam.config.downstream import FinetuneConfig, LinearEvalConfig
from sslam.downstream.encoder import Encoder, Head, pool, predict, valid_frames
from sslam.downstream.metrics import accuracy, mean_average_precision, polyphony_breakdown, sorted_conditions
from sslam.downstream.tasks import Fold, Task, TaskStore, WaveFeatures, kept_rows, targets
from sslam.features import augment as A

Recipe = FinetuneConfig | LinearEvalConfig


@dataclass(frozen=True)
class Selection:
    """The epoch kept under ``train_valid_test`` and its validation score."""

    epoch: int
    valid: float


@dataclass(frozen=True)
class FoldResult:
    """One fold's outcome: its test score and what the polyphony breakdown needs."""

    fold: str
    score: float
    targets: torch.Tensor  # of the test clips
    logits: torch.Tensor  # of the test clips
    rows: np.ndarray  # the test clips, as rows of the task's store
    selection: Selection | None = None  # train_valid_test only


def bce_per_positive(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The reference's AudioSet loss: BCE with logits summed over clips and classes, divided by the
    number of positive labels in the batch (the sum of the targets: after mixup the soft targets, whose
    sum equals the hard positives' under one lambda per batch with the flipped partner).

    Against the mean over clips x classes it scales the loss, and so the gradient, by classes / positives
    per clip (about 527 / 2.7 on AudioSet): the scale the paper's lr 5e-5 goes with. An all-negative
    batch (impossible on AudioSet) is divided by 1 instead of 0.
    """
    return F.binary_cross_entropy_with_logits(logits, y, reduction="sum") / y.sum().clamp(min=1.0)


def loss_fn(task: Task, logits: torch.Tensor, y: torch.Tensor, bce_reduction: str = "mean") -> torch.Tensor:
    """BCE for multi-label tasks (``bce_reduction``: ``mean`` over clips x classes | ``per_positive``),
    cross-entropy otherwise (soft targets after mixup)."""
    if task.multi_label:
        if bce_reduction == "per_positive":
            return bce_per_positive(logits, y)
        return F.binary_cross_entropy_with_logits(logits, y)
    if y.dim() == 2:  # soft targets after mixup
        return -(y * F.log_softmax(logits, dim=1)).sum(1).mean()
    return F.cross_entropy(logits, y)


def score(task: Task, y: torch.Tensor, logits: torch.Tensor) -> float:
    """The task's metric: mAP for multi-label tasks, accuracy otherwise."""
    if task.multi_label:
        return mean_average_precision(y.numpy(), torch.sigmoid(logits).numpy())[0]
    return accuracy(y.numpy(), logits.numpy())


def apply_schedule(groups: list[dict], schedule_lr: float) -> None:
    """Set every parameter group's lr to its ``lr_scale`` times the one schedule's lr (warm-up to ``lr``,
    cosine to ``min_lr``), as the reference's lr_scale does. The floor is scaled with the peak (group
    floor ``scale * min_lr``): with one shared floor, a block whose peak ``scale * lr`` is below
    ``min_lr`` (block 0 of 12 at lr 5e-5: 5e-5 x 0.65^12 = 2.8e-7 < 1e-6) would see its lr RISE
    during the cosine."""
    for grp in groups:
        grp["lr"] = grp["lr_scale"] * schedule_lr


def load_batch(
    data: TaskStore, rows: np.ndarray, cfg: Recipe, g: torch.Generator, wave: WaveFeatures | None
) -> torch.Tensor:
    """A normalised training batch. ``roll`` with ``roll_domain: waveform`` is the reference's roll: each
    clip's stored waveform (its valid samples) circularly shifted by U[0, samples) samples, times the gain
    Beta(10, 10) + 0.5 when ``roll_gain``, then the features stage's log-mel and padding."""
    if not (cfg.roll and cfg.roll_domain == "waveform"):
        return data.batch(rows)
    if wave is None:
        raise ValueError("roll_domain: waveform needs the features settings (pass wave_features)")
    gains = A.draw_gain(len(rows)).tolist() if cfg.roll_gain else [1.0] * len(rows)
    raw = []
    for r, gain in zip(rows, gains, strict=True):
        w = data.waveform(int(r))
        shift = int(torch.randint(0, len(w), (1,), generator=g))
        raw.append(wave.logmel(A.roll_waveform(w, shift, gain)))
    return (torch.from_numpy(np.stack(raw)).float() - data.mean) / (2.0 * data.std)


def augment_batch(
    x: torch.Tensor,
    y: torch.Tensor,
    cfg: Recipe,
    g: torch.Generator,
    frames: torch.Tensor,
    mean: float,
    std: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The recipe's augmentation of a normalised batch, shared by fine-tuning and paper-protocol linear
    evaluation: the log-mel roll gain (``roll_gain`` with ``roll_domain: logmel``: +2 ln(gain) on the valid
    frames above Kaldi's floor, the log-mel image of the waveform gain), mixup (soft targets;
    ``mixup_lambda``), the log-mel roll along time (the whole padded clip), SpecAugment (after mixup, as
    the reference), then noise (``noise_std``, fine-tuning only). ``frames``: valid frames per clip;
    ``mean``, ``std``: the normalisation's. Returns the batch, its targets and the frames pooling may
    read: a mixed clip holds its partner's frames too, and the log-mel roll moves padding inside the
    clip, so every frame counts after it."""
    logmel_roll = cfg.roll and cfg.roll_domain == "logmel"
    if logmel_roll and cfg.roll_gain:
        x = A.logmel_gain(x, A.draw_gain(len(x)), frames, mean, std)
    if cfg.mixup and cfg.mixup_alpha > 0:
        lam, partner = A.draw_mixup(len(x), cfg.mixup_alpha, cfg.mixup_prob, per_batch=cfg.mixup_lambda == "per_batch")
        x, y = A.mixup(x, y, lam, partner)
        frames = torch.where(lam < 1, torch.maximum(frames, frames[partner]), frames)
    if logmel_roll:
        x = A.roll_time(x, torch.randint(0, x.shape[1], (len(x),), generator=g))
        frames = torch.full_like(frames, x.shape[1])
    x = A.spec_augment(x, int(cfg.specaug_time * x.shape[1]), int(cfg.specaug_freq * x.shape[2]), g)
    noise = getattr(cfg, "noise_std", 0.0)
    if noise > 0:
        x = A.add_noise(x, noise, g)
    return x, y, frames


class BestOnValid:
    """``train_valid_test`` model selection: the valid score every ``select_every`` epochs and after the
    last; the modules' state at the best one is kept and put back by :meth:`restore`. A fold without
    valid clips is never checked, and :meth:`restore` leaves the last epoch's state."""

    def __init__(self, task: Task, store: TaskStore, fold: Fold, cfg: Recipe, modules: list[nn.Module]):
        self.task, self.every, self.epochs, self.modules = task, cfg.select_every, cfg.epochs, modules
        self.y = targets(task, store, fold.valid) if fold.valid is not None else None
        self.best: Selection | None = None
        self.states: list[dict] = []

    def due(self, epoch: int) -> bool:
        return self.y is not None and (epoch % self.every == 0 or epoch == self.epochs)

    def check(self, epoch: int, valid_logits: torch.Tensor) -> None:
        v = score(self.task, self.y, valid_logits)
        if self.best is None or v > self.best.valid:
            self.best = Selection(epoch, v)
            self.states = [copy.deepcopy(m.state_dict()) for m in self.modules]

    def restore(self) -> Selection | None:
        if self.best is not None:
            for module, state in zip(self.modules, self.states, strict=True):
                module.load_state_dict(state)
        return self.best


def fit_augmented(
    encoder: Encoder,
    head: Head,
    groups: list[dict],
    data: TaskStore,
    task: Task,
    store: TaskStore,
    fold: Fold,
    cfg: Recipe,
    seed: int,
    lr_at: Callable[[int], float],
    frozen: bool,
    weights: torch.Tensor | None = None,
    wave: WaveFeatures | None = None,
) -> Selection | None:
    """The training loop of fine-tuning and of paper-protocol linear evaluation. Each step: every group's
    lr = its ``lr_scale`` x ``lr_at(step)``; a batch (class-balanced draws with replacement when
    ``weights``), loaded (waveform roll) and augmented; encoder -> pooling -> head; AdamW. ``frozen``:
    the encoder stays in eval mode under no_grad (linear evaluation: only the head's groups learn, but
    the encoder still runs on every augmented batch). ``data``: ``store`` as normalised for this fold."""
    opt = torch.optim.AdamW(groups, betas=tuple(cfg.betas))
    y_train = targets(task, store, fold.train)
    select = BestOnValid(task, store, fold, cfg, [head] if frozen else [head, encoder])
    bce_reduction = getattr(cfg, "bce_reduction", "mean")
    g = torch.Generator().manual_seed(seed)
    step = 0
    for epoch in range(1, cfg.epochs + 1):
        encoder.train(not frozen)
        order = (
            torch.multinomial(weights, len(fold.train), replacement=True, generator=g)
            if weights is not None
            else torch.randperm(len(fold.train), generator=g)
        )
        for k in range(0, len(order), cfg.batch_size):
            b = order[k : k + cfg.batch_size]
            rows = fold.train[b.numpy()]
            apply_schedule(opt.param_groups, lr_at(step))
            x = load_batch(data, rows, cfg, g, wave)
            y = y_train[b] if task.multi_label else F.one_hot(y_train[b], len(task.classes)).float()
            x, y, frames = augment_batch(x, y, cfg, g, valid_frames(data, rows), data.mean, data.std)
            with torch.set_grad_enabled(not frozen):
                z = pool(encoder, x, cfg.pooling, frames)
            loss = loss_fn(task, head(z), y, bce_reduction)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if select.due(epoch):
            select.check(epoch, predict(encoder, head, data, fold.valid, cfg.pooling))
    return select.restore()


def score_fold(
    task: Task, store: TaskStore, fold: Fold, logits: torch.Tensor, selection: Selection | None
) -> FoldResult:
    """The fold's test score from the trained model's logits on its test clips."""
    y = targets(task, store, fold.test)
    return FoldResult(fold.name, score(task, y, logits), y, logits, fold.test, selection)


@dataclass(frozen=True)
class Evaluation:
    """A regime's outcome on a task: the metrics, and the per-clip predictions the report's confidence
    intervals and paired comparisons resample (every fold's test clips, in fold order)."""

    metrics: dict
    rows: np.ndarray  # the test clips, as rows of the task's store
    targets: np.ndarray  # (n,) class indices (single-label) | (n, classes) multi-hot
    scores: np.ndarray  # (n, classes) probabilities: softmax (single-label) | sigmoid (multi-label)


def evaluate_folds(
    task: Task,
    store: TaskStore,
    fold_list: list[Fold],
    evaluate_fold: Callable[[Fold], FoldResult],
    events: dict[str, int] | None,
) -> Evaluation:
    """Every fold trained, selected and scored by ``evaluate_fold``, then summarised."""
    results = [evaluate_fold(fold) for fold in fold_list]
    logits = torch.cat([r.logits for r in results])
    probs = torch.sigmoid(logits) if task.multi_label else torch.softmax(logits, dim=1)
    return Evaluation(
        summarise(task, store, results, events),
        np.concatenate([r.rows for r in results]),
        torch.cat([r.targets for r in results]).numpy(),
        probs.numpy().astype(np.float32),
    )


def condition_breakdown(task: Task, evaluation: Evaluation, conditions: np.ndarray) -> dict[str, dict]:
    """The task's metric per condition of the test clips (``conditions``: one label per test clip, in the
    evaluation's order; the masker task's target-to-masker ratio)."""
    out = {}
    for c in sorted_conditions(conditions):
        sel = conditions == c
        y, p = evaluation.targets[sel], evaluation.scores[sel]
        value = mean_average_precision(y, p)[0] if task.multi_label else accuracy(y, p)
        out[str(c)] = {"clips": int(sel.sum()), task.metric: round(float(value), 5)}
    return out


def summarise(task: Task, store: TaskStore, results: list[FoldResult], events: dict[str, int] | None) -> dict:
    """The metrics: the mean over folds and each fold's score; clips kept by ``min_labels``; the selected
    epoch (``train_valid_test``); and, for soundscape tasks with strong labels (``events``: distinct
    events per clip id), the mAP by degree of polyphony."""
    metric = "map" if task.multi_label else "accuracy"
    out = {
        metric: round(float(np.mean([r.score for r in results])), 5),
        "folds": {r.fold: round(r.score, 5) for r in results},
    }
    if task.min_labels > 1:
        out["clips_kept"] = int(len(kept_rows(task, store)))
        out["clips_dropped"] = int(len(store) - out["clips_kept"])
    first = results[0]
    if first.selection is not None:
        out["selection"] = {"selected_epoch": first.selection.epoch, "valid": round(first.selection.valid, 5)}
    if task.multi_label and task.protocol == "train_eval" and events is not None:
        per_clip = np.array([events.get(i, 0) for i in store.index["clip_id"].to_numpy()[first.rows]])
        out["polyphony"] = polyphony_breakdown(first.targets.numpy(), torch.sigmoid(first.logits).numpy(), per_clip)
    return out
