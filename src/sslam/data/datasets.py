"""The data half of the ``dataset@<name>`` stage: list a real dataset with its registered layout
(``data/layouts/``), convert each listed clip (mono FLAC at the corpus rate; ``data/folder.py``'s checks, so
a bad file becomes a failures-table row with its reason, never a dead task; a file listed twice is kept
once) and write the one-task corpus: ``tasks/<name>/{manifest.csv, task.json, strong.tsv}`` and
``failures.csv``. Caching the log-mel is the stage's next step (``stages/dataset.py``), not this package's.

Layout facts come from each dataset's README and public loaders; the layouts check the headers they
rely on and name the file and the columns when they do not match.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

from tqdm import tqdm

from sslam.config.downstream import DatasetConfig
from sslam.data.folder import convert_file
from sslam.data.layouts import DatasetLayoutError, Listing, get_layout
from sslam.data.manifest import ManifestRow, write_failures, write_manifest
from sslam.io import writable_in_place, write_json_atomic, write_text_atomic
from sslam.provenance import HashCache, hash_cache_at


def read_listing(cfg: DatasetConfig) -> Listing:
    """The clips of the dataset at ``cfg.root``, as the layout ``cfg.format`` lists them."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: not a folder (datasets root, format {cfg.format})")
    return get_layout(cfg.format).read(root, cfg.options)


JOURNAL = "conversions.jsonl"  # one line per converted clip: what made it (digest) and its manifest row


def _convert_or_reuse(args: tuple) -> tuple[ManifestRow, str]:
    """A clip converted earlier is reused only when the stage's code and params and its source file's content
    are what made it (``digest``), so a killed stage resumes and a changed source is converted again.
    Returns the row and the digest."""
    item, root, out_dir, sample_rate, max_seconds, silence_dbfs, frame_length_ms, inputs, cache_path, previous = args
    try:
        content = hash_cache_at(cache_path).file(root / item.source) if not item.problem else "problem"
    except OSError:
        content = "missing"
    digest = hashlib.sha256(f"{inputs}\x00{item}\x00{content}".encode()).hexdigest()[:16]
    if previous is not None and previous["digest"] == digest:
        row = ManifestRow(**{**previous["row"], "labels": tuple(previous["row"]["labels"])})
        if row.status != "ok" or (out_dir / row.path).is_file():
            return row, digest
    return convert_file(item, root, out_dir, sample_rate, max_seconds, silence_dbfs, frame_length_ms).row, digest


def _read_journal(path: Path) -> dict[str, dict]:
    """clip id -> its last record; a line cut short by a kill is skipped (that clip is converted again)."""
    records: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                records[rec["row"]["clip_id"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return records


@dataclass(frozen=True)
class ConvertedDataset:
    """What :func:`convert_dataset` wrote: the listing and one manifest row per listed clip, in order."""

    format: str
    listing: Listing
    rows: tuple[ManifestRow, ...]

    def summary(self) -> dict:
        """The stage's metrics, before the features: clips listed, cached per split, failed by reason."""
        reasons = Counter(r.reason.split(":")[0] for r in self.rows if r.status != "ok")
        per_split = {s: sum(1 for r in self.rows if r.split == s and r.status == "ok") for s in self.listing.splits}
        return {
            "format": self.format,
            "listed": len(self.rows),
            "clips": per_split,
            "failed": dict(reasons),
            "classes": len(self.listing.classes),
        }


def convert_dataset(
    name: str,
    cfg: DatasetConfig,
    sample_rate: int,
    out_dir: str | Path,
    frame_length_ms: float,
    workers: int = 1,
    inputs: str = "",
    hash_cache: HashCache | None = None,
) -> ConvertedDataset:
    """List and convert (mono FLAC at ``sample_rate``) one dataset as a one-task corpus in ``out_dir``:
    ``tasks/<name>/{manifest.csv, task.json}`` and ``failures.csv`` (every listed clip that could not be
    used, with the reason; a clip shorter than one ``frame_length_ms`` window is one). ``inputs``: the
    stage's code and params digest; converted clips made from other inputs are made again."""
    out_dir = Path(out_dir)
    listing = read_listing(cfg)
    if not listing.items:
        raise DatasetLayoutError(f"{cfg.root}: the {cfg.format} listing has no clips")
    for key in ("kind", "protocol"):
        want = getattr(cfg, key)
        if want is not None and want != getattr(listing, key):
            raise DatasetLayoutError(
                f"datasets.{name}.{key} is {want!r} but the {cfg.format} layout at {cfg.root} "
                f"is {getattr(listing, key)!r}"
            )
    task_dir = out_dir / "tasks" / name
    task_dir.mkdir(parents=True, exist_ok=True)
    journal = task_dir / JOURNAL
    previous = _read_journal(journal)
    cache_path = str(hash_cache.path) if hash_cache is not None and hash_cache.path is not None else None
    common = (
        Path(cfg.root),
        task_dir,
        sample_rate,
        cfg.max_seconds,
        cfg.silence_dbfs,
        frame_length_ms,
        inputs,
        cache_path,
    )
    jobs = [(i, *common, previous.get(i.clip_id)) for i in listing.items]
    bar = dict(total=len(jobs), desc=f"dataset {name}", unit="clip", mininterval=1.0)
    rows: list[ManifestRow] = []
    records: list[dict] = []
    with open(writable_in_place(journal), "a", buffering=1) as log:  # a killed stage resumes from it
        pool = get_context("fork").Pool(workers) if workers > 1 and len(jobs) > 1 else None
        results = pool.imap(_convert_or_reuse, jobs, chunksize=8) if pool is not None else map(_convert_or_reuse, jobs)
        try:
            for row, digest in tqdm(results, **bar):
                rows.append(row)
                records.append({"digest": digest, "row": asdict(row)})
                log.write(json.dumps(records[-1]) + "\n")
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    kept = {r.path for r in rows if r.status == "ok"}
    for f in (task_dir / "audio").rglob("*.flac"):  # clips no longer listed, or whose source is gone
        if str(f.relative_to(task_dir)) not in kept:
            f.unlink()
    write_text_atomic(journal, "".join(json.dumps(r) + "\n" for r in records))  # this listing's clips only
    rows = [replace(r, path=f"tasks/{name}/{r.path}") if r.status == "ok" else r for r in rows]
    write_manifest(task_dir / "manifest.csv", rows)
    failed = [
        (r.clip_id, str(Path(cfg.root) / i.source), r.reason, 1)
        for r, i in zip(rows, listing.items)
        if r.status != "ok"
    ]
    write_failures(out_dir / "failures.csv", failed)
    if listing.kind == "multi_label":  # the labels per clip: the report's breakdown by degree of polyphony
        events = [(r.clip_id, lab) for r in rows if r.status == "ok" for lab in sorted(set(r.labels))]
        write_text_atomic(
            task_dir / "strong.tsv", "segment_id\tlabel\n" + "".join(f"{c}\t{lab}\n" for c, lab in events)
        )
    write_json_atomic(
        task_dir / "task.json",
        {
            "name": name,
            "kind": listing.kind,
            "protocol": listing.protocol,
            "splits": list(listing.splits),
            "classes": list(listing.classes),
            "class_names": list(listing.classes),
            "source": {"format": cfg.format, "root": str(cfg.root)},
        },
    )
    return ConvertedDataset(cfg.format, listing, tuple(rows))
