"""Downstream evaluation: linear evaluation and fine-tuning of an encoder on a task.

Protocols (``tasks.<name>.protocol``): ``cross_validation`` (the ESC-50 analogue) trains on four folds,
tests on the fifth, for each fold, and reports the mean accuracy; ``train_eval`` (soundscapes, AS-20K)
trains on ``train`` and reports mAP on ``eval``, with the breakdown by degree of polyphony where strong
labels exist; ``train_valid_test`` (keyword spotting) checks ``valid`` every ``select_every`` epochs,
keeps the best model and reports its ``test`` score. Outside that protocol the reported model is the one
after the last epoch: nothing is selected on evaluation data.

Representation for linear evaluation (``pooling``): ``mean`` of the final patch tokens (the default:
measured better than CLS on the tiny model), ``cls`` (the reference; the global loss trains that token),
or ``freq_mean`` (time-average per frequency row, rows concatenated: keeps where in frequency a source
sits). Then LayerNorm and one linear layer. ``linear_eval.protocol``: ``cached`` (the default) leaves
the input unaugmented, so the frozen embeddings are computed once and cached; ``paper`` (the
reference) runs the frozen encoder on every step's mixup / SpecAugment / roll batch through the
fine-tuning loop.
"""

from __future__ import annotations

import copy
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from sslam.config import Config, FeaturesConfig, FinetuneConfig, LinearEvalConfig, TaskConfig
from sslam.downstream.metrics import accuracy, mean_average_precision, polyphony_breakdown
from sslam.features import augment as A
from sslam.features.dataset import FeatureStore, class_balanced_weights
from sslam.features.stats import valid_frame_stats
from sslam.features.store import clip_features
from sslam.models.vit import Encoder
from sslam.pretrain.model import Student


@dataclass(frozen=True)
class Task:
    name: str
    kind: str  # single_label | multi_label
    protocol: str  # cross_validation | train_eval | train_valid_test
    classes: list[str]
    splits: list[str]
    min_labels: int = 1

    @property
    def multi_label(self) -> bool:
        return self.kind == "multi_label"


class TaskStore:
    """The clips of a task, possibly from several feature sets (AS-20K: balanced + eval), as one
    indexable store with a ``split`` per row; normalised with the given statistics."""

    def __init__(self, features_dir: str | Path, sets: dict[str, str], stats: dict | None = None):
        self.features_dir, self.sets = Path(features_dir), sets
        self.parts = [FeatureStore(features_dir, name, stats) for name in sets]
        frames = []
        for part, split in zip(self.parts, sets.values()):
            df = part.index.copy()
            if split:  # the whole set is one split of the task
                df["split"] = split
            frames.append(df)
        self.index = pd.concat(frames, ignore_index=True)
        self.labels = [lab for part in self.parts for lab in part.labels]
        self._part = np.concatenate([np.full(len(part), k) for k, part in enumerate(self.parts)])
        self._local = np.concatenate([np.arange(len(part)) for part in self.parts])

    def __len__(self) -> int:
        return len(self.index)

    @property
    def split(self) -> np.ndarray:
        return self.index["split"].to_numpy()

    def raw(self, i: int) -> np.ndarray:
        return self.parts[self._part[i]].raw(int(self._local[i]))

    def frames(self, i: int) -> int:
        """Valid (unpadded) log-mel frames of row ``i``."""
        return self.parts[self._part[i]].frames(int(self._local[i]))

    def waveform(self, i: int) -> torch.Tensor:
        """The stored waveform of row ``i``, cut to its valid samples (needs features.store_waveforms)."""
        part, local = self.parts[self._part[i]], int(self._local[i])
        try:
            wave = part.waveform(local)
        except FileNotFoundError as err:
            raise FileNotFoundError(f"{err.filename}: no stored waveforms (roll_domain: waveform needs "
                                    "features.store_waveforms: true)") from err
        return wave[: int(part.wave_lengths([local])[0])]

    @property
    def mean(self) -> float:
        return self.parts[0].mean

    @property
    def std(self) -> float:
        """The normalisation std, ``x_norm = (x - mean) / (2 std)``."""
        return self.parts[0].std

    def batch(self, rows: np.ndarray) -> torch.Tensor:
        rows = np.asarray(rows, dtype=np.int64)
        parts = self._part[rows]
        if (parts == parts[0]).all():
            return self.parts[parts[0]].batch(self._local[rows])
        out = None
        for k in np.unique(parts):
            where = np.nonzero(parts == k)[0]
            x = self.parts[k].batch(self._local[rows[where]])
            out = x.new_empty((len(rows), *x.shape[1:])) if out is None else out
            out[where] = x
        return out

    def train_stats(self, rows: np.ndarray) -> dict:
        """Mean and std of the stored log-mel over the valid frames of the given clips (a task's own
        normalisation), by the features stage's rule (:func:`valid_frame_stats`: padding excluded,
        float64, Chan's merge), so a task's statistics and ``stats.json`` mean the same thing."""
        st = valid_frame_stats((self.raw(int(r)), self.frames(int(r))) for r in rows)
        return {"mean": st.mean, "std": max(st.std, 1e-6)}

    def renormalised(self, stats: dict) -> "TaskStore":
        return TaskStore(self.features_dir, self.sets, stats)


def load_task(corpus: str | Path, name: str, cfg: TaskConfig | None = None, features_dir: str | Path | None = None
              ) -> tuple[Task, TaskStore | None]:
    """The task and its clips. ``cfg`` (params) must agree with the corpus's ``task.json``: a clear error
    before any work otherwise. Without ``features_dir`` only the task is returned (store None)."""
    cfg = cfg or TaskConfig()
    if cfg.data == "audioset":
        classes = pd.read_csv(Path(corpus) / "class_labels_indices.csv")["mid"].astype(str).tolist()
        task = Task(name, "multi_label", "train_eval", classes, ["train", "eval"], cfg.min_labels)
        sets = {s: "train" for s in cfg.train_splits} | {"eval": "eval"}
    else:
        path = Path(corpus) / cfg.feature_set(name) / "task.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no task {name!r} in the corpus (tasks in params.yaml must exist there)")
        t = json.loads(path.read_text())
        for key in ("kind", "protocol"):
            if getattr(cfg, key) != t[key]:
                raise ValueError(f"params.yaml tasks.{name}.{key} is {getattr(cfg, key)!r} but {path} says {t[key]!r}")
        task = Task(name, t["kind"], t["protocol"], t["classes"], t["splits"], cfg.min_labels)
        sets = {cfg.feature_set(name): ""}
    return task, (TaskStore(features_dir, sets) if features_dir is not None else None)


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
    if pooling == "cls":
        return h[:, 0]
    if pooling == "freq_mean":  # tokens are time-major: (B, T*F, D) -> (B, T, F, D) -> mean over T
        return h[:, 1:].reshape(h.shape[0], encoder.grid[0], encoder.grid[1], -1).mean(1).flatten(1)
    return h[:, 1:].mean(dim=1)


def pooled_dim(encoder: Encoder, pooling: str) -> int:
    return encoder.dim * (encoder.grid[1] if pooling == "freq_mean" else 1)


def targets(task: Task, store: TaskStore, rows: np.ndarray) -> torch.Tensor:
    idx = {c: k for k, c in enumerate(task.classes)}
    if task.multi_label:
        y = torch.zeros(len(rows), len(task.classes))
        for j, r in enumerate(rows):
            for lab in store.labels[r]:
                if lab in idx:
                    y[j, idx[lab]] = 1.0
        return y
    return torch.tensor([idx[store.labels[r][0]] for r in rows])


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
    if task.multi_label:
        return mean_average_precision(y.numpy(), torch.sigmoid(logits).numpy())[0]
    return accuracy(y.numpy(), logits.numpy())


@dataclass(frozen=True)
class Fold:
    name: str
    train: np.ndarray
    test: np.ndarray
    valid: np.ndarray | None = None  # train_valid_test: the model is selected on these


def kept_rows(task: Task, store: TaskStore) -> np.ndarray:
    """Rows with at least ``min_labels`` of the task's classes (URBAN-SED keeps clips with more than one)."""
    wanted = set(task.classes)
    return np.array([i for i, labs in enumerate(store.labels) if len(wanted.intersection(labs)) >= task.min_labels],
                    dtype=np.int64)


def folds(task: Task, store: TaskStore) -> list[Fold]:
    keep = kept_rows(task, store)
    split = store.split[keep]
    if task.protocol == "cross_validation":
        out = [Fold(f, keep[split != f], keep[split == f]) for f in task.splits]
    elif task.protocol == "train_valid_test":
        out = [Fold("test", keep[split == "train"], keep[split == "test"], keep[split == "valid"])]
    else:
        out = [Fold("eval", keep[split == "train"], keep[split == "eval"])]
    for f in out:
        for part in ("train", "test", "valid"):
            rows = getattr(f, part)
            if rows is not None and len(rows) == 0:
                raise ValueError(f"task {task.name!r}: no {part} clips in fold {f.name!r} "
                                 f"({len(keep)} of {len(store)} clips kept with min_labels={task.min_labels})")
    return out


def warmup_cosine(step: int, total: int, warmup: int, base: float, min_lr: float) -> float:
    """Linear warm-up to ``base`` over ``warmup`` steps, then cosine down to ``min_lr`` at ``total``.
    Written as ``w * base + (1 - w) * min_lr`` so the peak and the floor come out exactly."""
    if step < warmup:
        w = (step + 1) / warmup
    else:
        w = 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return w * base + (1 - w) * min_lr


def apply_schedule(groups: list[dict], schedule_lr: float) -> None:
    """Set every parameter group's lr to its ``lr_scale`` times the one schedule's lr (warm-up to ``lr``,
    cosine to ``min_lr``), as the reference's lr_scale does. The floor is scaled with the peak (group
    floor ``scale * min_lr``): with one shared floor, a block whose peak ``scale * lr`` is below
    ``min_lr`` (block 0 of 12 at lr 5e-5: 5e-5 x 0.65^12 = 2.8e-7 < 1e-6) would see its lr RISE
    during the cosine."""
    for grp in groups:
        grp["lr"] = grp["lr_scale"] * schedule_lr


def linear_schedule(cfg: LinearEvalConfig, steps_per_epoch: int):
    """Linear evaluation's lr at a step: warm-up over ``warmup_epochs`` then cosine to ``min_lr`` over
    ``epochs`` (``schedule: cosine``), or constant ``lr``."""
    total, warm = cfg.epochs * steps_per_epoch, cfg.warmup_epochs * steps_per_epoch
    if cfg.schedule == "cosine":
        return lambda step: warmup_cosine(step, total, warm, cfg.lr, cfg.min_lr)
    return lambda step: cfg.lr


def _batches(n: int, size: int, generator: torch.Generator | None = None):
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    for k in range(0, n, size):
        yield order[k : k + size]


def embed(encoder: Encoder, store: TaskStore, rows: np.ndarray, pooling: str, batch: int = 64) -> torch.Tensor:
    encoder.eval()
    out = []
    with torch.no_grad():
        for k in range(0, len(rows), batch):
            out.append(pool(encoder, store.batch(rows[k : k + batch]), pooling))
    return torch.cat(out)


def _task_normalised(store: TaskStore, fold: Fold, norm_stats: str) -> TaskStore:
    """``task``: renormalise with the fold's training clips (the recipe's task-specific stats)."""
    return store.renormalised(store.train_stats(fold.train)) if norm_stats == "task" else store


@dataclass(frozen=True)
class WaveFeatures:
    """What recomputing a log-mel from a stored waveform needs (``roll_domain: waveform``): the features
    stage's settings, so a rolled clip goes through exactly the stage's fbank, padding and cropping."""

    cfg: FeaturesConfig
    sample_rate: int

    def logmel(self, wave: torch.Tensor) -> np.ndarray:
        """(target_frames, mel) raw log-mel of a float waveform, zero-padded as the store."""
        return clip_features(wave.numpy(), self.sample_rate, self.cfg)[0]


def load_batch(data: TaskStore, rows: np.ndarray, cfg, g: torch.Generator, wave: WaveFeatures | None) -> torch.Tensor:
    """A normalised training batch. ``roll`` with ``roll_domain: waveform`` is the reference's roll: each
    clip's stored waveform (its valid samples) circularly shifted by U[0, samples) samples, times the gain
    Beta(10, 10) + 0.5 when ``roll_gain``, then the features stage's log-mel and padding."""
    if not (cfg.roll and cfg.roll_domain == "waveform"):
        return data.batch(rows)
    if wave is None:
        raise ValueError("roll_domain: waveform needs the features settings (pass wave_features)")
    gains = A.draw_gain(len(rows)).tolist() if cfg.roll_gain else [1.0] * len(rows)
    raw = []
    for r, gain in zip(rows, gains):
        w = data.waveform(int(r))
        shift = int(torch.randint(0, len(w), (1,), generator=g))
        raw.append(wave.logmel(A.roll_waveform(w, shift, gain)))
    return (torch.from_numpy(np.stack(raw)).float() - data.mean) / (2.0 * data.std)


def needs_frames(cfg) -> bool:
    """Whether :func:`augment_batch` reads the clips' valid frames (only the log-mel roll gain does)."""
    return cfg.roll and cfg.roll_gain and cfg.roll_domain == "logmel"


def augment_batch(x: torch.Tensor, y: torch.Tensor, cfg, g: torch.Generator, frames: torch.Tensor | None, mean: float,
                  std: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The recipe's augmentation of a normalised batch, shared by fine-tuning and paper-protocol linear
    evaluation: the log-mel roll gain (``roll_gain`` with ``roll_domain: logmel``: +2 ln(gain) on the valid
    frames above Kaldi's floor, the log-mel image of the waveform gain), mixup (soft targets; ``mixup_lambda``), the
    log-mel roll along time (the whole padded clip), SpecAugment (after mixup, as the reference), then
    noise (``noise_std``, fine-tuning only). ``frames``: valid frames per clip (needed only by the log-mel
    gain, see :func:`needs_frames`); ``mean``, ``std``: the normalisation's."""
    logmel_roll = cfg.roll and cfg.roll_domain == "logmel"
    if logmel_roll and cfg.roll_gain:
        x = A.logmel_gain(x, A.draw_gain(len(x)), frames, mean, std)
    if cfg.mixup and cfg.mixup_alpha > 0:
        lam, partner = A.draw_mixup(len(x), cfg.mixup_alpha, cfg.mixup_prob, per_batch=cfg.mixup_lambda == "per_batch")
        x, y = A.mixup(x, y, lam, partner)
    if logmel_roll:
        x = A.roll_time(x, torch.randint(0, x.shape[1], (len(x),), generator=g))
    x = A.spec_augment(x, int(cfg.specaug_time * x.shape[1]), int(cfg.specaug_freq * x.shape[2]), g)
    noise = getattr(cfg, "noise_std", 0.0)
    if noise > 0:
        x = A.add_noise(x, noise, g)
    return x, y


def _predict(encoder: Encoder, head: Head, data: TaskStore, rows: np.ndarray, pooling: str) -> torch.Tensor:
    encoder.eval()
    with torch.no_grad():
        return torch.cat([head(pool(encoder, data.batch(rows[k : k + 64]), pooling)) for k in range(0, len(rows), 64)])


def _fit(encoder: Encoder, head: Head, groups: list[dict], data: TaskStore, task: Task, store: TaskStore, fold: Fold,
         cfg, seed: int, lr_at, frozen: bool, weights: torch.Tensor | None = None,
         wave: WaveFeatures | None = None) -> dict:
    """The training loop of fine-tuning and of paper-protocol linear evaluation. Each step: every group's
    lr = its ``lr_scale`` x ``lr_at(step)``; a batch (class-balanced draws with replacement when
    ``weights``), loaded (waveform roll) and augmented; encoder -> pooling -> head; AdamW. ``frozen``:
    the encoder stays in eval mode under no_grad (linear evaluation: only the head's groups learn, but
    the encoder still runs on every augmented batch). ``train_valid_test``: the state at the epoch with
    the best validation score is restored; returns that selection (empty otherwise)."""
    opt = torch.optim.AdamW(groups, betas=tuple(cfg.betas))
    y_train = targets(task, store, fold.train)
    y_valid = targets(task, store, fold.valid) if fold.valid is not None else None
    bce_reduction = getattr(cfg, "bce_reduction", "mean")
    g = torch.Generator().manual_seed(seed)
    step, best = 0, None
    for epoch in range(1, cfg.epochs + 1):
        encoder.train(not frozen)
        order = (torch.multinomial(weights, len(fold.train), replacement=True, generator=g) if weights is not None
                 else torch.randperm(len(fold.train), generator=g))
        for k in range(0, len(order), cfg.batch_size):
            b = order[k : k + cfg.batch_size]
            rows = fold.train[b.numpy()]
            apply_schedule(opt.param_groups, lr_at(step))
            x = load_batch(data, rows, cfg, g, wave)
            y = y_train[b] if task.multi_label else F.one_hot(y_train[b], len(task.classes)).float()
            frames = torch.tensor([data.frames(int(r)) for r in rows]) if needs_frames(cfg) else None
            x, y = augment_batch(x, y, cfg, g, frames, data.mean, data.std)
            if frozen:
                with torch.no_grad():
                    z = pool(encoder, x, cfg.pooling)
            else:
                z = pool(encoder, x, cfg.pooling)
            loss = loss_fn(task, head(z), y, bce_reduction)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
        if fold.valid is not None and (epoch % cfg.select_every == 0 or epoch == cfg.epochs):
            v = score(task, y_valid, _predict(encoder, head, data, fold.valid, cfg.pooling))
            if best is None or v > best[0]:
                best = (v, epoch, copy.deepcopy(head.state_dict()), None if frozen else copy.deepcopy(encoder.state_dict()))
    if best is None:
        return {}
    head.load_state_dict(best[2])
    if best[3] is not None:
        encoder.load_state_dict(best[3])
    return {"selected_epoch": best[1], "valid": round(best[0], 5)}


def linear_eval(encoder: Encoder, task: Task, store: TaskStore, cfg: LinearEvalConfig, seed: int,
                events: dict[str, int] | None = None, wave_features: WaveFeatures | None = None) -> dict:
    """Frozen encoder, LayerNorm + linear head. ``protocol: cached``: every clip embedded once (no input
    augmentation), so the folds of a cross-validation share one encoder pass; ``paper``: the reference's
    protocol, the frozen encoder run on every step's augmented batch through the fine-tuning loop."""
    if cfg.protocol == "paper":
        return _linear_eval_paper(encoder, task, store, cfg, seed, events, wave_features)
    if cfg.augmented:  # a task's overrides are merged without validation: check the merged recipe here
        raise ValueError(f"task {task.name!r}: linear_eval protocol 'cached' cannot use input augmentation "
                         "(mixup, specaug_freq, specaug_time, roll): set them off or use protocol: paper")
    fold_list = folds(task, store)
    used = np.unique(np.concatenate([r for f in fold_list for r in (f.train, f.test, f.valid) if r is not None]))

    def embed_used(data: TaskStore) -> torch.Tensor:
        """Embeddings of every clip a fold uses, as rows of ``store`` (the others stay zero)."""
        z = torch.zeros(len(store), pooled_dim(encoder, cfg.pooling))
        z[used] = embed(encoder, data, used, cfg.pooling)
        return z

    shared = embed_used(store) if cfg.norm_stats == "pretrain" else None  # task stats depend on the fold
    results = []
    for fold in fold_list:
        z = shared if shared is not None else embed_used(_task_normalised(store, fold, cfg.norm_stats))
        y_train, y_test = targets(task, store, fold.train), targets(task, store, fold.test)
        y_valid = targets(task, store, fold.valid) if fold.valid is not None else None
        torch.manual_seed(seed)
        head = Head(z.shape[1], len(task.classes))
        opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)
        g = torch.Generator().manual_seed(seed)
        z_train = z[fold.train]
        lr_at = linear_schedule(cfg, math.ceil(len(fold.train) / cfg.batch_size))
        step, best = 0, None  # best: (valid score, epoch, state)
        for epoch in range(1, cfg.epochs + 1):
            for b in _batches(len(fold.train), cfg.batch_size, g):
                for grp in opt.param_groups:
                    grp["lr"] = lr_at(step)
                step += 1
                loss = loss_fn(task, head(z_train[b]), y_train[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
            if fold.valid is not None and (epoch % cfg.select_every == 0 or epoch == cfg.epochs):
                with torch.no_grad():
                    v = score(task, y_valid, head(z[fold.valid]))
                if best is None or v > best[0]:
                    best = (v, epoch, copy.deepcopy(head.state_dict()))
        selection = {}
        if best is not None:
            head.load_state_dict(best[2])
            selection = {"selected_epoch": best[1], "valid": round(best[0], 5)}
        with torch.no_grad():
            logits = head(z[fold.test])
        results.append((fold.name, score(task, y_test, logits), y_test, logits, fold.test, selection))
    # the cache's speed-up is a timing, not science: bench/linear_eval.py measures it, the metrics never hold it
    return _summarise(task, store, results, {}, events)


def _linear_eval_paper(encoder: Encoder, task: Task, store: TaskStore, cfg: LinearEvalConfig, seed: int,
                       events: dict[str, int] | None, wave: WaveFeatures | None) -> dict:
    """The paper's linear evaluation: the fine-tuning loop (:func:`_fit`) with the encoder frozen and one
    parameter group, the head's, on the linear schedule; mixup, SpecAugment and roll as the recipe says."""
    results = []
    for fold in folds(task, store):
        data = _task_normalised(store, fold, cfg.norm_stats)
        torch.manual_seed(seed)
        head = Head(pooled_dim(encoder, cfg.pooling), len(task.classes))
        groups = [{"params": list(head.parameters()), "lr": cfg.lr, "lr_scale": 1.0, "weight_decay": cfg.weight_decay}]
        lr_at = linear_schedule(cfg, math.ceil(len(fold.train) / cfg.batch_size))
        selection = _fit(encoder, head, groups, data, task, store, fold, cfg, seed, lr_at, frozen=True, wave=wave)
        y_test = targets(task, store, fold.test)
        logits = _predict(encoder, head, data, fold.test, cfg.pooling)
        results.append((fold.name, score(task, y_test, logits), y_test, logits, fold.test, selection))
    return _summarise(task, store, results, {}, events)


def layer_decay_groups(encoder: Encoder, head: Head, lr: float, decay: float, weight_decay: float,
                       decay_norm_and_bias: bool = True) -> list[dict]:
    """Block i gets ``lr_scale`` decay^(depth - i); patch embedding, CLS, the pre-norm and the head keep
    scale 1 (reference). ``decay_norm_and_bias: false`` puts the 1-D parameters (every bias and norm
    weight) of each scale into a twin group without weight decay (the paper's fine-tuning recipe).
    ``lr`` starts as scale x lr; the training loop sets it every step with :func:`apply_schedule`."""
    depth = len(encoder.blocks)
    in_blocks = {id(p) for blk in encoder.blocks for p in blk.parameters()}
    scaled = [(decay ** (depth - i), list(blk.parameters())) for i, blk in enumerate(encoder.blocks)]
    scaled.append((1.0, [p for p in encoder.parameters() if id(p) not in in_blocks] + list(head.parameters())))
    groups = []
    for scale, params in scaled:
        if decay_norm_and_bias:
            parts = [(params, weight_decay)]
        else:
            parts = [([p for p in params if p.ndim > 1], weight_decay), ([p for p in params if p.ndim <= 1], 0.0)]
        groups += [{"params": ps, "lr": lr * scale, "lr_scale": scale, "weight_decay": wd} for ps, wd in parts if ps]
    return groups


def finetune(make_encoder, task: Task, store: TaskStore, cfg: FinetuneConfig, seed: int,
             events: dict[str, int] | None = None, wave_features: WaveFeatures | None = None) -> dict:
    """Whole network: layer-wise lr decay (each group's lr and floor scaled), drop path, mixup (soft
    labels), SpecAugment, roll, noise, optional class-balanced sampling; warm-up then cosine to
    ``min_lr``. Evaluated after the last epoch, or, for ``train_valid_test``, at the epoch with the best
    validation score."""
    results = []
    for fold in folds(task, store):
        data = _task_normalised(store, fold, cfg.norm_stats)
        encoder = make_encoder()
        encoder.set_drop_path(cfg.drop_path)
        torch.manual_seed(seed)
        head = Head(pooled_dim(encoder, cfg.pooling), len(task.classes))
        groups = layer_decay_groups(encoder, head, cfg.lr, cfg.layer_decay, cfg.weight_decay, cfg.decay_norm_and_bias)
        weights = class_balanced_weights([store.labels[r] for r in fold.train], task.classes) if cfg.weighted_sampling else None
        steps = cfg.epochs * math.ceil(len(fold.train) / cfg.batch_size)
        warm = max(1, int(cfg.warmup_share * steps))
        selection = _fit(encoder, head, groups, data, task, store, fold, cfg, seed,
                         lambda step: warmup_cosine(step, steps, warm, cfg.lr, cfg.min_lr), frozen=False,
                         weights=weights, wave=wave_features)
        y_test = targets(task, store, fold.test)
        logits = _predict(encoder, head, data, fold.test, cfg.pooling)
        results.append((fold.name, score(task, y_test, logits), y_test, logits, fold.test, selection))
    return _summarise(task, store, results, {}, events)


def _summarise(task: Task, store: TaskStore, results: list, extra: dict, events: dict[str, int] | None) -> dict:
    metric = "map" if task.multi_label else "accuracy"
    out = {metric: round(float(np.mean([r[1] for r in results])), 5), "folds": {r[0]: round(r[1], 5) for r in results}}
    if task.min_labels > 1:
        out["clips_kept"] = int(len(kept_rows(task, store)))
        out["clips_dropped"] = int(len(store) - out["clips_kept"])
    if results[0][5]:
        out["selection"] = results[0][5]
    if task.multi_label and task.protocol == "train_eval":
        _, _, y, logits, rows, _ = results[0]
        if events is not None:
            per_clip = np.array([events.get(i, 0) for i in store.index["clip_id"].to_numpy()[rows]])
            out["polyphony"] = polyphony_breakdown(y.numpy(), torch.sigmoid(logits).numpy(), per_clip)
    return out | extra


def distinct_events(strong_tsv: str | Path, segment_ids: bool = False) -> dict[str, int] | None:
    """Distinct events per clip from strong labels; None when there are none. ``segment_ids``: the file
    names segments as AudioSet does (``<ytid>_<start ms>``), keyed here by the clip id."""
    if not Path(strong_tsv).is_file():
        return None
    df = pd.read_csv(strong_tsv, sep="\t", dtype={"segment_id": str, "label": str})
    if segment_ids:
        df["segment_id"] = df["segment_id"].str.rsplit("_", n=1).str[0]
    return df.groupby("segment_id")["label"].nunique().to_dict()
