"""`download.source: folder`: ingest an audio folder a lab already holds, plus a labels CSV.

Each file is decoded (soundfile, else the ffmpeg binary from imageio-ffmpeg), mixed down to mono BEFORE
resampling (as the reference code does), truncated to ``max_seconds``, resampled to the corpus rate and
appended as 16-bit FLAC to the split's tar shards (src/sslam/data/shards.py). A file that cannot be used (missing, empty,
corrupt, shorter than one analysis window, silent, outside the folder, unknown label) becomes a ``failed``
manifest row and a row in the failures table with the reason; one bad file never stops the stage.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from contextlib import ExitStack
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import pandas as pd
import soundfile as sf
from tqdm import tqdm

from sslam.config.data import FolderConfig
from sslam.data import audioset_format as fmt
from sslam.data.clip_length import ClipTooShortError, check_clip_length
from sslam.data.listing import FolderItem, clip_id_of
from sslam.data.manifest import ManifestRow, write_failures, write_manifest
from sslam.data.shards import ShardWriter, add_clip
from sslam.io import atomic_path, flac_bytes

LABEL_COLUMNS = ("filename", "labels")
DEFAULT_SPLIT = "unbalanced"
SPLIT_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# the download stage reads no features params: its clips must fill one window of the reference front end
# (the Kaldi fbank's 25 ms, params.yaml's features.frame_length_ms); the dataset stage passes its own
DEFAULT_FRAME_LENGTH_MS = 25.0


class FolderSourceError(ValueError):
    """The folder source's inputs cannot be used at all (not one bad file: that is recorded, not raised)."""


@dataclass(frozen=True)
class IngestResult:
    row: ManifestRow
    notes: tuple[str, ...]  # conversions applied: resampled, downmixed, truncated, clipped
    flac: bytes = b""  # the converted clip (16-bit mono FLAC), for an ``ok`` row of :func:`prepare_clip`


def decode_audio(path: Path) -> tuple[np.ndarray, int]:
    """Return (frames x channels float64, rate). soundfile first; ffmpeg for what libsndfile cannot read."""
    try:
        data, rate = sf.read(str(path), dtype="float64", always_2d=True)
        return data, int(rate)
    except (sf.LibsndfileError, RuntimeError, TypeError) as sf_err:
        try:
            return _decode_with_ffmpeg(path)
        except RuntimeError as ff_err:
            raise RuntimeError(f"soundfile: {sf_err}; ffmpeg: {ff_err}") from None


def _decode_with_ffmpeg(path: Path) -> tuple[np.ndarray, int]:
    import imageio_ffmpeg

    exe = imageio_ffmpeg.get_ffmpeg_exe()
    # probe the native rate and channel count, then decode to float32 at that rate
    probe = subprocess.run([exe, "-nostdin", "-hide_banner", "-i", str(path.resolve())], capture_output=True, text=True)
    m = re.search(r"Audio: [^\n]*?(\d+) Hz, ([^,\n]+)", probe.stderr)
    if not m:
        last = probe.stderr.strip().splitlines()[-1:] or ["no audio stream"]
        raise RuntimeError(last[0])
    rate = int(m.group(1))
    layout = m.group(2).strip()
    channels = {"mono": 1, "stereo": 2}.get(layout.split("(")[0].strip())
    if channels is None:
        cm = re.match(r"(\d+) channels", layout)
        channels = int(cm.group(1)) if cm else 2
    out = subprocess.run(
        [exe, "-nostdin", "-v", "error", "-i", str(path.resolve()), "-f", "f32le", "-acodec", "pcm_f32le", "-"],
        capture_output=True,
    )
    if out.returncode != 0:
        raise RuntimeError(out.stderr.decode(errors="replace").strip()[-300:] or f"exit {out.returncode}")
    data = np.frombuffer(out.stdout, dtype="<f4").astype(np.float64)
    return data[: len(data) - len(data) % channels].reshape(-1, channels), rate


def resample(audio: np.ndarray, orig: int, target: int) -> np.ndarray:
    if orig == target:
        return audio
    import torch
    import torchaudio.functional as AF

    return AF.resample(torch.from_numpy(audio), orig, target).numpy()


def to_mono(
    data: np.ndarray, rate: int, sample_rate: int, max_seconds: float | None = None
) -> tuple[np.ndarray, list[str]]:
    """(frames x channels) at ``rate`` -> mono at ``sample_rate``, cut to ``max_seconds``, and the
    conversions applied (downmixed, truncated, resampled)."""
    notes = []
    if data.shape[1] > 1:
        notes.append("downmixed")
    mono = data.mean(axis=1)
    if max_seconds is not None and len(mono) > int(max_seconds * rate):
        mono = mono[: int(max_seconds * rate)]
        notes.append("truncated")
    if rate != sample_rate:
        mono = resample(mono, rate, sample_rate)
        notes.append("resampled")
    return mono, notes


def clip_path(item: FolderItem) -> str:
    """Where a dataset's converted clip lives as its own file: ``audio/<split>/<clip id>.flac``."""
    return f"audio/{item.split}/{item.clip_id}.flac"


def convert_file(
    item: FolderItem,
    audio_dir: Path,
    out_dir: Path,
    sample_rate: int,
    max_seconds: float,
    silence_dbfs: float,
    frame_length_ms: float = DEFAULT_FRAME_LENGTH_MS,
) -> IngestResult:
    """:func:`prepare_clip`, written as its own FLAC at ``out_dir / clip_path(item)`` (a dataset's clips)."""
    result = prepare_clip(item, audio_dir, sample_rate, max_seconds, silence_dbfs, frame_length_ms)
    if result.row.status != "ok":
        return result
    rel = clip_path(item)
    with atomic_path(out_dir / rel) as tmp:
        tmp.write_bytes(result.flac)
    return IngestResult(replace(result.row, path=rel), result.notes)


def prepare_clip(
    item: FolderItem,
    audio_dir: Path,
    sample_rate: int,
    max_seconds: float,
    silence_dbfs: float,
    frame_length_ms: float = DEFAULT_FRAME_LENGTH_MS,
) -> IngestResult:
    """Turn one listed file into a corpus clip (FLAC bytes and its row, path not yet set), or a failed row
    saying why. A clip shorter than one ``frame_length_ms`` analysis window at ``sample_rate`` has no
    log-mel frame: it fails here."""

    def failed(reason: str) -> IngestResult:
        return IngestResult(
            ManifestRow(item.clip_id, item.split, "", 0.0, sample_rate, item.labels, "failed", reason), ()
        )

    if item.problem:
        return failed(item.problem)
    src = audio_dir / item.source
    if not src.is_file():
        return failed("missing: no such file in audio_dir")
    if src.stat().st_size == 0:
        return failed("empty: file has 0 bytes")
    try:
        data, rate = decode_audio(src)
    except RuntimeError as err:
        return failed(f"decode error: {one_line(str(err))}")
    if data.shape[0] == 0:
        return failed("empty: no audio samples")
    if not np.isfinite(data).all():
        return failed("corrupt: non-finite samples")
    if item.duration_seconds > 0:
        first = int(round(item.start_seconds * rate))
        data = data[first : first + int(round(item.duration_seconds * rate))]
    mono, notes = to_mono(data, rate, sample_rate, max_seconds)
    try:
        check_clip_length(len(mono), sample_rate, frame_length_ms)
    except ClipTooShortError as err:
        return failed(str(err))
    rms = float(np.sqrt(np.mean(mono**2)))
    rms_db = 20 * np.log10(rms) if rms > 0 else -np.inf
    if rms_db < silence_dbfs:
        return failed(f"silent: RMS {rms_db:.1f} dBFS is below silence_dbfs {silence_dbfs:.1f}")
    over = int(np.count_nonzero(np.abs(mono) > 1.0))
    detail = ""
    if over:  # float input beyond full scale: 16-bit FLAC cannot hold it, so it is clipped, and said so
        notes.append("clipped")
        detail = f" ({over} of {len(mono)} samples, {100 * over / len(mono):.1f}%, beyond full scale)"
    flac = flac_bytes(np.clip(mono, -1.0, 1.0), sample_rate)
    reason = f"converted: {', '.join(notes)}{detail}" if notes else ""
    row = ManifestRow(item.clip_id, item.split, "", len(mono) / sample_rate, sample_rate, item.labels, "ok", reason)
    return IngestResult(row, tuple(notes), flac)


def one_line(text: str) -> str:
    return " ".join(text.split())[:300]


def read_labels_csv(path: Path, audio_dir: Path, known: dict[str, str] | None) -> list[FolderItem]:
    """Parse the labels CSV; a row that cannot be used is kept with its problem, not dropped."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
        raise FolderSourceError(f"{path}: cannot parse as CSV: {one_line(str(err))}") from None
    missing = [c for c in LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise FolderSourceError(
            f"{path}: missing column(s) {missing}; expected 'filename,labels[,split]', got {list(df.columns)}"
        )
    root = audio_dir.resolve()
    items: list[FolderItem] = []
    seen: Counter[str] = Counter()
    for lineno, rec in enumerate(df.to_dict("records"), start=2):
        name = rec["filename"].strip()
        split = (rec.get("split") or DEFAULT_SPLIT).strip()
        stem = clip_id_of(name)
        seen[stem] += 1
        clip_id = stem if seen[stem] == 1 else f"{stem}__{seen[stem]}"
        raw_labels = [x.strip() for x in rec["labels"].split(",") if x.strip()]
        problem = ""
        if not name:
            problem = f"bad row: line {lineno} has an empty filename"
        elif Path(name).is_absolute() or not (root / name).resolve().is_relative_to(root):
            problem = f"unsafe path: {name!r} points outside audio_dir"
        elif not SPLIT_RE.match(split):
            problem = f"bad split: {split!r} on line {lineno}; use lower-case letters, digits and '_'"
        labels: list[str] = []
        for lab in raw_labels:
            if known is None:
                labels.append(lab)
            elif lab in known:
                labels.append(known[lab])
            else:
                problem = problem or f"unknown label: {lab!r} is neither an id nor a name in the ontology"
        items.append(FolderItem(clip_id, split, name, tuple(dict.fromkeys(labels)), problem))
    return items


def _prepare_star(args: tuple) -> IngestResult:
    return prepare_clip(*args)


def ingest_folder(
    cfg: FolderConfig,
    out_dir: str | Path,
    sample_rate: int,
    failures_csv: str | Path,
    clips_per_shard: int,
    workers: int = 1,
    frame_length_ms: float = DEFAULT_FRAME_LENGTH_MS,
) -> dict:
    """Convert every listed file into the corpus's shards (``audio/<split>/shard-*.tar``, in the labels CSV's
    order), write the manifests, ontology and class index; returns the summary for metrics."""
    out_dir = Path(out_dir)
    audio_dir, labels_csv = Path(cfg.audio_dir), Path(cfg.labels_csv)
    if not audio_dir.is_dir():
        raise FolderSourceError(f"download.folder.audio_dir: {audio_dir} is not a folder")
    if not labels_csv.is_file():
        raise FolderSourceError(f"download.folder.labels_csv: {labels_csv} does not exist")

    known: dict[str, str] | None = None
    if cfg.ontology_json:
        nodes = fmt.read_ontology(cfg.ontology_json)
        known = {n.id: n.id for n in nodes} | {n.name: n.id for n in nodes}
    items = read_labels_csv(labels_csv, audio_dir, known)

    jobs = [(it, audio_dir, sample_rate, cfg.max_seconds, cfg.silence_dbfs, frame_length_ms) for it in items]
    bar = dict(total=len(jobs), desc="ingesting files", unit="file", mininterval=1.0)
    results: list[IngestResult] = []
    writers: dict[str, ShardWriter] = {}
    with ExitStack() as stack:
        if workers > 1:  # fork: inherit imports; no torch op ran in the parent
            pool = stack.enter_context(get_context("fork").Pool(workers))
            prepared = pool.imap(_prepare_star, jobs, chunksize=4)
        else:
            prepared = map(_prepare_star, jobs)
        for result in tqdm(prepared, **bar):  # written as they come, in order: memory holds rows, not audio
            row = result.row
            if row.status == "ok":
                if row.split not in writers:
                    writers[row.split] = ShardWriter(out_dir / "audio" / row.split, out_dir, clips_per_shard)
                row = add_clip(writers[row.split], row, result.flac)
            results.append(IngestResult(row, result.notes))
        for writer in writers.values():
            writer.close()

    # ontology and class index: the given ontology, or a flat one made of the labels seen
    used = sorted({lab for r in results for lab in r.row.labels})
    if cfg.ontology_json:
        nodes = fmt.read_ontology(cfg.ontology_json)
        with atomic_path(out_dir / "ontology.json") as tmp:
            shutil.copyfile(cfg.ontology_json, tmp)
        classes = [(n.id, n.name) for n in nodes if "abstract" not in n.restrictions and n.id in set(used)]
    else:
        fmt.write_ontology(out_dir / "ontology.json", [fmt.OntologyNode(id=lab, name=lab) for lab in used])
        classes = [(lab, lab) for lab in used]
    fmt.write_class_labels(out_dir / "class_labels_indices.csv", classes)

    splits = sorted({r.row.split for r in results})
    for split in splits:
        write_manifest(out_dir / "manifests" / f"{split}.csv", [r.row for r in results if r.row.split == split])
    failures = [r.row for r in results if r.row.status == "failed"]
    write_failures(
        failures_csv,
        [(f.clip_id, it.source, f.reason, 1) for f, it in zip((r.row for r in results), items) if f.status == "failed"],
    )

    reasons = Counter(f.reason.split(":")[0] for f in failures)
    notes = Counter(n for r in results for n in r.notes)
    return {
        "source": "folder",
        "num_clips": len(results) - len(failures),
        "requested": len(results),
        "failed": len(failures),
        "failed_by_reason": dict(sorted(reasons.items())),
        "converted": dict(sorted(notes.items())),
        "num_label_classes": len(classes),
        "splits": {s: {"clips": sum(r.row.split == s and r.row.status == "ok" for r in results)} for s in splits},
    }
