"""Released EAT / SSLAM weights in both published layouts, and this project's encoders out.

The published layouts are written here with random weights at a small width (the same key names and
structure), and this project's encoder is checked against an independent implementation of the
published forward order written below (float64, from the key names alone)."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import pytest
import torch
from conftest import REPO, section
from safetensors.torch import save_file

from sslam.checkpoints import read_encoder
from sslam.interop import (
    CheckpointError,
    export_encoder,
    import_checkpoint,
    load_weights,
    safe_torch_load,
)

DIM, DEPTH, HEADS, MLP, PATCH, MEL, MAX_LEN = 32, 2, 4, 64, 16, 32, 64
SMALL = {"target_frames": 64, "num_mel_bins": MEL}  # a fairseq config does not say its mel bins (released: 128)


def eat_positions(dim: int, grid_t: int, grid_f: int) -> np.ndarray:
    """EAT's fixed table, written from its description: a meshgrid of (frequency, time) indices over a
    (time, frequency) grid, the first half of the channels from the frequency index, sin then cos."""

    def one_d(d: int, pos: np.ndarray) -> np.ndarray:
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1).astype(np.float64), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    w, h = np.meshgrid(np.arange(grid_f), np.arange(grid_t))  # (grid_t, grid_f) each, time-major rows
    return np.concatenate([one_d(dim // 2, w), one_d(dim // 2, h)], axis=1)


def hub_weights(seed: int = 0, classifier: bool = False, mel: int = MEL) -> dict[str, torch.Tensor]:
    """Random weights under the hub names (no ``model.`` prefix yet), for ``mel`` bins."""
    g = torch.Generator().manual_seed(seed)

    def r(*shape: int, scale: float = 0.1) -> torch.Tensor:
        return torch.randn(*shape, generator=g) * scale

    w = {
        "local_encoder.proj.weight": r(DIM, 1, PATCH, PATCH),
        "local_encoder.proj.bias": r(DIM),
        "extra_tokens": r(1, 1, DIM, scale=1.0),
        "fixed_positional_encoder.positions": torch.from_numpy(eat_positions(DIM, MAX_LEN, mel // PATCH)).float()[None],
        "pre_norm.weight": 1 + r(DIM),
        "pre_norm.bias": r(DIM),
    }
    for n in range(DEPTH):
        b = f"blocks.{n}."
        w |= {
            b + "attn.qkv.weight": r(3 * DIM, DIM),
            b + "attn.qkv.bias": r(3 * DIM),
            b + "attn.proj.weight": r(DIM, DIM),
            b + "attn.proj.bias": r(DIM),
            b + "norm1.weight": 1 + r(DIM),
            b + "norm1.bias": r(DIM),
            b + "mlp.fc1.weight": r(MLP, DIM),
            b + "mlp.fc1.bias": r(MLP),
            b + "mlp.fc2.weight": r(DIM, MLP),
            b + "mlp.fc2.bias": r(DIM),
            b + "norm2.weight": 1 + r(DIM),
            b + "norm2.bias": r(DIM),
        }
    if classifier:
        w |= {"fc_norm.weight": 1 + r(DIM), "fc_norm.bias": r(DIM), "head.weight": r(527, DIM), "head.bias": r(527)}
    return w


def hub_config(mel: int = MEL) -> dict:
    return {
        "embed_dim": DIM,
        "depth": DEPTH,
        "num_heads": HEADS,
        "patch_size": PATCH,
        "stride": PATCH,
        "in_chans": 1,
        "mel_bins": mel,
        "max_length": MAX_LEN,
        "mlp_ratio": MLP / DIM,
        "qkv_bias": True,
        "norm_eps": 1e-6,
        "layer_norm_first": False,
    }


def write_hub(folder, weights: dict[str, torch.Tensor], mel: int = MEL):
    folder.mkdir(parents=True, exist_ok=True)
    save_file({f"model.{k}": v.contiguous() for k, v in weights.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(hub_config(mel)))
    return folder


def fairseq_state(student: dict[str, torch.Tensor], teacher: dict[str, torch.Tensor] | None = None) -> dict:
    """A fairseq data2vec-2 training state: the modality encoder's front end under
    ``modality_encoders.IMAGE.`` (the pre-norm as ``context_encoder.norm``), a pretraining decoder, the
    blocks at the top, the EMA teacher nested under ``_ema``."""

    def rename(w: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        out = {}
        for k, v in w.items():
            if k.startswith("blocks."):
                out[k] = v
            else:
                k = k.replace("pre_norm.", "context_encoder.norm.")
                out[f"modality_encoders.IMAGE.{k}"] = v
        return out

    model = rename(student) | {"modality_encoders.IMAGE.decoder.blocks.0.0.weight": torch.zeros(DIM, 1, 3, 3)}
    if teacher is not None:
        model["_ema"] = rename(teacher)
    return {"model": model, "cfg": {"model": {"embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS}}}


def published_forward(w: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """The published forward order in float64, from the key names: patch conv, + positions[:, :N],
    CLS prepended, pre_norm, post-LN blocks (x += attn(x); r = norm1(x); t = mlp(r); x = norm2(r + t)),
    no final norm. Returns (each block's MLP output t over the patch tokens, the final [CLS; tokens])."""
    w = {k: v.double() for k, v in w.items()}
    x = x.double()
    tok = torch.nn.functional.conv2d(
        x[:, None], w["local_encoder.proj.weight"], w["local_encoder.proj.bias"], stride=PATCH
    )
    tok = tok.flatten(2).transpose(1, 2)  # (B, T' * F', D), time-major
    tok = tok + w["fixed_positional_encoder.positions"][:, : tok.shape[1]]
    h = torch.cat([w["extra_tokens"].expand(x.shape[0], -1, -1), tok], dim=1)

    def ln(v, name):
        return torch.nn.functional.layer_norm(v, (DIM,), w[name + ".weight"], w[name + ".bias"], eps=1e-6)

    def lin(v, name):
        return v @ w[name + ".weight"].T + w[name + ".bias"]

    h = ln(h, "pre_norm")
    layers = []
    for n in range(DEPTH):
        b = f"blocks.{n}."
        q, k, v = lin(h, b + "attn.qkv").chunk(3, dim=-1)
        split = lambda t: t.view(t.shape[0], t.shape[1], HEADS, DIM // HEADS).transpose(1, 2)  # noqa: E731
        q, k, v = split(q), split(k), split(v)
        att = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(DIM // HEADS), dim=-1) @ v
        h = h + lin(att.transpose(1, 2).reshape(h.shape), b + "attn.proj")
        r = ln(h, b + "norm1")
        t = lin(torch.nn.functional.gelu(lin(r, b + "mlp.fc1")), b + "mlp.fc2")
        layers.append(t[:, 1:])
        h = ln(r + t, b + "norm2")
    return layers, h


def assert_matches_published(encoder, weights, frames: int = 64):
    x = torch.randn(2, frames, MEL, generator=torch.Generator().manual_seed(1))
    want_layers, want = published_forward(weights, x)
    with torch.no_grad():
        got, layers = encoder(x, return_layers=True)
    assert len(layers) == DEPTH
    for a, b in zip(layers, want_layers, strict=True):
        torch.testing.assert_close(a.double(), b, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(got.double(), want, atol=2e-5, rtol=1e-4)


def test_our_positions_are_eats_table():
    from sslam.models.contract import sincos_2d

    ours = sincos_2d(DIM, 10, 4).double().numpy()
    np.testing.assert_allclose(ours, eat_positions(DIM, 10, 4), atol=1e-6)


@pytest.mark.parametrize("frames", [64, 128])
def test_hub_layout_loads_and_runs_the_published_forward(tmp_path, frames):
    weights = hub_weights(classifier=True)
    folder = write_hub(tmp_path / "EAT-tiny", weights)
    encoder, info = load_weights(folder, overrides={"target_frames": frames})
    assert info["layout"] == "hub" and info["model"].num_heads == HEADS and info["model"].depth == DEPTH
    assert sorted(info["classifier"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert info["input"]["features"]["norm_mean"] == -4.268 and info["input"]["features"]["num_mel_bins"] == MEL
    assert_matches_published(encoder, weights, frames)


def test_fairseq_layout_student_and_ema_teacher(tmp_path):
    student, teacher = hub_weights(0), hub_weights(1)
    path = tmp_path / "checkpoint_last.pt"
    torch.save(fairseq_state(student, teacher), path)
    enc_s, info = load_weights(path, overrides=SMALL)
    assert info["layout"] == "fairseq" and info["model"].num_heads == HEADS
    assert_matches_published(enc_s, student)
    enc_t, _ = load_weights(path, weights="teacher", overrides=SMALL)
    assert_matches_published(enc_t, teacher)
    # data2vec's ema_encoder_only: the teacher copy is the block stack alone ('0.attn.qkv.weight', ...)
    state = fairseq_state(student)
    state["model"]["_ema"] = {k[len("blocks.") :]: v for k, v in teacher.items() if k.startswith("blocks.")}
    torch.save(state, path)
    enc_b, _ = load_weights(path, weights="teacher", overrides=SMALL)
    blocks_only = {k: (teacher[k] if k.startswith("blocks.") else v) for k, v in student.items()}
    assert_matches_published(enc_b, blocks_only)


def test_fine_tuned_variants_keep_their_classifier_aside(tmp_path):
    """Fine-tuned fairseq: the encoder under 'model.', fc_norm / head at the top, no teacher."""
    weights = hub_weights(2, classifier=True)
    encoder_part = {k: v for k, v in weights.items() if not k.startswith(("fc_norm", "head"))}
    state = fairseq_state(encoder_part)
    state["model"] = {f"model.{k}": v for k, v in state["model"].items()} | {
        k: v for k, v in weights.items() if k.startswith(("fc_norm", "head"))
    }
    path = tmp_path / "finetuned.pt"
    torch.save(state, path)
    encoder, info = load_weights(path, overrides=SMALL)
    assert sorted(info["classifier"]) == ["fc_norm.bias", "fc_norm.weight", "head.bias", "head.weight"]
    assert_matches_published(encoder, encoder_part)


class Trap:
    """Pickles as a call to :func:`_sprung`: unpickling it with plain pickle would run that function."""

    def __reduce__(self):
        return (_sprung, ("the file's code ran",))


SPRUNG: list[str] = []


def _sprung(msg: str) -> str:
    SPRUNG.append(msg)
    return msg


def test_a_pickled_object_in_a_pt_never_runs(tmp_path):
    state = fairseq_state(hub_weights())
    state["extra_state"] = {"trap": Trap(), "best": np.float64(0.5), "history": np.arange(3.0)}
    path = tmp_path / "ckpt.pt"
    torch.save(state, path)
    with pytest.raises(pickle.UnpicklingError):  # plain weights_only refuses the file outright
        torch.load(path, weights_only=True)
    loaded = safe_torch_load(path)
    assert SPRUNG == []
    assert torch.equal(loaded["model"]["blocks.0.norm1.weight"], state["model"]["blocks.0.norm1.weight"])
    encoder, _ = load_weights(path, overrides=SMALL)
    assert SPRUNG == []
    assert_matches_published(encoder, hub_weights())


def test_truncated_and_renamed_checkpoints_name_the_problem(tmp_path):
    weights = hub_weights()
    folder = write_hub(tmp_path / "ok", weights)
    blob = (folder / "model.safetensors").read_bytes()
    cut = write_hub(tmp_path / "cut", weights)
    (cut / "model.safetensors").write_bytes(blob[: len(blob) // 2])
    with pytest.raises(CheckpointError, match=r"cut/model.safetensors: not a readable safetensors file.*truncated"):
        load_weights(cut)

    renamed = dict(weights)
    renamed["blocks.1.mlp.fc_1.weight"] = renamed.pop("blocks.1.mlp.fc1.weight")
    with pytest.raises(CheckpointError) as err:
        load_weights(write_hub(tmp_path / "renamed", renamed))
    assert "unknown keys ['blocks.1.mlp.fc_1.weight']" in str(err.value)
    assert "missing keys ['blocks.1.mlp.fc1.weight']" in str(err.value)

    bad = dict(weights)
    bad["blocks.0.norm2.bias"] = torch.zeros(DIM + 1)
    with pytest.raises(
        CheckpointError, match=r"mis-shaped keys \['blocks.0.norm2.bias \(33,\) \(expected \(32,\)\)'\]"
    ):
        load_weights(write_hub(tmp_path / "shape", bad))

    pt = tmp_path / "cut.pt"
    torch.save(fairseq_state(weights), pt)
    pt.write_bytes(pt.read_bytes()[:2000])
    with pytest.raises(CheckpointError, match=r"cut.pt: not a readable torch checkpoint"):
        load_weights(pt)

    learned = dict(weights)
    learned["fixed_positional_encoder.positions"] = learned["fixed_positional_encoder.positions"] + 0.1
    with pytest.raises(CheckpointError, match="not the fixed 2-D sin-cos table"):
        load_weights(write_hub(tmp_path / "learned", learned))

    with pytest.raises(CheckpointError, match="weights: teacher, but state\\['model'\\] has no '_ema'"):
        no_ema = tmp_path / "no_ema.pt"
        torch.save(fairseq_state(weights), no_ema)
        load_weights(no_ema, "teacher")


def test_import_writes_a_checkpoint_folder_the_evaluation_reads(tmp_path):
    weights = hub_weights()
    src = write_hub(tmp_path / "released", weights)
    meta = import_checkpoint(src, tmp_path / "checkpoints" / "eat" / "final", overrides={"target_frames": 64})
    assert meta["imported"]["layout"] == "hub" and len(meta["imported"]["sha256"]) == 64
    assert meta["input"]["features"]["target_frames"] == 64
    assert meta["fingerprint"]["model"]["decoder_groups"] == 16  # not the weights': fixed, never params'
    encoder = read_encoder(tmp_path / "checkpoints" / "eat" / "final", 128, MEL)
    assert_matches_published(encoder, weights, 128)


@pytest.mark.parametrize("kind", ["transformer", "mamba", "xlstm"])
def test_export_round_trip(tmp_path, kind):
    """Every encoder of this project out and back in, identically: the hub layout for the Transformer
    (checked by the published forward too), this project's own layout for Mamba and xLSTM."""
    from sslam.pretrain.student import Student

    model = section("model", encoder=kind, embed_dim=DIM, depth=DEPTH, num_heads=HEADS, mlp_ratio=2.0)
    torch.manual_seed(0)
    student = Student(model, 64, MEL, "bootstrap")
    folder = tmp_path / "run" / "final"
    folder.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, folder / "student.safetensors")
    (folder / "meta.json").write_text(
        json.dumps({"fingerprint": {"model": model.model_dump(), "objective": "bootstrap"}})
    )
    spec = {
        "sample_rate": 16000,
        "features": {
            "front_end": "kaldi",
            "num_mel_bins": MEL,
            "frame_shift_ms": 10.0,
            "frame_length_ms": 25.0,
            "target_frames": 64,
            "norm_mean": -3.0,
            "norm_std": 2.5,
        },
    }
    layout = export_encoder(folder, tmp_path / "out", spec)
    assert layout == ("hub" if kind == "transformer" else "sslam")
    back, info = load_weights(tmp_path / "out")
    assert info["input"] == spec
    for k, v in student.encoder.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
    x = torch.randn(2, 64, MEL)
    student.encoder.eval()
    with torch.no_grad():
        torch.testing.assert_close(back(x)[0], student.encoder(x)[0], atol=0, rtol=0)
    if kind == "transformer":
        from safetensors.torch import load_file

        hub = {k[len("model.") :]: v for k, v in load_file(tmp_path / "out" / "model.safetensors").items()}
        assert_matches_published(back, hub)


def test_the_embedding_api_reads_released_weights_with_their_own_front_end(tmp_path):
    """load_model on the downloaded folder itself: the reference fbank, zero-padded to the released
    1024-frame window, (x + 4.268) / (2 * 4.569), the published forward, tokens averaged over the time
    patches that hold audio; no params or statistics of this project involved."""
    from conftest import reference_kaldi_fbank

    from sslam.embed import get_scene_embeddings, load_model

    weights = hub_weights(3)
    model = load_model(str(write_hub(tmp_path / "EAT", weights)), params="/nonexistent.yaml", stats="/nonexistent")
    assert (model.sample_rate, model.window, model.scene_embedding_size) == (16000, 1024, DIM)
    audio = torch.randn(1, 16000, generator=torch.Generator().manual_seed(4)) * 0.1
    fb = reference_kaldi_fbank(audio[0].double(), num_mel_bins=MEL).float()  # (98, MEL)
    x = torch.zeros(1, 1024, MEL)
    x[0, : fb.shape[0]] = fb
    _, h = published_forward(weights, (x + 4.268) / (2 * 4.569))
    valid = math.ceil((fb.shape[0] - (PATCH - 1) / 2) / PATCH)
    want = h[0, 1:].reshape(1024 // PATCH, MEL // PATCH, DIM)[:valid].mean(dim=(0, 1))
    torch.testing.assert_close(get_scene_embeddings(audio, model)[0].double(), want, atol=1e-4, rtol=1e-4)


def test_an_imported_encoder_reads_the_task_with_its_own_normalisation(tmp_path):
    """Evaluation: a task's front end must be the checkpoint's (a clear error names the setting), and
    the clips reach the encoder normalised with the checkpoint's statistics, not the features stage's."""
    from types import SimpleNamespace

    from sslam.config.base import merged
    from sslam.config.params import load_config
    from sslam.downstream.encoder import store_for_encoder

    released = write_hub(tmp_path / "released", hub_weights())
    import_checkpoint(released, tmp_path / "ck" / "eat" / "final")
    cfg = merged(load_config(REPO / "params.yaml"), {"imports": {"eat": {"path": str(released)}}})
    renormalised = []
    store = SimpleNamespace(renormalised=lambda stats: renormalised.append(stats) or "renormalised")
    with pytest.raises(ValueError, match=r"encoder eat on task mono \(features\).*num_mel_bins 128 \(needs 32\)"):
        store_for_encoder(cfg, "eat", "mono", store, "pretrain", tmp_path / "ck")
    cfg = merged(cfg, {"features": merged(cfg.features, {"num_mel_bins": MEL})})
    assert store_for_encoder(cfg, "eat", "mono", store, "pretrain", tmp_path / "ck") == "renormalised"
    assert renormalised == [{"mean": -4.268, "std": 4.569}]
    assert store_for_encoder(cfg, "eat", "mono", store, "task", tmp_path / "ck") is store  # the task's own stats
    with pytest.raises(ValueError, match=r"data.sample_rate 22050 \(needs 16000\)"):
        cfg22 = merged(cfg, {"data": merged(cfg.data, {"sample_rate": 22050})})
        store_for_encoder(cfg22, "eat", "mono", store, "pretrain", tmp_path / "ck")
    (tmp_path / "ck" / "stage2" / "final").mkdir(parents=True)
    assert store_for_encoder(cfg, "stage2", "mono", store, "pretrain", tmp_path / "ck") is store  # own runs: as is


def test_the_export_command_writes_what_the_embedding_api_reads(tmp_path, capsys):
    """python -m sslam.export on a run of this project: the hub folder it writes embeds audio exactly as
    the run itself does (same front end, statistics and weights); a missing folder is a clear error."""
    import yaml

    from sslam.config.params import load_config
    from sslam.embed import get_scene_embeddings, load_model
    from sslam.export import main
    from sslam.pretrain.student import Student

    cfg = load_config(REPO / "params.yaml")
    model = section("model", embed_dim=DIM, depth=DEPTH, num_heads=HEADS)
    params = cfg.model_dump(mode="json") | {"model": model.model_dump(mode="json")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    (tmp_path / "stats.json").write_text(json.dumps({"mean": -5.5, "std": 3.25}))
    run = tmp_path / "checkpoints" / "stage2" / "final"
    run.mkdir(parents=True)
    torch.manual_seed(5)
    student = Student(model, cfg.features.target_frames, cfg.features.num_mel_bins)
    save_file({k: v.contiguous() for k, v in student.state_dict().items()}, run / "student.safetensors")
    (run / "meta.json").write_text(json.dumps({"fingerprint": {"model": model.model_dump(), "objective": "bootstrap"}}))
    args = ["--params", str(tmp_path / "params.yaml"), "--stats", str(tmp_path / "stats.json")]
    assert main([str(run), str(tmp_path / "out"), *args]) == 0
    assert "hub layout: config.json, model.safetensors" in capsys.readouterr().out
    audio = torch.randn(2, 40000, generator=torch.Generator().manual_seed(6)) * 0.1
    own = load_model(str(run), str(tmp_path / "params.yaml"), str(tmp_path / "stats.json"))
    exported = load_model(str(tmp_path / "out"))
    assert (exported.mean, exported.std, exported.window) == (-5.5, 3.25, cfg.features.target_frames)
    torch.testing.assert_close(get_scene_embeddings(audio, exported), get_scene_embeddings(audio, own), atol=0, rtol=0)
    assert main([str(tmp_path / "nowhere"), str(tmp_path / "out2"), *args]) == 2
    assert "nowhere: expected a checkpoint folder with meta.json" in capsys.readouterr().err
