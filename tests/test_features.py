"""The feature cache against torchaudio's Kaldi fbank computed independently, and the data path."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio
import yaml
from conftest import REPO, section

from sslam.data.manifest import ManifestRow, write_manifest
from sslam.data.synthetic import generate_corpus
from sslam.features import augment as A
from sslam.features.reader import FeatureStore, ShardedSampler, class_balanced_weights
from sslam.features.stats import RunningStats
from sslam.features.store import build_features, num_samples_for
from sslam.io import write_flac_atomic

SR = 16000


def reference_fbank(path: Path, target: int) -> tuple[np.ndarray, int]:
    """Written from the reference's description, not with the project's code."""
    wav, sr = sf.read(path, dtype="float32")
    wav = torch.from_numpy(wav - wav.mean())[None]
    fb = torchaudio.compliance.kaldi.fbank(
        wav,
        htk_compat=True,
        sample_frequency=sr,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    n = fb.shape[0]
    fb = torch.nn.functional.pad(fb, (0, 0, 0, max(0, target - n)))[:target]
    return fb.numpy(), min(n, target)


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("cache")
    corpus = root / "corpus"
    rng = np.random.default_rng(0)
    rows = []
    for k, seconds in enumerate([1.0, 3.0, 5.0, 2.5, 0.3]):
        t = np.arange(int(seconds * SR)) / SR
        x = 0.3 * np.sin(2 * np.pi * (300 + 200 * k) * t) + 0.01 * rng.standard_normal(len(t))
        write_flac_atomic(corpus / f"audio/unbalanced/c{k}.flac", x, SR)
        rel = f"audio/unbalanced/c{k}.flac"
        rows.append(ManifestRow(f"c{k}", "unbalanced", rel, seconds, SR, (f"/m/{k % 2}",), "ok", ""))
    (corpus / "audio/unbalanced/bad.flac").write_bytes(b"fLaC" + bytes(300))
    rows.insert(2, ManifestRow("bad", "unbalanced", "audio/unbalanced/bad.flac", 1.0, SR, ("/m/0",), "ok", ""))
    write_manifest(corpus / "manifests" / "unbalanced.csv", rows)
    cfg = section("features", target_frames=304, shard_size=2)
    summary = build_features(corpus, root / "features", cfg, SR, workers=1)
    return corpus, root / "features", cfg, summary


def test_cache_equals_kaldi_fbank_for_short_and_long_clips(small_cache):
    corpus, feats, cfg, summary = small_cache
    store = FeatureStore(feats, "unbalanced")
    assert list(store.index["clip_id"]) == ["c0", "c1", "c2", "c3", "c4"]
    for i, cid in enumerate(store.index["clip_id"]):
        ref, valid = reference_fbank(corpus / f"audio/unbalanced/{cid}.flac", 304)
        raw = store.raw(i).astype(np.float32)
        assert raw.shape == (304, 128) and store.frames(i) == valid
        np.testing.assert_allclose(raw, ref, rtol=2e-3, atol=2e-3)  # float16 storage
        assert not raw[valid:].any()  # zero padding after the clip, before normalisation
        norm = store[i].numpy()
        np.testing.assert_allclose(norm, (raw - store.mean) / (2 * store.std), rtol=1e-6, atol=1e-6)
    assert [store.frames(i) for i in range(5)] == [98, 298, 304, 248, 28]  # 5 s is cropped to 304


def test_bad_clip_is_recorded_not_zero_filled(small_cache):
    _, feats, _, summary = small_cache
    assert summary["sets"]["unbalanced"] == {"clips": 5, "failed": 1, "shards": 3}
    fails = (feats / "unbalanced" / "failures.csv").read_text().splitlines()
    assert fails[0] == "clip_id,reason" and fails[1].startswith("bad,")
    # the shard that held the bad clip has one row less, not a row of zeros
    assert np.load(feats / "unbalanced" / "shard-00001.npy").shape[0] == 1


def test_statistics_over_valid_frames(small_cache):
    corpus, feats, _, summary = small_cache
    refs = [reference_fbank(corpus / f"audio/unbalanced/c{k}.flac", 304) for k in range(5)]
    valid = np.concatenate([f[:n].ravel() for f, n in refs]).astype(np.float64)
    stats = json.loads((feats / "stats.json").read_text())
    assert stats["mean"] == pytest.approx(valid.mean(), abs=1e-4)
    assert stats["std"] == pytest.approx(valid.std(), abs=1e-4)
    # streaming merge equals one pass, in any grouping
    chunks = np.array_split(valid, 7)
    merged = RunningStats()
    for c in chunks[::-1]:
        merged = merged.merge(RunningStats.of(c))
    assert merged.count == valid.size
    assert merged.mean == pytest.approx(valid.mean()) and merged.std == pytest.approx(valid.std())


def test_pinned_statistics_and_waveforms(small_cache, tmp_path):
    corpus, _, _, _ = small_cache
    cfg = section("features", target_frames=304, shard_size=4, norm_mean=-4.268, norm_std=4.569)
    build_features(corpus, tmp_path / "f", cfg, SR)
    store = FeatureStore(tmp_path / "f", "unbalanced")
    assert (store.mean, store.std) == (-4.268, 4.569)
    n = num_samples_for(304, SR, 10.0, 25.0)
    assert n == 400 + 303 * 160
    pcm, _ = sf.read(corpus / "audio/unbalanced/c0.flac", dtype="int16")
    w = store.waveform(0).numpy()
    assert w.shape == (n,) and not w[len(pcm) :].any()
    assert np.array_equal(np.round(w[: len(pcm)] * 32768).astype(np.int16), pcm)
    with pytest.raises(ValueError, match="both be set"):
        section("features", norm_mean=1.0)


def test_rerun_reuses_finished_shards(small_cache):
    corpus, feats, cfg, _ = small_cache
    before = {p: p.stat().st_mtime_ns for p in (feats / "unbalanced").glob("shard-*.npy")}
    build_features(corpus, feats, cfg, SR)
    assert {p: p.stat().st_mtime_ns for p in (feats / "unbalanced").glob("shard-*.npy")} == before


def test_killed_run_resumes_to_the_same_shards(tmp_path):
    corpus = tmp_path / "corpus"
    tasks = {
        "mono": {"num_classes": 2, "clips_per_class_per_fold": 1},
        "keywords": {"num_classes": 2, "clips_per_class": {"train": 1, "valid": 1, "test": 1}},
        "urban": {"clips_train": 1, "clips_eval": 1},
        "desed": {"num_classes": 2, "clips_train": 2, "clips_eval": 2},
        "poly": {"environments": ["square"], "clips_train": 4, "clips_eval": 2},
    }
    syn = section(
        "download.synthetic",
        num_classes=8,
        clip_seconds=2.0,
        tasks=tasks,
        clips={"unbalanced": 160, "balanced": 8, "eval": 8},
    )
    generate_corpus(syn, corpus, SR, clips_per_shard=50)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["corpus_dir"] = str(corpus)
    params["features"].update(target_frames=208, shard_size=8)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    def cmd(out: str) -> list[str]:
        return [
            sys.executable,
            str(REPO / "stages" / "features.py"),
            "--params",
            str(tmp_path / "params.yaml"),
            "--out",
            str(tmp_path / out),
            "--metrics",
            str(tmp_path / f"{out}.json"),
            "--workers",
            "1",
        ]

    proc = subprocess.Popen(cmd("killed"), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "killed").glob("**/shard-*.json"))) < 4:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    finished = len(list((tmp_path / "killed").glob("**/shard-*.json")))
    assert 4 <= finished < 26, "the kill should land mid-run"
    subprocess.run(cmd("killed"), check=True, capture_output=True)
    subprocess.run(cmd("clean"), check=True, capture_output=True)
    a = {p.relative_to(tmp_path / "killed"): p.read_bytes() for p in (tmp_path / "killed").rglob("*") if p.is_file()}
    b = {p.relative_to(tmp_path / "clean"): p.read_bytes() for p in (tmp_path / "clean").rglob("*") if p.is_file()}
    assert a.keys() == b.keys() and all(a[k] == b[k] for k in a)
    assert not [k for k in a if k.name.startswith(".tmp-")]


# ----------------------------------------------------------------------------- reading and sampling


def test_store_batches_and_labels(small_cache):
    _, feats, _, _ = small_cache
    store = FeatureStore(feats, "unbalanced")
    # the pretraining read: one call over indices in any order, across shards, with repeats
    idx = [4, 0, 3, 1, 1]
    assert torch.equal(store.batch(idx), torch.stack([store[i] for i in idx]))
    assert store.labels == [["/m/0"], ["/m/1"], ["/m/0"], ["/m/1"], ["/m/0"]]
    with pytest.raises(FileNotFoundError, match="no such feature set"):
        FeatureStore(feats, "nope")


def test_sharded_sampler_splits_an_epoch_without_overlap():
    parts = [list(ShardedSampler(10, rank=r, world_size=2, seed=3)) for r in range(2)]
    assert len(parts[0]) == len(parts[1]) == 5 and sorted(parts[0] + parts[1]) == list(range(10))
    odd = [list(ShardedSampler(7, rank=r, world_size=3, seed=3)) for r in range(3)]
    flat = sum(odd, [])
    assert len(flat) == 9 and set(flat) == set(range(7))  # 2 repeats pad 7 to 9
    s = ShardedSampler(10, seed=3)
    e0 = list(s)
    s.set_epoch(1)
    assert list(s) != e0 and sorted(list(s)) == list(range(10))


def test_class_balanced_weights_by_hand():
    labels = [["a"], ["a"], ["a", "b"], ["c"]]
    w = class_balanced_weights(labels, ["a", "b", "c"]).numpy()
    ca, cb, cc = 1 / 3.01, 1 / 1.01, 1 / 1.01
    np.testing.assert_allclose(w, [ca, ca, ca + cb, cc])
    sampler = ShardedSampler(4, weights=torch.tensor(w), num_samples=20000, seed=0)
    counts = np.bincount(list(sampler), minlength=4)
    assert counts[3] > counts[0] * 2  # the rare class's clip is drawn far more often per clip


# ----------------------------------------------------------------------------- augmentations


def test_masks_by_hand():
    x = torch.ones(2, 6, 4)
    y = A.time_mask(x, torch.tensor([1, 4]), torch.tensor([2, 0]))
    assert y[0, :, 0].tolist() == [1, 0, 0, 1, 1, 1] and y[1].eq(1).all()
    z = A.freq_mask(x, torch.tensor([0, 2]), torch.tensor([1, 2]))
    assert z[0, 0].tolist() == [0, 1, 1, 1] and z[1, 3].tolist() == [1, 1, 0, 0]
    g = torch.Generator().manual_seed(0)
    s = A.spec_augment(torch.ones(8, 50, 16), max_time=10, max_freq=4, generator=g)
    zero_t = (s == 0).all(dim=2).sum(dim=1)
    zero_f = (s == 0).all(dim=1).sum(dim=1)
    assert (zero_t <= 10).all() and (zero_f <= 4).all() and (zero_t + zero_f > 0).any()


def test_roll_mixup_noise_by_hand():
    x = torch.arange(8.0).view(2, 4, 1)
    r = A.roll_time(x, torch.tensor([1, -1]))
    assert r[0, :, 0].tolist() == [3, 0, 1, 2] and r[1, :, 0].tolist() == [5, 6, 7, 4]
    xs = torch.tensor([[1.0], [3.0]])
    ys = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mx, my = A.mixup(xs, ys, torch.tensor([0.75, 1.0]), torch.tensor([1, 0]))
    assert mx.tolist() == [[1.5], [3.0]] and my.tolist() == [[0.75, 0.25], [0.0, 1.0]]
    torch.manual_seed(0)
    lam, partner = A.draw_mixup(1000, 0.8, 0.9)
    assert partner.tolist()[:2] == [999, 998] and 0.05 < (lam == 1).float().mean() < 0.15
    n = A.add_noise(torch.zeros(20000), 0.5, torch.Generator().manual_seed(1))
    assert n.std().item() == pytest.approx(0.5, rel=0.03)


def test_a_shard_is_reused_only_from_the_same_inputs(tmp_path):
    """A changed clip (same name, new content) recomputes its own shard and no other; other stage inputs
    (code or params: ``inputs``) recompute every shard; the same inputs reuse them all."""
    corpus = tmp_path / "corpus"
    rows = []
    for k in range(4):
        x = 0.3 * np.sin(2 * np.pi * (300 + 100 * k) * np.arange(SR) / SR)
        write_flac_atomic(corpus / f"audio/unbalanced/c{k}.flac", x, SR)
        rows.append(ManifestRow(f"c{k}", "unbalanced", f"audio/unbalanced/c{k}.flac", 1.0, SR, ("/m/0",), "ok", ""))
    write_manifest(corpus / "manifests" / "unbalanced.csv", rows)
    cfg, feats = section("features", target_frames=100, shard_size=2), tmp_path / "features"
    shards = lambda: {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (feats / "unbalanced").glob("*.npy")}  # noqa: E731
    build_features(corpus, feats, cfg, SR, inputs="code-a:params-a")
    first = shards()
    build_features(corpus, feats, cfg, SR, inputs="code-a:params-a")
    assert shards() == first  # reused, not rewritten

    time.sleep(0.05)  # a new mtime: file systems stamp times at a clock tick of a few ms
    write_flac_atomic(corpus / "audio/unbalanced/c3.flac", 0.3 * np.sin(2 * np.pi * 900 * np.arange(SR) / SR), SR)
    build_features(corpus, feats, cfg, SR, inputs="code-a:params-a")
    now = shards()
    assert now["shard-00000.npy"] == first["shard-00000.npy"]
    assert now["shard-00001.npy"][1] != first["shard-00001.npy"][1]  # c3's shard holds the new audio
    expected, _ = reference_fbank(corpus / "audio/unbalanced/c3.flac", 100)
    np.testing.assert_allclose(FeatureStore(feats, "unbalanced").raw(3).astype(np.float32), expected, atol=0.02)

    build_features(corpus, feats, cfg, SR, inputs="code-b:params-a")  # other code: nothing reused
    assert all(shards()[n][0] != now[n][0] for n in now)
