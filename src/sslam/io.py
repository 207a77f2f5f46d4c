"""Atomic file writes: a reader, or a later run, never sees a half-written file.

Everything is written to a temporary name in the destination folder and then renamed, which is atomic
on POSIX file systems; a killed process leaves at most a ``.tmp-*`` file that nothing takes for done.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf

TMP_PREFIX = ".tmp-"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_PREFIX + path.name + ".", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.chmod(tmp_path, 0o644)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def write_npz_atomic(path: str | Path, arrays: dict[str, np.ndarray]) -> None:
    """Uncompressed npz, renamed into place: a reader never sees half an archive."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)


def pcm16(audio: np.ndarray) -> np.ndarray:
    """Mono float audio in [-1, 1] -> int16 samples (x 32767, rounded, clipped): the corpus's one quantiser."""
    audio = np.asarray(audio)
    if audio.ndim != 1:
        raise ValueError(f"expected mono audio (1-D), got shape {audio.shape}")
    return np.clip(np.round(audio.astype(np.float64) * 32767.0), -32768, 32767).astype(np.int16)


def flac_bytes(audio: np.ndarray, sample_rate: int) -> bytes:
    """Mono float audio -> 16-bit FLAC bytes (deterministic: the same samples give the same bytes)."""
    buf = io.BytesIO()
    sf.write(buf, pcm16(audio), sample_rate, format="FLAC", subtype="PCM_16")
    return buf.getvalue()


def write_flac_atomic(path: str | Path, audio: np.ndarray, sample_rate: int) -> None:
    """Write mono float audio in [-1, 1] as 16-bit FLAC, byte for byte :func:`flac_bytes`."""
    try:
        data = flac_bytes(audio, sample_rate)
    except ValueError as err:
        raise ValueError(f"{path}: {err}") from None
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def remove_stale_temporaries(folder: str | Path) -> int:
    """Delete ``.tmp-*`` leftovers of a killed run; returns how many were removed."""
    removed = 0
    for p in Path(folder).rglob(TMP_PREFIX + "*"):
        if p.is_file():
            p.unlink()
            removed += 1
    return removed


def writable_in_place(path: str | Path) -> Path:
    """``path``, made safe to append to or rewrite in place: a symlink, or a file with other hard links (a
    DVC output under ``cache.type`` hardlink / symlink IS the cache object), is first replaced by a copy of
    its own (atomic rename), so the write reaches no other name. For small append logs; everything else is
    written whole by :func:`atomic_path`. Returns ``path``."""
    path = Path(path)
    if path.is_symlink() and not path.exists():
        path.unlink()  # a dangling link: nothing to keep
    elif path.is_symlink() or (path.is_file() and path.stat().st_nlink > 1):
        with atomic_path(path) as tmp:
            shutil.copyfile(path, tmp)
    return path
