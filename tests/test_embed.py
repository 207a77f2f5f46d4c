"""The embedding API's contract (HEAR names and shapes), checked here without the heareval packages:
shapes, dtypes, monotonic timestamps at most 50 ms apart, batch invariance, long audio in windows,
and the values against an independent composition of torchaudio's Kaldi fbank and the encoder."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import REPO, reference_kaldi_fbank, section

from sslam.checkpoints import own_input, write_final
from sslam.embed import extract_folder, get_scene_embeddings, get_timestamp_embeddings, load_model
from sslam.features.store import clip_features
from sslam.pretrain.student import Student, make_teacher

SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_layers": 1, "decoder_groups": 4}


def checkpoint(tmp_path, encoder: str = "transformer"):
    """A checkpoint folder as the pretraining stage writes it (:func:`sslam.checkpoints.write_final`: the
    student, its teacher, meta.json with the model and the input), of a small random model with pinned
    statistics (also written as the stats file the CLI is given)."""
    cfg = section("model", **SMALL, encoder=encoder)
    torch.manual_seed(0)
    student = Student(cfg, 304, 128, "bootstrap")
    stats = tmp_path / "stats.json"
    stats.write_text(json.dumps({"mean": -6.0, "std": 3.0}))
    spec = own_input(section("features", norm_mean=-6.0, norm_std=3.0), 16000, stats)
    meta = {"fingerprint": {"model": cfg.model_dump(), "objective": "bootstrap"}, "input": spec}
    write_final(tmp_path / "ckpt", student, make_teacher(student), meta)
    return load_model(str(tmp_path / "ckpt" / "final"), str(REPO / "params.yaml"), str(stats))


def noise(n: int, seconds: float, seed: int = 0) -> torch.Tensor:
    return 0.1 * torch.randn(n, int(seconds * 16000), generator=torch.Generator().manual_seed(seed))


def test_shapes_dtypes_and_timestamps(tmp_path):
    model = checkpoint(tmp_path)
    assert (model.sample_rate, model.scene_embedding_size, model.timestamp_embedding_size) == (16000, 32, 32)
    audio = noise(2, 3.0)
    scene = get_scene_embeddings(audio, model)
    emb, ts = get_timestamp_embeddings(audio, model)
    assert scene.shape == (2, 32) and scene.dtype == torch.float32
    # 3 s: 1 + (48000 - 400) // 160 = 298 frames; passes shifted by 0, 4, 8, 12 frames keep the patches
    # whose centre frame (first + 7.5) is below 298, 294, 290, 286: 19 + 18 + 18 + 18
    assert emb.shape == (2, 73, 32) and emb.dtype == torch.float32 and ts.shape == (2, 73)
    assert model.hop_ms == 40.0
    np.testing.assert_allclose(torch.diff(ts[0]).numpy(), 40.0)  # monotonic, 40 ms apart
    assert ts[0, 0].item() == pytest.approx(7.5 * 10 + 12.5)  # centre of frames 0..15, each 25 ms long


def test_batch_invariance_and_long_audio_against_an_independent_composition(tmp_path):
    model = checkpoint(tmp_path)
    audio = noise(3, 7.0, seed=1)  # 698 frames: three windows of 304 frames, the last one padded
    together = get_scene_embeddings(audio, model)
    alone = get_scene_embeddings(audio[1:2], model)
    np.testing.assert_allclose(together[1:2].numpy(), alone.numpy(), atol=1e-5)
    # independent: torchaudio's Kaldi fbank of the clip as given, windows of 304 frames padded with raw
    # zeros, (x - mean) / (2 std), the encoder, the mean over the 44 time patches holding audio
    fb = reference_kaldi_fbank(audio[1])
    assert fb.shape[0] == 698
    padded = torch.zeros(3 * 304, 128)
    padded[:698] = fb
    windows = (padded.view(3, 304, 128) + 6.0) / 6.0
    with torch.no_grad():
        h, _ = model.encoder(windows)
    tokens = h[:, 1:].reshape(3 * 19, 8, 32)[: math.ceil(698 / 16)]
    np.testing.assert_allclose(alone[0].numpy(), tokens.mean(dim=(0, 1)).numpy(), atol=1e-5)
    emb, ts = get_timestamp_embeddings(audio[1:2], model)
    np.testing.assert_allclose(emb[0, ::4][:44].numpy(), tokens.mean(1).numpy(), atol=1e-5)  # offset-0 pass
    assert (torch.diff(ts[0]) > 0).all() and ts[0, -1] == pytest.approx(6967.5)  # frames 688..703: centre 695.5


@pytest.mark.parametrize("encoder", ["transformer", "mamba", "xlstm"])
def test_a_clip_embeds_as_the_evaluation_reads_it_from_the_store(tmp_path, encoder):
    """A clip as the features stage stores it (16-bit samples read back as floats in [-1, 1], the front
    end, zero padding to target_frames) and normalised as the evaluation reads it: the scene embedding is
    the mean over its time patches holding audio, on every encoder."""
    model = checkpoint(tmp_path, encoder)
    pcm = (noise(1, 2.0, seed=3)[0].numpy() * 32768).astype(np.int16)
    wave = pcm.astype(np.float32) / 32768.0
    stored, frames = clip_features(wave, 16000, model.features)  # 198 valid frames of 304
    x = (torch.from_numpy(stored)[None] + 6.0) / 6.0
    with torch.no_grad():
        h, _ = model.encoder(x)
    patches = h[0, 1:].reshape(19, 8, 32).mean(1)[: math.ceil((frames - 7.5) / 16)]
    np.testing.assert_allclose(model.scene(torch.from_numpy(wave)).numpy(), patches.mean(0).numpy(), atol=1e-5)
    _, ts = get_timestamp_embeddings(torch.from_numpy(wave)[None], model)
    assert (torch.diff(ts[0]) == 40).all()


def test_bulk_extraction_resumes_and_records_bad_files(tmp_path):
    model = checkpoint(tmp_path)
    folder = tmp_path / "audio"
    (folder / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    sf.write(folder / "a.wav", 0.1 * rng.standard_normal(16000), 16000)
    sf.write(folder / "sub" / "b.flac", 0.1 * rng.standard_normal((44100, 2)), 44100)  # stereo 44.1 kHz
    sf.write(folder / "c.wav", 0.1 * rng.standard_normal(8000), 8000)
    (folder / "d.wav").write_bytes(b"RIFF not audio")
    out = tmp_path / "emb.npz"
    assert extract_folder(model, folder, out, chunk=2) == {"clips": 3, "failed": 1, "dim": 32}
    got = np.load(out)
    assert list(got["clip_ids"]) == ["a", "c", "sub/b"] and list(got["failed_ids"]) == ["d"]
    mono, _ = sf.read(folder / "a.wav")
    np.testing.assert_allclose(
        got["embeddings"][0], model.scene(torch.tensor(mono, dtype=torch.float32)).numpy(), atol=1e-6
    )
    # a finished chunk left by a killed run is reused, not recomputed
    files = ["a", "c"]
    part = tmp_path / "emb.npz.part-00000.npz"
    np.savez(
        part,
        clip_ids=np.array(files),
        embeddings=np.full((2, 32), 7.0, np.float32),
        failed_ids=np.array([], dtype=str),
        failed_reasons=np.array([], dtype=str),
    )
    extract_folder(model, folder, out, chunk=2)
    again = np.load(out)
    assert (again["embeddings"][:2] == 7.0).all() and not part.exists()


@pytest.mark.parametrize("pooling", ["mean", "freq_mean", "cls"])
def test_evaluation_and_the_embedding_api_pool_a_clip_the_same_way(tmp_path, pooling):
    """Short clips (0.3 s, 0.9 s) and a full one, stored by the features stage and read by the evaluation
    (TaskStore -> downstream.encoder.embed), against the embedding API on the same samples: the same
    vector (up to the store's float16 log-mel). The padding of a short clip never enters (except for cls,
    whose token attends to the whole window in both)."""
    from sslam.data.manifest import ManifestRow, write_manifest
    from sslam.downstream.encoder import embed
    from sslam.downstream.tasks import TaskStore
    from sslam.features.store import build_features
    from sslam.io import write_flac_atomic

    model = checkpoint(tmp_path)
    model.pooling = pooling
    model.scene_embedding_size = 32 * 8 if pooling == "freq_mean" else 32
    corpus = tmp_path / "corpus"
    rows = []
    for k, seconds in enumerate((0.3, 0.9, 3.0)):
        wave = noise(1, seconds, seed=10 + k)[0].numpy() * (0.5 + k)
        write_flac_atomic(corpus / f"audio/c{k}.flac", np.clip(wave, -1, 1), 16000)
        rows.append(ManifestRow(f"c{k}", "eval", f"audio/c{k}.flac", seconds, 16000, ("a",), "ok", ""))
    write_manifest(corpus / "manifests" / "eval.csv", rows)
    feats = section("features", norm_mean=-6.0, norm_std=3.0, store_waveforms=True)  # 304 frames, the model's window
    build_features(corpus, tmp_path / "features", feats, 16000)
    store = TaskStore(tmp_path / "features", {"eval": ""})
    assert (store.mean, store.std) == (-6.0, 3.0)
    assert [store.frames(i) for i in range(3)] == [28, 88, 298]
    evaluated = embed(model.encoder, store, np.arange(3), pooling)
    for i in range(3):
        samples = store.waveform(i)  # the 16-bit samples the store computed from, as floats
        api = get_scene_embeddings(samples[None], model)[0]
        assert api.shape == evaluated[i].shape == (model.scene_embedding_size,)
        np.testing.assert_allclose(api.numpy(), evaluated[i].numpy(), atol=2e-3, rtol=0)
    if pooling != "cls":  # the old rule (every token of the window) gives another vector for a short clip
        from sslam.models.pooling import pool_tokens

        with torch.no_grad():
            h, _ = model.encoder(store.batch(np.arange(1)))
        assert (pool_tokens(h, model.encoder.grid, pooling, None)[0] - evaluated[0]).abs().max() > 0.05


def test_the_cli_pools_as_told_and_as_the_api_does(tmp_path):
    """`python -m sslam.embed <folder> <out> --pooling freq_mean`: one row per file of D x F' numbers,
    equal to the API's scene embedding under the same pooling (the CLI's default: linear_eval.pooling)."""
    from sslam.embed import main

    model = checkpoint(tmp_path)
    folder = tmp_path / "audio"
    folder.mkdir()
    wave = noise(1, 0.8, seed=5)[0].numpy()
    sf.write(folder / "a.wav", wave, 16000, subtype="FLOAT")
    args = [str(folder), str(tmp_path / "out.npz"), "--checkpoint", str(tmp_path / "ckpt" / "final")]
    args += ["--params", str(REPO / "params.yaml"), "--stats", str(tmp_path / "stats.json"), "--pooling", "freq_mean"]
    assert main(args) == 0
    got = np.load(tmp_path / "out.npz")["embeddings"]
    model.pooling, model.scene_embedding_size = "freq_mean", 32 * 8
    want = get_scene_embeddings(torch.from_numpy(wave)[None].float(), model)
    assert got.shape == (1, 32 * 8)
    np.testing.assert_allclose(got, want.numpy(), atol=1e-5)
