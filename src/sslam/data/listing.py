"""What a listing is, before any audio is read: one :class:`FolderItem` per listed file (the labels CSV
of the folder source, or a dataset's published metadata) and a dataset's :class:`Listing`. Standard
library only: the params check reaches it through the layout registry."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path


class DatasetLayoutError(ValueError):
    """The dataset folder does not have the published layout (a missing metadata file, a wrong header)."""


@dataclass(frozen=True)
class FolderItem:
    clip_id: str
    split: str
    source: str  # as written in the labels CSV
    labels: tuple[str, ...]
    problem: str  # non-empty: fails before decoding
    start_seconds: float = 0.0  # a window of the file (Speech Commands' silence cut from background noise)
    duration_seconds: float = 0.0  # 0: the whole file


def clip_id_of(path: str) -> str:
    """A clip's id: its path under the root without the suffix, ``/`` -> ``__``, any other character
    outside ``[A-Za-z0-9_.-]`` -> ``_`` (the labels CSV's files and every dataset layout's)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(Path(path).with_suffix("")).replace("/", "__")).strip("._-") or "clip"


@dataclass(frozen=True)
class Listing:
    """A dataset's clips as its publishers list them: the task's kind, protocol, splits and classes."""

    kind: str  # single_label | multi_label
    protocol: str  # cross_validation | train_valid_test | train_eval
    splits: tuple[str, ...]  # folds (cross_validation) or the split names, in order
    classes: tuple[str, ...]
    items: tuple[FolderItem, ...]

    def trains_on(self, split: str) -> bool:
        """Whether ``split`` holds training clips: every fold under cross-validation, else ``train``."""
        return self.protocol == "cross_validation" or split == "train"
