"""What the layout modules share: one item per listed file, its id from its path as the folder source
makes it (a repeat becomes a failed row), and reading the metadata tables with the header checked."""

from __future__ import annotations

import csv
from collections.abc import Iterable
from pathlib import Path

from sslam.data.listing import DatasetLayoutError, FolderItem, clip_id_of


def clip_items(rows: Iterable[tuple[str, str, tuple[str, ...]]]) -> tuple[FolderItem, ...]:
    """(relative path, split, labels) -> items; a path listed again becomes a failed 'listed twice' row."""
    seen: dict[str, int] = {}
    out = []
    for rel, split, labels in rows:
        cid = clip_id_of(rel)
        seen[cid] = seen.get(cid, 0) + 1
        if seen[cid] == 1:
            out.append(FolderItem(cid, split, rel, labels, ""))
        else:
            out.append(FolderItem(f"{cid}__{seen[cid]}", split, rel, labels, f"listed twice: {rel} (kept once)"))
    return tuple(out)


def read_csv(path: Path, need: tuple[str, ...], delimiter: str = ",") -> list[dict[str, str]]:
    """A metadata table with a header, as rows; a missing file or column is named in the error."""
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: missing (expected the dataset's published metadata file)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in need if c not in header]
        if missing:
            raise DatasetLayoutError(f"{path}: missing column(s) {missing}; header is {header}")
        return list(reader)


def read_events(path: Path, name_col: str, label_col: str, delimiter: str = "\t") -> dict[str, set[str]]:
    """An event table with a header, one row per event -> {file: its event labels}; a row without a
    label still counts the file."""
    labels: dict[str, set[str]] = {}
    for r in read_csv(path, (name_col, label_col), delimiter=delimiter):
        labels.setdefault(r[name_col], set())
        if r[label_col]:
            labels[r[name_col]].add(r[label_col])
    return labels
