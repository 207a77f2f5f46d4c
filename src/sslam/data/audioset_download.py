"""`download.source: audioset`: the label files, then every segment through yt-dlp and ffmpeg.

Built for AS-2M scale (2 million segments on many machines, over days):
- a thread pool (downloads wait on the network; ffmpeg runs as a subprocess), ``--shard i/N`` by a
  stable hash of the YouTube id so N machines split one list without overlap;
- clips go into the split's tar shards (src/sslam/data/shards.py) in the segment list's order, whatever
  order the threads finish in, so a resumed download writes the same shards as an uninterrupted one;
- resume: a segment already in a shard (sealed, or the complete clips of a killed run's open shard) is
  skipped; a shard is sealed by atomic rename, so a killed run never leaves one that looks done; FLACs
  of a corpus written before shards (``audio/<split>/<clip id>.flac``) are packed into shards, not
  fetched again;
- transient errors (HTTP 429 and 5xx, dropped connections, timeouts, bot checks) are retried with
  exponential backoff and jitter under a shared rate limit; permanent ones (unavailable, private,
  removed, 404) are recorded once in ``state/permanent_failures.jsonl`` and never retried (a run
  appends to a journal beside it and folds it in by atomic rewrite at the end: a file DVC has cached,
  and may have linked into the workspace, is never written in place);
- ids come from an untrusted CSV: anything but an 11-character YouTube id is rejected before any tool
  sees it, ids only reach yt-dlp inside a URL built from the template, and every path handed to ffmpeg
  is absolute, so an id starting with '-' can never be read as an option.

The URL template (``download.audioset.url_template``, default ``https://www.youtube.com/watch?v={ytid}``)
takes ``{ytid}``; tests point it at a loopback HTTP server serving media files, which yt-dlp's generic
extractor downloads like any direct media URL.
"""

from __future__ import annotations

import io
import itertools
import json
import random
import re
import shutil
import subprocess
import threading
import time
import urllib.request
import zlib
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import soundfile as sf
from tqdm import tqdm

from sslam.config.data import AudiosetConfig
from sslam.data import audioset_format as fmt
from sslam.data.manifest import ManifestRow, write_manifest
from sslam.data.shards import ShardWriter, add_clip
from sslam.io import TMP_PREFIX, atomic_path, write_text_atomic

YTID_RE = re.compile(r"^[A-Za-z0-9_-]{11}$")
MAX_SEGMENT_SECONDS = 60.0
STATE_DIR = "state"
PERMANENT_LOG = "permanent_failures.jsonl"
PERMANENT_JOURNAL = "permanent_failures.journal.jsonl"  # this run's additions; folded into PERMANENT_LOG at the end
WINDOW_PER_WORKER = 64  # segments submitted ahead of the oldest unwritten one, per worker (bounds the reorder buffer)
DOWNLOAD_TMP = ".tmp-download"

# (pattern, reason, permanent) checked in order against yt-dlp's and ffmpeg's messages
ERROR_RULES: tuple[tuple[str, str, bool], ...] = (
    (r"HTTP Error 429|Too Many Requests", "rate_limited", False),
    (r"confirm you.?re not a bot", "bot_check", False),
    (r"Private video", "private", True),
    (r"account associated with this video has been terminated|has been terminated", "terminated", True),
    (r"removed by the uploader|has been removed|video has been removed", "removed", True),
    (r"copyright", "copyright", True),
    (r"not available in your country|geo.?restrict", "geo_blocked", True),
    (r"confirm your age|age.?restricted", "age_restricted", True),
    (r"members.?only|Join this channel", "members_only", True),
    (r"Video unavailable|This video is unavailable|is not available", "unavailable", True),
    (r"HTTP Error 40[4]|HTTP Error 410|Not Found", "not_found", True),
    (r"Unsupported URL", "unsupported_url", True),
    (r"HTTP Error 5\d\d", "server_error", False),
    (r"HTTP Error 403", "forbidden", False),
    (r"timed out|Timeout", "timeout", False),
    (r"IncompleteRead|bytes read, \d+ more expected|Content.?Too.?Short|Did not get any data|Connection reset|Remote end closed|"
     r"Connection aborted|Connection refused|incomplete|EOF occurred|Broken pipe", "network", False),
)


@dataclass(frozen=True)
class Outcome:
    clip_id: str
    status: str  # ok | skipped (already present) | failed
    reason: str  # failure reason code with detail, '' when ok
    attempts: int
    permanent: bool = False
    flac: bytes = b""  # the converted segment, when ok


def clip_id_of(seg: fmt.Segment) -> str:
    return f"{seg.ytid}_{int(round(seg.start_seconds * 1000))}"


def validate_segment(seg: fmt.Segment) -> str:
    """'' when the segment may be fetched, else why not (the id and times come from an untrusted CSV)."""
    if not YTID_RE.match(seg.ytid):
        return f"invalid id {seg.ytid[:40]!r}: a YouTube id is 11 characters of A-Z a-z 0-9 _ -"
    if not (0 <= seg.start_seconds < seg.end_seconds) or seg.end_seconds - seg.start_seconds > MAX_SEGMENT_SECONDS:
        return f"invalid times [{seg.start_seconds}, {seg.end_seconds}): need 0 <= start < end, at most {MAX_SEGMENT_SECONDS:.0f} s"
    return ""


def classify_error(message: str) -> tuple[str, bool]:
    """(reason code, permanent?) for a download or conversion error message."""
    for pattern, reason, permanent in ERROR_RULES:
        if re.search(pattern, message, flags=re.IGNORECASE):
            return reason, permanent
    return "other", False


def backoff_delay(attempt: int, base_s: float, cap_s: float, rng: random.Random) -> float:
    """Exponential backoff with full-range jitter: base * 2**attempt, capped, times U(0.5, 1.5)."""
    return min(cap_s, base_s * 2.0**attempt) * rng.uniform(0.5, 1.5)


def shard_of(ytid: str, num_shards: int) -> int:
    """Stable across machines and list orders: N machines with the same list never overlap."""
    return zlib.crc32(ytid.encode()) % num_shards


def parse_shard(text: str) -> tuple[int, int]:
    m = re.fullmatch(r"(\d+)/(\d+)", text.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        raise ValueError(f"--shard must be i/N with 0 <= i < N (e.g. 0/4), got {text!r}")
    return int(m.group(1)), int(m.group(2))


class RateLimiter:
    """At most ``rate`` request starts per second across all threads (0 = unlimited)."""

    def __init__(self, rate: float):
        self.interval = 1.0 / rate if rate > 0 else 0.0
        self._next = 0.0
        self._lock = threading.Lock()

    def wait(self) -> None:
        if not self.interval:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._next)
            self._next = start + self.interval
        if start > now:
            time.sleep(start - now)


def is_valid_clip(path: Path, sample_rate: int) -> bool:
    try:
        info = sf.info(str(path))
    except (sf.LibsndfileError, RuntimeError, OSError):
        return False
    return info.samplerate == sample_rate and info.channels == 1 and info.frames > 0


class _QuietLogger:
    """yt-dlp prints errors to stderr even when quiet; we report them ourselves."""

    def debug(self, msg: str) -> None: ...
    def info(self, msg: str) -> None: ...
    def warning(self, msg: str) -> None: ...
    def error(self, msg: str) -> None: ...


class SegmentDownloader:
    def __init__(self, cfg: AudiosetConfig, out_dir: Path, sample_rate: int, limiter: RateLimiter,
                 sleep: Callable[[float], None] = time.sleep, seed: int = 0):
        self.cfg = cfg
        self.out_dir = out_dir
        self.sample_rate = sample_rate
        self.limiter = limiter
        self.sleep = sleep
        self.rng = random.Random(seed)
        import imageio_ffmpeg

        self.ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()

    def fetch(self, seg: fmt.Segment) -> Outcome:
        """Download and convert one segment, retrying transient errors; the FLAC bytes when ok."""
        cid = clip_id_of(seg)
        attempts = 0
        while True:
            attempts += 1
            self.limiter.wait()
            try:
                return Outcome(cid, "ok", "", attempts, flac=self._download_and_convert(seg))
            except _SegmentError as err:
                reason, permanent = classify_error(err.message)
                if err.stage == "ffmpeg" and reason == "other":
                    reason, permanent = "bad_media", True
                detail = f"{reason}: {_short(err.message)}"
                if permanent or attempts > self.cfg.retries:
                    return Outcome(cid, "failed", detail, attempts, permanent)
                self.sleep(backoff_delay(attempts - 1, self.cfg.backoff_base_s, self.cfg.backoff_max_s, self.rng))

    def _download_and_convert(self, seg: fmt.Segment) -> bytes:
        work = self.out_dir / DOWNLOAD_TMP / clip_id_of(seg)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        try:
            media = self._download(seg, work)
            target = work / "clip.flac"
            self._convert(media, seg, target)
            return target.read_bytes()
        finally:
            shutil.rmtree(work, ignore_errors=True)

    def ydl_options(self, work: Path) -> dict:
        """yt-dlp's options for one segment: audio-only where available, our own retries."""
        opts = {
            "outtmpl": str(work.resolve() / "media.%(ext)s"),
            "format": self.cfg.format,
            "quiet": True,
            "no_warnings": True,
            "noprogress": True,
            "logger": _QuietLogger(),
            "noplaylist": True,
            "retries": 0,  # retries are ours: backoff with jitter, shared rate limit
            "fragment_retries": 0,
            "extractor_retries": 0,
            "socket_timeout": self.cfg.socket_timeout_s,
            "cachedir": False,
            "overwrites": True,
            "continuedl": False,
        }
        if self.cfg.cookies:
            opts["cookiefile"] = self.cfg.cookies
        if self.cfg.proxy:
            opts["proxy"] = self.cfg.proxy
        return opts

    def _download(self, seg: fmt.Segment, work: Path) -> Path:
        import yt_dlp

        opts = self.ydl_options(work)
        url = self.cfg.url_template.format(ytid=seg.ytid)
        try:
            with yt_dlp.YoutubeDL(opts) as ydl:
                ydl.extract_info(url, download=True)
        except Exception as err:  # yt-dlp wraps network and extractor errors in DownloadError
            raise _SegmentError("download", str(err)) from None
        files = [p for p in work.iterdir() if p.is_file() and p.name.startswith("media.") and not p.name.endswith(".part")]
        if not files:
            raise _SegmentError("download", "incomplete: no media file after download")
        return files[0]

    def _convert(self, media: Path, seg: fmt.Segment, target: Path) -> None:
        """Cut [start, end) on the output side (sample-accurate) and write 16 kHz mono 16-bit FLAC."""
        duration = seg.end_seconds - seg.start_seconds
        with atomic_path(target) as tmp:
            cmd = [
                self.ffmpeg, "-nostdin", "-v", "error", "-y",
                "-i", str(media.resolve()),
                "-ss", f"{seg.start_seconds:.3f}", "-t", f"{duration:.3f}",
                "-vn", "-ac", "1", "-ar", str(self.sample_rate), "-c:a", "flac", "-sample_fmt", "s16",
                "-f", "flac", str(tmp.resolve()),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise _SegmentError("ffmpeg", proc.stderr.strip()[-400:] or f"ffmpeg exit {proc.returncode}")
            if not is_valid_clip(tmp, self.sample_rate):
                raise _SegmentError("ffmpeg", "empty cut: the media has no audio in [start, end)")


class _SegmentError(Exception):
    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage
        self.message = message


def _short(text: str) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", text)
    return " ".join(text.replace("ERROR:", "").split())[:200]


# ----------------------------------------------------------------------------- label files


def fetch_metadata(cfg: AudiosetConfig, out_dir: Path, splits: Sequence[str]) -> None:
    """Ontology, class index and segment CSVs, from ``metadata_dir`` or the configured URLs; checked."""
    wanted = {"ontology.json": cfg.urls.ontology, "class_labels_indices.csv": cfg.urls.class_labels}
    wanted.update({f"segments/{fmt.SPLIT_FILES[s]}": getattr(cfg.urls, s) for s in splits})
    for rel, url in wanted.items():
        dest = out_dir / rel
        with atomic_path(dest) as tmp:
            if cfg.metadata_dir:
                src = Path(cfg.metadata_dir) / Path(rel).name
                if not src.is_file():
                    raise FileNotFoundError(f"download.audioset.metadata_dir: {src} is missing")
                shutil.copyfile(src, tmp)
            else:
                _http_get(url, tmp, cfg.proxy, cfg.socket_timeout_s)
        # a corrupted copy (spreadsheet-mangled ids, HTML error page) fails here, naming the file
        if rel.endswith("ontology.json"):
            fmt.read_ontology(dest)
        elif rel.endswith("class_labels_indices.csv"):
            fmt.read_class_labels(dest)
        else:
            fmt.read_segments_csv(dest)


def _http_get(url: str, dest: Path, proxy: str, timeout: float) -> None:
    handlers = [urllib.request.ProxyHandler({"http": proxy, "https": proxy})] if proxy else []
    opener = urllib.request.build_opener(*handlers)
    with opener.open(url, timeout=timeout) as resp, open(dest, "wb") as f:
        shutil.copyfileobj(resp, f)


# ----------------------------------------------------------------------------- the whole source


def _read_permanent(*paths: Path) -> dict[str, dict]:
    out: dict[str, dict] = {}
    for path in paths:
        if path.is_file():
            for line in path.read_text().splitlines():
                try:
                    rec = json.loads(line)
                    out[rec["clip_id"]] = rec
                except (json.JSONDecodeError, KeyError):
                    continue  # a line cut by a kill: that segment is simply tried again
    return out


def _fold_journal(state: Path) -> dict[str, dict]:
    """Every permanent failure known: the log plus a killed run's journal, folded into the log by atomic
    rewrite (the journal is appended to while a run lasts and never outlives a finished one)."""
    log, journal = state / PERMANENT_LOG, state / PERMANENT_JOURNAL
    permanent = _read_permanent(log, journal)
    if journal.exists():
        write_text_atomic(log, "".join(json.dumps(r) + "\n" for r in permanent.values()))
        journal.unlink()
    return permanent


def _run_ordered(fn: Callable, items: Sequence, workers: int, window: int):
    """Yield fn(item) for every item in input order, run on ``workers`` threads with at most ``window``
    items submitted but not yet yielded: 2 million futures created up front would cost gigabytes, and
    the buffer of finished results waiting for a slow predecessor stays bounded."""
    it = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(fn, x) for x in itertools.islice(it, window))
        while pending:
            yield pending.popleft().result()
            pending.extend(pool.submit(fn, x) for x in itertools.islice(it, 1))


def _adopt_loose_clips(split_dir: Path, writer: ShardWriter, segments: Sequence[fmt.Segment], split: str,
                       sample_rate: int) -> list[Path]:
    """Pack the FLACs of a corpus written before shards (``audio/<split>/<clip id>.flac``) into the split's
    shards, in list order; returns the files packed (removed once their shard is sealed)."""
    packed = []
    for seg in segments:
        cid = clip_id_of(seg)
        loose = split_dir / f"{cid}.flac"
        if cid in writer.written or not loose.is_file() or not is_valid_clip(loose, sample_rate):
            continue
        frames = sf.info(str(loose)).frames
        add_clip(writer, ManifestRow(cid, split, "", frames / sample_rate, sample_rate, seg.labels, "ok", ""),
                 loose.read_bytes())
        packed.append(loose)
    return packed


def download_audioset(cfg: AudiosetConfig, out_dir: str | Path, sample_rate: int, clips_per_shard: int,
                      shard: tuple[int, int] = (0, 1), sleep: Callable[[float], None] = time.sleep
                      ) -> tuple[dict, list[tuple[str, str, str, int]]]:
    """Fetch label files and segments into ``audio/<split>/`` shards; returns (summary, failures table rows)."""
    out_dir = Path(out_dir)
    shutil.rmtree(out_dir / DOWNLOAD_TMP, ignore_errors=True)
    for p in out_dir.rglob(TMP_PREFIX + "*"):
        if p.is_file():
            p.unlink()
    fetch_metadata(cfg, out_dir, cfg.splits)
    labels_ok = set(fmt.read_class_labels(out_dir / "class_labels_indices.csv")["mid"])

    state = out_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    permanent = _fold_journal(state)
    journal = state / PERMANENT_JOURNAL
    downloader = SegmentDownloader(cfg, out_dir, sample_rate, RateLimiter(cfg.rate_limit_per_s), sleep=sleep)
    prefix = "shard" if shard[1] == 1 else f"shard-{shard[0]}of{shard[1]}"  # machines never share a shard name

    failures: list[tuple[str, str, str, int]] = []
    summary: dict = {"source": "audioset", "shard": f"{shard[0]}/{shard[1]}", "splits": {}}
    totals = {"requested": 0, "got": 0, "skipped_existing": 0, "failed": 0}
    by_reason: dict[str, int] = {}
    for split in cfg.splits:
        segments = fmt.read_segments_csv(out_dir / "segments" / fmt.SPLIT_FILES[split])
        if cfg.max_segments:
            segments = segments[: cfg.max_segments]
        mine = [s for s in segments if shard_of(s.ytid, shard[1]) == shard[0]]
        split_dir = out_dir / "audio" / split
        writer = ShardWriter(split_dir, out_dir, clips_per_shard, prefix)
        loose = _adopt_loose_clips(split_dir, writer, mine, split, sample_rate)
        results: dict[str, Outcome] = {}
        todo = []
        for seg in mine:
            cid = clip_id_of(seg)
            problem = validate_segment(seg)
            if problem:
                results[cid] = Outcome(cid, "failed", f"rejected: {problem}", 0, True)
            elif cid in writer.written:
                results[cid] = Outcome(cid, "skipped", "", 0)
            elif cid in permanent:
                rec = permanent[cid]
                results[cid] = Outcome(cid, "failed", rec["reason"], rec["attempts"], True)
            else:
                todo.append(seg)

        window = WINDOW_PER_WORKER * cfg.workers
        with tqdm(total=len(todo), desc=f"audioset {split} [{shard[0]}/{shard[1]}]", unit="seg", mininterval=1.0) as bar:
            for seg, outcome in zip(todo, _run_ordered(downloader.fetch, todo, cfg.workers, window)):
                if outcome.status == "ok":
                    frames = sf.info(io.BytesIO(outcome.flac)).frames
                    row = ManifestRow(outcome.clip_id, split, "", frames / sample_rate, sample_rate, seg.labels, "ok", "")
                    add_clip(writer, row, outcome.flac)
                    outcome = replace(outcome, flac=b"")
                elif outcome.permanent:
                    with open(journal, "a") as f:  # this run's own file, folded into the log at the end
                        f.write(json.dumps({"clip_id": outcome.clip_id, "reason": outcome.reason,
                                            "attempts": outcome.attempts}) + "\n")
                results[outcome.clip_id] = outcome
                bar.update(1)
                bar.set_postfix(failed=sum(o.status == "failed" for o in results.values()), refresh=False)
        writer.close()
        for f in loose:
            f.unlink()

        rows: list[ManifestRow] = []
        for seg in mine:
            cid = clip_id_of(seg)
            o = results[cid]
            unknown = [lab for lab in seg.labels if lab not in labels_ok]
            if o.status == "failed":
                rows.append(ManifestRow(cid, split, "", 0.0, sample_rate, seg.labels, "failed", o.reason))
                failures.append((cid, seg.ytid, o.reason, o.attempts))
                code = o.reason.split(":")[0]
                by_reason[code] = by_reason.get(code, 0) + 1
            else:
                entry = writer.written[cid]
                reason = f"unknown labels {unknown}" if unknown else ""
                rows.append(ManifestRow(cid, split, entry.location.path, entry.duration, sample_rate,
                                        seg.labels, "failed" if unknown else "ok", reason, entry.location.member))
        write_manifest(out_dir / "manifests" / f"{split}.csv", rows)
        counts = {
            "requested": len(mine),
            "got": sum(results[clip_id_of(s)].status == "ok" for s in mine),
            "skipped_existing": sum(results[clip_id_of(s)].status == "skipped" for s in mine),
            "failed": sum(results[clip_id_of(s)].status == "failed" for s in mine),
        }
        summary["splits"][split] = counts
        for k in totals:
            totals[k] += counts[k]
    _fold_journal(state)
    shutil.rmtree(out_dir / DOWNLOAD_TMP, ignore_errors=True)
    summary.update(totals)
    summary["num_clips"] = totals["got"] + totals["skipped_existing"]
    summary["failed_by_reason"] = dict(sorted(by_reason.items()))
    return summary, failures
