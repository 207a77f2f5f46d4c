"""The FSD50K layout (format ``fsd50k``)."""

from __future__ import annotations

import csv
from pathlib import Path

from sslam.data.layouts import DatasetLayoutError, Layout, Listing
from sslam.data.layouts._common import clip_items, read_csv


def list_fsd50k(root: str | Path) -> Listing:
    """``FSD50K.ground_truth/{dev,eval,vocabulary}.csv`` beside ``FSD50K.dev_audio/`` and
    ``FSD50K.eval_audio/``: dev's ``split`` column gives train / valid, eval.csv the test set; labels are
    the comma-joined ``labels`` (vocabulary names); mAP on eval."""
    root = Path(root)
    gt = root / "FSD50K.ground_truth"
    vocab_file = gt / "vocabulary.csv"
    if not vocab_file.is_file():
        raise DatasetLayoutError(f"{vocab_file}: missing")
    with open(vocab_file, newline="", encoding="utf-8") as f:
        vocab = [r[1] for r in csv.reader(f) if len(r) >= 2]
    rows = []
    for r in read_csv(gt / "dev.csv", ("fname", "labels", "split")):
        split = {"train": "train", "val": "valid"}.get(r["split"])
        if split is None:
            raise DatasetLayoutError(f"{gt / 'dev.csv'}: split {r['split']!r} for {r['fname']} (expected train or val)")
        rows.append((f"FSD50K.dev_audio/{r['fname']}.wav", split, tuple(r["labels"].split(","))))
    for r in read_csv(gt / "eval.csv", ("fname", "labels")):
        rows.append((f"FSD50K.eval_audio/{r['fname']}.wav", "test", tuple(r["labels"].split(","))))
    return Listing("multi_label", "train_valid_test", ("train", "valid", "test"), tuple(vocab), clip_items(rows))


LAYOUT = Layout(list_fsd50k, kind="multi_label", protocol="train_valid_test")
