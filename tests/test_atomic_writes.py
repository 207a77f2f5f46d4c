"""Every file the pipeline writes is written by atomic rename, never modified in place.

Why: with a linked DVC cache (``cache.type`` reflink,hardlink,symlink,copy in .dvc/config) an output file
IS its cache object (a hard link, or a symlink into .dvc/cache), and the object is shared by every commit
holding the same bytes. Opening it for writing, as root, where the read-only mode DVC sets does not stop
anyone, changes history. A rename onto the name replaces the link and leaves the object alone. `dvc repro`
copies a persisted output's links back to plain files before the stage runs (so a stage run through DVC
would survive an in-place write), but a stage script run directly (the multi-machine download, the ext4
workflow of docs/scaling.md) does not, and neither does an ad-hoc writer.

The guard: an AST scan of src/ and stages/ for calls that write a file (open in a writing mode, Path.open,
write_text / write_bytes, np.save and kin, torch.save, safetensors' save_file, soundfile's write, savefig,
to_csv, shutil.copy*/move, os.truncate, a writable memmap, sqlite3.connect, tarfile / zipfile for writing,
dvclive's Live). Each must write to a temporary name, i.e. its target expression mentions
  - a name bound by ``with atomic_path(...) as tmp`` (sslam.io), ``staged_folder`` (sslam.checkpoints),
    ``tempfile.TemporaryDirectory`` / ``mkdtemp`` / ``mkstemp``, or a name assigned from such an
    expression (``config = Path(tmp) / "x.yaml"``), in the function or one enclosing it;
  - the temporary prefix itself (``TMP_PREFIX``, a ``".tmp-"`` string): a folder renamed into place;
  - ``writable_in_place(path)`` (sslam.io): an append log made a file of its own first;
or write to an open handle (``with open(tmp, "wb") as f: np.save(f, x)``: the open was judged) or to
memory (io.BytesIO). What is neither is listed in ALLOWLIST, by file and function, with the reason.
"""

from __future__ import annotations

import ast
import shutil
from dataclasses import dataclass
from pathlib import Path

from conftest import REPO

SCANNED = ("src", "stages")

# (file, function, call) -> why the write there cannot reach a DVC cache object. An entry no write matches
# any more fails test_every_allowlist_entry_is_used, so the list cannot outlive its reasons.
ALLOWLIST: dict[tuple[str, str, str], str] = {
    ("src/sslam/checkpoints.py", "save_weights", "save_file"): (
        "writes into the folder its callers pass: save_checkpoint's .tmp-step-* and write_final's staged_folder"
    ),
    ("src/sslam/data/audioset_download.py", "_http_get", "open"): "fetch_metadata passes atomic_path's temporary",
    ("src/sslam/data/audioset_download.py", "download_audioset", "open"): (
        "appends to state/permanent_failures.journal.jsonl, a run-private file: a killed run's journal is "
        "folded into the log by atomic rewrite and deleted before this run appends, and a finished run "
        "deletes its own, so no committed (linked) file is ever appended to"
    ),
    ("src/sslam/data/shards.py", "ShardWriter.__init__", "truncate"): (
        "truncates a killed writer's open shard (*.tar.part) to its last whole clip; .part files exist "
        "only while a source runs (sealed by rename), so DVC never commits, hence never links, one"
    ),
    ("src/sslam/data/shards.py", "ShardWriter.add", "open"): "appends a clip to the open *.tar.part (see __init__)",
    ("src/sslam/data/shards.py", "ShardWriter._seal", "open"): "tar's end blocks onto the *.tar.part, then the rename",
    ("src/sslam/provenance.py", "HashCache._conn", "connect"): (
        "the file-hash table in .dvc/tmp (beside DVC's own state database): not an output"
    ),
    ("src/sslam/pretrain/loop.py", "LiveLog.__init__", "Live"): (
        "dvclive's Live appends to metrics/*_live/plots/metrics/*.tsv itself; those outputs are "
        "cache: false in dvc.yaml (git tracks them), so DVC never links them"
    ),
}

# calls whose first positional argument (or the keyword) is the file written
FIRST_ARG = {
    "save": "file",
    "savez": "file",
    "savez_compressed": "file",
    "savefig": "fname",
    "to_csv": "path_or_buf",
    "to_parquet": "path",
    "to_json": "path_or_buf",
    "to_pickle": "path",
    "tofile": "fid",
    "truncate": "path",
    "connect": "database",
    "Live": "dir",
}
SECOND_ARG = {
    "dump": "fp",
    "safe_dump": "stream",
    "copy": "dst",
    "copy2": "dst",
    "copyfile": "dst",
    "copytree": "dst",
    "move": "dst",
    "copyfileobj": "fdst",
}
MODULE_OPENERS = {"tarfile", "gzip", "bz2", "lzma", "io", "zipfile", "codecs"}
TEMP_CONTEXTS = {"atomic_path", "staged_folder", "TemporaryDirectory", "NamedTemporaryFile"}
TEMP_CALLS = {"mkdtemp", "mkstemp"}
LINK_BREAKER = "writable_in_place"
MEMORY = {"BytesIO", "StringIO"}
TEMP_MARKERS = (".tmp-",)
TEMP_NAMES = {"TMP_PREFIX"}


@dataclass(frozen=True)
class Write:
    file: str  # relative to the scanned root's parent (the repository)
    line: int
    function: str  # Class.method, outer.inner, or <module>
    call: str
    target: str

    def __str__(self) -> str:
        return f"{self.file}:{self.line} ({self.function}): {self.call} onto {self.target}"


def _name(func: ast.expr) -> str:
    """The called name: ``open``, ``np.save`` -> ``save``, ``x.write_text`` -> ``write_text``."""
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return ""


def _receiver(func: ast.expr) -> str:
    return func.value.id if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) else ""


def _arg(call: ast.Call, index: int, keyword: str) -> ast.expr | None:
    if len(call.args) > index and not isinstance(call.args[index], ast.Starred):
        return call.args[index]
    return next((k.value for k in call.keywords if k.arg == keyword), None)


def _writes_mode(mode: ast.expr | None, default: str = "r") -> bool:
    """A mode that writes: any string constant in it with w, a, x or + (``"w" if fresh else "a"`` too)."""
    texts = [default] if mode is None else [n.value for n in ast.walk(mode) if isinstance(n, ast.Constant)]
    return any(isinstance(t, str) and any(c in t for c in "wax+") for t in texts)


def _is_mode(expr: ast.expr) -> bool:
    """A mode string (or an expression choosing between mode strings), not a path."""
    texts = [n.value for n in ast.walk(expr) if isinstance(n, ast.Constant)]
    return bool(texts) and all(isinstance(t, str) and 0 < len(t) <= 3 and set(t) <= set("rwaxbt+") for t in texts)


def write_target(call: ast.Call) -> tuple[str, ast.expr] | None:
    """(what the call is, the expression naming the file it writes), or None when it writes no file."""
    name, recv = _name(call.func), _receiver(call.func)
    if name == "open" and (isinstance(call.func, ast.Name) or recv in MODULE_OPENERS):
        if recv == "os":
            return None
        mode = _arg(call, 1, "mode")
        return ("open", _arg(call, 0, "file")) if _writes_mode(mode) else None
    if name == "open" and isinstance(call.func, ast.Attribute) and recv != "os":
        first = _arg(call, 0, "mode")
        if first is None or _is_mode(first):  # Path.open(mode): the receiver is the file
            return (".open", call.func.value) if _writes_mode(first) else None
        mode = _arg(call, 1, "mode")  # fs.open(path, mode): a filesystem object's open
        return (".open", first) if _writes_mode(mode) else None
    if name == "ZipFile":
        return ("ZipFile", _arg(call, 0, "file")) if _writes_mode(_arg(call, 1, "mode")) else None
    if name == "open" and recv == "os":
        flags = {n.attr for n in ast.walk(call) if isinstance(n, ast.Attribute)}
        return ("os.open", _arg(call, 0, "path")) if flags & {"O_WRONLY", "O_RDWR", "O_APPEND", "O_TRUNC"} else None
    if name in ("write_text", "write_bytes") and isinstance(call.func, ast.Attribute):
        return name, call.func.value
    if name == "memmap" or name == "open_memmap":
        mode = _arg(call, 2 if name == "memmap" else 1, "mode")
        return (name, _arg(call, 0, "filename")) if mode is not None and _writes_mode(mode, "r") else None
    if name == "load" and recv in ("np", "numpy"):
        mode = next((k.value for k in call.keywords if k.arg == "mmap_mode"), None)
        return ("np.load(mmap)", _arg(call, 0, "file")) if mode is not None and _writes_mode(mode) else None
    if name == "save" and recv == "torch":
        return "torch.save", _arg(call, 1, "f")
    if name == "save_file":
        return "save_file", _arg(call, 1, "filename")
    if name == "write" and recv in ("sf", "soundfile"):
        return "sf.write", _arg(call, 0, "file")
    if name == "truncate" and recv != "os":
        return None  # a file object's truncate: judged at its open
    if name == "connect" and recv != "sqlite3":
        return None
    if name == "save" and recv not in ("np", "numpy"):
        return None  # e.g. an image library's own save on an object: add it here if one appears
    if name in FIRST_ARG:
        target = _arg(call, 0, FIRST_ARG[name])
        return (name, target) if target is not None else None  # to_csv() with no path returns a string
    if name in SECOND_ARG and (name not in ("dump", "safe_dump") or recv in ("json", "yaml", "pickle")):
        target = _arg(call, 1, SECOND_ARG[name])
        return (name, target) if target is not None else None
    return None


class _Scope:
    """The names of one function (and the functions around it) that hold temporary paths or handles."""

    def __init__(self, parent: _Scope | None):
        self.temps: set[str] = set(parent.temps) if parent else set()
        self.handles: set[str] = set(parent.handles) if parent else set()

    def is_temp(self, expr: ast.expr) -> bool:
        for node in ast.walk(expr):
            if isinstance(node, ast.Name) and (node.id in self.temps or node.id in TEMP_NAMES):
                return True
            if isinstance(node, ast.Attribute) and node.attr in TEMP_NAMES:
                return True
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                if any(m in node.value for m in TEMP_MARKERS):
                    return True
            if isinstance(node, ast.Call) and _name(node.func) in (LINK_BREAKER, *TEMP_CALLS):
                return True
        return False

    def is_handle(self, expr: ast.expr) -> bool:
        if isinstance(expr, ast.Name):
            return expr.id in self.handles
        if isinstance(expr, ast.Call):
            return _name(expr.func) in MEMORY
        return isinstance(expr, ast.Attribute) and expr.attr in ("stdout", "stderr")


def _own_nodes(body: list[ast.stmt]):
    """The nodes of a function body; a nested function or class is yielded but not entered (its own scope)."""
    stack = list(body)
    while stack:
        node = stack.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
        elif isinstance(node, ast.Lambda):  # a lambda shares its function's names
            stack.append(node.body)


def _bind(scope: _Scope, body: list[ast.stmt]) -> None:
    nodes = list(_own_nodes(body))
    changed = True
    while changed:  # to a fixed point: tmp -> config = Path(tmp) / "x" -> ...
        changed = False
        for node in nodes:
            pairs: list[tuple[ast.expr, ast.expr]] = []
            if isinstance(node, (ast.With, ast.AsyncWith)):
                pairs = [(i.optional_vars, i.context_expr) for i in node.items if i.optional_vars is not None]
            elif isinstance(node, ast.Assign):
                pairs = [(t, node.value) for t in node.targets]
            elif isinstance(node, (ast.AnnAssign, ast.NamedExpr)) and node.value is not None:
                pairs = [(node.target, node.value)]
            for target, value in pairs:
                names = {n.id for n in ast.walk(target) if isinstance(n, ast.Name)}
                if isinstance(value, ast.Call) and write_target(value) is not None:
                    new, kind = names - scope.handles, scope.handles  # with open(tmp, "wb") as f
                elif isinstance(value, ast.Call) and _name(value.func) in MEMORY:
                    new, kind = names - scope.handles, scope.handles
                elif (isinstance(value, ast.Call) and _name(value.func) in TEMP_CONTEXTS) or scope.is_temp(value):
                    new, kind = names - scope.temps, scope.temps
                else:
                    continue
                if new:
                    kind |= new
                    changed = True


def scan_file(path: Path, rel: str) -> list[Write]:
    """Every write in ``path`` whose target is not a temporary (see the module docstring)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[Write] = []

    def visit(body: list[ast.stmt], qualname: str, parent: _Scope | None) -> None:
        scope = _Scope(parent)
        _bind(scope, body)
        for node in _own_nodes(body):
            if isinstance(node, ast.Call):
                hit = write_target(node)
                if hit is not None:
                    call, target = hit
                    if target is None or not (scope.is_temp(target) or scope.is_handle(target)):
                        shown = ast.unparse(target) if target is not None else "?"
                        found.append(Write(rel, node.lineno, qualname, call, shown))
        for node in _own_nodes(body):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = node.name if qualname == "<module>" else f"{qualname}.{node.name}"
                # a class body is no enclosing scope of its methods
                visit(node.body, inner, None if isinstance(node, ast.ClassDef) else scope)

    visit(tree.body, "<module>", None)
    return found


def scan(repo: Path) -> list[Write]:
    writes: list[Write] = []
    for top in SCANNED:
        for path in sorted((repo / top).rglob("*.py")):
            writes += scan_file(path, path.relative_to(repo).as_posix())
    return writes


def violations(repo: Path) -> list[Write]:
    return [w for w in scan(repo) if (w.file, w.function, w.call) not in ALLOWLIST]


def test_every_write_into_the_pipeline_goes_through_a_temporary_name():
    bad = violations(REPO)
    assert not bad, (
        "writes that are not by atomic rename (use sslam.io.atomic_path / write_*_atomic, or "
        "writable_in_place for an append log; see this file's docstring):\n" + "\n".join(map(str, bad))
    )


def test_every_allowlist_entry_is_used():
    used = {(w.file, w.function, w.call) for w in scan(REPO)}
    stale = sorted(set(ALLOWLIST) - used)
    assert not stale, f"allowlist entries that match no write any more (remove them): {stale}"


def test_a_planted_in_place_write_fails_the_guard(tmp_path):
    """The guard on a copy of src/ and stages/ with in-place writes planted: it names each, and only them."""
    for top in SCANNED:
        shutil.copytree(REPO / top, tmp_path / top, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    before = set(violations(tmp_path))  # empty when the tree passes the guard above
    store = tmp_path / "src" / "sslam" / "features" / "store.py"
    text = store.read_text()
    atomic = 'with atomic_path(path) as tmp, open(tmp, "wb") as f:'
    assert atomic in text  # the feature shard writer: renamed into place
    store.write_text(text.replace(atomic, 'with open(path, "wb") as f:'))
    stage = tmp_path / "stages" / "features.py"
    stage.write_text(
        stage.read_text()
        + "\n\ndef _planted(out, arr, text):\n"
        + "    np.save(out / 'x.npy', arr)\n"
        + "    (out / 'log.txt').open('a').write(text)\n"
        + "    with atomic_path(out / 'ok.txt') as tmp:\n"
        + "        tmp.write_text(text)  # the atomic form: not reported\n"
    )
    found = {(w.file, w.function, w.call) for w in set(violations(tmp_path)) - before}
    assert found == {
        ("src/sslam/features/store.py", "_save_npy", "open"),
        ("stages/features.py", "_planted", "save"),
        ("stages/features.py", "_planted", ".open"),
    }


def test_the_rules_on_small_cases(tmp_path):
    """What counts as a temporary and what does not, case by case."""
    src = tmp_path / "case.py"
    src.write_text(
        """
import json, shutil, tempfile
import numpy as np
import torch
from safetensors.torch import save_file

def good(path, x, obj):
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, x)
    with atomic_path(path) as tmp:
        cfg = tmp.parent / "cfg.json"
        json.dump(obj, open(cfg, "w"))
        shutil.copyfile("a", tmp)
    folder = path / f"{TMP_PREFIX}ckpt"
    torch.save(obj, folder / "state.pt")
    with tempfile.TemporaryDirectory() as d:
        save_file(obj, d + "/w.safetensors")
    with open(writable_in_place(path), "a") as log:
        log.write("x")
    buf = io.BytesIO()
    sf.write(buf, x, 16000)
    with open(path) as f:
        f.read()

def bad(path, x, obj):
    open(path, "w" if x else "a")
    path.write_bytes(b"")
    torch.save(obj, path)
    save_file(obj, path)
    sf.write(path, x, 16000)
    shutil.copy("a", path)
    np.savez(path, x=x)
    import os; os.truncate(path, 0)
    np.load(path, mmap_mode="r+")
    with open(path, "ab") as f:
        json.dump(obj, f)  # the handle is fine; its open is reported
"""
    )
    found = [(w.function, w.call) for w in scan_file(src, "case.py")]
    assert all(fn == "bad" for fn, _ in found), found
    assert sorted(c for _, c in found) == sorted(
        [
            "open",
            "write_bytes",
            "torch.save",
            "save_file",
            "sf.write",
            "copy",
            "savez",
            "truncate",
            "np.load(mmap)",
            "open",
        ]
    )


def test_writable_in_place_cuts_the_links_before_an_append(tmp_path):
    """The one in-place writer's helper: an append reaches only the file's own name."""
    import os

    from sslam.io import writable_in_place

    cache = tmp_path / "object"
    cache.write_text("committed\n")
    os.chmod(cache, 0o444)  # as DVC protects its objects
    hard, soft, dangling = tmp_path / "hard.jsonl", tmp_path / "soft.jsonl", tmp_path / "dangling.jsonl"
    os.link(cache, hard)
    soft.symlink_to(cache)
    dangling.symlink_to(tmp_path / "gone")
    for log in (hard, soft, dangling, tmp_path / "new.jsonl"):
        with open(writable_in_place(log), "a") as f:
            f.write("appended\n")
        assert not log.is_symlink() and log.stat().st_nlink == 1
    assert cache.read_text() == "committed\n" and cache.stat().st_nlink == 1
    assert hard.read_text() == soft.read_text() == "committed\nappended\n"
    assert dangling.read_text() == "appended\n"
