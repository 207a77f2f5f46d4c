"""The HEAR task-folder layout, scene tasks (format ``hear``): kind and protocol come from each task's
``task_metadata.json``."""

from __future__ import annotations

import json
from pathlib import Path

from sslam.data.layouts import DatasetLayoutError, Layout, Listing
from sslam.data.layouts._common import clip_items, read_csv


def list_hear(root: str | Path) -> Listing:
    """A HEAR task folder: ``task_metadata.json`` (prediction_type, split_mode, splits or nfolds, sample
    rates), ``labelvocabulary.csv`` (idx, label), ``{split}.json`` ({file: [labels]} for scene tasks) and
    the audio in ``<sample_rate>/<split>/``. Scene tasks only (event tasks need timestamps)."""
    root = Path(root)
    meta_file = root / "task_metadata.json"
    if not meta_file.is_file():
        raise DatasetLayoutError(f"{meta_file}: missing (a HEAR task folder has task_metadata.json)")
    meta = json.loads(meta_file.read_text())
    if meta.get("embedding_type", "scene") != "scene":
        raise DatasetLayoutError(f"{meta_file}: embedding_type {meta.get('embedding_type')!r}; only scene tasks")
    vocab = [r["label"] for r in read_csv(root / "labelvocabulary.csv", ("idx", "label"))]
    mode = meta.get("split_mode", "trainvaltest")
    if mode == "trainvaltest":
        splits, protocol = ("train", "valid", "test"), "train_valid_test"
    elif mode in ("presplit_kfold", "new_split_kfold"):
        splits, protocol = tuple(f"fold{k:02d}" for k in range(int(meta["nfolds"]))), "cross_validation"
    else:
        raise DatasetLayoutError(f"{meta_file}: unknown split_mode {mode!r}")
    rates = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not rates:
        raise DatasetLayoutError(f"{root}: no <sample_rate>/ audio folder")
    rate = 16000 if 16000 in rates else rates[-1]
    rows = []
    for split in splits:
        path = root / f"{split}.json"
        if not path.is_file():
            raise DatasetLayoutError(f"{path}: missing (split_mode {mode} lists this split)")
        for name, labels in sorted(json.loads(path.read_text()).items()):
            rows.append((f"{rate}/{split}/{name}", split, tuple(str(x) for x in labels)))
    kind = "multi_label" if meta.get("prediction_type") == "multilabel" else "single_label"
    return Listing(kind, protocol, splits, tuple(vocab), clip_items(rows))


LAYOUT = Layout(list_hear)  # kind and protocol: the task's metadata
