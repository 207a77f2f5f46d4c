"""Benchmark: how each stage's cost grows with the clip count, projected to AS-2M (2.0 M clips).

Makes corpora of N short synthetic clips (1 s of 16 kHz noise as FLAC, about 16 KB, 18 KB in a shard with its
tar headers and JSON: the bitrate of real 16 kHz audio; no two clips share bytes) in a temporary folder and
measures, per stage that touches every clip, on a ladder of sizes: ingest (the download stage's clip writes
through src/sslam/data/shards.py's ShardWriter), the manifest (write, read), the features (build_features on
the sharded corpus, one process), `dvc add` (hash + commit to the cache, what `dvc commit` does after a
stage), `dvc status` of the unchanged tree and `dvc checkout` after removing the workspace copy, on the corpus
and on the features, in a temporary git + DVC repository with the project's cache settings; the ontology
analysis (analyse_folder on N label lists drawn from AudioSet's published lists) and building a training
sampler (FeatureStore's index + one ShardedSampler epoch; class_balanced_weights + one weighted epoch). The
per-file layout (one FLAC per clip, the corpus before shards) runs beside the sharded one for ingest and the
DVC rows, in the same run, on the same bytes: its times over the sharded ones are the last column.

Per cost: wall time, CPU time, peak memory, files written. Every point runs in a fresh process. Memory is
the peak RSS of that process (VmHWM; Linux) minus its value after the imports and inputs, for Python stages,
and for a DVC command its peak minus that of `dvc status` in an empty repository (DVC's own start-up); what
one more clip adds is the slope over the largest points. The exponent in N is a least-squares fit of
log(CPU time) on log(N) over the ladder's three largest points: CPU time, because other jobs on a shared
machine stretch wall times by tens of percent from one point to the next, which no exponent survives. The
projection to 2.0 M clips extends the largest point's wall time above the fixed start-up (DVC's, measured in
the same run; Python stages are timed in-process) with that exponent, never less than linearly: a cost that
looks flat only because a constant hides it is not projected to stay flat. One point with 10 s clips
(AudioSet's length) adds, per clip, what a 10 s clip costs over a 1 s one at the same N. Cheap points run
twice and keep the smaller times; every point takes its imports out of the cyclic garbage collector
(gc.freeze), whose first full collection would otherwise walk torch's and pandas' objects once, mid-ladder.
Targets: exponent <= 1.05; memory one more clip adds no more than twice what it adds to the manifest read
(a stage may hold the manifest and one list made from it); `dvc status` of an unchanged AS-2M corpus under
a minute.

    python bench/scale.py [--quick] [--json FILE] [--work DIR]
"""

from __future__ import annotations

import argparse
import configparser
import csv
import gc
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
AUDIOSET = REPO / "tests" / "data" / "audioset"
AS2M = 2_000_000
SAMPLE_RATE = 16_000
FIT_POINTS = 3  # the ladder's largest points the exponent is fitted on
NOISE_STD = 60  # int16 noise: about 16 KB of FLAC per second, the bitrate of real 16 kHz mono audio
POOL = 16  # distinct audio payloads; each clip's bytes are made unique by a FLAC metadata block with its id
EXPONENT_TARGET = 1.05
STATUS_TARGET_S = 60.0
MEMORY_FACTOR = 2.0  # a stage may hold the manifest and one per-clip list made from it
MEM_RESOLUTION_MIB = 8.0  # below this at the largest N, a memory exponent is noise
SPLIT = "unbalanced"
# of 16 cores, how many a stage keeps busy: the features stage runs a worker process per feature shard;
# DVC hashes files on core.checksum_jobs threads (default min(4, cores / 2)); everything else is one process
CORES16 = {"features": 16, "dvc add": 4}
LONG_SECONDS = 10.0
NOISE_FRACTION, NOISE_S = 0.25, 0.25  # CPU-time differences below either are jitter


@dataclass(frozen=True)
class Ladders:
    """Clip counts per group of stages (the expensive ones stop earlier)."""

    sharded: tuple[int, ...]  # ingest, manifests, DVC on shards, ontology, samplers
    per_file: tuple[int, ...]  # the per-file reference layout: ingest and DVC
    features: tuple[int, ...]  # build_features (a log-mel per clip) and DVC on the features
    long_corpus: int  # the 10 s point of ingest and the corpus's DVC rows (both layouts)
    long_features: int  # the 10 s point of the features and their DVC rows

    def __post_init__(self) -> None:
        if self.long_corpus not in set(self.sharded) & set(self.per_file) or self.long_features not in self.features:
            raise ValueError("the 10 s points must be on the ladders (their 1 s costs are the reference)")
        if max(self.features) > max(self.sharded):
            raise ValueError("the features ladder must fit in the largest sharded corpus")


DEFAULT = Ladders(
    sharded=(1000, 4000, 16000, 64000, 200000),
    per_file=(1000, 4000, 16000, 64000),
    features=(1000, 4000, 16000),
    long_corpus=16000,
    long_features=1000,
)
QUICK = Ladders(sharded=(500, 2000), per_file=(500, 2000), features=(250, 500), long_corpus=500, long_features=250)


# ----------------------------------------------------------------------------- fitting and projection


def fit_exponent(ns: Sequence[float], values: Sequence[float], points: int = FIT_POINTS) -> float:
    """Least-squares slope of log(value) on log(N) over the ``points`` largest N (all when fewer)."""
    order = np.argsort(ns)[-points:]
    if len(order) < 2:
        raise ValueError("an exponent needs at least two points")
    x = np.log(np.asarray(ns, dtype=float)[order])
    y = np.log(np.maximum(np.asarray(values, dtype=float)[order], 1e-9))
    slope, _ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], 1), y, rcond=None)[0]
    return float(slope)


def project(
    ns: Sequence[float], walls: Sequence[float], cpus: Sequence[float], target: float, fixed: float = 0.0
) -> tuple[float, float]:
    """(exponent, wall time at ``target``). The exponent is fitted on the CPU times (other jobs on a
    shared machine stretch wall times, so their growth in N is noise as much as cost); the projection
    extends the largest point's wall time above ``fixed`` (a start-up paid once) with it, at least
    linearly: a cost that looks flat only because a constant hides it is not projected to stay flat."""
    b = fit_exponent(ns, cpus)
    k = int(np.argmax(ns))
    return b, fixed + max(float(walls[k]) - fixed, 0.0) * (target / float(ns[k])) ** max(b, 1.0)


def marginal_per_clip(ns: Sequence[float], values: Sequence[float], points: int = FIT_POINTS) -> float:
    """Least-squares slope of value on N over the ``points`` largest N: what one more clip adds."""
    order = np.argsort(ns)[-points:]
    x, y = np.asarray(ns, dtype=float)[order], np.asarray(values, dtype=float)[order]
    return float(np.polynomial.polynomial.polyfit(x, y, 1)[1])


def long_clip_extra(n: int, long: tuple[float, float], short: tuple[float, float], target: float) -> float:
    """What ``target`` clips of the long length cost over as many short ones, from one point of each at
    ``n`` ((wall, cpu) seconds; a fixed start-up cancels), linear in the clip count: the wall-time
    difference, and at least the CPU-time one. Counted only when the CPU time differs by more than noise
    (25 % of the short point and 0.25 s): multiplied by target / n, jitter would pass for a cost."""
    wall, cpu = long[0] - short[0], long[1] - short[1]
    if cpu <= max(NOISE_FRACTION * short[1], NOISE_S):
        return 0.0
    return max(wall, cpu) / n * target


# ----------------------------------------------------------------------------- synthetic inputs


def clip_id(i: int) -> str:
    """An AudioSet-shaped clip id, ``<11-char ytid>_<start ms>``: distinct for every i (an odd multiplier
    is a bijection modulo 2**64, and 11 characters of 6 bits hold 64)."""
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    x, chars = i * 0x9E3779B97F4A7C15 % (1 << 64), []
    for _ in range(11):
        chars.append(alphabet[x & 63])
        x >>= 6
    return "".join(chars) + f"_{(i % 30) * 1000}"


def flac_pool(clip_seconds: float) -> list[bytes]:
    """``POOL`` FLAC encodings of noise of the given length (STREAMINFO first and not last, as libsndfile
    writes it: :func:`unique_flac` relies on it)."""
    from sslam.io import flac_bytes

    rng = np.random.default_rng(0)
    pool = []
    for _ in range(POOL):
        data = flac_bytes(rng.standard_normal(int(clip_seconds * SAMPLE_RATE)) * NOISE_STD / 32768, SAMPLE_RATE)
        if data[:4] != b"fLaC" or data[4] != 0:
            raise RuntimeError("unexpected FLAC layout: a STREAMINFO block that is not the last was expected")
        pool.append(data)
    return pool


def unique_flac(pool: Sequence[bytes], i: int) -> bytes:
    """Pool payload ``i % POOL`` with an APPLICATION metadata block holding the clip id after STREAMINFO:
    valid FLAC (decoders skip the block), no two clips alike, so DVC's cache dedupes nothing a real corpus
    would not, at the cost of one encoding per pool entry instead of one per clip."""
    base = pool[i % len(pool)]
    body = b"sslm" + clip_id(i).encode()
    return base[:42] + bytes([2]) + len(body).to_bytes(3, "big") + body + base[42:]


def label_pool() -> list[tuple[str, ...]]:
    """The label lists of AudioSet's published balanced and eval lists (42,531 clips, 527 classes)."""
    from sslam.data import audioset_format as fmt

    names = ("balanced_train_segments.csv", "eval_segments.csv")
    return [s.labels for name in names for s in fmt.read_segments_csv(AUDIOSET / name)]


def labels_of(pool: Sequence[tuple[str, ...]], i: int) -> tuple[str, ...]:
    """Clip i's labels: a fixed spread over the pool (40503 is prime to the pool's size)."""
    return pool[(i * 40503) % len(pool)]


def write_segments(folder: Path, n: int, pool: Sequence[tuple[str, ...]]) -> None:
    """An AudioSet label folder of N clips: the published ontology and an unbalanced list drawn from the pool."""
    from sslam.data import audioset_format as fmt

    folder.mkdir(parents=True)
    shutil.copy(AUDIOSET / "ontology.json", folder / "ontology.json")
    segs = [fmt.Segment(clip_id(i)[:11], 0.0, 10.0, labels_of(pool, i)) for i in range(n)]
    fmt.write_segments_csv(folder / fmt.SPLIT_FILES[SPLIT], segs, "by bench/scale.py")


def write_feature_index(folder: Path, n: int, pool: Sequence[tuple[str, ...]], shard_size: int) -> None:
    """A feature set's index and statistics for N clips: what FeatureStore reads when built (its arrays
    are memory-mapped lazily, per batch, so building a sampler does not need them)."""
    from sslam.features.store import INDEX_COLUMNS

    (folder / SPLIT).mkdir(parents=True)
    with open(folder / SPLIT / "index.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(INDEX_COLUMNS)
        for i in range(n):
            w.writerow([clip_id(i), SPLIT, i // shard_size, i % shard_size, 98, 16000, ",".join(labels_of(pool, i))])
    (folder / "stats.json").write_text(json.dumps({"mean": -4.268, "std": 4.569}))


# ----------------------------------------------------------------------------- the measured points (child side)


def start_measuring() -> int:
    """Called once the imports and inputs are in place: freezes their objects out of the cyclic garbage
    collector (gc.freeze) and returns the memory baseline. Without the freeze, the first full collection
    walks torch's and pandas' objects too (0.1-0.15 s, measured with gc.callbacks) and falls between the
    16k and 64k points of every stage that makes objects per clip: a one-off step that would pass for
    growth in N. The collections over the stage's own objects stay in the measurement."""
    gc.collect()
    gc.freeze()
    return peak_kib()


def peak_kib() -> int:
    """This process's peak RSS so far (VmHWM): its own memory only. ru_maxrss is not used: Linux carries
    it over from the parent across fork and exec, so a child of a large parent reports the parent's peak."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


class Clock:
    """Wall and CPU seconds since it was made. CPU is this process's user + system time: other jobs on a
    shared machine stretch the wall time of a point, hardly its CPU time."""

    def __init__(self) -> None:
        self.wall, self.cpu = time.perf_counter(), time.process_time()

    def lap(self) -> dict[str, float]:
        return {"seconds": time.perf_counter() - self.wall, "cpu": time.process_time() - self.cpu}


def count_files(folder: Path) -> int:
    return sum(len(files) for _, _, files in os.walk(folder))


def tree_bytes(folder: Path) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files)


def point_ingest(spec: dict) -> list[dict]:
    """Write N clips into a corpus the download stage's way for the layout (sharded: ShardWriter through
    add_clip; per-file: one atomic FLAC each), holding the manifest rows as the stage does; then the
    manifest (not timed here: the manifest row times it)."""
    from sslam.data.manifest import ManifestRow, write_manifest
    from sslam.data.shards import ShardWriter, add_clip
    from sslam.io import atomic_path

    pool, labels = flac_pool(spec["clip_seconds"]), label_pool()
    n, corpus, seconds = spec["n"], Path(spec["corpus"]), spec["clip_seconds"]
    folder = corpus / "audio" / SPLIT
    base = start_measuring()
    rows = []
    clock = Clock()
    if spec["layout"] == "sharded":
        with ShardWriter(folder, corpus, spec["clips_per_shard"]) as writer:
            for i in range(n):
                row = ManifestRow(clip_id(i), SPLIT, "", seconds, SAMPLE_RATE, labels_of(labels, i), "ok", "")
                rows.append(add_clip(writer, row, unique_flac(pool, i)))
    else:
        folder.mkdir(parents=True)
        for i in range(n):
            cid = clip_id(i)
            with atomic_path(folder / f"{cid}.flac") as tmp:
                tmp.write_bytes(unique_flac(pool, i))
            path = f"audio/{SPLIT}/{cid}.flac"
            rows.append(ManifestRow(cid, SPLIT, path, seconds, SAMPLE_RATE, labels_of(labels, i), "ok", ""))
    took = clock.lap()
    write_manifest(corpus / "manifests" / f"{SPLIT}.csv", rows)
    return [dict(**took, files=count_files(folder), extra_kib=peak_kib() - base, bytes=tree_bytes(folder))]


def point_manifest_write(spec: dict) -> list[dict]:
    """The download stage's last step: N manifest rows (shard and member) built and written (atomic rename)."""
    from sslam.data.manifest import ManifestRow, write_manifest
    from sslam.data.shards import member_key

    labels = label_pool()
    n, cps = spec["n"], spec["clips_per_shard"]
    base = start_measuring()
    clock = Clock()
    rows = []
    for i in range(n):
        cid = clip_id(i)
        path, member = f"audio/{SPLIT}/shard-{i // cps:06d}.tar", f"{member_key(cid)}.flac"
        rows.append(ManifestRow(cid, SPLIT, path, 1.0, SAMPLE_RATE, labels_of(labels, i), "ok", "", member=member))
    write_manifest(spec["out"], rows)
    took = clock.lap()
    return [dict(**took, files=1, extra_kib=peak_kib() - base, bytes=Path(spec["out"]).stat().st_size)]


def point_manifest_read(spec: dict) -> list[dict]:
    """What every later stage does first: read_manifest (labels parsed to lists)."""
    from sslam.data.manifest import read_manifest

    base = start_measuring()
    clock = Clock()
    df = read_manifest(spec["manifest"], only_ok=True)
    took = clock.lap()
    if len(df) != spec["n"]:
        raise RuntimeError(f"read {len(df)} rows, expected {spec['n']}")
    return [dict(**took, files=0, extra_kib=peak_kib() - base)]


def point_features(spec: dict) -> list[dict]:
    """build_features over a corpus with the stage's hash table (each corpus shard hashed once), in one
    process: the per-core cost (the stage runs one feature shard per worker process)."""
    from sslam.config.base import load_sections, merged
    from sslam.config.features import FeaturesParams
    from sslam.features.store import build_features
    from sslam.provenance import default_hash_cache

    hashes = default_hash_cache(spec["repo"])
    cfg = merged(load_sections(FeaturesParams, REPO / "params.yaml").features, {"target_frames": spec["frames"]})
    out = Path(spec["out"])
    base = start_measuring()
    clock = Clock()
    summary = build_features(spec["corpus"], out, cfg, SAMPLE_RATE, workers=1, hash_cache=hashes)
    took = clock.lap()
    got = summary["sets"][SPLIT]
    if got["clips"] != spec["n"] or got["failed"]:
        raise RuntimeError(f"features: {got}, expected {spec['n']} clips and no failure")
    return [dict(**took, files=count_files(out), extra_kib=peak_kib() - base, bytes=tree_bytes(out))]


def point_ontology(spec: dict) -> list[dict]:
    """The ontology stage's analyse_folder: every level of params.yaml, every rule."""
    from sslam.config.base import load_sections
    from sslam.config.data import OntologyParams
    from sslam.data.polyphony import RULES, analyse_folder

    levels = load_sections(OntologyParams, REPO / "params.yaml").ontology.levels
    base = start_measuring()
    clock = Clock()
    out = analyse_folder(spec["folder"], levels, RULES)
    took = clock.lap()
    if out[SPLIT]["clips"] != spec["n"]:
        raise RuntimeError(f"ontology analysed {out[SPLIT]['clips']} clips, expected {spec['n']}")
    return [dict(**took, files=0, extra_kib=peak_kib() - base)]


def point_sampler(spec: dict) -> list[dict]:
    """Two costs in one process: (1) pretraining's sampler: FeatureStore (its index read) and one epoch of
    ShardedSampler indices; (2) fine-tuning's: class_balanced_weights and one weighted epoch. The second's
    memory includes the first's (the store it takes the labels from)."""
    from sslam.data import audioset_format as fmt
    from sslam.features.reader import FeatureStore, ShardedSampler, class_balanced_weights

    classes = list(fmt.read_class_labels(AUDIOSET / "class_labels_indices.csv")["mid"])
    base = start_measuring()
    clock = Clock()
    store = FeatureStore(spec["features"], SPLIT)
    order = list(ShardedSampler(len(store), seed=0))
    first_took, first = clock.lap(), peak_kib()
    clock = Clock()
    weights = class_balanced_weights(store.labels, classes)
    weighted = list(ShardedSampler(len(store), seed=0, weights=weights, num_samples=len(store)))
    took = clock.lap()
    if len(order) != spec["n"] or len(weighted) != spec["n"]:
        raise RuntimeError("sampler: an epoch of the wrong length")
    return [
        dict(**first_took, files=0, extra_kib=first - base),
        dict(**took, files=0, extra_kib=peak_kib() - base),
    ]


POINTS: dict[str, Callable[[dict], list[dict]]] = {
    "ingest": point_ingest,
    "manifest_write": point_manifest_write,
    "manifest_read": point_manifest_read,
    "features": point_features,
    "ontology": point_ontology,
    "sampler": point_sampler,
}

# `dvc` itself, run by this interpreter so that it reports its own peak memory (as point processes do)
DVC_MAIN = """
import os, sys
from dvc.cli import main
rc = main(sys.argv[1:])
with open('/proc/self/status') as f:
    hwm = next(line.split()[1] for line in f if line.startswith('VmHWM:'))
with open(os.environ['SSLAM_SCALE_HWM'], 'w') as f:
    f.write(hwm)
sys.exit(rc)
"""


# ----------------------------------------------------------------------------- the harness (parent side)


@dataclass
class Point:
    n: int
    seconds: float  # wall
    cpu: float  # user + system of the measured process
    extra_kib: int
    files: int
    clip_seconds: float = 1.0
    bytes: int = 0

    @classmethod
    def of(cls, n: int, r: dict, clip_seconds: float = 1.0, **over: int) -> Point:
        """From a point's result: seconds, cpu, extra_kib, files and bytes (``over`` replaces any)."""
        r = r | over
        return cls(n, r["seconds"], r["cpu"], r["extra_kib"], r["files"], clip_seconds, r.get("bytes", 0))


@dataclass
class Row:
    """One cost: its points on the ladder (1 s clips) and at 10 s."""

    stage: str
    layout: str
    cores16: int  # of 16 cores, how many the stage keeps busy (the 16-core estimate divides by it)
    fixed_s: float = 0.0  # a constant start-up inside the measured wall time (DVC's)
    fixed_cpu: float = 0.0  # and inside the CPU time
    points: list[Point] = field(default_factory=list)
    long: Point | None = None

    def add(self, p: Point) -> None:
        if p.clip_seconds == LONG_SECONDS:
            self.long = p
        else:
            self.points.append(p)


class Harness:
    """Runs the points and collects them into rows; one git + DVC repository per layout."""

    def __init__(self, work: Path, clips_per_shard: int, feature_shard: int, quick: bool, log: Callable[[str], None]):
        self.work, self.cps, self.feature_shard, self.quick, self.log = work, clips_per_shard, feature_shard, quick, log
        self.rows: dict[tuple[str, str], Row] = {}
        self.env = dict(
            os.environ,
            PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
            DVC_NO_ANALYTICS="1",
            SSLAM_SCALE_HWM=str(work / "dvc-hwm"),
        )
        self.repos: dict[str, Path] = {}
        self.dvc_s = self.dvc_cpu = 0.0
        self.dvc_kib = 0
        self.cache = project_cache_config()

    def row(self, stage: str, layout: str) -> Row:
        key = (stage, layout)
        if key not in self.rows:
            dvc = stage.startswith("dvc")
            cores = next((v for k, v in CORES16.items() if stage.startswith(k)), 1)
            self.rows[key] = Row(stage, layout, cores, self.dvc_s * dvc, self.dvc_cpu * dvc)
        return self.rows[key]

    def child(self, kind: str, **spec: object) -> list[dict]:
        """One point in a fresh interpreter; its JSON result is the last line it prints."""
        cmd = [sys.executable, str(Path(__file__).resolve()), "--point", json.dumps({"kind": kind, **spec})]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=self.env)
        if proc.returncode:
            raise RuntimeError(f"point {kind} {spec} failed:\n{proc.stderr[-3000:]}")
        return json.loads(proc.stdout.strip().splitlines()[-1])

    def best(self, kind: str, **spec: object) -> list[dict]:
        """A cheap point run twice (once in a quick run): per result, the smaller times and memory (the
        machine may be shared; other jobs only ever slow a run down)."""
        return [best_of(r) for r in zip(*[self.child(kind, **spec) for _ in range(1 if self.quick else 2)])]

    def dvc(self, repo: Path, *args: str) -> dict:
        """One DVC command: wall seconds, CPU seconds (from the rusage of waited-for children), peak RSS
        (KiB) and output."""
        before, t0 = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", DVC_MAIN, *args], cwd=repo, env=self.env, capture_output=True, text=True
        )
        wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode:
            raise RuntimeError(f"dvc {' '.join(args)} in {repo} failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        kib = int((self.work / "dvc-hwm").read_text())
        return {"seconds": wall, "cpu": cpu, "kib": kib, "out": proc.stdout + proc.stderr}

    def repo(self, layout: str) -> Path:
        """The layout's git + DVC repository: the project's cache settings, DVC's site cache inside it."""
        if layout in self.repos:
            return self.repos[layout]
        repo = self.repos[layout] = self.work / f"repo-{layout}"
        repo.mkdir(parents=True)
        subprocess.run(["git", "init", "-q"], cwd=repo, check=True, env=self.env)
        self.dvc(repo, "init", "-q")
        config = f"[core]\n    analytics = false\n    site_cache_dir = {repo / '.dvc' / 'site'}\n"
        if self.cache:
            config += "[cache]\n" + "".join(f"    {k} = {v}\n" for k, v in self.cache.items())
        (repo / ".dvc" / "config").write_text(config)
        return repo

    def dvc_baseline(self) -> None:
        """DVC's start-up: `dvc status` in a repository tracking nothing (best of three)."""
        repo = self.repo("baseline")
        runs = [self.dvc(repo, "status") for _ in range(3)]
        self.dvc_s, self.dvc_cpu = min(r["seconds"] for r in runs), min(r["cpu"] for r in runs)
        self.dvc_kib = min(r["kib"] for r in runs)
        shutil.rmtree(repo)
        del self.repos["baseline"]

    def dvc_rows(self, repo: Path, target: str, what: str, layout: str, n: int, clip_seconds: float) -> None:
        """`dvc add` (hash + commit to the cache: files written = cache objects) and `dvc status` of the
        unchanged tree (best of two; one in a quick run)."""
        cache = repo / ".dvc" / "cache"
        before = count_files(cache) if cache.exists() else 0
        r = self.dvc(repo, "add", "-q", target)
        r |= {"extra_kib": r["kib"] - self.dvc_kib, "files": count_files(cache) - before}
        self.row(f"dvc add {what}", layout).add(Point.of(n, r, clip_seconds))
        runs = []
        for _ in range(1 if self.quick else 2):
            runs.append(self.dvc(repo, "status", f"{target}.dvc"))
            if "up to date" not in runs[-1]["out"]:
                raise RuntimeError(f"dvc status of an unchanged {target} in {repo} says:\n{runs[-1]['out']}")
            runs[-1] |= {"extra_kib": runs[-1]["kib"] - self.dvc_kib, "files": 0}
        self.row(f"dvc status {what}", layout).add(Point.of(n, best_of(runs), clip_seconds))

    def corpus(self, layout: str, n: int, clip_seconds: float, features: Sequence[int]) -> None:
        """One corpus: ingest, DVC on it, the features of its first clips (sharded) with DVC on them, and a
        checkout of the corpus; then everything removed, the cache too (disk stays at one corpus)."""
        repo = self.repo(layout)
        target = f"corpus-{n}-{clip_seconds:g}s"
        spec = dict(layout=layout, n=n, corpus=str(repo / target), clip_seconds=clip_seconds, clips_per_shard=self.cps)
        (r,) = self.child("ingest", **spec)
        if not self.quick:  # best of two, the second written beside and removed (the machine may be shared)
            (again,) = self.child("ingest", **(spec | {"corpus": str(self.work / "ingest-again")}))
            shutil.rmtree(self.work / "ingest-again")
            r = best_of([r, again])
        self.row("ingest", layout).add(Point.of(n, r, clip_seconds))  # one writer per split, in one thread
        self.dvc_rows(repo, target, "corpus", layout, n, clip_seconds)
        for k in features:
            view = self.corpus_view(repo / target, self.work / f"view-{k}", k)
            out = f"features-{k}-{clip_seconds:g}s"
            frames = 100 if clip_seconds == 1.0 else 1024  # params.yaml's 1024 for 10 s clips
            (f,) = self.child("features", n=k, corpus=str(view), out=str(repo / out), frames=frames, repo=str(repo))
            self.row("features", layout).add(Point.of(k, f, clip_seconds))
            self.dvc_rows(repo, out, "features", layout, k, clip_seconds)
            shutil.rmtree(view)
            shutil.rmtree(repo / out)
            (repo / f"{out}.dvc").unlink()
        shutil.rmtree(repo / target)
        r = self.dvc(repo, "checkout", "-q", f"{target}.dvc")
        r |= {"extra_kib": r["kib"] - self.dvc_kib, "files": count_files(repo / target)}
        self.row("dvc checkout corpus", layout).add(Point.of(n, r, clip_seconds))
        shutil.rmtree(repo / target)
        (repo / f"{target}.dvc").unlink()
        shutil.rmtree(repo / ".dvc" / "cache", ignore_errors=True)
        self.log(
            f"{layout} corpus of {n:,} clips of {clip_seconds:g} s" + (f", features of {features}" if features else "")
        )

    @staticmethod
    def corpus_view(corpus: Path, view: Path, k: int) -> Path:
        """A corpus of the first ``k`` clips: the manifest's first rows, the audio folder linked."""
        (view / "manifests").mkdir(parents=True)
        (view / "audio").symlink_to(corpus / "audio")
        lines = (corpus / "manifests" / f"{SPLIT}.csv").read_text().splitlines(keepends=True)
        (view / "manifests" / f"{SPLIT}.csv").write_text("".join(lines[: k + 1]))
        return view

    def label_rows(self, n: int, pool: Sequence[tuple[str, ...]]) -> None:
        """The stages that read labels, not audio, at N: manifests, the ontology analysis, samplers (best of
        two runs each: they take seconds)."""
        out = self.work / f"manifest-{n}.csv"
        (w,) = self.best("manifest_write", n=n, out=str(out), clips_per_shard=self.cps)
        self.row("manifest write", "sharded").add(Point.of(n, w))
        (r,) = self.best("manifest_read", n=n, manifest=str(out))
        self.row("manifest read", "sharded").add(Point.of(n, r))
        out.unlink()
        folder = self.work / f"labels-{n}"
        write_segments(folder, n, pool)
        (o,) = self.best("ontology", n=n, folder=str(folder))
        self.row("ontology analysis", "-").add(Point.of(n, o))
        shutil.rmtree(folder)
        feats = self.work / f"index-{n}"
        write_feature_index(feats, n, pool, self.feature_shard)
        s, b = self.best("sampler", n=n, features=str(feats))
        self.row("sampler: store index + epoch", "-").add(Point.of(n, s))
        self.row("class-balanced weights + epoch", "-").add(Point.of(n, b))
        shutil.rmtree(feats)
        self.log(f"manifests, ontology, samplers at {n:,} clips")


def best_of(runs: Sequence[dict]) -> dict:
    """One result from repeated runs of a point: the smallest wall time, CPU time and memory of each."""
    return dict(runs[0]) | {k: min(r[k] for r in runs) for k in ("seconds", "cpu", "extra_kib")}


def project_cache_config() -> dict[str, str]:
    """The project's DVC cache settings (.dvc/config [cache]), so the bench measures what a run does."""
    parser = configparser.ConfigParser()
    parser.read(REPO / ".dvc" / "config")
    return dict(parser["cache"]) if parser.has_section("cache") else {}


def run(ladders: Ladders, work: Path, quick: bool, log: Callable[[str], None]) -> Harness:
    from sslam.config.base import load_sections
    from sslam.config.data import DownloadParams
    from sslam.config.features import FeaturesParams

    cps = load_sections(DownloadParams, REPO / "params.yaml").download.clips_per_shard
    shard = load_sections(FeaturesParams, REPO / "params.yaml").features.shard_size
    h = Harness(work, cps, shard, quick, log)
    h.dvc_baseline()
    pool = label_pool()
    sizes = sorted(set(ladders.sharded) | set(ladders.per_file))
    for i, n in enumerate(sizes):
        # each features point runs on the smallest corpus that holds it
        hosted = [k for k in ladders.features if (sizes[i - 1] if i else 0) < k <= n]
        if n in ladders.sharded or hosted:
            h.corpus("sharded", n, 1.0, hosted)
        if n in ladders.per_file:
            h.corpus("per-file", n, 1.0, [])
        if n in ladders.sharded:
            h.label_rows(n, pool)
    h.corpus("sharded", ladders.long_corpus, LONG_SECONDS, [ladders.long_features])
    h.corpus("per-file", ladders.long_corpus, LONG_SECONDS, [])
    return h


# ----------------------------------------------------------------------------- the report


@dataclass
class Fit:
    stage: str
    layout: str
    ladder: list[int]
    seconds: float  # at the largest N
    us_per_clip: float  # at the largest N, start-up excluded
    exponent: float  # of CPU time
    wall_exponent: float  # of wall time, for reference
    projected_s: float  # 2 M clips of 1 s
    long_extra_s: float | None  # what 2 M clips of 10 s add (None: never reads audio)
    projected_long_s: float  # 2 M clips of 10 s
    extra_mib: float
    bytes_per_clip: float  # memory one more clip adds (slope over the largest N)
    mem_exponent: float | None  # None: below MEM_RESOLUTION_MIB at the largest N
    projected_mib: float
    files: int
    per_file_ratio: float | None  # per-file time over sharded time at the largest N both have
    cores16: int
    points: list[dict]


def fit_row(row: Row, reference: Row | None) -> Fit:
    pts = sorted(row.points, key=lambda p: p.n)
    ns = [p.n for p in pts]
    top = pts[-1]
    b, proj = project(ns, [p.seconds for p in pts], [p.cpu for p in pts], AS2M, fixed=row.fixed_s)
    extra = None
    if row.long is not None:
        same = next(p for p in pts if p.n == row.long.n)
        extra = long_clip_extra(row.long.n, (row.long.seconds, row.long.cpu), (same.seconds, same.cpu), AS2M)
    kib = [p.extra_kib for p in pts]
    per_clip = max(marginal_per_clip(ns, kib), 0.0) * 1024
    mem_b = fit_exponent(ns, [max(k, 1) for k in kib]) if top.extra_kib / 1024 >= MEM_RESOLUTION_MIB else None
    ratio = None
    if reference is not None:
        common = sorted({p.n for p in pts} & {p.n for p in reference.points})
        if common:
            k = common[-1]
            theirs = next(p.seconds for p in reference.points if p.n == k)
            ratio = theirs / next(p.seconds for p in pts if p.n == k)
    points = [asdict(p) for p in pts] + ([asdict(row.long)] if row.long else [])
    return Fit(
        stage=row.stage,
        layout=row.layout,
        ladder=ns,
        seconds=top.seconds,
        us_per_clip=1e6 * max(top.seconds - row.fixed_s, 0.0) / top.n,
        exponent=b,
        wall_exponent=fit_exponent(ns, [p.seconds for p in pts]),
        projected_s=proj,
        long_extra_s=extra,
        projected_long_s=proj + (extra or 0.0),
        extra_mib=top.extra_kib / 1024,
        bytes_per_clip=per_clip,
        mem_exponent=mem_b,
        projected_mib=(top.extra_kib * 1024 + per_clip * (AS2M - top.n)) / 2**20,
        files=top.files,
        per_file_ratio=ratio,
        cores16=row.cores16,
        points=points,
    )


def human_seconds(s: float) -> str:
    if s < 10:
        return f"{s:.2g} s"
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"


def ladder_text(ns: Sequence[int]) -> str:
    return ", ".join(f"{n // 1000}k" if n % 1000 == 0 else str(n) for n in ns)


def markdown(fits: Sequence[Fit]) -> str:
    lines = [
        "| stage | layout | N | t at largest N | µs/clip | exponent (CPU) | 2 M × 1 s | 2 M × 10 s | "
        "peak MiB | B/clip | mem. exponent | 2 M peak | files | per-file ÷ sharded |",
        "|" + " --- |" * 14,
    ]
    for f in fits:
        long = "same (no audio)" if f.long_extra_s is None else human_seconds(f.projected_long_s)
        mem_b = "flat" if f.mem_exponent is None else f"{f.mem_exponent:.2f}"
        ratio = "" if f.per_file_ratio is None else f"{f.per_file_ratio:.1f}x"
        lines.append(
            f"| {f.stage} | {f.layout} | {ladder_text(f.ladder)} | {f.seconds:.2f} s | {f.us_per_clip:.1f} | "
            f"{f.exponent:.2f} | {human_seconds(f.projected_s)} | {long} | "
            f"{f.extra_mib:.0f} | {f.bytes_per_clip:,.0f} | {mem_b} | {f.projected_mib / 1024:.2f} GiB | "
            f"{f.files:,} | {ratio} |"
        )
    return "\n".join(lines)


def checks_of(fits: Sequence[Fit]) -> dict[str, list]:
    """The issue's targets, per sharded cost: [name, value, met]."""
    manifest = next(f for f in fits if f.stage == "manifest read")
    limit = MEMORY_FACTOR * manifest.bytes_per_clip
    out: dict[str, list] = {"exponent": [], "memory": [], "status": []}
    for f in fits:
        if f.layout == "per-file":
            continue
        out["exponent"].append([f.stage, round(f.exponent, 3), f.exponent <= EXPONENT_TARGET])
        out["memory"].append([f.stage, round(f.bytes_per_clip), f.bytes_per_clip <= limit])
    for f in fits:
        if f.stage == "dvc status corpus":
            out["status"].append([f.layout, round(f.projected_long_s, 2), f.projected_long_s < STATUS_TARGET_S])
    return out


def per_clip_text(point: dict) -> str:
    return f"{point['cpu'] / point['n'] * 1e6:.0f}" + (" at 10 s" if point["clip_seconds"] != 1.0 else "")


def summary_lines(fits: Sequence[Fit], checks: dict[str, list]) -> list[str]:
    manifest = next(f for f in fits if f.stage == "manifest read")
    once = [f for f in fits if f.layout != "per-file" and f.stage != "dvc checkout corpus"]
    ranked = sorted(once, key=lambda f: -f.projected_long_s)
    one_core = sum(f.projected_long_s for f in once)
    sixteen = sum(f.projected_long_s / f.cores16 for f in once)
    by_stage = {f.stage: f for f in once}
    bad_exp = [
        f"{s} ({b:.2f}; CPU µs/clip along the ladder: {', '.join(per_clip_text(p) for p in by_stage[s].points)})"
        for s, b, ok in checks["exponent"]
        if not ok
    ]
    bad_mem = [f"{s} ({v:,} B/clip)" for s, v, ok in checks["memory"] if not ok]
    status = "; ".join(f"{layout} {human_seconds(v)}" for layout, v, _ in checks["status"])
    status_ok = all(ok for layout, _, ok in checks["status"] if layout == "sharded")
    footprint = []
    for stage in ("ingest", "features"):
        pts = [p for p in by_stage[stage].points if p["bytes"]]
        short = max((p for p in pts if p["clip_seconds"] == 1.0), key=lambda p: p["n"])
        long = next(p for p in pts if p["clip_seconds"] != 1.0)
        footprint.append(
            f"{'corpus' if stage == 'ingest' else 'features'} {short['bytes'] / short['n'] / 1e3:.1f} KB (1 s), "
            f"{long['bytes'] / long['n'] / 1e3:.0f} KB (10 s) -> {long['bytes'] / long['n'] * AS2M / 1e12:.2f} TB"
        )
    return [
        f"- exponent <= {EXPONENT_TARGET}: "
        + ("met by every sharded cost" if not bad_exp else f"NOT met by {', '.join(bad_exp)}"),
        f"- memory one more clip adds <= {MEMORY_FACTOR:g}x what it adds to the manifest read "
        f"({manifest.bytes_per_clip:,.0f} B/clip, read_manifest's DataFrame): "
        + ("met by every sharded cost" if not bad_mem else f"NOT met by {', '.join(bad_mem)}"),
        f"- `dvc status` of an unchanged AS-2M corpus of 10 s clips, projected: {status} "
        f"(target < {STATUS_TARGET_S:.0f} s: {'met' if status_ok else 'NOT met'})",
        f"- bytes on disk per clip (sharded): {'; '.join(footprint)} for AS-2M",
        f"- at 2 M clips of 10 s the dominant cost is {ranked[0].stage} ({human_seconds(ranked[0].projected_long_s)} "
        f"on one core), then "
        + ", ".join(f"{f.stage} ({human_seconds(f.projected_long_s)})" for f in ranked[1:3])
        + f"; one pass of every sharded row (checkout aside): {human_seconds(one_core)} on one core, about "
        f"{human_seconds(sixteen)} on 16 cores: the features spread over shards (one worker process each), DVC "
        f"hashes on core.checksum_jobs threads (default min(4, cores / 2): 1 here, 4 there), and the rest runs "
        f"in one process (the download writes each split through one ShardWriter)",
    ]


def report(h: Harness, ladders: Ladders) -> tuple[str, list[Fit], dict[str, list]]:
    fits = []
    for (stage, layout), row in h.rows.items():
        if layout != "per-file":
            fits.append(fit_row(row, h.rows.get((stage, "per-file"))))
            if (stage, "per-file") in h.rows:
                fits.append(fit_row(h.rows[(stage, "per-file")], None))
    checks = checks_of(fits)
    head = (
        f"Ladders: {ladder_text(ladders.sharded)} clips (sharded: ingest, manifests, DVC, ontology, samplers); "
        f"per-file {ladder_text(ladders.per_file)}; features {ladder_text(ladders.features)}; 10 s clips at "
        f"{ladders.long_corpus:,} (corpus) and {ladders.long_features:,} (features). {h.cps:,} clips per shard, "
        f"{h.feature_shard} per feature shard. DVC cache type: {h.cache.get('type', 'copy (DVC default)')}; "
        f"DVC start-up {h.dvc_s:.2f} s and {h.dvc_kib / 1024:.0f} MiB (subtracted). "
        f"Exponents over the {FIT_POINTS} largest N."
    )
    if ladders == QUICK:
        head += " A quick run: two small points per cost, a smoke test; its exponents and projections mean little."
    return "\n".join([head, "", markdown(fits), "", *summary_lines(fits, checks)]), fits, checks


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a small ladder: a smoke run of about a minute")
    ap.add_argument("--json", default=None, help="also write every point, fit and check to this file")
    ap.add_argument("--work", default=None, help="the folder to make corpora in (default: the system's temporary one)")
    ap.add_argument("--point", default=None, help=argparse.SUPPRESS)  # internal: one measured point
    args = ap.parse_args()
    if args.point:
        spec = json.loads(args.point)
        print(json.dumps(POINTS[spec["kind"]](spec)))
        return

    ladders = QUICK if args.quick else DEFAULT
    start = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - start:4.0f} s] {msg}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="sslam-scale-", dir=args.work) as tmp:
        h = run(ladders, Path(tmp), args.quick, log)
    text, fits, checks = report(h, ladders)
    print(text)
    print(f"\n(measured in {time.perf_counter() - start:.0f} s)")
    if args.json:
        record = {"ladders": asdict(ladders), "clips_per_shard": h.cps, "dvc_startup_s": h.dvc_s}
        record |= {"fits": [asdict(f) for f in fits], "checks": checks}
        Path(args.json).write_text(json.dumps(record, indent=1))


if __name__ == "__main__":
    main()
