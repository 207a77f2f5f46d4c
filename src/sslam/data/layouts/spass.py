"""The SPASS layout, one environment per task (format ``spass``; its params key: ``environment``)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, get_args

from sslam.config.base import Section
from sslam.data.layouts import DatasetLayoutError, Layout, Listing
from sslam.data.layouts._common import clip_items, read_events

Environment = Literal["Market", "Park", "Square", "Street", "Waterfront"]
SPASS_ENVIRONMENTS: tuple[str, ...] = get_args(Environment)  # in order: the k of <k>_MatrixLabels<Env>.csv


class SpassOptions(Section):
    """``datasets.<name>.environment``: which of the five SPASS environments the task is."""

    environment: Environment


def list_spass(root: str | Path, environment: str) -> Listing:
    """SPASS: one folder per environment (``<Env>/<env>NNNNN.wav``) and
    ``SPASS_META_DATA/<k>_MatrixLabels<Env>.csv`` (``audio_filename``, ``class``: one row per event).
    Clip labels = the set of its event classes; the reference's split: the sorted unique files, the first
    75% train, the last 25% eval."""
    if environment not in SPASS_ENVIRONMENTS:
        raise DatasetLayoutError(f"SPASS environment must be one of {SPASS_ENVIRONMENTS}, got {environment!r}")
    root = Path(root)
    k = SPASS_ENVIRONMENTS.index(environment) + 1
    meta = root / "SPASS_META_DATA" / f"{k}_MatrixLabels{environment}.csv"
    labels = read_events(meta, "audio_filename", "class", delimiter=",")
    files = sorted(labels)
    cut = int(0.75 * len(files))
    rows = [
        (f"{environment}/{name}", "train" if i < cut else "eval", tuple(sorted(labels[name])))
        for i, name in enumerate(files)
    ]
    classes = sorted({lab for v in labels.values() for lab in v})
    return Listing("multi_label", "train_eval", ("train", "eval"), tuple(classes), clip_items(rows))


LAYOUT = Layout(list_spass, options=SpassOptions, kind="multi_label", protocol="train_eval")
