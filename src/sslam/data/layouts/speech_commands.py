"""The Speech Commands v0.02 layout, KS2: all 35 words (format ``speech_commands``)."""

from __future__ import annotations

from pathlib import Path

from sslam.data.layouts import DatasetLayoutError, Layout, Listing
from sslam.data.layouts._common import clip_items


def list_speech_commands(root: str | Path) -> Listing:
    """The unpacked Speech Commands v0.02 archive: word folders, ``validation_list.txt`` and
    ``testing_list.txt`` (relative paths, no header); KS2: all 35 words, train = every clip in neither
    list, ``_background_noise_`` excluded; test accuracy, model selected on valid."""
    root = Path(root)
    lists = {}
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        path = root / name
        if not path.is_file():
            raise DatasetLayoutError(f"{path}: missing (the archive ships validation_list.txt and testing_list.txt)")
        lists[split] = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if not words:
        raise DatasetLayoutError(f"{root}: no word folders")
    listed = {rel for rels in lists.values() for rel in rels}
    train = sorted(
        f"{w}/{f.name}"
        for w in words
        for f in (root / w).iterdir()
        if f.suffix == ".wav" and f"{w}/{f.name}" not in listed
    )
    rows = [(rel, "train", (rel.split("/")[0],)) for rel in train]
    for split in ("valid", "test"):
        rows += [(rel, split, (rel.split("/")[0],)) for rel in lists[split]]
    return Listing("single_label", "train_valid_test", ("train", "valid", "test"), tuple(words), clip_items(rows))


LAYOUT = Layout(list_speech_commands, kind="single_label", protocol="train_valid_test")
