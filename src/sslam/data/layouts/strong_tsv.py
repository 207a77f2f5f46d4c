"""The DESED-style strong-label layout (format ``strong_tsv``): per split a strong TSV and an audio folder."""

from __future__ import annotations

from pathlib import Path

from sslam.data.layouts import Layout, Listing
from sslam.data.layouts._common import clip_items, read_events


def list_strong_tsv(root: str | Path, splits: dict[str, tuple[str, str]] | None = None) -> Listing:
    """DESED-style folders: per split a strong TSV (``filename onset offset event_label``, header, tabs)
    and an audio folder; clip labels = the set of its events. Default splits: ``train`` from
    ``metadata/train.tsv`` + ``audio/train``, ``eval`` from ``metadata/eval.tsv`` + ``audio/eval``."""
    root = Path(root)
    splits = splits or {s: (f"metadata/{s}.tsv", f"audio/{s}") for s in ("train", "eval")}
    rows, classes = [], set()
    for split, (tsv, audio) in splits.items():
        for name, labels in sorted(read_events(root / tsv, "filename", "event_label").items()):
            rows.append((f"{audio}/{name}", split, tuple(sorted(labels))))
            classes |= labels
    return Listing("multi_label", "train_eval", tuple(splits), tuple(sorted(classes)), clip_items(rows))


LAYOUT = Layout(list_strong_tsv, kind="multi_label", protocol="train_eval")
