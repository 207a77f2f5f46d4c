"""Checks of DVC's cache under a linked cache type (``cache.type`` hardlink or symlink): an output file IS
the cache object then, so one in-place write corrupts the cache of every commit that shares the object.

``assert_cache_intact(repo)`` is the reusable check: every object under ``.dvc/cache/files/md5`` still has
the content its name promises, and every workspace output file that is a link points at such an object
(the one dvc.lock names for it, where dvc.lock names it). ``tiny_linked_project`` builds a temporary copy
of the repository, with a tiny synthetic corpus and a linked cache, for tests that run stages in it.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

CACHE_FILES = Path(".dvc") / "cache" / "files" / "md5"
DIR_SUFFIX = ".dir"  # a directory's object: the JSON listing of its files, named by the listing's own md5


def md5_of(path: Path, chunk: int = 1 << 20) -> str:
    """The md5 of a file's bytes, as DVC 3 names objects (``md5``: raw bytes, no dos2unix)."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def object_path(repo: Path, oid: str) -> Path:
    """Where DVC keeps object ``oid`` (``<md5>`` or ``<md5>.dir``): ``files/md5/<2 chars>/<the rest>``."""
    return repo / CACHE_FILES / oid[:2] / oid[2:]


def corrupt_objects(repo: Path) -> list[str]:
    """Objects whose content's md5 differs from their name (``.dir`` objects: the name without ``.dir``),
    or whose ``.dir`` listing is not a JSON list of ``{md5, relpath}``."""
    bad = []
    root = repo / CACHE_FILES
    for path in sorted(p for p in root.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(root)
        if len(rel.parts) != 2 or len(rel.parts[0]) != 2:
            bad.append(f"{rel}: not an object name (xx/yyyy...)")
            continue
        oid = rel.parts[0] + rel.parts[1]
        want = oid.removesuffix(DIR_SUFFIX)
        got = md5_of(path)
        if got != want:
            bad.append(f"{rel}: content md5 {got}")
        elif oid.endswith(DIR_SUFFIX):
            listing = json.loads(path.read_text())
            if not isinstance(listing, list) or not all({"md5", "relpath"} <= set(e) for e in listing):
                bad.append(f"{rel}: not a directory listing")
    return bad


@dataclass
class OutputCheck:
    """What :func:`check_outputs` found in one cached output."""

    path: Path
    files: int = 0
    hardlinked: int = 0
    symlinked: int = 0
    problems: list[str] = field(default_factory=list)


def cached_outputs(repo: Path) -> list[tuple[Path, str]]:
    """(workspace path, object id in dvc.lock) of every output of dvc.yaml that DVC caches, read through
    DVC's own index (foreach stages expanded, ``cache: false`` outputs left out)."""
    from dvc.repo import Repo

    with Repo(str(repo)) as dvc_repo:
        return [
            (Path(out.fs_path), out.hash_info.value or "")
            for out in dvc_repo.index.outs
            if out.use_cache and out.hash_info is not None
        ]


def _listing(repo: Path, oid: str) -> dict[str, str]:
    """relpath -> md5 of the files of output ``oid`` (one entry ``""`` for a file output), as dvc.lock
    recorded it; empty when the object is not in the cache (an output never committed here)."""
    if not oid:
        return {}
    if not oid.endswith(DIR_SUFFIX):
        return {"": oid}
    obj = object_path(repo, oid)
    return {e["relpath"]: e["md5"] for e in json.loads(obj.read_text())} if obj.is_file() else {}


def check_outputs(repo: Path) -> list[OutputCheck]:
    """Every file of every cached output that exists in the workspace: a link (hardlink, st_nlink > 1, or
    symlink) must be a link to a cache object, and to the object dvc.lock names for it when it names the
    file (a file a killed or running stage wrote is not in dvc.lock yet; then any object will do)."""
    root = (repo / CACHE_FILES).resolve()
    by_inode = {}
    if root.is_dir():
        for p in root.rglob("*"):
            if p.is_file() and not p.is_symlink():
                st = p.stat()
                by_inode[(st.st_dev, st.st_ino)] = p
    checks = []
    for out, oid in cached_outputs(repo):
        if not out.exists():
            continue
        check = OutputCheck(out)
        expected = _listing(repo, oid)
        files = [out] if out.is_file() else sorted(p for p in out.rglob("*") if p.is_file() or p.is_symlink())
        for f in files:
            rel = "" if f == out else f.relative_to(out).as_posix()
            want = object_path(repo, expected[rel]) if rel in expected else None
            check.files += 1
            if f.is_symlink():
                check.symlinked += 1
                target = f.resolve()
                if target.parent.parent != root:
                    check.problems.append(f"{f}: a symlink to {target}, outside the cache")
                elif want is not None and target != want.resolve():
                    check.problems.append(f"{f}: links {target.name}, dvc.lock names {expected[rel]}")
                continue
            st = f.stat()
            if st.st_nlink == 1:
                continue  # a plain file of its own: nothing it shares
            check.hardlinked += 1
            obj = by_inode.get((st.st_dev, st.st_ino))
            if obj is None:
                check.problems.append(f"{f}: {st.st_nlink} hard links, none of them a cache object")
            elif want is not None and obj != want.resolve():
                check.problems.append(f"{f}: is object {obj.parent.name}{obj.name}, dvc.lock names {expected[rel]}")
        checks.append(check)
    return checks


def assert_cache_intact(repo: Path) -> list[OutputCheck]:
    """Fail, naming each, on a corrupt cache object or a workspace link that points anywhere but at the
    intact object it stands for. Returns the per-output counts (for tests that also want links)."""
    repo = Path(repo)
    problems = corrupt_objects(repo)
    checks = check_outputs(repo)
    problems += [p for c in checks for p in c.problems]
    assert not problems, "DVC cache damaged:\n" + "\n".join(problems[:40])
    return checks


# ----------------------------------------------------------------------------- a tiny linked project


def tiny_linked_project(
    dest: Path, cache_type: str | None = None, *, shard_size: int = 8, clips_per_shard: int = 8
) -> Path:
    """A committed temporary copy of the repository in ``dest`` (what a fresh clone holds) whose cache
    links outputs (the project's own ``cache.type``, or ``cache_type``) and whose params make a corpus
    of about 150 one-second synthetic clips
    (``features.shard_size`` clips per feature shard, ``download.clips_per_shard`` per corpus shard where
    the params have one), so `dvc repro features` takes seconds and writes several shards per set.
    Nothing is reproduced yet; the caller edits params (``write_params``) and runs what it tests."""
    from test_pipeline_e2e import commit, copy_repo, sh, small_corpus

    dest.mkdir(parents=True, exist_ok=True)
    repo = copy_repo(dest)
    params, _ = small_corpus(repo, 1.0, 6, 4)
    params["features"].update(target_frames=96, shard_size=shard_size)
    if "clips_per_shard" in params["download"]:  # the sharded corpus (issue 27): several tars per set
        params["download"]["clips_per_shard"] = clips_per_shard
    write_params(repo, params)
    if cache_type is not None:
        sh(["dvc", "config", "cache.type", cache_type], repo)
    commit(repo, f"tiny corpus, cache.type {cache_type or 'of the project'}")
    return repo


def read_params(repo: Path) -> dict:
    return yaml.safe_load((repo / "params.yaml").read_text())


def write_params(repo: Path, params: dict) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def inodes(folder: Path) -> dict[str, tuple[int, int]]:
    """relpath -> (inode, link count) of every file under ``folder``: what a test compares across runs."""
    out = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            st = p.stat()
            out[p.relative_to(folder).as_posix()] = (st.st_ino, st.st_nlink)
    return out


def environment() -> dict[str, str]:
    """The environment DVC runs stages in here: this interpreter's tools first on PATH, no analytics."""
    import sys

    return dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")


# ----------------------------------------------------------------------------- killing a stage midway

HANG_HOOK = '''\
"""Test hook (tests/cache_integrity.py): in the process running {script}, the first os.replace onto a
name matching {pattern!r} is followed by a hang, after writing this process's id to {marker}."""
import fnmatch
import os
import sys
import time

_replace = os.replace


def _hanging_replace(src, dst, *args, **kwargs):
    _replace(src, dst, *args, **kwargs)
    if sys.argv and sys.argv[0].endswith({script!r}) and fnmatch.fnmatch(os.path.basename(os.fspath(dst)), {pattern!r}):
        with open({marker!r}, "a") as f:
            f.write(f"{{os.getpid()}} {{os.fspath(dst)}}\\n")
        time.sleep(3600)


os.replace = _hanging_replace
'''


def run_until_hang(repo: Path, args: list[str], script: str, pattern: str, hook_dir: Path, timeout: float = 120.0):
    """Run ``args`` (e.g. ``dvc repro features``) in ``repo`` and SIGKILL it, with every process it started,
    once the process running ``script`` has renamed a file matching ``pattern`` into place (a finished
    shard): a kill at a known point midway, not a race with a timer. The stage's processes stop right
    after that rename, so the kill lands mid-stage however fast the machine. Returns the renamed paths."""
    import signal
    import subprocess
    import time

    hook_dir.mkdir(parents=True, exist_ok=True)
    marker = hook_dir / "hung.txt"
    marker.unlink(missing_ok=True)
    (hook_dir / "sitecustomize.py").write_text(HANG_HOOK.format(script=script, pattern=pattern, marker=str(marker)))
    env = environment()
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook_dir), env.get("PYTHONPATH", "")]))
    proc = subprocess.Popen(
        args, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + timeout
    try:
        while not (marker.is_file() and marker.read_text().strip()):
            if proc.poll() is not None:
                raise AssertionError(
                    f"{' '.join(args)} ended ({proc.returncode}) before {pattern} was written:\n"
                    + proc.stdout.read().decode()[-3000:]
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"{' '.join(args)}: no {pattern} within {timeout} s")
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # dvc, the stage and its workers: one process group
        proc.wait()
        proc.stdout.close()
    return [line.split(" ", 1)[1] for line in marker.read_text().splitlines()]
