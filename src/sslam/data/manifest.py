"""The per-split manifest every source ends in: the contract later stages read.

One CSV row per clip: ``clip_id, split, path, member, duration, sample_rate, labels, status, reason``.
``path`` is relative to the corpus folder: the tar shard holding the clip, with ``member`` its audio
member (``<key>.flac``, src/sslam/data/shards.py); or, in a corpus of the per-file layout (whose
manifests have no ``member`` column, still read), the clip's own FLAC; ``labels`` is a comma-joined
list of label ids (AudioSet mids for AudioSet); ``status`` is ``ok`` or ``failed`` with the ``reason``
(and an empty path) when the clip could not be used, so nothing a source was asked for silently
disappears.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from sslam.io import write_text_atomic

COLUMNS = ("clip_id", "split", "path", "member", "duration", "sample_rate", "labels", "status", "reason")
PER_FILE_COLUMNS = tuple(c for c in COLUMNS if c != "member")  # a corpus written before shards
STATUSES = ("ok", "failed")


@dataclass(frozen=True)
class ManifestRow:
    clip_id: str
    split: str
    path: str
    duration: float
    sample_rate: int
    labels: tuple[str, ...]
    status: str
    reason: str
    member: str = ""  # the audio member in the shard at ``path``; empty: ``path`` is the clip's own file


def format_manifest(rows: Sequence[ManifestRow]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(COLUMNS)
    for r in rows:
        if r.status not in STATUSES:
            raise ValueError(f"manifest row {r.clip_id}: status must be one of {STATUSES}, got {r.status!r}")
        w.writerow(
            [
                r.clip_id,
                r.split,
                r.path,
                r.member,
                f"{r.duration:.4f}",
                r.sample_rate,
                ",".join(r.labels),
                r.status,
                r.reason,
            ]
        )
    return buf.getvalue()


def write_manifest(path: str | Path, rows: Sequence[ManifestRow]) -> None:
    write_text_atomic(path, format_manifest(rows))


def read_manifest(path: str | Path, only_ok: bool = False) -> pd.DataFrame:
    """Load a manifest; ``labels`` becomes a list per row. Errors name the file and the column."""
    path = Path(path)
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    if tuple(df.columns) == PER_FILE_COLUMNS:
        df.insert(COLUMNS.index("member"), "member", "")
    if tuple(df.columns) != COLUMNS:
        raise ValueError(f"{path}: expected columns {','.join(COLUMNS)}, got {','.join(df.columns)}")
    bad = df.loc[~df["status"].isin(STATUSES), "status"]
    if len(bad):
        raise ValueError(f"{path}: column 'status' must be one of {STATUSES}, got {bad.iloc[0]!r}")
    df["duration"] = df["duration"].astype(float)
    df["sample_rate"] = df["sample_rate"].astype(int)
    df["labels"] = [[x for x in s.split(",") if x] for s in df["labels"]]
    if only_ok:
        df = df[df["status"] == "ok"].reset_index(drop=True)
    return df


def corpus_manifests(corpus: str | Path) -> dict[str, Path]:
    """Every manifest of a corpus folder, by clip-set name: AudioSet splits (``manifests/<split>.csv``)
    and tasks (``tasks/<task>/manifest.csv`` as ``tasks/<task>``)."""
    corpus = Path(corpus)
    sets = {p.stem: p for p in sorted((corpus / "manifests").glob("*.csv"))}
    sets.update({f"tasks/{p.parent.name}": p for p in sorted((corpus / "tasks").glob("*/manifest.csv"))})
    return sets


def write_failures(path: str | Path, rows: list[tuple[str, str, str, int]]) -> None:
    """The failures table: one row per clip that could not be used, with the reason and attempts made."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["clip_id", "source", "reason", "attempts"])
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())
