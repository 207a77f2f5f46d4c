"""A clip shorter than one analysis window (25 ms: 400 samples at 16 kHz) on every path that computes a
log-mel from audio: a failure row with the reason, never a crash, and the other clips go through."""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import yaml
from conftest import REPO, section
from dataset_layouts import BUILDERS
from safetensors.torch import save_file

from sslam.data.clip_length import ClipTooShortError, min_samples
from sslam.data.folder import ingest_folder
from sslam.data.manifest import ManifestRow, read_manifest, write_manifest
from sslam.embed import get_scene_embeddings, load_model, main
from sslam.features.fbank import log_mel
from sslam.features.reader import FeatureStore
from sslam.features.store import build_features, clip_features, pad_or_crop
from sslam.io import write_flac_atomic
from sslam.pretrain.mixing import mix_waveforms
from sslam.pretrain.student import Student

SR = 16000
TEN_MS = "too short: 160 samples (10.0 ms) is shorter than one 25.0 ms analysis window (400 samples)"


def noise(n: int, seed: int = 0) -> np.ndarray:
    return 0.1 * np.random.default_rng(seed).standard_normal(n)


@pytest.mark.parametrize("front_end", ["kaldi", "logmel"])
def test_log_mel_refuses_less_than_one_window_under_both_front_ends(front_end):
    cfg = section("features", front_end=front_end, num_mel_bins=64, target_frames=16)
    assert min_samples(SR, 25.0) == 400
    assert min_samples(11025, 25.0) == 276  # Kaldi truncates 275.625, the log-mel rounds: the larger counts
    assert log_mel(torch.from_numpy(noise(400)).float(), SR, cfg).shape == (1, 64)  # one window: one frame
    with pytest.raises(ClipTooShortError) as err:
        log_mel(torch.from_numpy(noise(160)).float(), SR, cfg)
    assert str(err.value) == TEN_MS
    with pytest.raises(ClipTooShortError, match="399 samples"):  # the waveform roll's path (WaveFeatures)
        clip_features(noise(399).astype(np.float32), SR, cfg)


def test_folder_source_fails_a_clip_shorter_than_one_window_after_resampling(tmp_path):
    audio = tmp_path / "audio"
    audio.mkdir()
    sf.write(audio / "good.wav", noise(SR // 2), SR)
    sf.write(audio / "short.wav", noise(160), SR)
    sf.write(audio / "short44k.wav", noise(1000), 44100)  # 1000 samples at 44.1 kHz: 363 at 16 kHz
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,labels\ngood.wav,dog\nshort.wav,dog\nshort44k.wav,cat\n")
    cfg = section("download.folder", audio_dir=str(audio), labels_csv=str(labels), max_seconds=5.0, silence_dbfs=-70.0)
    out = tmp_path / "corpus"
    summary = ingest_folder(cfg, out, SR, tmp_path / "failures.csv", 4, workers=1)
    rows = read_manifest(out / "manifests" / "unbalanced.csv").set_index("clip_id")
    assert rows.loc["good", "status"] == "ok" and (out / rows.loc["good", "path"]).is_file()
    assert rows.loc["short", "reason"] == TEN_MS
    assert rows.loc["short44k", "reason"] == (
        "too short: 363 samples (22.7 ms) is shorter than one 25.0 ms analysis window (400 samples)"
    )
    assert summary["failed_by_reason"] == {"too short": 2} and summary["num_clips"] == 1
    fails = pd.read_csv(tmp_path / "failures.csv", dtype=str).set_index("clip_id")
    assert fails.loc["short", "reason"] == TEN_MS
    with tarfile.open(out / rows.loc["good", "path"]) as tar:  # nothing written for a short clip
        assert [p.name for p in out.rglob("*.tar")] == ["shard-000000.tar"] and tar.getnames() == [
            "good.flac",
            "good.json",
        ]


def test_dataset_stage_records_a_10ms_clip_and_caches_the_others(tmp_path):
    exp = BUILDERS["esc50"](tmp_path / "root")
    sf.write(tmp_path / "root" / "audio" / "2-888-A-0.wav", noise(160), SR)
    with open(tmp_path / "root" / "meta" / "esc50.csv", "a") as f:
        f.write("2-888-A-0.wav,2,0,dog,True,888,A\n")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {"esc": exp.params}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    cmd = [sys.executable, str(REPO / "stages" / "dataset.py"), "--name", "esc", "--workers", "1"]
    proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = tmp_path / "data" / "datasets" / "esc"
    fails = pd.read_csv(out / "failures.csv", dtype=str).set_index("clip_id")
    assert fails.loc["audio__2-888-A-0", "reason"] == TEN_MS
    assert set(fails.index) == set(exp.failed) | {"audio__2-888-A-0"}
    store = FeatureStore(out / "features", "tasks/esc")
    assert set(store.index["clip_id"]) == set(exp.ok)


def test_features_stage_fails_a_stored_clip_shorter_than_one_window(tmp_path):
    corpus = tmp_path / "corpus"
    rows = []
    for cid, n in (("a", SR // 2), ("short", 160), ("b", 400)):
        write_flac_atomic(corpus / f"audio/unbalanced/{cid}.flac", noise(n), SR)
        rows.append(ManifestRow(cid, "unbalanced", f"audio/unbalanced/{cid}.flac", n / SR, SR, ("/m/0",), "ok", ""))
    write_manifest(corpus / "manifests" / "unbalanced.csv", rows)
    cfg = section("features", target_frames=16, num_mel_bins=64, shard_size=8)
    summary = build_features(corpus, tmp_path / "features", cfg, SR, workers=1)
    assert summary["sets"]["unbalanced"] == {"clips": 2, "failed": 1, "shards": 1}
    fails = pd.read_csv(tmp_path / "features" / "unbalanced" / "failures.csv", dtype=str)
    assert fails.to_dict("records") == [{"clip_id": "short", "reason": TEN_MS}]
    store = FeatureStore(tmp_path / "features", "unbalanced")
    assert list(store.index["clip_id"]) == ["a", "b"] and store.frames(1) == 1  # one window: one frame


def small_checkpoint(tmp_path) -> tuple[list[str], object]:
    """A small random run's checkpoint folder and pinned statistics: the CLI's arguments and the model."""
    cfg = section("model", embed_dim=32, depth=1, num_heads=2, decoder_layers=1)
    torch.manual_seed(0)
    folder = tmp_path / "ckpt" / "final"
    folder.mkdir(parents=True)
    save_file(Student(cfg, 304, 128, "bootstrap").state_dict(), folder / "student.safetensors")
    fingerprint = {"fingerprint": {"model": cfg.model_dump(), "objective": "bootstrap"}}
    (folder / "meta.json").write_text(json.dumps(fingerprint))
    (tmp_path / "stats.json").write_text(json.dumps({"mean": -6.0, "std": 3.0}))
    args = ["--checkpoint", str(folder), "--params", str(REPO / "params.yaml"), "--stats", str(tmp_path / "stats.json")]
    return args, load_model(str(folder), str(REPO / "params.yaml"), str(tmp_path / "stats.json"))


def test_embedding_cli_records_a_short_file_and_the_api_raises_the_reason(tmp_path, capsys):
    args, model = small_checkpoint(tmp_path)
    folder = tmp_path / "audio"
    folder.mkdir()
    sf.write(folder / "good.wav", noise(SR), SR)
    sf.write(folder / "short.wav", noise(160), SR)
    out = tmp_path / "emb.npz"
    assert main([str(folder), str(out), *args]) == 0
    got = np.load(out)
    assert list(got["clip_ids"]) == ["good"] and got["embeddings"].shape == (1, model.scene_embedding_size)
    assert list(got["failed_ids"]) == ["short"] and list(got["failed_reasons"]) == [TEN_MS]
    assert "1 clips" in capsys.readouterr().out
    with pytest.raises(ClipTooShortError) as err:
        get_scene_embeddings(torch.from_numpy(noise(160)).float()[None], model)
    assert str(err.value) == TEN_MS


def test_waveform_mixing_takes_a_clip_of_exactly_one_window():
    cfg = section("features", target_frames=16, num_mel_bins=64)
    waves = torch.from_numpy(np.stack([noise(800, 1), noise(800, 2)])).float()
    frames_mixed = torch.zeros(2, 16, dtype=torch.bool)  # nothing mixed: each clip as the store holds it
    got = mix_waveforms(waves, torch.tensor([400, 800]), frames_mixed, -6.0, 3.0, SR, cfg, 16)
    want = (pad_or_crop(log_mel(waves[0, :400], SR, cfg), 16) + 6.0) / 6.0
    assert got.shape == (2, 16, 64)
    torch.testing.assert_close(got[0], want)
    assert torch.equal(got[0, 1:], torch.full((15, 64), 1.0))  # one frame, the rest padding
    with pytest.raises(ClipTooShortError, match="399 samples"):
        mix_waveforms(waves, torch.tensor([399, 800]), frames_mixed, -6.0, 3.0, SR, cfg, 16)
