"""Benchmark: bytes on disk of a DVC project, per clip, and what a linked cache saves over copies.

Prints a table for the corpus, the features, the checkpoints, the other outputs under data/ and
.dvc/cache: files, apparent bytes, bytes on disk as the tree is (allocated blocks, st_blocks x 512, each
inode counted once, so a workspace file hardlinked to its cache object counts once), bytes on disk had
the cache been a copy (every workspace file its own blocks beside its cache object) and had it been
linked (every workspace file whose object dvc.lock / the .dvc file names is in the cache counted once),
all per clip too; then the ratio "cache type copy vs linked". Measured on the tree, whichever cache type
made it: a copied tree's files are matched to their objects through DVC's own index.

    python bench/footprint.py [PROJECT] [--unprotect]

PROJECT defaults to this repository after `dvc repro`. Where it has no corpus (a fresh clone), a small
one is made in a temporary folder: the download and features stages' scripts run on a copy of
params.yaml with an eighth of the clips (same clip length and feature settings, so the per-clip numbers
are the default run's), `dvc add` puts both folders in a cache of this project's cache.type, and that is
measured. ``--unprotect`` also times what DVC does to a persisted output's links before its stage
reruns (dvc_data's _unprotect_file: each hardlink or symlink copied back to a plain file): on a copy of
the features folder, hardlinked, writes flushed to disk (docs/scaling.md).
"""

from __future__ import annotations

import argparse
import configparser
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
SHRINK = 8  # the temporary corpus holds 1/SHRINK of the default clips
CACHE_FILES = Path(".dvc") / "cache" / "files" / "md5"


@dataclass
class Usage:
    """One row of the table."""

    name: str
    files: int = 0
    apparent: int = 0  # st_size of the regular files (what `ls -l` adds up)
    on_disk: int = 0  # allocated blocks, each inode once across the whole table
    as_copy: int = 0  # allocated blocks had every path its own copy (cache.type copy)
    as_linked: int = 0  # allocated blocks had every committed workspace file been a link to its object
    notes: set[str] = field(default_factory=set)


def _blocks(st: os.stat_result) -> int:
    return st.st_blocks * 512


def committed_objects(project: Path) -> dict[Path, Path]:
    """Workspace file -> its cache object, for every file of every cached output (dvc.yaml stages or .dvc
    files) whose object is in the cache, read through DVC's own index and the ``.dir`` listings."""
    from dvc.repo import Repo

    out: dict[Path, Path] = {}
    cache = project / CACHE_FILES
    with Repo(str(project)) as repo:
        outs = [(Path(o.fs_path), o.hash_info.value or "") for o in repo.index.outs if o.use_cache and o.hash_info]
    for path, oid in outs:
        obj = cache / oid[:2] / oid[2:] if oid else None
        if obj is None or not obj.is_file():
            continue
        if not oid.endswith(".dir"):
            out[path] = obj
            continue
        for entry in json.loads(obj.read_text()):
            child = cache / entry["md5"][:2] / entry["md5"][2:]
            if child.is_file():
                out[path / entry["relpath"]] = child
    return out


def measure(project: Path, parts: list[tuple[str, Path]], cache: Path) -> list[Usage]:
    """The table's rows, in order: each workspace part, then the cache. An inode seen in an earlier row
    is not counted again, so a hardlinked object counts in its workspace row and the cache row holds what
    the cache adds (old versions, listings, objects of outputs not checked out)."""
    objects = committed_objects(project) if (project / ".dvc").is_dir() else {}
    linked_objects: set[tuple[int, int]] = set()  # objects a workspace file (would) stand for
    seen: set[tuple[int, int]] = set()
    rows = []
    for name, root in [*parts, (".dvc/cache", cache)]:
        row = Usage(name)
        in_cache = root == cache
        for dirpath, _, filenames in os.walk(root):
            for f in filenames:
                path = Path(dirpath, f)
                st = path.lstat()
                key = (st.st_dev, st.st_ino)
                row.files += 1
                if path.is_symlink():
                    row.notes.add("symlink")
                    target = path.stat() if path.exists() else st
                    row.apparent += target.st_size
                    row.as_copy += _blocks(target)
                    obj_key = (target.st_dev, target.st_ino)
                    if not in_cache and path.exists() and obj_key not in linked_objects:
                        linked_objects.add(obj_key)  # the object this link stands for: counted here, once
                        row.as_linked += _blocks(target)
                    if key not in seen:
                        seen.add(key)
                        row.on_disk += _blocks(st)
                    continue
                row.apparent += st.st_size
                row.as_copy += _blocks(st)
                if key not in seen:
                    seen.add(key)
                    row.on_disk += _blocks(st)
                    if st.st_nlink > 1:
                        row.notes.add("hardlink")
                if in_cache:
                    if key not in linked_objects:  # an object no workspace file stands for
                        row.as_linked += _blocks(st)
                    continue
                obj = objects.get(path)
                if obj is not None:
                    ost = obj.stat()
                    if (ost.st_dev, ost.st_ino) != key and ost.st_size == st.st_size:
                        row.notes.add("copy")
                    obj_key = (ost.st_dev, ost.st_ino)
                    if obj_key not in linked_objects:
                        linked_objects.add(obj_key)
                        row.as_linked += _blocks(ost)
                elif key not in linked_objects:  # not committed (a cache: false output, an untracked file)
                    linked_objects.add(key)
                    row.as_linked += _blocks(st)
        rows.append(row)
    return rows


def clip_count(corpus: Path) -> int:
    """The clips of a corpus: rows with status ok in its manifests (AudioSet splits and tasks)."""
    n = 0
    for manifest in [*sorted((corpus / "manifests").glob("*.csv")), *sorted((corpus / "tasks").glob("*/manifest.csv"))]:
        with open(manifest, newline="") as f:
            n += sum(row.get("status") == "ok" for row in csv.DictReader(f))
    return n


def _shrunk(params: dict) -> dict:
    """``params`` with every clip count of the synthetic source divided by SHRINK (at least 1)."""

    def shrink(node, key: str = ""):
        if isinstance(node, dict):  # the keys under a clips* mapping ({unbalanced: 480}) are counts too
            return {k: shrink(v, key if key.startswith("clips") else k) for k, v in node.items()}
        if isinstance(node, int) and not isinstance(node, bool) and key.startswith("clips"):
            return max(1, node // SHRINK)
        return node

    out = json.loads(json.dumps(params))
    out["download"]["source"] = "synthetic"
    out["download"]["synthetic"] = shrink(out["download"]["synthetic"])
    return out


def run(cmd: list[str], cwd: Path) -> None:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")


def project_cache_type(project: Path) -> str:
    """``cache.type`` of the project's .dvc/config as written there (``reflink,hardlink,symlink,copy``)."""
    config = configparser.ConfigParser()
    config.read(project / ".dvc" / "config")
    return config.get("cache", "type", fallback="copy").strip().strip("'\"")


def cache_types(project: Path) -> str:
    """The cache.type DVC uses in ``project`` (.dvc/config, overridden by .dvc/config.local)."""
    from dvc.repo import Repo

    with Repo(str(project)) as repo:
        types = repo.config["cache"].get("type")
    return ",".join(types) if isinstance(types, list) else types or "reflink,copy (DVC's default)"


def build_small_project(tmp: Path) -> Path:
    """A DVC project in ``tmp``: a small corpus and its features made by the stage scripts, then `dvc add`ed
    with this repository's cache.type, so its workspace files are whatever links the filesystem allows."""
    tmp.mkdir(parents=True, exist_ok=True)
    params = _shrunk(yaml.safe_load((REPO / "params.yaml").read_text()))
    (tmp / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], tmp)
    run([sys.executable, "-m", "dvc", "config", "cache.type", project_cache_type(REPO)], tmp)
    t0 = time.perf_counter()
    run([sys.executable, str(REPO / "stages" / "download.py"), "--metrics", "metrics/download.json"], tmp)
    run([sys.executable, str(REPO / "stages" / "features.py"), "--metrics", "metrics/features.json"], tmp)
    run([sys.executable, "-m", "dvc", "add", "-q", params["data"]["corpus_dir"], "data/features"], tmp)
    print(f"small corpus (1/{SHRINK} of the default clips) built and added in {time.perf_counter() - t0:.0f} s: {tmp}")
    return tmp


def unprotect_cost(features: Path, scratch: Path) -> dict:
    """Seconds and bytes DVC spends copying a hardlinked output back to plain files before a persisted
    stage reruns: a copy of ``features`` added to a hardlink cache, then DVC's unprotect (the same
    dvc_data call `dvc repro` makes) timed with the writes flushed (os.sync)."""
    scratch.mkdir(parents=True)
    run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], scratch)
    run([sys.executable, "-m", "dvc", "config", "cache.type", "hardlink"], scratch)
    shutil.copytree(features, scratch / "features", symlinks=False)
    run([sys.executable, "-m", "dvc", "add", "-q", "features"], scratch)
    files = [p for p in (scratch / "features").rglob("*") if p.is_file()]
    size = sum(p.stat().st_size for p in files)
    linked = sum(p.stat().st_nlink > 1 for p in files)
    before = measure(scratch, [("features", scratch / "features")], scratch / ".dvc" / "cache")
    from dvc.repo import Repo

    with Repo(str(scratch)) as repo:  # in this process: the time is the copy's, not DVC's start-up
        os.sync()
        t0 = time.perf_counter()
        repo.unprotect(str(scratch / "features"))
        os.sync()
        seconds = time.perf_counter() - t0
    after = measure(scratch, [("features", scratch / "features")], scratch / ".dvc" / "cache")
    return {
        "files": len(files),
        "hardlinked_before": linked,
        "bytes": size,
        "seconds": seconds,
        "s_per_gib": seconds / (size / 2**30),
        "disk_added": sum(r.on_disk for r in after) - sum(r.on_disk for r in before),
    }


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


def table(rows: list[Usage], clips: int) -> str:
    head = ("", "files", "apparent", "on disk", "per clip", "if copy", "per clip", "if linked", "per clip", "files are")
    lines = [head]
    total = Usage("total")
    for r in [*rows, total]:
        if r is not total:
            for k in ("files", "apparent", "on_disk", "as_copy", "as_linked"):
                setattr(total, k, getattr(total, k) + getattr(r, k))
        lines.append(
            (
                r.name,
                str(r.files),
                _size(r.apparent),
                _size(r.on_disk),
                _size(r.on_disk / max(clips, 1)),
                _size(r.as_copy),
                _size(r.as_copy / max(clips, 1)),
                _size(r.as_linked),
                _size(r.as_linked / max(clips, 1)),
                ", ".join(sorted(r.notes)) or "-",
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    left = (0, len(head) - 1)  # the names and the notes; numbers align right
    return "\n".join(
        "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths)))
        for line in lines
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("project", nargs="?", type=Path, default=REPO, help="a DVC project after `dvc repro`")
    ap.add_argument("--unprotect", action="store_true", help="also time DVC's unprotect of the features")
    args = ap.parse_args(argv)
    project = args.project.resolve()
    with tempfile.TemporaryDirectory(prefix="sslam-footprint-") as tmp:
        params_file = project / "params.yaml"
        corpus_dir = yaml.safe_load(params_file.read_text())["data"]["corpus_dir"] if params_file.is_file() else ""
        if not corpus_dir or clip_count(project / corpus_dir) == 0:
            print(f"{project}: no corpus; measuring a small one instead", flush=True)
            project = build_small_project(Path(tmp) / "project")
            corpus_dir = yaml.safe_load((project / "params.yaml").read_text())["data"]["corpus_dir"]
        corpus = project / corpus_dir
        clips = clip_count(corpus)
        features, checkpoints = project / "data" / "features", project / "checkpoints"
        parts = [("corpus", corpus), ("features", features), ("checkpoints", checkpoints)]
        other = [p for p in sorted((project / "data").glob("*")) if p not in {corpus, features}]
        parts += [(p.relative_to(project).as_posix(), p) for p in other if p.is_dir() and not p.name.startswith(".")]
        rows = measure(project, [(n, p) for n, p in parts if p.exists()], project / ".dvc" / "cache")
        print(f"\n{project}: {clips} clips; cache.type {cache_types(project)}")
        print(table(rows, clips))
        on_disk = sum(r.on_disk for r in rows)
        as_copy, as_linked = sum(r.as_copy for r in rows), sum(r.as_linked for r in rows)
        print(
            f"\ncache type copy vs linked: {as_copy / max(as_linked, 1):.2f}x "
            f"({_size(as_copy)} with copies, {_size(as_linked)} linked; this tree: {_size(on_disk)})"
        )
        if args.unprotect:
            cost = unprotect_cost(project / "data" / "features", Path(tmp) / "unprotect")
            print(
                f"\nunprotect before a persisted stage reruns: {cost['files']} files ({cost['hardlinked_before']} "
                f"hardlinked), {_size(cost['bytes'])} copied in {cost['seconds']:.2f} s "
                f"({cost['s_per_gib']:.2f} s/GiB, flushed), {_size(cost['disk_added'])} more on disk"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
