"""The log-mel feature cache: sharded float16 arrays, memory-mapped by readers.

Layout under ``features_dir`` (one folder per clip set: each AudioSet split and each task):

    <set>/shard-00000.npy    float16 (clips, target_frames, mel): raw log-mel, zero-padded at the end
    <set>/shard-00000.json   that shard's rows (clip_id, frames before padding, labels) and failures;
                             written last, so a shard counts as done only when both files exist
    <set>/wave-00000.npy     int16 (clips, samples): the waveforms, when ``store_waveforms``
    <set>/index.csv          clip_id, split, shard, row, frames, samples, labels: one row per cached clip
                             (frames: valid log-mel frames; samples: valid waveform samples)
    <set>/failures.csv       clip_id, reason: clips that could not be decoded or are shorter than one
                             analysis window (never zero-filled)
    stats.json               mean and std over the valid frames of the statistics split (or pinned)

Stored values are NOT normalised: readers apply ``(x - mean) / (2 * std)`` (the reference's
normalisation, after zero padding). A shard is computed by one process and written by atomic rename; a
rerun keeps a finished shard only when what decided it is unchanged: the stage's code and params
(``inputs``, from :func:`sslam.provenance.stage_digest`), the shard's manifest rows and the content of
each of its audio files (SHA-256, remembered per file by size, mtime and inode). So a killed stage
resumes, and a changed clip recomputes its own shard and no other.
A clip costs target_frames x mel x 2 bytes: 1024 x 128 x 2 = 256 KiB for a 10 s AudioSet clip, so
AS-2M (about 2.0 M clips) needs about 500 GiB of features (plus 320 KiB per clip, 625 GiB, if
waveforms are stored for waveform mixing).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf
import torch
from tqdm import tqdm

from sslam.config.features import FeaturesConfig
from sslam.data.clip_lists import clip_list_summary
from sslam.data.manifest import corpus_manifests, read_manifest
from sslam.data.shards import ClipLocation, read_clip
from sslam.features.fbank import ClipTooShortError, log_mel
from sslam.features.stats import RunningStats, clip_stats
from sslam.io import atomic_path, remove_stale_temporaries, write_json_atomic, write_text_atomic
from sslam.provenance import HashCache, hash_cache_at

INDEX_COLUMNS = ("clip_id", "split", "shard", "row", "frames", "samples", "labels")


def num_samples_for(frames: int, sample_rate: int, shift_ms: float, length_ms: float) -> int:
    """Samples that give exactly ``frames`` Kaldi frames (snip_edges): length + (frames - 1) * shift."""
    shift = int(sample_rate * shift_ms / 1000)
    length = int(sample_rate * length_ms / 1000)
    return length + (frames - 1) * shift


def pad_or_crop(fbank: torch.Tensor, target_frames: int) -> torch.Tensor:
    """Zero-pad at the end or keep the first ``target_frames`` (the reference: no random crop)."""
    n = fbank.shape[0]
    if n >= target_frames:
        return fbank[:target_frames]
    return torch.nn.functional.pad(fbank, (0, 0, 0, target_frames - n))


def clip_features(wave: np.ndarray, sample_rate: int, cfg: FeaturesConfig) -> tuple[np.ndarray, int]:
    """(target_frames, mel) raw log-mel of ``features.front_end``, zero-padded, and the number of valid frames."""
    fb = log_mel(torch.from_numpy(wave), sample_rate, cfg)
    return pad_or_crop(fb, cfg.target_frames).numpy(), min(fb.shape[0], cfg.target_frames)


@dataclass(frozen=True)
class ShardJob:
    set_dir: str
    shard: int
    corpus: str
    rows: tuple[tuple[str, str, str, str, str], ...]  # clip_id, split, path, member, labels: all of one corpus shard
    sample_rate: int
    cfg: FeaturesConfig
    inputs: str = ""  # the stage's code and params digest
    hash_cache: str | None = None  # the file-hash table (sslam.provenance.HashCache)


def shard_inputs(job: ShardJob) -> str:
    """What decides a shard: the stage's code and params, the shard's rows and the content of the files
    holding its audio (the corpus shard, or each clip's own file in the per-file layout)."""
    cache = hash_cache_at(job.hash_cache)
    parts = [job.inputs, str(job.sample_rate)]
    contents: dict[str, str] = {}
    for clip_id, split, rel, member, labels in job.rows:
        if rel not in contents:
            try:
                contents[rel] = cache.file(Path(job.corpus) / rel)
            except OSError:  # a missing file: a failure row now, a recompute once it exists
                contents[rel] = "missing"
        parts += [clip_id, split, rel, member, labels, contents[rel]]
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:16]


def _decode(source: Path | bytes, sample_rate: int) -> np.ndarray:
    data, sr = sf.read(io.BytesIO(source) if isinstance(source, bytes) else str(source), dtype="int16", always_2d=True)
    if sr != sample_rate:
        raise ValueError(f"sample rate {sr} Hz, expected {sample_rate} Hz")
    if data.shape[1] != 1:
        raise ValueError(f"{data.shape[1]} channels, expected mono")
    if data.shape[0] == 0:
        raise ValueError("no samples")
    return data[:, 0]


def compute_shard(job: ShardJob) -> dict:
    """The shard's rows, failures and partial statistics: the finished shard on disk when it was made from
    the same inputs, else decoded, computed and written now."""
    digest = shard_inputs(job)
    set_dir = Path(job.set_dir)
    meta_file = set_dir / f"shard-{job.shard:05d}.json"
    files = [set_dir / f"shard-{job.shard:05d}.npy"] + (
        [set_dir / f"wave-{job.shard:05d}.npy"] * job.cfg.store_waveforms
    )
    if meta_file.is_file() and all(f.is_file() for f in files):
        meta = json.loads(meta_file.read_text())
        if meta.get("inputs") == digest:
            return meta
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # small per-clip FFTs: intra-op threads cost 3x more than they give (bench/features.py)
    try:
        return _compute_shard(job, digest)
    finally:
        torch.set_num_threads(threads)


def _compute_shard(job: ShardJob, digest: str) -> dict:
    cfg = job.cfg
    set_dir = Path(job.set_dir)
    n_samples = num_samples_for(cfg.target_frames, job.sample_rate, cfg.frame_shift_ms, cfg.frame_length_ms)
    feats, waves, rows, failures = [], [], [], []
    stats = RunningStats()
    members = _read_corpus_shard(job)
    for clip_id, split, rel, member, labels in job.rows:
        try:
            source = members[member] if member else Path(job.corpus) / rel  # every member is read or an error
            if isinstance(source, Exception):
                raise source
            pcm = _decode(source, job.sample_rate)
        except (sf.LibsndfileError, RuntimeError, ValueError, OSError) as err:
            failures.append((clip_id, " ".join(str(err).split())[:200]))
            continue
        try:
            fb, frames = clip_features(pcm.astype(np.float32) / 32768.0, job.sample_rate, cfg)
        except ClipTooShortError as err:  # no frame to cache: a failure row, as an undecodable clip is
            failures.append((clip_id, str(err)))
            continue
        feats.append(fb.astype(np.float16))
        stats = stats.merge(clip_stats(fb, frames))  # valid frames only: the rule TaskStore.train_stats shares
        if cfg.store_waveforms:
            w = np.zeros(n_samples, dtype=np.int16)
            w[: min(n_samples, len(pcm))] = pcm[:n_samples]
            waves.append(w)
        rows.append(
            {
                "clip_id": clip_id,
                "split": split,
                "row": len(rows),
                "frames": frames,
                "samples": min(n_samples, len(pcm)),
                "labels": labels,
            }
        )
    shape = (0, cfg.target_frames, cfg.num_mel_bins)
    _save_npy(set_dir / f"shard-{job.shard:05d}.npy", np.stack(feats) if feats else np.zeros(shape, np.float16))
    if cfg.store_waveforms:
        _save_npy(
            set_dir / f"wave-{job.shard:05d}.npy", np.stack(waves) if waves else np.zeros((0, n_samples), np.int16)
        )
    meta = {
        "shard": job.shard,
        "inputs": digest,
        "rows": rows,
        "failures": failures,
        "stats": {"count": stats.count, "mean": stats.mean, "m2": stats.m2},
    }
    write_json_atomic(set_dir / f"shard-{job.shard:05d}.json", meta)  # last: marks the shard done
    return meta


def _read_corpus_shard(job: ShardJob) -> dict[str, bytes | Exception]:
    """The audio members of the job's rows, in file order, from their one corpus shard: its member index is
    read once per process (``read_clip``), then each clip is a forward seek, so the jobs of one shard never
    rescan its headers. An unreadable or cut shard fails its missing clips, not the stage."""
    found: dict[str, bytes | Exception] = {}
    for _, _, rel, member, _ in job.rows:
        if member:
            try:
                found[member] = read_clip(job.corpus, ClipLocation(rel, member))
            except (OSError, ValueError) as err:
                found[member] = err
    return found


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)


def shard_batches(rows: Sequence[tuple[str, str, str, str, str]], shard_size: int) -> Iterator[tuple]:
    """Manifest rows cut into feature shards of at most ``shard_size`` clips, a new one wherever the corpus
    shard changes: each job reads one region of one corpus shard, front to back. Rows of the per-file
    layout (no member) are cut by size alone."""
    batch: list = []
    for row in rows:
        tar = row[2] if row[3] else None
        if batch and (len(batch) == shard_size or tar != (batch[-1][2] if batch[-1][3] else None)):
            yield tuple(batch)
            batch = []
        batch.append(row)
    if batch:
        yield tuple(batch)


def build_features(
    corpus: str | Path,
    out_dir: str | Path,
    cfg: FeaturesConfig,
    sample_rate: int,
    workers: int = 1,
    inputs: str = "",
    hash_cache: HashCache | None = None,
) -> dict:
    """Compute (or finish) the cache for every clip set; returns the summary for metrics. ``inputs``: the
    calling stage's code and params digest; a shard made from other inputs is recomputed."""
    corpus, out_dir = Path(corpus), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out_dir)
    sets = corpus_manifests(corpus)
    if not sets:
        raise FileNotFoundError(f"{corpus}: no manifests (run the download stage first)")
    present = {p.parent for p in out_dir.glob("**/shard-*.json")} | {p.parent for p in out_dir.glob("**/index.csv")}
    for d in present - {out_dir / name for name in sets}:  # sets that no longer exist in the corpus
        shutil.rmtree(d)
    cache_path = str(hash_cache.path) if hash_cache is not None and hash_cache.path is not None else None

    jobs: list[ShardJob] = []
    for name, manifest in sets.items():
        set_dir = out_dir / name
        set_dir.mkdir(parents=True, exist_ok=True)
        (set_dir / "fingerprint.json").unlink(missing_ok=True)  # an older cache's set-wide fingerprint
        df = read_manifest(manifest, only_ok=True)
        rows = [(r.clip_id, r.split, r.path, r.member, ",".join(r.labels)) for r in df.itertuples()]
        batches = list(shard_batches(rows, cfg.shard_size))
        shards = range(len(batches))
        for k, batch in enumerate(batches):
            jobs.append(ShardJob(str(set_dir), k, str(corpus), batch, sample_rate, cfg, inputs, cache_path))
        for f in set_dir.glob("*-[0-9][0-9][0-9][0-9][0-9].*"):  # shards past the end of a set that shrank
            if int(f.stem.rsplit("-", 1)[1]) >= len(shards):
                f.unlink()

    done: dict[str, list[dict]] = {name: [] for name in sets}
    bar = dict(total=len(jobs), desc="features (shards, finished ones checked)", unit="shard", mininterval=1.0)
    set_of = {str(out_dir / name): name for name in sets}
    if workers > 1 and len(jobs) > 1:
        # fork: workers inherit the imported modules (spawn re-imports torch, about 2 s per worker);
        # safe here because the parent has run no torch op, so no thread pool exists to be copied
        with get_context("fork").Pool(workers) as pool:
            for job, meta in zip(jobs, tqdm(pool.imap(compute_shard, jobs), **bar)):
                done[set_of[job.set_dir]].append(meta)
    else:
        for job in tqdm(jobs, **bar):
            done[set_of[job.set_dir]].append(compute_shard(job))

    summary: dict = {"sets": {}, "bytes_per_clip": cfg.target_frames * cfg.num_mel_bins * 2}
    all_stats: dict[str, RunningStats] = {}
    for name, metas in done.items():
        metas.sort(key=lambda m: m["shard"])
        _write_index(out_dir / name, metas)
        st = RunningStats()
        for m in metas:
            st = st.merge(RunningStats(m["stats"]["count"], m["stats"]["mean"], m["stats"]["m2"]))
        all_stats[name] = st
        summary["sets"][name] = {
            "clips": sum(len(m["rows"]) for m in metas),
            "failed": sum(len(m["failures"]) for m in metas),
            "shards": len(metas),
        }
        summary.setdefault("clip_lists", {})[name] = clip_list_summary(r["clip_id"] for m in metas for r in m["rows"])
    summary["stats"] = _stats(cfg, all_stats)
    write_json_atomic(out_dir / "stats.json", summary["stats"])
    return summary


def _stats(cfg: FeaturesConfig, per_set: dict[str, RunningStats]) -> dict:
    if cfg.norm_mean is not None and cfg.norm_std is not None:
        return {"mean": cfg.norm_mean, "std": cfg.norm_std, "source": "params"}
    split = cfg.stats_split if cfg.stats_split in per_set else next(iter(per_set))
    st = per_set[split]
    if st.count == 0:
        raise ValueError(f"features: split {split!r} has no decodable clips to compute statistics from")
    return {
        "mean": round(st.mean, 6),
        "std": round(st.std, 6),
        "source": f"computed over {split}",
        "frames": st.count // cfg.num_mel_bins,
    }


def _write_index(set_dir: Path, metas: Sequence[dict]) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(INDEX_COLUMNS)
    fails = io.StringIO()
    fw = csv.writer(fails, lineterminator="\n")
    fw.writerow(["clip_id", "reason"])
    for m in metas:
        for r in m["rows"]:
            w.writerow([r["clip_id"], r["split"], m["shard"], r["row"], r["frames"], r["samples"], r["labels"]])
        fw.writerows(m["failures"])
    write_text_atomic(set_dir / "index.csv", buf.getvalue())
    write_text_atomic(set_dir / "failures.csv", fails.getvalue())
