"""What decides a persisted output, as DVC sees it: the code a stage imports, the params it reads and the
content of its input data.

DVC reruns a stage when any of its deps changes; a stage that keeps work between runs (a pretraining
checkpoint, a finished feature shard, a converted clip) may reuse it only when the same three things are
unchanged, or the rerun hands back the old result as the new code's. Everything here computes them the
way ``dvc.yaml`` declares them, and ``tests/test_dvc_deps.py`` checks ``dvc.yaml`` against the same
:func:`import_closure`, so the two can never drift apart:

- code: the stage script and every ``sslam`` file it imports, transitively (function-level imports too);
- params: the values of exactly the keys the stage lists under ``params:`` in ``dvc.yaml``;
- data: file contents (SHA-256). Hashes are kept in a small SQLite table keyed by the file's path, size,
  mtime and inode (what DVC's own state database does), so an unchanged multi-GB input is not read again.
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml

SRC = Path(__file__).resolve().parent.parent  # the folder holding the ``sslam`` package
DIGEST_CHARS = 16


def _sha(*parts: bytes) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(len(p).to_bytes(8, "little") + p)
    return h.hexdigest()[:DIGEST_CHARS]


# ----------------------------------------------------------------------------- code


def module_file(name: str, src: Path = SRC) -> Path | None:
    """The file of a dotted ``sslam`` module (a package resolves to its ``__init__.py``)."""
    base = src / Path(*name.split("."))
    for cand in (base.with_suffix(".py"), base / "__init__.py"):
        if cand.is_file():
            return cand
    return None


def imported_modules(path: Path, package: str | None) -> set[str]:
    """Every ``sslam`` module a file imports, anywhere in it (function-level and relative imports too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level and package:  # relative import
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            out.add(base)
            out |= {f"{base}.{a.name}" for a in node.names}  # `from pkg import module`
    return {m for m in out if m == "sslam" or m.startswith("sslam.")}


def import_closure(script: str | Path, src: Path = SRC) -> set[Path]:
    """The library files a script pulls in, transitively (empty package ``__init__`` files left out)."""
    seen: set[Path] = set()
    todo: list[tuple[Path, str | None]] = [(Path(script), None)]
    while todo:
        path, package = todo.pop()
        for mod in imported_modules(path, package):
            f = module_file(mod, src)
            if f is None or f in seen:
                continue
            seen.add(f)
            todo.append((f, mod if f.name == "__init__.py" else mod.rpartition(".")[0]))
    return {f for f in seen if not (f.name == "__init__.py" and not f.read_text().strip())}


def code_digest(script: str | Path, src: Path = SRC) -> str:
    """The script and its import closure, by name and content: any edit to either changes it."""
    script = Path(script).resolve()
    files = sorted(import_closure(script, src))
    return _sha(
        script.name.encode(),
        script.read_bytes(),
        *(b for f in files for b in (str(f.relative_to(src)).encode(), f.read_bytes())),
    )


# ----------------------------------------------------------------------------- params


def stage_entry(stage: str, dvc_yaml: str | Path) -> dict:
    """The ``dvc.yaml`` entry of ``stage`` (``name`` or ``name@key`` of a foreach stage), with ``${key}`` and
    ``${item}`` filled in (``${item}`` is the key itself for a foreach over a list)."""
    name, _, key = stage.partition("@")
    stages = yaml.safe_load(Path(dvc_yaml).read_text())["stages"]
    if name not in stages:
        raise KeyError(f"{dvc_yaml}: no stage {name!r} (stages: {sorted(stages)})")
    entry = stages[name]
    if "do" not in entry:
        return entry
    if not key:
        raise KeyError(f"{dvc_yaml}: stage {name!r} is a foreach stage: name one of its entries as {name}@<key>")
    text = json.dumps(entry["do"]).replace("${key}", key).replace("${item}", key)
    return json.loads(text)


def stage_param_keys(stage: str, dvc_yaml: str | Path) -> list[str]:
    """The params keys ``dvc.yaml`` lists for ``stage`` (what DVC compares to decide a rerun)."""
    keys: list[str] = []
    for p in stage_entry(stage, dvc_yaml).get("params", []):
        keys += [p] if isinstance(p, str) else [k for v in p.values() for k in v]
    return keys


def param_value(params: dict, key: str, where: str = "params.yaml") -> Any:
    value: Any = params
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"{where}: no key {key!r} (dvc.yaml lists it as a param of this stage)")
        value = value[part]
    return value


def params_digest(params_file: str | Path, keys: Sequence[str]) -> str:
    """The values of ``keys`` in ``params_file``, as the YAML holds them (DVC's comparison)."""
    params = yaml.safe_load(Path(params_file).read_text()) or {}
    values = {k: param_value(params, k, str(params_file)) for k in keys}
    return _sha(json.dumps(values, sort_keys=True, default=str).encode())


# ----------------------------------------------------------------------------- data


class HashCache:
    """SHA-256 of files, remembered per (path, size, mtime, inode) in SQLite; safe across processes."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path is not None else None
        self._db: sqlite3.Connection | None = None
        self._pid = 0

    def _conn(self) -> sqlite3.Connection | None:
        if self.path is None:
            return None
        if self._db is None or self._pid != os.getpid():  # a forked worker opens its own connection
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            for attempt in range(100):  # workers opening a new table together: the mode switch may be busy
                try:
                    if db.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
                        db.execute("PRAGMA journal_mode=WAL")
                    db.execute(
                        "CREATE TABLE IF NOT EXISTS hashes "
                        "(path TEXT PRIMARY KEY, size INT, mtime INT, inode INT, sha TEXT)"
                    )
                    break
                except sqlite3.OperationalError:
                    if attempt == 99:
                        raise
                    time.sleep(0.05)
            self._db, self._pid = db, os.getpid()
        return self._db

    def __getstate__(self) -> dict:
        return {"path": self.path, "_db": None, "_pid": 0}

    def file(self, path: str | Path) -> str:
        """The file's SHA-256 (hex): from the table when size, mtime and inode are unchanged."""
        path = Path(path).resolve()
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
        db = self._conn()
        if db is not None:
            row = db.execute("SELECT size, mtime, inode, sha FROM hashes WHERE path = ?", (key[0],)).fetchone()
            if row is not None and tuple(row[:3]) == key[1:]:
                return row[3]
        with open(path, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        if db is not None:
            db.execute("INSERT OR REPLACE INTO hashes VALUES (?, ?, ?, ?, ?)", (*key, sha))
        return sha


@functools.lru_cache(maxsize=8)
def hash_cache_at(path: str | None) -> HashCache:
    """One table object per path in a process (each process still opens its own connection)."""
    return HashCache(path)


def default_hash_cache(root: str | Path = ".") -> HashCache:
    """The hash table of the DVC project at ``root`` (in ``.dvc/tmp``, beside DVC's own); none elsewhere."""
    tmp = Path(root) / ".dvc" / "tmp"
    cache = HashCache(tmp / "sslam-hashes.sqlite" if tmp.is_dir() else None)
    cache._conn()  # the table exists before any worker process opens it
    return cache


def data_files(path: str | Path) -> list[Path]:
    """The files of a data input, sorted; hidden names (``.tmp-*`` leftovers of a killed writer) left out."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: input data not found")
    out = []
    for dirpath, dirnames, filenames in os.walk(path):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        out += [Path(dirpath) / f for f in filenames if not f.startswith(".")]
    return sorted(out)


def data_digest(paths: Iterable[str | Path], cache: HashCache | None = None) -> str:
    """Content of files and folders (each file by its path inside its input and its SHA-256)."""
    cache = cache or HashCache(None)
    parts: list[bytes] = []
    for root in paths:
        root = Path(root)
        for f in data_files(root):
            rel = f.name if f == root else str(f.relative_to(root))
            parts += [rel.encode(), cache.file(f).encode()]
        parts.append(b"|")
    return _sha(*parts)


# ----------------------------------------------------------------------------- a stage


def stage_digest(
    script: str | Path,
    stage: str,
    params_file: str | Path,
    data: Iterable[str | Path] = (),
    cache: HashCache | None = None,
    dvc_yaml: str | Path | None = None,
    src: Path = SRC,
) -> dict[str, str]:
    """``{code, params, data}`` of one run of ``stage``: its script's import closure, the values of the
    params ``dvc.yaml`` lists for it (read from ``params_file``), and the content of ``data``."""
    script = Path(script).resolve()
    dvc_yaml = Path(dvc_yaml) if dvc_yaml is not None else script.parent.parent / "dvc.yaml"
    out = {
        "code": code_digest(script, src),
        "params": params_digest(params_file, stage_param_keys(stage, dvc_yaml)),
    }
    data = list(data)
    if data:
        out["data"] = data_digest(data, cache)
    return out
