"""Which clips two results used: compare or hash the clip lists of manifests, corpora, feature sets or commits.

AudioSet is downloaded, not distributed, so two downloads of the same lists differ (videos disappear)
and two results can differ by their data alone. Every metrics file records, per split, the count and
SHA-256 of its clip list (:mod:`sslam.data.clip_lists`); this command says which clips differ::

    python -m sslam.clips diff HEAD~1 HEAD                    # the corpus manifests of two commits
    python -m sslam.clips diff data/corpus other/corpus       # two corpus folders
    python -m sslam.clips diff data/corpus/manifests/eval.csv v1:data/corpus/manifests/eval.csv
    python -m sslam.clips hash data/features                  # per set / split: clips and sha256

A and B may each be a manifest CSV (a clip counts when its status is ``ok``), a features set's
``index.csv`` (every row counts), a corpus folder (``manifests/<split>.csv`` and
``tasks/<task>/manifest.csv``), a features folder (every ``<set>/index.csv``), or a git revision
``REV`` (the corpus manifests at that commit, ``data.corpus_dir`` of its params.yaml) or ``REV:PATH``,
read through ``dvc.api`` from the local DVC cache. Clips are grouped per split: ``<split>`` for the
corpus's AudioSet-shaped manifests and features sets, ``<set>/<split>`` otherwise (``tasks/mono/1``);
``--by set`` groups per manifest / features set instead (the keys of ``metrics/features.json``).
``diff`` exits 0 when every group holds the same clips, 1 when one differs, 2 on an error (as diff).
"""

from __future__ import annotations

import argparse
import csv
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd
import yaml

from sslam.data.clip_lists import clip_list_summary
from sslam.data.manifest import read_manifest

ClipSets = dict[str, set[str]]  # group (split, or set/split) -> clip ids
LIST_CAP = 20  # ids listed per group and side unless --all


class ClipsError(Exception):
    """A spec that cannot be read: names the spec and what to do."""


# ----------------------------------------------------------------------------- reading one CSV


def read_clip_csv(path: Path) -> pd.DataFrame:
    """(clip_id, split) of the clips a CSV counts: a manifest's rows with status ``ok`` (read by the
    manifest reader, so any layout it reads is read), or every row of a features ``index.csv``."""
    with open(path, encoding="utf-8", newline="") as f:
        columns = next(csv.reader(f), [])
    if "status" in columns:  # a manifest: only clip_id, split and status are used (the other columns change)
        df = read_manifest(path, only_ok=True)
    elif "clip_id" in columns:  # a features set's index: every row is a stored clip
        df = pd.read_csv(
            path, usecols=[c for c in ("clip_id", "split") if c in columns], dtype=str, keep_default_na=False
        )
    else:
        raise ClipsError(
            f"{path}: neither a manifest (clip_id, split, ..., status) nor an index.csv (no clip_id column)"
        )
    if "split" not in df:
        df["split"] = ""
    return df[["clip_id", "split"]]


def _group(df: pd.DataFrame, set_name: str, by: str, out: ClipSets) -> None:
    """Add a CSV's clips to ``out``: per split, keyed ``split`` when it names the set (or the set is
    unnamed), else ``set/split``; ``by == 'set'``: one group per set."""
    if by == "set":
        out.setdefault(set_name or "all", set()).update(df["clip_id"])
        return
    for split, ids in df.groupby("split", sort=False)["clip_id"]:
        key = split if set_name in ("", split) else f"{set_name}/{split}" if split else set_name
        out.setdefault(key or "all", set()).update(ids)


# ----------------------------------------------------------------------------- folders (local or at a revision)


def clip_csvs(files: Iterable[str]) -> dict[str, str]:
    """set name -> file, for the clip CSVs among a folder's files (paths relative to the folder): a
    corpus's ``manifests/<split>.csv`` and ``tasks/<task>/manifest.csv`` (and a dataset folder's), or,
    in a folder without manifests, every features set's ``<set>/index.csv``."""
    files = sorted(str(f).replace("\\", "/") for f in files)
    found = {}
    for f in files:
        parts = f.split("/")
        if len(parts) == 2 and parts[0] == "manifests" and parts[1].endswith(".csv"):
            found[parts[1][: -len(".csv")]] = f
        elif len(parts) == 3 and parts[0] == "tasks" and parts[2] == "manifest.csv":
            found[f"tasks/{parts[1]}"] = f
    if found:
        return found
    return {
        f[: -len("/index.csv")] if "/" in f else "": f for f in files if f == "index.csv" or f.endswith("/index.csv")
    }


def _read_folder(files: list[str], read: Callable[[str], pd.DataFrame], where: str, by: str) -> ClipSets:
    csvs = clip_csvs(files)
    if not csvs:
        raise ClipsError(f"{where}: no manifests/<split>.csv, tasks/<task>/manifest.csv or <set>/index.csv in it")
    out: ClipSets = {}
    for set_name, rel in csvs.items():
        _group(read(rel), set_name, by, out)
    return out


def local_clip_sets(path: Path, by: str = "split") -> ClipSets:
    """The clip sets of a local CSV or folder."""
    if path.is_file():
        out: ClipSets = {}
        _group(read_clip_csv(path), "", by, out)
        return out
    files = [str(p.relative_to(path)) for p in path.rglob("*.csv") if p.is_file()]
    return _read_folder(files, lambda rel: read_clip_csv(path / rel), str(path), by)


# ----------------------------------------------------------------------------- git revisions through dvc.api


def git_root() -> Path | None:
    proc = subprocess.run(["git", "rev-parse", "--show-toplevel"], capture_output=True, text=True)
    return Path(proc.stdout.strip()) if proc.returncode == 0 else None


def is_revision(rev: str, root: Path) -> bool:
    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"], cwd=root, capture_output=True, text=True
    )
    return proc.returncode == 0


def _corpus_dir_at(fs, rev: str) -> str:
    """``data.corpus_dir`` of the revision's params.yaml (``data/corpus`` without one)."""
    try:
        with fs.open("params.yaml", "r") as f:
            return str(yaml.safe_load(f)["data"]["corpus_dir"])
    except (FileNotFoundError, KeyError, TypeError):
        return "data/corpus"


def revision_clip_sets(rev: str, path: str | None, root: Path, by: str = "split") -> ClipSets:
    """The clip sets of ``path`` (a CSV or folder, relative to the repository root; default the corpus)
    at git revision ``rev``, read from the local DVC cache (git-tracked files from git)."""
    from dvc.api import DVCFileSystem
    from dvc.exceptions import DvcException

    fs = DVCFileSystem(str(root), rev=rev)
    path = (path or _corpus_dir_at(fs, rev)).strip("/")
    spec = f"{rev}:{path}"
    missing = (
        f"{spec}: not in the local DVC cache (that revision's data was never here, or was garbage-collected): "
        f"`git checkout {rev} && dvc pull` (or `dvc fetch --all-commits`) from a remote, or `dvc repro` there"
    )

    def read(rel: str) -> pd.DataFrame:
        target = f"{path}/{rel}" if rel else path
        with tempfile.TemporaryDirectory() as tmp:  # the manifest reader reads files: copied, streamed
            local = Path(tmp) / Path(target).name
            try:
                fs.get_file(target, str(local))
            except (DvcException, FileNotFoundError, OSError) as err:
                raise ClipsError(f"{missing} ({target}: {err.__class__.__name__})") from err
            return read_clip_csv(local)

    try:
        if not fs.exists(path):
            raise ClipsError(f"{spec}: no such file or folder at revision {rev} (neither in git nor a DVC output)")
        if fs.isfile(path):
            out: ClipSets = {}
            _group(read(""), "", by, out)
            return out
        files = [f[len(path) + 1 :] for f in fs.find(path) if f.endswith(".csv")]
    except ClipsError:
        raise
    except (DvcException, FileNotFoundError, OSError) as err:
        raise ClipsError(f"{missing} ({err.__class__.__name__}: {err})") from err
    return _read_folder(files, read, spec, by)


def clip_sets(spec: str, by: str = "split", corpus: str | None = None) -> ClipSets:
    """The clip sets a command-line spec names: an existing path, else ``REV`` or ``REV:PATH``."""
    if Path(spec).exists():
        return local_clip_sets(Path(spec), by)
    root = git_root()
    rev, _, path = spec.partition(":")
    if root is None or not is_revision(rev, root):
        raise ClipsError(f"{spec}: neither a file or folder nor a git revision (REV or REV:PATH) of this repository")
    if path:  # relative to the current folder, as git's REV:./PATH; absolute paths inside the repository too
        path = str((Path.cwd() / path).resolve().relative_to(root.resolve()))
    elif corpus:
        path = corpus
    return revision_clip_sets(rev, path or None, root, by)


# ----------------------------------------------------------------------------- the commands


def _listing(ids: set[str], show_all: bool) -> str:
    shown = sorted(ids) if show_all else sorted(ids)[:LIST_CAP]
    more = len(ids) - len(shown)
    return " ".join(shown) + (f" ... and {more} more (--all lists every id)" if more else "")


def render_diff(a: ClipSets, b: ClipSets, show_all: bool = False) -> tuple[str, bool]:
    """(the report, whether any group differs): per group the counts only in A / only in B and their ids."""
    lines, differ = [], False
    for key in sorted(set(a) | set(b)):
        ia, ib = a.get(key, set()), b.get(key, set())
        only_a, only_b = ia - ib, ib - ia
        if not only_a and not only_b:
            lines.append(f"{key}: same {len(ia)} clips (sha256 {clip_list_summary(ia)['sha256'][:16]})")
            continue
        differ = True
        where = " (only in A)" if key not in b else " (only in B)" if key not in a else ""
        lines.append(f"{key}{where}: A {len(ia)} clips, B {len(ib)}; {len(only_a)} only in A, {len(only_b)} only in B")
        for side, ids in (("A", only_a), ("B", only_b)):
            if ids:
                lines.append(f"  only in {side}: {_listing(ids, show_all)}")
    return "\n".join(lines) + "\n", differ


def render_hash(sets: ClipSets) -> str:
    """One line per group: the key, the clip count and the SHA-256 of its sorted ids."""
    rows = [(k, clip_list_summary(v)) for k, v in sorted(sets.items())]
    width = max((len(k) for k, _ in rows), default=0)
    return "".join(f"{k:<{width}}  {s['clips']:>9}  {s['sha256']}\n" for k, s in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m sslam.clips", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--by", choices=["split", "set"], default="split", help="group per split (default) or per set")
    common.add_argument(
        "--corpus", default=None, help="for a bare REV: the folder to read (default: its data.corpus_dir)"
    )
    d = sub.add_parser("diff", parents=[common], help="which clips A and B differ in (exit 1 when they do)")
    d.add_argument("a")
    d.add_argument("b")
    d.add_argument("--all", action="store_true", help=f"list every differing id (default: the first {LIST_CAP})")
    h = sub.add_parser("hash", parents=[common], help="per group: clips and the sha256 of the sorted ids")
    h.add_argument("spec")
    args = ap.parse_args(argv)
    try:
        if args.command == "hash":
            sys.stdout.write(render_hash(clip_sets(args.spec, args.by, args.corpus)))
            return 0
        a, b = clip_sets(args.a, args.by, args.corpus), clip_sets(args.b, args.by, args.corpus)
    except (ClipsError, ValueError, OSError) as err:
        print(f"sslam.clips: {err}", file=sys.stderr)
        return 2
    text, differ = render_diff(a, b, args.all)
    sys.stdout.write(f"A = {args.a}\nB = {args.b}\n" + text)
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
