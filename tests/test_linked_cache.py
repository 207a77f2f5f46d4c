"""A linked DVC cache (``cache.type`` hardlink or symlink: the workspace file IS the cache object) stays
intact through the runs that write into existing outputs: a `dvc repro` killed midway and rerun, a
params change that recomputes some feature shards, and a stage script run directly (as the multi-machine
download and the ext4 workflow of docs/scaling.md run it), with no `dvc repro` to unprotect first.

Each check hashes every cache object by hand (tests/cache_integrity.py) and asks `dvc status`."""

from __future__ import annotations

import json
import subprocess

import pytest
from cache_integrity import (
    assert_cache_intact,
    environment,
    inodes,
    md5_of,
    read_params,
    run_until_hang,
    tiny_linked_project,
    write_params,
)
from test_pipeline_e2e import sh

pytestmark = pytest.mark.slow

LINKED = ("data/corpus", "data/features")


def links(repo, cache_type: str) -> dict[str, tuple[int, int]]:
    """(files, files linked the ``cache_type`` way) of the corpus and the features, after an intact check."""
    checks = {c.path.relative_to(repo).as_posix(): c for c in assert_cache_intact(repo)}
    kind = "hardlinked" if cache_type == "hardlink" else "symlinked"
    return {name: (checks[name].files, getattr(checks[name], kind)) for name in LINKED}


def assert_all_linked(repo, cache_type: str) -> None:
    for name, (files, linked) in links(repo, cache_type).items():
        assert files > 0 and linked == files, f"{name}: {linked} of {files} files {cache_type}ed to the cache"


def assert_clean(repo) -> None:
    out = sh(["dvc", "status", "features"], repo).stdout
    assert "Data and pipelines are up to date" in out, out


def contents(folder) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): md5_of(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def test_hardlinked_cache_survives_a_killed_run_a_params_change_and_a_direct_run(tmp_path):
    """With the project's own cache.type (.dvc/config: hardlink,symlink; docs/decisions.md says why
    neither reflink nor copy is in the list): the outputs are hardlinks after every run, not only the
    first. DVC's `_needs_relink` stops at the first of reflink / copy in the list for any plain file,
    so with either listed, the copies a rerun's unprotect made would stay copies and the disk double."""
    repo = tiny_linked_project(tmp_path / "repo")
    feats = repo / "data" / "features"
    sh(["dvc", "repro", "features"], repo)
    assert_all_linked(repo, "hardlink")
    assert_clean(repo)
    assert len(list((feats / "unbalanced").glob("shard-*.json"))) == 3  # 20 clips, 8 per shard

    # (a) every shard recomputes (another clip length); the run is killed once two shards are renamed
    # into place, then rerun: it keeps those two and finishes
    params = read_params(repo)
    params["features"]["target_frames"] = 90
    write_params(repo, params)
    hung = run_until_hang(repo, ["dvc", "repro", "features"], "stages/features.py", "shard-*.json", tmp_path / "hook")
    assert_cache_intact(repo)
    killed = inodes(feats)
    # DVC "unprotected" the persisted output before the stage ran: every link became a plain copy
    # (dvc_data's _unprotect_file; the cost docs/scaling.md measures), so no file shares the cache now
    assert {nlink for _, nlink in killed.values()} == {1}
    finished = [h.removeprefix("data/features/") for h in hung]
    assert finished and all(json.loads((feats / f).read_text())["rows"] for f in finished)
    sh(["dvc", "repro", "features"], repo)
    resumed = inodes(feats)
    for f in finished:  # kept, not recomputed: the same inode, now a cache object itself (DVC links it in)
        assert resumed[f][0] == killed[f][0], f"{f} was recomputed after the kill"
    assert_all_linked(repo, "hardlink")
    assert_clean(repo)

    # (b) one task's clips change: its shards recompute, every other shard stays byte for byte
    before = contents(feats)
    params["download"]["synthetic"]["tasks"]["keywords"]["clips_per_class"]["test"] = 2
    write_params(repo, params)
    sh(["dvc", "repro", "features"], repo)
    after = contents(feats)
    changed = {f for f in before.keys() | after.keys() if before.get(f) != after.get(f)}
    assert {f.rsplit("/", 1)[0] for f in changed} == {"tasks/keywords"}, changed
    assert any("/shard-" in f for f in changed)
    assert_all_linked(repo, "hardlink")
    assert_clean(repo)

    # (c) the stage script run directly on the linked workspace: no `dvc repro`, so no unprotect
    direct_run_keeps_the_cache(repo, params, "hardlink")


def test_symlinked_cache_survives_a_direct_run(tmp_path):
    """Symlinks: an open() for writing follows the link into the cache object, so only renames are safe."""
    repo = tiny_linked_project(tmp_path / "repo", "symlink")
    sh(["dvc", "repro", "features"], repo)
    assert_all_linked(repo, "symlink")
    assert_clean(repo)
    direct_run_keeps_the_cache(repo, read_params(repo), "symlink")


def direct_run_keeps_the_cache(repo, params: dict, cache_type: str) -> None:
    """``python stages/features.py`` on a linked workspace after a params change (every shard rewritten):
    its writes replace linked files by rename and never write into them; `dvc commit` then records the
    run. Then the check's own failure: one byte written through a link changes a cache object."""
    feats = repo / "data" / "features"
    params["features"]["target_frames"] = 84
    write_params(repo, params)
    subprocess.run(["python", "stages/features.py"], cwd=repo, env=environment(), check=True, capture_output=True)
    assert_cache_intact(repo)
    sh(["dvc", "commit", "-f", "features"], repo)
    assert_all_linked(repo, cache_type)
    assert_clean(repo)

    victim = next(p for p in sorted(feats.rglob("shard-*.npy")))
    with open(victim, "r+b") as f:  # through the link, as an in-place writer would
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(AssertionError, match="content md5"):
        assert_cache_intact(repo)
