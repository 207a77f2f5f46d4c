"""bench/scale.py: its fitting and projection against hand-computed cases, its synthetic clips against
soundfile's own decoding, and one quick run whose counts are checked against arithmetic."""

from __future__ import annotations

import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import scale  # noqa: E402


def test_exponent_of_exact_power_laws():
    ns = [1_000, 4_000, 16_000, 64_000]
    assert scale.fit_exponent(ns, [3e-6 * n for n in ns]) == pytest.approx(1.0)
    assert scale.fit_exponent(ns, [2e-9 * n**1.5 for n in ns]) == pytest.approx(1.5)
    assert scale.fit_exponent(ns, [0.7] * 4) == pytest.approx(0.0, abs=1e-12)


def test_exponent_uses_only_the_largest_points():
    # the smallest point is off the line (a start-up); the three largest are exactly linear
    ns = [10, 100, 1_000, 10_000]
    assert scale.fit_exponent(ns, [5.0, 1.0, 10.0, 100.0]) == pytest.approx(1.0)
    # order of the inputs does not matter
    assert scale.fit_exponent(ns[::-1], [100.0, 10.0, 1.0, 5.0]) == pytest.approx(1.0)


def test_projection_by_hand():
    ns = [1_000, 10_000, 100_000]
    # linear CPU time; 100 s of wall time at 100k -> 2,000 s at 2M
    b, t = scale.project(ns, [1.0, 10.0, 100.0], [0.5, 5.0, 50.0], 2_000_000)
    assert (b, t) == (pytest.approx(1.0), pytest.approx(2_000.0))
    # CPU time as N^1.5 (wall times noisy): 1000 s of wall time at 100k -> 1000 * 20^1.5 at 2M
    b, t = scale.project(ns, [9.0, 99.0, 1000.0], [(n / 1e5) ** 1.5 for n in ns], 2_000_000)
    assert b == pytest.approx(1.5)
    assert t == pytest.approx(1000 * 20**1.5)
    # flat at 2 s with a fixed 1.5 s start-up: the 0.5 s above it grows at least linearly -> 1.5 + 0.5 * 20
    b, t = scale.project(ns, [2.0, 2.0, 2.0], [1.0, 1.0, 1.0], 2_000_000, fixed=1.5)
    assert b == pytest.approx(0.0, abs=1e-12)
    assert t == pytest.approx(11.5)


def test_marginal_memory_and_long_clips():
    # 1 MiB fixed + 1.5 KiB per clip
    ns = [1_000, 4_000, 16_000]
    assert scale.marginal_per_clip(ns, [1024 + 1.5 * n for n in ns]) == pytest.approx(1.5)
    # (wall, cpu): 10 s clips cost 3 s more than 1 s ones over 1,000 clips: 3 ms per clip -> 6,000 s over 2 M
    assert scale.long_clip_extra(1_000, (5.0, 4.0), (2.0, 1.0), 2_000_000) == pytest.approx(6_000.0)
    # the wall time less than the CPU time says (noise): at least the CPU difference
    assert scale.long_clip_extra(1_000, (2.5, 4.0), (2.0, 1.0), 2_000_000) == pytest.approx(6_000.0)
    assert scale.long_clip_extra(1_000, (1.9, 0.9), (2.0, 1.0), 2_000_000) == 0.0  # noise never subtracts
    # nor adds: a wall-time jump without CPU time behind it (another job), or CPU within 25 % of 2 s
    assert scale.long_clip_extra(1_000, (9.0, 1.1), (2.0, 1.0), 2_000_000) == 0.0
    assert scale.long_clip_extra(1_000, (2.5, 2.45), (2.0, 2.0), 2_000_000) == 0.0


def test_synthetic_clips_decode_and_are_distinct():
    pool = scale.flac_pool(1.0)
    clips = [scale.unique_flac(pool, i) for i in range(3 * scale.POOL)]
    assert len(set(clips)) == len(clips)
    assert len({scale.clip_id(i) for i in range(100_000)}) == 100_000
    for i in (0, scale.POOL):  # same payload, different metadata: the same samples
        wav, sr = sf.read(io.BytesIO(clips[i]), dtype="int16")
        ref, _ = sf.read(io.BytesIO(pool[0]), dtype="int16")
        assert sr == scale.SAMPLE_RATE and len(wav) == scale.SAMPLE_RATE
        np.testing.assert_array_equal(wav, ref)


@pytest.mark.slow
def test_quick_run(tmp_path):
    """The smoke run from a fresh checkout's point of view: every row present, files written equal to what
    the layouts imply, the exponents in the record recomputed independently (numpy.polyfit)."""
    out = tmp_path / "scale.json"
    command = "python bench/scale.py --quick".split()  # as the manual shows it, from the repository root
    proc = subprocess.run(
        [sys.executable, *command[1:], "--json", str(out), "--work", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    record = json.loads(out.read_text())
    fits = {(f["stage"], f["layout"]): f for f in record["fits"]}
    expected = {
        ("ingest", "sharded"), ("ingest", "per-file"), ("dvc add corpus", "sharded"), ("dvc add corpus", "per-file"),
        ("dvc status corpus", "sharded"), ("dvc status corpus", "per-file"), ("dvc checkout corpus", "sharded"),
        ("dvc checkout corpus", "per-file"), ("features", "sharded"), ("dvc add features", "sharded"),
        ("dvc status features", "sharded"), ("manifest write", "sharded"), ("manifest read", "sharded"),
        ("ontology analysis", "-"), ("sampler: store index + epoch", "-"), ("class-balanced weights + epoch", "-"),
    }  # fmt: skip
    assert set(fits) == expected
    cps = record["clips_per_shard"]
    for p in fits[("ingest", "sharded")]["points"]:
        assert p["files"] == math.ceil(p["n"] / cps)  # sealed tar shards, nothing else
    for p in fits[("ingest", "per-file")]["points"]:
        assert p["files"] == p["n"]
    # a corpus is its audio and its manifest; DVC's cache adds the directory's listing
    for p in fits[("dvc checkout corpus", "sharded")]["points"]:
        assert p["files"] == math.ceil(p["n"] / cps) + 1
    for p in fits[("dvc checkout corpus", "per-file")]["points"]:
        assert p["files"] == p["n"] + 1
    for p in fits[("dvc add corpus", "sharded")]["points"]:
        assert p["files"] == math.ceil(p["n"] / cps) + 2
    for p in fits[("dvc add corpus", "per-file")]["points"]:
        assert p["files"] == p["n"] + 2
    for f in fits.values():
        pts = [p for p in f["points"] if p["clip_seconds"] == 1.0]
        slope = np.polyfit(np.log([p["n"] for p in pts]), np.log([p["cpu"] for p in pts]), 1)[0]
        assert f["exponent"] == pytest.approx(slope, abs=1e-9)
        assert all(0 < p["cpu"] for p in pts)
    assert "| ingest | sharded |" in proc.stdout and "dominant cost" in proc.stdout
