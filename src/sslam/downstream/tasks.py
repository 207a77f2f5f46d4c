"""A downstream task and its data: the task's definition, its clips as one store, their targets and folds.

Protocols (``tasks.<name>.protocol``): ``cross_validation`` (the ESC-50 analogue) trains on four folds
and tests on the fifth, for each fold; ``train_eval`` (soundscapes, AS-20K) trains on ``train`` and tests
on ``eval``; ``train_valid_test`` (keyword spotting) trains on ``train``, selects on ``valid`` and tests
on ``test``. :func:`folds` turns a protocol into the folds every regime runs through.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sslam.config.base import merged
from sslam.config.downstream import DatasetConfig, TaskConfig, metric_of
from sslam.config.features import FeaturesConfig
from sslam.config.params import Config
from sslam.data.clip_lists import clip_list_summary
from sslam.features.reader import FeatureStore
from sslam.features.stats import valid_frame_stats
from sslam.features.store import clip_features

DATASETS_DIR = "data/datasets"  # the dataset@<name> stages' outputs: data/datasets/<name>/


def task_location(cfg: Config, key: str, features_dir: str = "data/features") -> tuple[str, str]:
    """(corpus folder, features folder) of task ``key``: the synthetic / AudioSet corpus and the features
    stage's cache, or a real dataset's own folder ``data/datasets/<name>`` and its cache."""
    if key in cfg.datasets:
        return f"{DATASETS_DIR}/{key}", f"{DATASETS_DIR}/{key}/features"
    return cfg.data.corpus_dir, features_dir


def task_features(cfg: Config, key: str) -> FeaturesConfig:
    """The log-mel settings of task ``key``'s cache: a real dataset has its own clip length and (pinned or
    computed) statistics; everything else is the features stage's."""
    if key not in cfg.datasets:
        return cfg.features
    ds = cfg.datasets[key]
    return merged(cfg.features, {"target_frames": ds.target_frames, "norm_mean": ds.norm_mean, "norm_std": ds.norm_std})


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

    @property
    def metric(self) -> str:
        return metric_of(self.kind)


class TaskStore:
    """The clips of a task, possibly from several feature sets (AS-20K: balanced + eval), as one
    indexable store with a ``split`` per row; normalised with the given statistics."""

    def __init__(self, features_dir: str | Path, sets: dict[str, str], stats: dict | None = None):
        self.features_dir, self.sets = Path(features_dir), sets
        self.parts = [FeatureStore(features_dir, name, stats) for name in sets]
        frames = []
        for part, split in zip(self.parts, sets.values(), strict=True):
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
            raise FileNotFoundError(
                f"{err.filename}: no stored waveforms (roll_domain: waveform needs features.store_waveforms: true)"
            ) from err
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

    def renormalised(self, stats: dict) -> TaskStore:
        return TaskStore(self.features_dir, self.sets, stats)


@dataclass(frozen=True)
class WaveFeatures:
    """What recomputing a log-mel from a stored waveform needs (``roll_domain: waveform``): the features
    stage's settings, so a rolled clip goes through exactly the stage's fbank, padding and cropping."""

    cfg: FeaturesConfig
    sample_rate: int

    def logmel(self, wave: torch.Tensor) -> np.ndarray:
        """(target_frames, mel) raw log-mel of a float waveform, zero-padded as the store."""
        return clip_features(wave.numpy(), self.sample_rate, self.cfg)[0]


def load_task(
    corpus: str | Path,
    name: str,
    cfg: TaskConfig | DatasetConfig | None = None,
    features_dir: str | Path | None = None,
) -> tuple[Task, TaskStore | None]:
    """The task and its clips. ``cfg`` (params) must agree with the corpus's ``task.json``: a clear error
    before any work otherwise (a dataset's unset kind / protocol are the layout's). Without
    ``features_dir`` only the task is returned (store None)."""
    cfg = cfg or TaskConfig()
    if cfg.reads_audioset:
        classes = pd.read_csv(Path(corpus) / "class_labels_indices.csv")["mid"].astype(str).tolist()
        task = Task(name, "multi_label", "train_eval", classes, ["train", "eval"], cfg.min_labels)
        sets = {s: "train" for s in cfg.train_splits} | {"eval": "eval"}
    else:
        path = Path(corpus) / cfg.feature_set(name) / "task.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no task {name!r} in the corpus (tasks in params.yaml must exist there)")
        t = json.loads(path.read_text())
        for key in ("kind", "protocol"):
            if getattr(cfg, key) not in (None, t[key]):
                section = "datasets" if isinstance(cfg, DatasetConfig) else "tasks"
                raise ValueError(
                    f"params.yaml {section}.{name}.{key} is {getattr(cfg, key)!r} but {path} says {t[key]!r}"
                )
        task = Task(name, t["kind"], t["protocol"], t["classes"], t["splits"], cfg.min_labels)
        sets = {cfg.feature_set(name): ""}
    return task, (TaskStore(features_dir, sets) if features_dir is not None else None)


def targets(task: Task, store: TaskStore, rows: np.ndarray) -> torch.Tensor:
    """Multi-hot (multi-label) or class indices (single-label) of the given rows."""
    idx = {c: k for k, c in enumerate(task.classes)}
    if task.multi_label:
        y = torch.zeros(len(rows), len(task.classes))
        for j, r in enumerate(rows):
            for lab in store.labels[r]:
                if lab in idx:
                    y[j, idx[lab]] = 1.0
        return y
    return torch.tensor([idx[store.labels[r][0]] for r in rows])


@dataclass(frozen=True)
class Fold:
    name: str
    train: np.ndarray
    test: np.ndarray
    valid: np.ndarray | None = None  # train_valid_test: the model is selected on these


def kept_rows(task: Task, store: TaskStore) -> np.ndarray:
    """Rows with at least ``min_labels`` of the task's classes (URBAN-SED keeps clips with more than one)."""
    wanted = set(task.classes)
    keep = [i for i, labs in enumerate(store.labels) if len(wanted.intersection(labs)) >= task.min_labels]
    return np.array(keep, dtype=np.int64)


def folds(task: Task, store: TaskStore) -> list[Fold]:
    """The folds of the task's protocol over its kept rows; an empty part is an error, not a NaN score."""
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
                raise ValueError(
                    f"task {task.name!r}: no {part} clips in fold {f.name!r} "
                    f"({len(keep)} of {len(store)} clips kept with min_labels={task.min_labels})"
                )
    return out


def fold_clip_lists(task: Task, store: TaskStore) -> dict[str, dict]:
    """Per split of the task (``train``, ``eval``, a cross-validation fold's name, ...), the clips its folds
    train on, select on or test on, after ``min_labels``: ``{split: {"clips": n, "sha256": ...}}``
    (:mod:`sslam.data.clip_lists`). Each fold's train and test lists are unions of these splits."""
    used = np.unique(
        np.concatenate([r for f in folds(task, store) for r in (f.train, f.test, f.valid) if r is not None])
    )
    ids, split = store.index["clip_id"].to_numpy().astype(str)[used], store.split[used]
    return {s: clip_list_summary(ids[split == s]) for s in sorted(set(split))}


def read_clip_lists(store: TaskStore) -> dict[str, dict]:
    """Per features set the task read, its whole clip list (before any filter): what the report compares
    with the features stage's sets."""
    return {name: clip_list_summary(part.index["clip_id"]) for name, part in zip(store.sets, store.parts, strict=True)}


def normalised_for_fold(store: TaskStore, fold: Fold, norm_stats: str) -> TaskStore:
    """``task``: renormalise with the fold's training clips (the recipe's task-specific stats);
    ``pretrain``: the store as it is."""
    return store.renormalised(store.train_stats(fold.train)) if norm_stats == "task" else store


def strong_event_counts(strong_tsv: str | Path, segment_ids: bool = False) -> dict[str, int] | None:
    """Distinct events per clip, counted from strong labels (the polyphony breakdown's x-axis); None when
    there are none. ``segment_ids``: the file names segments as AudioSet does (``<ytid>_<start ms>``),
    keyed here by the clip id. Not :func:`sslam.data.polyphony.distinct_events`, which counts the
    distinct events of one weak label set through the ontology."""
    if not Path(strong_tsv).is_file():
        return None
    df = pd.read_csv(strong_tsv, sep="\t", dtype={"segment_id": str, "label": str})
    if segment_ids:
        df["segment_id"] = df["segment_id"].str.rsplit("_", n=1).str[0]
    return df.groupby("segment_id")["label"].nunique().to_dict()


def task_event_counts(cfg: TaskConfig | DatasetConfig, key: str, corpus: str | Path) -> dict[str, int] | None:
    """Distinct events per clip of task ``key`` (None without strong labels): an AudioSet task reads
    ``strong_labels`` (the released ``audioset_eval_strong.tsv``) or the corpus's ``strong/eval.tsv``,
    keyed by clip id; any other task its own ``strong.tsv``."""
    if cfg.reads_audioset:
        return strong_event_counts(cfg.strong_labels or Path(corpus) / "strong" / "eval.tsv", segment_ids=True)
    return strong_event_counts(Path(corpus) / cfg.feature_set(key) / "strong.tsv")


def task_conditions(cfg: TaskConfig | DatasetConfig, key: str, corpus: str | Path) -> dict[str, str] | None:
    """The condition of each clip of task ``key`` (``conditions.csv``: clip_id, condition; the masker
    task's target-to-masker ratio in dB), by which the metrics are broken down; None without the file."""
    path = Path(corpus) / cfg.feature_set(key) / "conditions.csv"
    if cfg.reads_audioset or not path.is_file():
        return None
    df = pd.read_csv(path, dtype=str)
    return dict(zip(df["clip_id"], df["condition"], strict=True))
