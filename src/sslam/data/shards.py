"""The corpus's audio in tar shards of the WebDataset layout: a few thousand clips per file, so DVC
tracks a 2-million-clip corpus as a thousand files, and the ``webdataset`` library (and loaders built
on its layout) reads the shards as they are.

A clip is two consecutive members sharing a key: ``<key>.flac`` (16-bit mono FLAC) and ``<key>.json``
(clip id, split, labels, duration, sample rate, conversions). The key is the clip id with ``%`` and
``.`` escaped (WebDataset splits a member name at its first dot), so it maps back to the id.

Writing: clips are appended to an open shard ``shard-000007.tar.part``; when it holds
``clips_per_shard`` clips (or the writer closes) it gets tar's end blocks and is renamed to
``shard-000007.tar``. A sealed shard is never opened for writing again. A killed writer leaves only a
``.part``, which no manifest names; the next writer keeps its complete clips (cut after the last whole
pair) and goes on appending. Members carry fixed metadata (mtime 0, root, mode 0444), so the same clips
in the same order give the same bytes.

Written with ``tarfile``'s header encoder and plain appends rather than ``webdataset.TarWriter``: the
latter writes straight to its final name (a killed run leaves a shard that looks done), stamps the
current time into every member (the same clips would hash differently on every run, and DVC versions
the corpus by content) and cannot resume an open shard.
"""

from __future__ import annotations

import functools
import io
import json
import os
import re
import tarfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from sslam.data.manifest import ManifestRow

BLOCK = 512
RECORD = 20 * BLOCK  # tar(1)'s record size: a sealed shard's length is a multiple of it
OPEN_SUFFIX = ".part"
AUDIO_EXT = "flac"
META_EXT = "json"


@dataclass(frozen=True, slots=True)
class ClipLocation:
    """Where a clip's audio is: a tar shard (relative to the corpus) and its member, or a plain file
    (``member`` empty: a corpus of the per-file layout)."""

    path: str
    member: str


@dataclass(frozen=True)
class ShardClip:
    key: str
    meta: dict
    flac: bytes


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """One clip found in (or just written to) a shard, without its audio: what a resumed source needs.
    Kept per clip for a whole split, so it is small (the shard's path string is shared)."""

    clip_id: str
    location: ClipLocation
    duration: float


def member_key(clip_id: str) -> str:
    """The WebDataset key of a clip: its id with ``%`` -> ``%25`` and ``.`` -> ``%2E`` (reversible)."""
    return clip_id.replace("%", "%25").replace(".", "%2E")


def clip_id_of_key(key: str) -> str:
    return key.replace("%2E", ".").replace("%25", "%")


def shard_name(prefix: str, index: int) -> str:
    return f"{prefix}-{index:06d}.tar"


def _header(name: str, size: int) -> bytes:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")


def member_bytes(name: str, data: bytes) -> bytes:
    """One tar member: header, data, zero padding to the next 512-byte block."""
    return _header(name, len(data)) + data + b"\0" * (-len(data) % BLOCK)


def clip_bytes(clip_id: str, flac: bytes, meta: dict) -> bytes:
    """A clip's two members, audio first."""
    key = member_key(clip_id)
    body = json.dumps({"clip_id": clip_id, **meta}, sort_keys=True).encode()
    return member_bytes(f"{key}.{AUDIO_EXT}", flac) + member_bytes(f"{key}.{META_EXT}", body)


def _complete_members(path: Path) -> Iterator[tarfile.TarInfo]:
    """The members of a tar (sealed or open) whose data lies wholly in the file, in file order; stops at
    a cut header or cut data (the end of a killed writer's shard)."""
    size = path.stat().st_size
    if size == 0:
        return
    try:
        with tarfile.open(path, "r:", ignore_zeros=False) as tar:
            while True:
                try:
                    info = tar.next()
                except tarfile.ReadError:
                    return
                if info is None or info.offset_data + info.size > size:
                    return
                yield info
    except tarfile.ReadError:
        return


def _split_name(name: str) -> tuple[str, str]:
    base, _, ext = name.rpartition("/")[2].partition(".")
    return base, ext


def scan_shard(path: Path, corpus_root: Path) -> tuple[list[ShardEntry], int]:
    """The complete clips of a shard (each with its JSON) and the byte offset where the last one ends."""
    rel = path.relative_to(corpus_root).as_posix()
    if rel.endswith(OPEN_SUFFIX):
        rel = rel[: -len(OPEN_SUFFIX)]
    entries: list[ShardEntry] = []
    end = 0
    pending: dict[str, tarfile.TarInfo] = {}
    with open(path, "rb") as f:
        for info in _complete_members(path):
            key, ext = _split_name(info.name)
            pending[ext] = info
            if ext != META_EXT:
                continue
            audio = pending.pop(AUDIO_EXT, None)
            pending.clear()
            if audio is None or _split_name(audio.name)[0] != key:
                continue
            f.seek(info.offset_data)
            meta = json.loads(f.read(info.size))
            clip_id = meta.get("clip_id", clip_id_of_key(key))
            entries.append(ShardEntry(clip_id, ClipLocation(rel, audio.name), float(meta.get("duration", 0.0))))
            end = info.offset_data + info.size + (-info.size % BLOCK)
    return entries, end


class ShardWriter:
    """Appends clips to the shards of one folder (``audio/<split>``); see the module docstring.

    ``written`` holds every clip already in the folder's shards, sealed or open, so a resumed source
    skips them. Use as a context manager: a clean exit seals the open shard, an exception leaves it
    open for the next writer to continue.
    """

    def __init__(self, folder: str | Path, corpus_root: str | Path, clips_per_shard: int, prefix: str = "shard"):
        if clips_per_shard < 1:
            raise ValueError(f"clips_per_shard must be at least 1, got {clips_per_shard}")
        self.folder, self.root = Path(folder), Path(corpus_root)
        self.clips_per_shard, self.prefix = clips_per_shard, prefix
        self.folder.mkdir(parents=True, exist_ok=True)
        self.written: dict[str, ShardEntry] = {}
        pattern = re.compile(rf"{re.escape(prefix)}-(\d{{6}})\.tar({re.escape(OPEN_SUFFIX)})?")
        sealed, parts = [], []
        for p in self.folder.iterdir():
            m = pattern.fullmatch(p.name)
            if m:
                (parts if m.group(2) else sealed).append((int(m.group(1)), p))
        for _, p in sorted(sealed):
            self._remember(scan_shard(p, self.root)[0])
        self._next = max((i for i, _ in sealed), default=-1) + 1
        self._open: Path | None = None
        self._rel = ""  # the open shard's path relative to the corpus, as manifests name it
        self._count = 0
        for i, p in sorted(parts):  # a killed writer's open shard: keep its whole clips, go on appending
            entries, end = scan_shard(p, self.root)
            if not entries:
                p.unlink()
                continue
            self._next = max(self._next, i + 1)
            os.truncate(p, end)  # never a committed output: .part files exist only while a source runs
            self._remember(entries)
            if self._open is None and len(entries) < clips_per_shard:
                self._open, self._count = p, len(entries)
                self._rel = entries[0].location.path
            else:
                self._seal(p)

    def _remember(self, entries: Iterable[ShardEntry]) -> None:
        for e in entries:
            self.written[e.clip_id] = e

    def add(self, clip_id: str, flac: bytes, meta: dict) -> ClipLocation:
        """Append one clip; returns where it now lives."""
        if clip_id in self.written:
            raise ValueError(f"{self.folder}: clip {clip_id!r} is already in {self.written[clip_id].location.path}")
        if self._open is None:
            self._open = self.folder / (shard_name(self.prefix, self._next) + OPEN_SUFFIX)
            self._next += 1
            self._count = 0
            self._rel = self._open.relative_to(self.root).as_posix()[: -len(OPEN_SUFFIX)]  # one string per shard
        with open(self._open, "ab") as f:
            f.write(clip_bytes(clip_id, flac, meta))
        location = ClipLocation(self._rel, f"{member_key(clip_id)}.{AUDIO_EXT}")
        self.written[clip_id] = ShardEntry(clip_id, location, float(meta.get("duration", 0.0)))
        self._count += 1
        if self._count >= self.clips_per_shard:
            self._seal(self._open)
            self._open = None
        return location

    def _seal(self, part: Path) -> None:
        """End blocks, pad to a whole record, flush to disk, rename: the shard now looks done, and is."""
        with open(part, "ab") as f:
            length = f.tell() + 2 * BLOCK
            f.write(b"\0" * (2 * BLOCK + (-length % RECORD)))
            f.flush()
            os.fsync(f.fileno())
        os.replace(part, part.with_name(part.name[: -len(OPEN_SUFFIX)]))

    def close(self) -> None:
        if self._open is not None:
            self._seal(self._open)
            self._open = None

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close()


def iter_shard(path: str | Path) -> Iterator[ShardClip]:
    """Every clip of a sealed shard, in file order (one sequential pass)."""
    path = Path(path)
    with open(path, "rb") as f:
        audio: tuple[str, bytes] | None = None
        for info in _complete_members(path):
            key, ext = _split_name(info.name)
            f.seek(info.offset_data)
            data = f.read(info.size)
            if ext == AUDIO_EXT:
                audio = (key, data)
            elif ext == META_EXT and audio is not None and audio[0] == key:
                yield ShardClip(key, json.loads(data), audio[1])
                audio = None


@functools.lru_cache(maxsize=64)
def _member_index(path: str, mtime_ns: int, size: int) -> dict[str, tuple[int, int]]:
    """member name -> (data offset, size) of a shard, kept for the shard's current version (mtime, size)."""
    return {info.name: (info.offset_data, info.size) for info in _complete_members(Path(path))}


def read_clip(corpus_root: str | Path, location: ClipLocation) -> bytes:
    """The encoded audio of one clip: a member of a shard (found through the shard's member index, read
    once per shard and kept, so random access costs one seek), or a plain file of the per-file layout."""
    path = Path(corpus_root) / location.path
    if not location.member:
        return path.read_bytes()
    if path.name.endswith(OPEN_SUFFIX):
        raise ValueError(f"{path}: an open shard (a source is writing it or was killed); only sealed shards are read")
    st = path.stat()
    where = _member_index(str(path), st.st_mtime_ns, st.st_size).get(location.member)
    if where is None:
        raise FileNotFoundError(f"{path}: no member {location.member!r}")
    with open(path, "rb") as f:
        f.seek(where[0])
        return f.read(where[1])


def read_audio(corpus_root: str | Path, path: str, member: str = "", dtype: str = "float32") -> tuple:
    """A clip's samples and rate, from a manifest row's ``path`` and ``member`` (either layout)."""
    import soundfile as sf

    return sf.read(io.BytesIO(read_clip(corpus_root, ClipLocation(path, member))), dtype=dtype)


def clip_meta(row: ManifestRow) -> dict:
    """A clip's JSON member: what its manifest row says of it, so a shard stands on its own."""
    return {
        "split": row.split,
        "labels": list(row.labels),
        "duration": round(row.duration, 4),
        "sample_rate": row.sample_rate,
        "conversions": row.reason,
    }


def add_clip(writer: ShardWriter, row: ManifestRow, flac: bytes) -> ManifestRow:
    """Append an ``ok`` clip to ``writer``; returns its manifest row pointing at the shard and member."""
    location = writer.add(row.clip_id, flac, clip_meta(row))
    return replace(row, path=location.path, member=location.member)
