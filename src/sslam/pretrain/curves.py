"""The curves a pretraining run logs, read back.

dvclive writes one TSV per metric (``timestamp, step, <name>``) under ``<live_dir>/plots/metrics/<stage>/``;
the loop's timings file (``step, samples_per_s, memory_mb``) has the same shape. One reader for both, so
the stage's metrics summary and the report's loss plot see the same numbers.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

NOT_VALUES = ("timestamp", "step")  # the columns of a dvclive TSV that are not the metric


@dataclass(frozen=True)
class Curve:
    steps: list[int]
    values: list[float]


def read_curve(tsv: str | Path, column: str | None = None) -> Curve:
    """One TSV curve: ``column``, or a dvclive file's one value column (an empty file: an empty curve)."""
    with open(tsv) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        return Curve([], [])
    name = column or [c for c in rows[0] if c not in NOT_VALUES][0]
    return Curve([int(r["step"]) for r in rows], [float(r[name]) for r in rows])


def curves_folder(live_dir: str | Path, stage: str) -> Path:
    """Where dvclive puts a stage's curves (the loop logs them as ``<stage>/<name>``)."""
    return Path(live_dir) / "plots" / "metrics" / stage


def read_curves(folder: str | Path) -> dict[str, Curve]:
    """Every curve of a dvclive metrics folder (:func:`curves_folder`), by metric name, in file-name order."""
    return {tsv.stem: read_curve(tsv) for tsv in sorted(Path(folder).glob("*.tsv"))}


def curve_summary(values: list[float], window: int = 10) -> dict:
    """Mean of the first and of the last ``window`` logged values (did the loss fall?), and how many there are."""
    w = max(1, min(window, len(values) // 2))
    return {
        "first": round(sum(values[:w]) / w, 5),
        "last": round(sum(values[-w:]) / w, 5),
        "logged_steps": len(values),
    }
