"""The ESC-50 layout (format ``esc50``)."""

from __future__ import annotations

from pathlib import Path

from sslam.data.layouts import Layout, Listing
from sslam.data.layouts._common import clip_items, read_csv


def list_esc50(root: str | Path) -> Listing:
    """``ESC-50-master/``: ``meta/esc50.csv`` (filename, fold, target, category, ...) and ``audio/``;
    5-fold cross-validation on the official folds, single label (the category)."""
    root = Path(root)
    rows = read_csv(root / "meta" / "esc50.csv", ("filename", "fold", "category"))
    folds = sorted({int(r["fold"]) for r in rows})
    return Listing(
        "single_label",
        "cross_validation",
        tuple(f"fold{k}" for k in folds),
        tuple(sorted({r["category"] for r in rows})),
        clip_items((f"audio/{r['filename']}", f"fold{int(r['fold'])}", (r["category"],)) for r in rows),
    )


LAYOUT = Layout(list_esc50, kind="single_label", protocol="cross_validation")
