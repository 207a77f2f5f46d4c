"""What decides a persisted output, as DVC sees it: the code a stage imports, the params it reads and the
content of its input data.

DVC reruns a stage when any of its deps changes; a stage that keeps work between runs (a pretraining
checkpoint, a finished feature shard, a converted clip) may reuse it only when the same three things are
unchanged, or the rerun hands back the old result as the new code's. Everything here computes them the
way ``dvc.yaml`` declares them, and ``tests/test_dvc_deps.py`` checks ``dvc.yaml`` against the same
:func:`import_closure`, so the two can never drift apart:

- code: the stage script and every ``sslam`` file it imports, transitively (function-level imports too, and
  every module of a package a registry discovers: ``DISCOVERS = "<package>"``);
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


def imported_modules(path: Path, package: str | None, discovered: bool = True) -> set[str]:
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
        elif (
            discovered
            and isinstance(node, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == "DISCOVERS" for t in node.targets)
        ):
            out |= discovered_modules(node.value.value) if isinstance(node.value, ast.Constant) else set()
    return {m for m in out if m == "sslam" or m.startswith("sslam.")}


def discovered_modules(package: str, src: Path = SRC) -> set[str]:
    """The modules a registry finds at run time (``DISCOVERS = "<package>"`` beside its ``pkgutil`` walk):
    every module of the package, so a plug-in added as one new file is code its users depend on."""
    folder = src / Path(*package.split("."))
    return {f"{package}.{f.stem}" for f in folder.glob("*.py") if not f.name.startswith("_")}


def import_closure(script: str | Path, src: Path = SRC) -> set[Path]:
    """The library files a script pulls in, transitively, with the ``__init__`` of every package on the way
    (Python runs them; empty ones are left out)."""
    seen: set[Path] = set()
    todo: list[tuple[Path, str | None]] = [(Path(script), None)]
    while todo:
        path, package = todo.pop()
        for mod in imported_modules(path, package):
            # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            parents = [".".join(mod.split(".")[:i]) for i in range(1, mod.count(".") + 1)]
            for name in [*parents, mod]:
                f = module_file(name, src)
                if f is None or f in seen:
                    continue
                seen.add(f)
                todo.append((f, name if f.name == "__init__.py" else name.rpartition(".")[0]))
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


def code_manifest(script: str | Path, src: Path = SRC) -> dict[str, Any]:
    """What a stage's code is: its script and every library file it imports, each with its SHA-256, by
    path from the repository root. The pipeline's stages depend on this file instead of a list of paths
    kept by hand: it changes exactly when the code the stage runs does."""
    script = Path(script).resolve()
    name = f"{script.parent.name}/{script.name}"  # stages/<script>.py
    code = {name: hashlib.sha256(script.read_bytes()).hexdigest()}
    for f in sorted(import_closure(script, src)):
        code[str(f.relative_to(src.parent))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return {"script": name, "code": code}


def write_code_manifests(out: str | Path, stages: str | Path, src: Path = SRC) -> list[str]:
    """``out/<script>.json`` for every stage script in ``stages`` (the ``code`` stage); a manifest whose
    content is unchanged is not rewritten, and one without a script is removed. Returns what changed."""
    from sslam.io import write_text_atomic

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    changed = []
    scripts = sorted(Path(stages).glob("*.py"))
    for script in scripts:
        path = out / f"{script.stem}.json"
        text = json.dumps(code_manifest(script, src), indent=2) + "\n"
        if not path.is_file() or path.read_text() != text:
            write_text_atomic(path, text)
            changed.append(path.name)
    for stale in set(out.glob("*.json")) - {out / f"{s.stem}.json" for s in scripts}:
        stale.unlink()
        changed.append(stale.name)
    return changed


def import_graph(src: Path = SRC) -> dict[str, set[str]]:
    """Module -> the ``sslam`` modules it imports (function-level imports too), over the whole package."""
    graph: dict[str, set[str]] = {}
    for f in sorted((src / "sslam").rglob("*.py")):
        rel = f.relative_to(src).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        package = name if rel.name == "__init__" else name.rpartition(".")[0]
        found = imported_modules(f, package, discovered=False)  # a registry's discovery is no import
        graph[name] = {m for m in found if module_file(m, src) is not None} - {name}
    return graph


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


def main(argv: list[str] | None = None) -> int:
    """``python -m sslam.provenance <stages folder> <out folder>``: the ``code`` stage."""
    import argparse

    ap = argparse.ArgumentParser(description="Write each stage script's code manifest (its import closure).")
    ap.add_argument("stages", help="the folder of stage scripts")
    ap.add_argument("out", help="where <script>.json goes")
    args = ap.parse_args(argv)
    changed = write_code_manifests(args.out, args.stages)
    print(f"code: {len(changed)} manifest(s) changed: {', '.join(changed) or 'none'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
