"""``pretrain.objective`` through the pipeline, and the inputs the other papers use: the overview's
log-mel front end (against a float64 step-by-step version), non-square patches, random crops, the clone
batch per masked-token mode, and stage 2 passing a raw-patch checkpoint through."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torchaudio
from conftest import REPO, section
from pretrain_helpers import tiny_setup
from safetensors.torch import load_file

from sslam.config.base import ConfigError
from sslam.config.params import load_config
from sslam.features.fbank import kaldi_fbank, overview_logmel
from sslam.models.registry import build_encoder, resolved_masked_tokens
from sslam.pretrain.loop import random_crops
from sslam.pretrain.objectives import get_objective
from sslam.pretrain.objectives.bootstrap import clones_per_clip
from sslam.pretrain.raw_patch import raw_patches


def reference_logmel(wave: np.ndarray, sr: int, n_mels: int, f_min: float, f_max: float) -> np.ndarray:
    """The overview's front end step by step in float64: 25 ms periodic-Hann frames every 10 ms (not
    centred), |DFT|^2, HTK mel filters, ln(x + 1e-6), the clip's mean and (population) std removed."""
    n_fft, hop = sr * 25 // 1000, sr * 10 // 1000
    window = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n_fft) / n_fft)
    frames = np.stack([wave[i : i + n_fft] for i in range(0, len(wave) - n_fft + 1, hop)])
    k = np.arange(n_fft // 2 + 1)
    dft = np.exp(-2j * np.pi * np.outer(np.arange(n_fft), k) / n_fft)
    power = np.abs((frames * window) @ dft) ** 2
    fb = torchaudio.functional.melscale_fbanks(n_fft // 2 + 1, f_min, f_max, n_mels, sr, None, "htk").double().numpy()
    logmel = np.log(power @ fb + 1e-6)
    return (logmel - logmel.mean()) / logmel.std()


def test_overview_logmel_matches_a_float64_reference_and_kaldi_frame_count():
    wave = np.random.default_rng(0).standard_normal(16000 + 123) * 0.1
    got = overview_logmel(torch.from_numpy(wave).float(), 16000, 80, 10.0, 25.0, 50.0, 8000.0).numpy()
    ref = reference_logmel(wave, 16000, 80, 50.0, 8000.0)
    assert got.shape == ref.shape == (kaldi_fbank(torch.from_numpy(wave)).shape[0], 80)
    assert np.abs(got - ref).max() < 2e-3  # float32 spectrum vs float64
    assert abs(got.mean()) < 1e-5 and got.std() == pytest.approx(1.0, abs=1e-4)


def test_features_stage_uses_the_front_end_param():
    from sslam.features.store import clip_features

    wave = (np.random.default_rng(1).standard_normal(8000) * 0.1).astype(np.float32)
    cfg = section("features", front_end="logmel", num_mel_bins=80, target_frames=64)
    fb, valid = clip_features(wave, 16000, cfg)
    assert fb.shape == (64, 80) and valid == 48  # 1 + (8000 - 400) // 160
    assert abs(fb[:valid].mean()) < 1e-4 and (fb[valid:] == 0).all()
    kaldi, _ = clip_features(wave, 16000, section("features", num_mel_bins=80, target_frames=64))
    assert not np.allclose(kaldi, fb)


@pytest.mark.parametrize("name", ["transformer", "mamba", "xlstm"])
def test_non_square_patches_on_every_encoder(name):
    cfg = section("model", encoder=name, embed_dim=32, depth=1, num_heads=2, patch_size=[4, 16], decoder_groups=4)
    assert cfg.patch == (4, 16)
    enc = build_encoder(cfg, 200, 80)  # the overview: 2 s crops, 80 bins -> 50 x 5 = 250 patches
    assert enc.grid == (50, 5) and enc.patch_size == (4, 16)
    h, _ = enc(torch.randn(2, 200, 80))
    assert h.shape == (2, 251, 32)


def test_raw_patches_match_an_identity_patch_conv_for_non_square_patches():
    x = torch.randn(2, 12, 32)
    pt, pf = 4, 16
    eye = torch.eye(pt * pf).reshape(pt * pf, 1, pt, pf)  # output channel c picks pixel c (time-major)
    conv = torch.nn.functional.conv2d(x[:, None], eye, stride=(pt, pf)).flatten(2).transpose(1, 2)
    assert torch.equal(raw_patches(x, (pt, pf)), conv)


def test_objective_decides_masked_tokens_and_rejects_drop():
    cfg = section("model")
    masked = {name: get_objective(name).predicts_masked for name in ("bootstrap", "ssast", "msm")}
    assert masked == {"bootstrap": False, "ssast": True, "msm": True}
    assert resolved_masked_tokens(cfg) == resolved_masked_tokens(cfg, predicts_masked=masked["bootstrap"]) == "drop"
    assert resolved_masked_tokens(cfg, predicts_masked=True) == "mask_token"
    assert resolved_masked_tokens(section("model", encoder="mamba"), predicts_masked=False) == "mask_token"
    params = REPO / "params.yaml"
    with pytest.raises(ConfigError, match="masked_tokens must be mask_token or auto, not drop"):
        load_config(params, {"pretrain.objective": "msm", "model.masked_tokens": "drop"})
    with pytest.raises(ConfigError, match="waveform cannot use it"):
        load_config(params, {"pretrain.crop_seconds": 2.0, "mix.strategy": "waveform"})
    assert load_config(params, {"pretrain.crop_seconds": 2.0}).pretrain.crop_frames(10.0) == 200


def test_clone_batch_follows_the_masked_token_mode():
    per_mode, stage = section("mask"), section("pretrain.stage1")
    assert clones_per_clip(per_mode, stage, "drop") == 4
    assert clones_per_clip(per_mode, stage, "mask_token") == 1
    same = section("mask", clone_batch=3)
    assert clones_per_clip(same, stage, "mask_token") == 3
    assert clones_per_clip(same, section("pretrain.stage1", clone_batch={"drop": 8, "mask_token": 2}), "drop") == 8


def test_random_crops_stay_in_the_valid_frames_and_repeat_with_the_seed():
    x = torch.arange(3 * 50, dtype=torch.float32).reshape(3, 50, 1).expand(3, 50, 2)
    valid = [50, 30, 10]  # the last clip is shorter than the crop: it starts at 0
    starts = {i: set() for i in range(3)}
    for seed in range(60):
        out = random_crops(x, valid, 20, torch.Generator().manual_seed(seed))
        assert out.shape == (3, 20, 2)
        for i in range(3):
            s = int(out[i, 0, 0]) - 50 * i
            assert torch.equal(out[i, :, 0], x[i, s : s + 20, 0])
            starts[i].add(s)
    assert max(starts[0]) <= 30 and max(starts[1]) <= 10 and starts[2] == {0}
    assert len(starts[0]) > 15 and 0 in starts[1] and 10 in starts[1]
    a = random_crops(x, valid, 20, torch.Generator().manual_seed(7))
    assert torch.equal(a, random_crops(x, valid, 20, torch.Generator().manual_seed(7)))
    with pytest.raises(ValueError, match="gives 60 frames"):
        random_crops(x, valid, 60, torch.Generator())


@pytest.mark.parametrize("objective", ["ssast", "msm"])
@pytest.mark.parametrize("encoder", ["transformer", "mamba", "xlstm"])
def test_raw_patch_objective_trains_passes_through_stage2_and_evaluates(tmp_path, encoder, objective):
    """Stage 1 with the objective on 0.32 s crops (32 of 64 frames), through the stage script; stage 2 is
    the same checkpoint with metrics saying so; the downstream loader builds the encoder on whole clips."""
    import importlib.util

    import yaml

    from sslam.downstream.encoder import load_encoder

    params, feats = tiny_setup(tmp_path, steps=6, checkpoint_every=100)
    raw = yaml.safe_load(params.read_text())
    raw["model"]["encoder"] = encoder
    raw["model"]["xlstm"].update(num_heads=2)
    raw["pretrain"].update(objective=objective, crop_seconds=0.32)
    raw["pretrain"]["ssast"].update(mask_count=4)
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    spec = importlib.util.spec_from_file_location("pretrain_stage", REPO / "stages" / "pretrain.py")
    stage = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(stage)
    ck, metrics = tmp_path / "checkpoints", tmp_path / "metrics"
    common = ["--params", str(params), "--features", str(feats), "--metrics-dir", str(metrics), "--cpu"]
    assert stage.main([*common, "--stage", "stage1", "--checkpoints", str(ck / "stage1")]) == 0
    s1 = json.loads((metrics / "pretrain_stage1.json").read_text())
    assert s1["objective"] == objective and s1["checkpoint"] == "stage1" and "target_diagnostics" not in s1
    terms = {"ssast": {"loss", "nce", "mse", "accuracy"}, "msm": {"loss", "mse"}}[objective]
    assert set(s1["final"]) == terms and all(math.isfinite(v) for v in s1["final"].values())
    weights = load_file(ck / "stage1" / "final" / "student.safetensors")
    head = "heads.discriminative" if objective == "ssast" else "head"
    assert any(k.startswith(head) for k in weights) and not any(k.startswith("decoder") for k in weights)
    assert "encoder.mask_token" in weights
    # stage 2: the stage-1 checkpoint passed through, and said so
    init = ["--init", str(ck / "stage1" / "final")]
    stale = metrics / "stage2_live" / "plots" / "metrics" / "stage2" / "loss.tsv"  # a bootstrap run's curve
    stale.parent.mkdir(parents=True)
    stale.write_text("step\tloss\n0\t1.0\n")
    assert stage.main([*common, "--stage", "stage2", "--checkpoints", str(ck / "stage2"), *init]) == 0
    s2 = json.loads((metrics / "pretrain_stage2.json").read_text())
    assert s2 == {"steps": 0, "objective": objective, "checkpoint": "stage1", "variant": "none"}
    assert list((metrics / "stage2_live" / "plots" / "metrics").iterdir()) == []  # no stale curve reaches the report
    passed = load_file(ck / "stage2" / "final" / "student.safetensors")
    assert passed.keys() == weights.keys() and all(torch.equal(passed[k], weights[k]) for k in weights)
    # downstream: the encoder on whole 64-frame clips (pretrained on 32-frame crops), its trained weights
    cfg = load_config(params)
    enc = load_encoder(cfg, "stage2", 64, 128, ck)
    assert enc.grid == (4, 8) and torch.equal(enc.state_dict()["mask_token"], weights["encoder.mask_token"])
    h, _ = enc(torch.randn(1, 64, 128))
    assert h.shape == (1, enc.num_patches + 1, 32)  # the summary first, then every patch


@pytest.mark.parametrize("encoder", ["transformer", "mamba", "xlstm"])
def test_paper_settings_print_for_every_encoder(capsys, encoder):
    from sslam.profile import main, profile_overrides

    assert main(["overview_msm", "--encoder", encoder]) == 0
    flags = capsys.readouterr().out
    assert f"-S 'model.encoder={encoder}'" in flags and "-S 'model.patch_size=[4,16]'" in flags
    over = profile_overrides("overview_msm") | {"model.encoder": encoder}
    cfg = load_config(REPO / "params.yaml", over)
    crop = cfg.pretrain.crop_frames(cfg.features.frame_shift_ms)
    assert crop == 200
    assert build_encoder(cfg.model, crop, cfg.features.num_mel_bins, predicts_masked=True).num_patches == 250
    assert cfg.pretrain.stage1.lr == pytest.approx(1.5e-4 * cfg.pretrain.stage1.batch_size / 256)
    ssast = load_config(REPO / "params.yaml", profile_overrides("ssast") | {"model.encoder": encoder})
    grid = build_encoder(ssast.model, ssast.features.target_frames, 128, predicts_masked=True).grid
    assert grid == (64, 8) and ssast.pretrain.ssast.mask_count == 400 and ssast.pretrain.ssast.mse_weight == 10.0


def test_profiles_merge_left_to_right(capsys):
    from sslam.profile import main, profile_overrides

    assert main(["ssast", "ssamba_tiny", "--encoder", "xlstm"]) == 0
    flags = capsys.readouterr().out.split(" -S ")
    expected = profile_overrides("ssast") | profile_overrides("ssamba_tiny") | {"model.encoder": "xlstm"}
    assert len(flags) == len(expected)  # one flag per key: a later profile replaces an earlier value
    assert "'model.embed_dim=192'" in flags and "'pretrain.ssast.mask_count=400'" in flags
    assert "'model.encoder=xlstm'" in flags and "'model.encoder=mamba'" not in flags  # --encoder wins
    assert main(["no_such_profile"]) == 2
