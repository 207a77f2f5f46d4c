"""The corpus's tar shards: read by the field's own loader (webdataset) and by tar itself, the same bytes for
the same clips, a killed writer resumed at any cut point to the shards an uninterrupted one writes, the
features stage equal on a sharded corpus and on the same corpus in the per-file layout, and the
`python -m sslam.corpus` commands (extract, pack) a user types."""

from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import webdataset as wds
from conftest import REPO, section

from sslam.data.manifest import ManifestRow, read_manifest, write_manifest
from sslam.data.shards import (
    BLOCK,
    RECORD,
    ClipLocation,
    ShardWriter,
    add_clip,
    clip_id_of_key,
    member_key,
    read_clip,
)
from sslam.features.store import build_features
from sslam.io import flac_bytes, write_flac_atomic

SR = 16000
IDS = ["a", "b.c", "d%2Ee", "f_g", "h.i.j", "k", "l"]  # dots and a literal escape: keys must round-trip


def tone(k: int, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return 0.3 * np.sin(2 * np.pi * (200 + 50 * k) * t)


def rows_of(ids: list[str], split: str = "unbalanced") -> list[ManifestRow]:
    return [ManifestRow(c, split, "", 0.5, SR, ("/m/x",), "ok", "") for c in ids]


def write_all(folder: Path, root: Path, ids: list[str], per_shard: int) -> list[ManifestRow]:
    with ShardWriter(folder, root, per_shard) as w:
        return [add_clip(w, row, flac_bytes(tone(k), SR)) for k, row in enumerate(rows_of(ids))]


def shard_files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_member_keys_round_trip_and_carry_no_dot():
    for cid in IDS:
        assert "." not in member_key(cid) and clip_id_of_key(member_key(cid)) == cid
    assert len({member_key(c) for c in IDS}) == len(IDS)


def test_webdataset_and_tar_read_the_shards(tmp_path):
    rows = write_all(tmp_path / "audio", tmp_path, IDS, per_shard=3)
    shards = sorted((tmp_path / "audio").glob("*.tar"))
    assert [p.name for p in shards] == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert all(p.stat().st_size % RECORD == 0 for p in shards)
    # the field's loader, as a user points it at the folder: one sample per clip, audio and metadata
    url = str(tmp_path / "audio" / "shard-{000000..000002}.tar")
    samples = list(wds.WebDataset(url, shardshuffle=False))
    assert [s["__key__"] for s in samples] == [member_key(c) for c in IDS]
    for k, s in enumerate(samples):
        meta = json.loads(s["json"])
        assert meta == {
            "clip_id": IDS[k],
            "split": "unbalanced",
            "labels": ["/m/x"],
            "duration": 0.5,
            "sample_rate": SR,
            "conversions": "",
        }
        x, sr = sf.read(io.BytesIO(s["flac"]), dtype="int16")
        assert sr == SR and np.array_equal(x, np.clip(np.round(tone(k) * 32767), -32768, 32767).astype(np.int16))
    # tar itself: fixed member metadata, so the same clips give the same bytes
    with tarfile.open(shards[0]) as tar:
        infos = tar.getmembers()
    assert [i.name for i in infos] == ["a.flac", "a.json", "b%2Ec.flac", "b%2Ec.json", "d%252Ee.flac", "d%252Ee.json"]
    assert {(i.mtime, i.mode, i.uid, i.gid) for i in infos} == {(0, 0o444, 0, 0)}
    assert rows[1].path == "audio/shard-000000.tar" and rows[1].member == "b%2Ec.flac"
    again = tmp_path / "again"
    write_all(again / "audio", again, IDS, per_shard=3)
    assert shard_files(tmp_path / "audio") == shard_files(again / "audio")


def test_random_access_and_clear_errors(tmp_path):
    rows = write_all(tmp_path / "audio", tmp_path, IDS, per_shard=4)
    for row in rows:
        with tarfile.open(tmp_path / row.path) as tar:
            assert read_clip(tmp_path, ClipLocation(row.path, row.member)) == tar.extractfile(row.member).read()
    with pytest.raises(FileNotFoundError, match=r"shard-000000.tar: no member 'zz.flac'"):
        read_clip(tmp_path, ClipLocation(rows[0].path, "zz.flac"))
    with pytest.raises(ValueError, match="already in"):
        with ShardWriter(tmp_path / "audio", tmp_path, 4) as w:
            w.add("a", b"x", {})


def cut_points(part: Path) -> list[int]:
    """Offsets to cut an open shard at: inside a header, inside data, inside padding, between clips."""
    with tarfile.open(part) as tar:
        infos = tar.getmembers()
    points = set()
    for i in infos:
        points |= {i.offset + 100, i.offset_data + i.size // 2, i.offset_data + i.size + (-i.size % BLOCK) - 1}
        points.add(i.offset)
    return sorted(p for p in points if 0 < p < part.stat().st_size)


def test_a_killed_writer_resumes_to_the_uninterrupted_shards_at_any_cut(tmp_path):
    """Cut the open shard anywhere (as a kill mid-append does): a new writer keeps the whole clips before
    the cut, takes the rest, and the sealed shards equal an uninterrupted writer's byte for byte."""
    whole = tmp_path / "whole"
    write_all(whole / "audio", whole, IDS, per_shard=5)
    expected = shard_files(whole / "audio")

    probe = tmp_path / "probe" / "audio"
    w = ShardWriter(probe, probe.parent, 5)
    for k, row in enumerate(rows_of(IDS)):
        add_clip(w, row, flac_bytes(tone(k), SR))
    part = probe / "shard-000001.tar.part"  # clips 5 and 6, not sealed: the writer was never closed
    full = part.read_bytes()
    for cut in cut_points(part):
        run = tmp_path / f"cut{cut}" / "audio"
        run.mkdir(parents=True)
        (run / "shard-000000.tar").write_bytes(expected["shard-000000.tar"])
        (run / "shard-000001.tar.part").write_bytes(full[:cut])
        with ShardWriter(run, run.parent, 5) as resumed:
            kept = [c for c in IDS if c in resumed.written]
            assert kept[:5] == IDS[:5] and kept == IDS[: len(kept)]
            for k, row in enumerate(rows_of(IDS)):
                if row.clip_id not in resumed.written:
                    add_clip(resumed, row, flac_bytes(tone(k), SR))
        assert shard_files(run) == expected, f"cut at byte {cut}"


def test_features_equal_on_shards_and_on_per_file_layout_and_pack_converts(tmp_path):
    """The old layout still runs; `python -m sslam.corpus pack` turns it into shards; the features stage
    gives the same arrays from both, and extract gives back each clip's bytes."""
    per_file = tmp_path / "per_file"
    rows = []
    for k, cid in enumerate(["c0", "c1", "c2", "c3", "c4"]):
        write_flac_atomic(per_file / f"audio/unbalanced/{cid}.flac", tone(k, 1.0), SR)
        rows.append(ManifestRow(cid, "unbalanced", f"audio/unbalanced/{cid}.flac", 1.0, SR, ("/m/x",), "ok", ""))
    rows.append(ManifestRow("gone", "unbalanced", "", 0.0, SR, ("/m/x",), "failed", "not_found: 404"))
    write_manifest(per_file / "manifests" / "unbalanced.csv", rows)
    legacy = per_file / "manifests" / "unbalanced.csv"  # the older manifest has no member column
    lines = [",".join(x for i, x in enumerate(line.split(",")) if i != 3) for line in legacy.read_text().splitlines()]
    legacy.write_text("\n".join(lines) + "\n")
    assert "member" not in legacy.read_text().splitlines()[0]
    originals = {r.clip_id: (per_file / r.path).read_bytes() for r in rows if r.path}

    cfg = section("features", target_frames=100, shard_size=2, store_waveforms=True)
    build_features(per_file, tmp_path / "feat_files", cfg, SR)

    packed = tmp_path / "packed"
    subprocess.run(["cp", "-r", str(per_file), str(packed)], check=True)
    cmd = [sys.executable, "-m", "sslam.corpus", "pack", str(packed), "--clips-per-shard", "3"]
    out = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    assert "unbalanced: 5 clips packed" in out.stdout
    assert sorted(p.name for p in (packed / "audio" / "unbalanced").iterdir()) == [
        "shard-000000.tar",
        "shard-000001.tar",
    ]
    m = read_manifest(packed / "manifests" / "unbalanced.csv")
    assert list(m["member"]) == ["c0.flac", "c1.flac", "c2.flac", "c3.flac", "c4.flac", ""]
    assert list(m["status"]) == ["ok"] * 5 + ["failed"]
    build_features(packed, tmp_path / "feat_shards", cfg, SR)
    index = [pd.read_csv(tmp_path / d / "unbalanced" / "index.csv") for d in ("feat_files", "feat_shards")]
    assert list(index[1]["shard"]) == [0, 0, 1, 2, 2]  # feature shards never straddle corpus shards
    keep = ["clip_id", "split", "frames", "samples", "labels"]
    pd.testing.assert_frame_equal(index[0][keep], index[1][keep])
    # shards follow the corpus's: [c0 c1] [c2] | [c3 c4]; the per-file layout cuts by size alone: [c0 c1] [c2 c3] [c4]
    a = np.concatenate([np.load(p) for p in sorted((tmp_path / "feat_files/unbalanced").glob("shard-*.npy"))])
    b = np.concatenate([np.load(p) for p in sorted((tmp_path / "feat_shards/unbalanced").glob("shard-*.npy"))])
    assert a.shape == (5, 100, 128) and np.array_equal(a, b)
    w_a = np.concatenate([np.load(p) for p in sorted((tmp_path / "feat_files/unbalanced").glob("wave-*.npy"))])
    w_b = np.concatenate([np.load(p) for p in sorted((tmp_path / "feat_shards/unbalanced").glob("wave-*.npy"))])
    assert np.array_equal(w_a, w_b)

    listen = tmp_path / "listen"
    cmd = [sys.executable, "-m", "sslam.corpus", "extract", str(packed), "c3", "c1", "--out", str(listen)]
    subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, check=True)
    assert {p.name: p.read_bytes() for p in listen.iterdir()} == {
        "c3.flac": originals["c3"],
        "c1.flac": originals["c1"],
    }
    bad = subprocess.run([*cmd[:5], "nope", "--out", str(listen)], cwd=REPO, capture_output=True, text=True)
    assert bad.returncode == 2 and "no clip 'nope' in any manifest" in bad.stderr
