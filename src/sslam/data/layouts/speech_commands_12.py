"""The Speech Commands KS1 layout: 12 classes from v0.02 and its test-set archive (format
``speech_commands_12``)."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import soundfile as sf

from sslam.data.folder import one_line
from sslam.data.layouts import Layout
from sslam.data.layouts.speech_commands import list_speech_commands
from sslam.data.listing import DatasetLayoutError, FolderItem, Listing, clip_id_of

KS1_WORDS = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes")
UNKNOWN, SILENCE, BACKGROUND = "_unknown_", "_silence_", "_background_noise_"
KS1_TRAIN, KS1_TEST = "speech_commands_v0.02", "speech_commands_test_set_v0.02"


def silence_split(name: str, valid_percent: int = 10) -> str:
    """train or valid for a silence window, decided by a hash of its name as the archive's own README
    assigns speakers to lists (stable when files are added); ``valid_percent`` of the windows validate."""
    return "valid" if int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100 < valid_percent else "train"


def list_speech_commands_12(root: str | Path, window_seconds: float = 1.0) -> Listing:
    """KS1, 12 classes, as TFDS / HEAR build it from v0.02: the 10 command words, every other word as
    ``_unknown_``, and ``_silence_`` cut from ``_background_noise_/*.wav`` in consecutive 1 s windows
    (train or valid by :func:`silence_split`); train / valid from the archive's lists as KS2; test is the
    separate v0.02 test-set archive (12 folders, ``_silence_`` and ``_unknown_`` included). ``root`` holds
    both archives unpacked, as their names: ``speech_commands_v0.02/`` and
    ``speech_commands_test_set_v0.02/`` (one folder, so DVC tracks both)."""
    root = Path(root)
    train_root, test_root = root / KS1_TRAIN, root / KS1_TEST
    for path, what in ((train_root, "the v0.02 archive"), (test_root, "the v0.02 test-set archive")):
        if not path.is_dir():
            raise DatasetLayoutError(f"{path}: missing (speech_commands_12: root holds {what} unpacked here)")
    ks2 = list_speech_commands(train_root)
    classes = (*KS1_WORDS, UNKNOWN, SILENCE)
    folders = sorted(p.name for p in test_root.iterdir() if p.is_dir())
    strange = [f for f in folders if f not in classes]
    if strange or not folders:
        raise DatasetLayoutError(
            f"{test_root}: test folders {strange or folders} are not the 12 KS1 classes {list(classes)}"
        )
    items = [
        replace(i, source=f"{KS1_TRAIN}/{i.source}", labels=(i.labels[0] if i.labels[0] in KS1_WORDS else UNKNOWN,))
        for i in ks2.items
        if i.split != "test"
    ]
    noise = train_root / BACKGROUND
    for path in sorted(noise.glob("*.wav")) if noise.is_dir() else []:
        try:
            seconds = sf.info(str(path)).duration
        except RuntimeError as err:
            rel = f"{KS1_TRAIN}/{BACKGROUND}/{path.name}"
            items.append(FolderItem(clip_id_of(rel), "train", rel, (SILENCE,), f"decode error: {one_line(str(err))}"))
            continue
        for k in range(int(seconds // window_seconds)):
            cid = f"{clip_id_of(f'{BACKGROUND}/{path.name}')}__w{k:03d}"
            items.append(
                FolderItem(
                    cid,
                    silence_split(cid),
                    f"{KS1_TRAIN}/{BACKGROUND}/{path.name}",
                    (SILENCE,),
                    "",
                    k * window_seconds,
                    window_seconds,
                )
            )
    test = [
        FolderItem(clip_id_of(f"{KS1_TEST}/{c}/{f.name}"), "test", f"{KS1_TEST}/{c}/{f.name}", (c,), "")
        for c in folders
        for f in sorted((test_root / c).glob("*.wav"))
    ]
    return Listing("single_label", "train_valid_test", ("train", "valid", "test"), classes, (*items, *test))


LAYOUT = Layout(list_speech_commands_12, kind="single_label", protocol="train_valid_test")
