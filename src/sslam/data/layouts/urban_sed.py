"""The URBAN-SED v2.0.0 layout (format ``urban_sed``)."""

from __future__ import annotations

from pathlib import Path

from sslam.data.layouts import DatasetLayoutError, Layout, Listing
from sslam.data.layouts._common import clip_items


def list_urban_sed(root: str | Path) -> Listing:
    """``URBAN-SED_v2.0.0/``: ``audio/{train,validate,test}/*.wav`` and ``annotations/<split>/*.txt``
    (tab-separated ``start end label``, no header). Clip labels from the events; train = train,
    validate folded into train, eval = test (keep clips with more than one label via ``min_labels``)."""
    root = Path(root)
    rows, classes = [], set()
    for split, out in (("train", "train"), ("validate", "train"), ("test", "eval")):
        ann_dir = root / "annotations" / split
        if not ann_dir.is_dir():
            raise DatasetLayoutError(f"{ann_dir}: missing (URBAN-SED ships annotations/{{train,validate,test}})")
        for ann in sorted(ann_dir.glob("*.txt")):
            labels = set()
            for ln in ann.read_text().splitlines():
                parts = ln.split("\t")
                if len(parts) >= 3 and parts[2].strip():
                    labels.add(parts[2].strip())
            rows.append((f"audio/{split}/{ann.stem}.wav", out, tuple(sorted(labels))))
            classes |= labels
    return Listing("multi_label", "train_eval", ("train", "eval"), tuple(sorted(classes)), clip_items(rows))


LAYOUT = Layout(list_urban_sed, kind="multi_label", protocol="train_eval")
