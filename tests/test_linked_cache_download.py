"""A resumed AudioSet download keeps a linked DVC cache intact: the corpus's shards, manifests and
permanent-failures log are hardlinks to cache objects after a `dvc repro download`, and a download that
then grows the corpus, is killed once it seals a shard and is run again (through `dvc repro`, and as the
multi-machine command runs it, `python stages/download.py`, where no unprotect step copies the links
first) writes nothing in place: every cache object still hashes to its name, and the shards equal those
of an uninterrupted download of the same list."""

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
from test_audioset_download import MediaServer, config, media, publish, write_labels  # noqa: F401 (fixture)
from test_pipeline_e2e import sh

pytestmark = pytest.mark.slow

GOOD = ["aaaaAAAA001", "bbbbBBBB002", "ccccCCCC003", "ddddDDDD004", "eeeeEEEE005", "ffffFFFF006", "ggggGGGG007"]
GONE = ["goneGONE001", "goneGONE002"]
ORDER = [GOOD[0], GONE[0], GOOD[1], GOOD[2], GOOD[3], GONE[1], GOOD[4], GOOD[5], GOOD[6]]


@pytest.fixture
def server(tmp_path, media):  # noqa: F811
    served = tmp_path / "served"
    served.mkdir()
    srv = MediaServer(served)
    srv.master = media  # type: ignore[attr-defined]
    for y in GOOD:
        publish(srv, y)
    for y in GONE:
        publish(srv, y, behaviour="gone")
    yield srv
    srv.close()


def audioset_project(tmp_path, server, name: str, max_segments: int):
    repo = tiny_linked_project(tmp_path / name)
    labels = tmp_path / "labels"
    write_labels(labels, [(y, 0.0, 3.0, "/m/a") for y in ORDER])
    params = read_params(repo)
    params["download"]["source"] = "audioset"
    params["download"]["clips_per_shard"] = 2
    params["download"]["audioset"].update(config(server, labels, workers=2, max_segments=max_segments).model_dump())
    write_params(repo, params)
    return repo


def set_max_segments(repo, n: int) -> None:
    params = read_params(repo)
    params["download"]["audioset"]["max_segments"] = n
    write_params(repo, params)


def shard_bytes(repo) -> dict[str, str]:
    folder = repo / "data" / "corpus" / "audio" / "balanced"
    return {p.name: md5_of(p) for p in sorted(folder.iterdir())}


def test_resumed_download_leaves_the_linked_cache_intact(tmp_path, server):
    repo = audioset_project(tmp_path, server, "repo", max_segments=3)
    sh(["dvc", "repro", "download"], repo)  # 2 clips, 1 permanent failure
    corpus = repo / "data" / "corpus"
    linked = {k: v for k, v in inodes(corpus).items() if v[1] > 1}
    assert {"audio/balanced/shard-000000.tar", "state/permanent_failures.jsonl"} <= set(linked)
    assert_cache_intact(repo)

    # through dvc: the list grows to 9 segments, the run is killed once it seals a new shard, then rerun
    set_max_segments(repo, 0)
    hung = run_until_hang(repo, ["dvc", "repro", "download"], "stages/download.py", "shard-*.tar", tmp_path / "hook")
    assert hung == ["data/corpus/audio/balanced/shard-000001.tar"]
    assert_cache_intact(repo)
    sh(["dvc", "repro", "download"], repo)
    assert_cache_intact(repo)
    assert "Data and pipelines are up to date" in sh(["dvc", "status", "download"], repo).stdout
    log = (corpus / "state" / "permanent_failures.jsonl").read_text().splitlines()
    assert [json.loads(line)["clip_id"] for line in log] == [f"{y}_0" for y in GONE]
    assert not (corpus / "state" / "permanent_failures.journal.jsonl").exists()

    # the same list, never interrupted: the same shards, byte for byte
    fresh = audioset_project(tmp_path, server, "fresh", max_segments=0)
    sh(["dvc", "repro", "download"], fresh)
    assert shard_bytes(repo) == shard_bytes(fresh)
    assert list(shard_bytes(repo)) == [f"shard-{k:06d}.tar" for k in range(4)]


def test_a_direct_run_on_linked_files_writes_nothing_in_place(tmp_path, server):
    """`python stages/download.py` (the per-machine command) on a workspace whose files ARE the cache
    objects: killed, resumed, committed with `dvc commit`; the cache objects of the first run are untouched."""
    repo = audioset_project(tmp_path, server, "repo", max_segments=3)
    sh(["dvc", "repro", "download"], repo)
    corpus = repo / "data" / "corpus"
    before = {k: md5_of(corpus / k) for k, (_, nlink) in inodes(corpus).items() if nlink > 1}
    assert "state/permanent_failures.jsonl" in before and "manifests/balanced.csv" in before

    set_max_segments(repo, 0)
    cmd = ["python", "stages/download.py"]
    run_until_hang(repo, cmd, "stages/download.py", "shard-*.tar", tmp_path / "hook")
    assert_cache_intact(repo)
    subprocess.run(cmd, cwd=repo, env=environment(), check=True, capture_output=True)
    assert_cache_intact(repo)  # the old objects still hash to their names: nothing was written through a link
    sh(["dvc", "commit", "-f", "download"], repo)
    assert_cache_intact(repo)
    assert "Data and pipelines are up to date" in sh(["dvc", "status", "download"], repo).stdout
    assert md5_of(corpus / "audio/balanced/shard-000000.tar") == before["audio/balanced/shard-000000.tar"]
    assert len(shard_bytes(repo)) == 4
