"""The checkpoint folder format and the encoder names: a checkpoint builds its own encoder from its own
meta.json whatever params.yaml says now, the meta path gives exactly the encoder pretraining trained,
and every kind of encoder name resolves (an unknown one is refused with the choices)."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from conftest import REPO, section
from safetensors.torch import load_file, save_file

from sslam.checkpoints import (
    CENTRING,
    META,
    STUDENT,
    UnknownEncoder,
    folder_input,
    own_input,
    read_encoder,
    resolve,
    write_final,
)
from sslam.config.base import merged
from sslam.config.params import Config, load_config

FRAMES, MEL = 64, 128
SMALL = {"embed_dim": 32, "depth": 2, "num_heads": 2, "decoder_layers": 1, "decoder_groups": 4}


def params(**model) -> Config:
    """params.yaml with a small model section (``model`` changed on top)."""
    cfg = load_config(REPO / "params.yaml")
    return merged(cfg, {"model": section("model", **SMALL | model)})


def pretrain_run(tmp_path: Path, cfg: Config, name: str = "stage2", seed: int = 0):
    """``checkpoints/<name>/final`` as pretraining writes it (the stage's own export path); returns the
    trained student and teacher it holds."""
    from sslam.pretrain.checkpoint import export_final, fingerprint
    from sslam.pretrain.student import Student, make_teacher
    from sslam.pretrain.targets import PositionCentring

    torch.manual_seed(seed)
    student = Student(cfg.model, FRAMES, MEL, cfg.pretrain.objective)
    with torch.no_grad():  # "trained": the weights differ from any fresh init
        for p in student.parameters():
            p.add_(0.01 * torch.randn_like(p))
    teacher = make_teacher(student)
    centring = PositionCentring("running", 0.9)
    spec = own_input(section("features", norm_mean=-6.0, norm_std=3.0), 16000, tmp_path / "no-stats.json")
    fp = fingerprint(cfg, "stage2", {"code": "c", "params": "p", "data": "d"}, 1)
    export_final(
        tmp_path / "checkpoints" / name, student, teacher, {"fingerprint": fp, "step": 7}, centring, input_spec=spec
    )
    return student, teacher


def embeddings(encoder, seed: int = 3) -> torch.Tensor:
    x = torch.randn(2, FRAMES, MEL, generator=torch.Generator().manual_seed(seed))
    encoder.eval()
    with torch.no_grad():
        return encoder(x)[0]


def assert_same_encoder(a, b) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    torch.testing.assert_close(embeddings(a), embeddings(b), atol=0, rtol=0)


def test_an_edited_params_cannot_mis_build_an_existing_checkpoint(tmp_path):
    """model.depth changed in params.yaml after pretraining: the evaluation still gets the checkpoint's own
    two blocks with its trained weights; only random<N> (no checkpoint) follows the edited params."""
    from sslam.downstream.encoder import load_encoder

    trained, _ = pretrain_run(tmp_path, params())
    edited = params(depth=3, num_heads=4)
    enc = load_encoder(edited, "stage2", FRAMES, MEL, tmp_path / "checkpoints")
    assert len(enc.blocks) == 2
    assert_same_encoder(enc, trained.encoder)
    assert len(load_encoder(edited, "random0", FRAMES, MEL, tmp_path / "checkpoints").blocks) == 3


@pytest.mark.parametrize("kind", ["transformer", "mamba", "xlstm"])
def test_the_meta_path_builds_the_student_encoder_exactly(tmp_path, kind):
    """What the evaluation built before (a whole Student from params, its state loaded, the decoder
    dropped) and the meta path give the same keys, tensors and embeddings; the teacher reads back too."""
    from sslam.pretrain.student import Student

    cfg = params(encoder=kind)
    trained, teacher = pretrain_run(tmp_path, cfg)
    folder = tmp_path / "checkpoints" / "stage2" / "final"
    student = Student(cfg.model, FRAMES, MEL, cfg.pretrain.objective)
    student.load_state_dict(load_file(folder / STUDENT))
    assert_same_encoder(read_encoder(folder, FRAMES, MEL), student.encoder)
    assert_same_encoder(read_encoder(folder, FRAMES, MEL, weights="teacher"), teacher)
    assert (folder / CENTRING).is_file() is False  # no running means yet: nothing to keep
    with pytest.raises(ValueError, match="weights must be one of"):
        read_encoder(folder, FRAMES, MEL, weights="ema")


def test_reading_leaves_the_global_rng_alone(tmp_path):
    pretrain_run(tmp_path, params())
    torch.manual_seed(5)
    want = torch.rand(3)
    torch.manual_seed(5)
    read_encoder(tmp_path / "checkpoints" / "stage2" / "final", FRAMES, MEL)
    assert torch.equal(torch.rand(3), want)


def test_the_meta_describes_the_encoder_and_its_input(tmp_path):
    cfg = params()
    pretrain_run(tmp_path, cfg)
    folder = tmp_path / "checkpoints" / "stage2" / "final"
    meta = json.loads((folder / META).read_text())
    assert meta["fingerprint"]["model"] == cfg.model.model_dump()
    assert (meta["fingerprint"]["objective"], meta["fingerprint"]["stage"], meta["step"]) == (
        cfg.pretrain.objective,
        "stage2",
        7,
    )
    assert folder_input(folder)["features"]["norm_mean"] == -6.0
    with pytest.raises(ValueError, match="must record the input settings"):
        write_final(
            tmp_path / "bad", torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), {"fingerprint": meta["fingerprint"]}
        )
    with pytest.raises(ValueError, match="does not describe its encoder"):
        write_final(tmp_path / "bad", torch.nn.Linear(1, 1), torch.nn.Linear(1, 1), {"input": meta["input"]})
    assert not (tmp_path / "bad").exists()


def test_a_meta_without_a_description_is_a_clear_error(tmp_path):
    folder = tmp_path / "old" / "final"
    folder.mkdir(parents=True)
    save_file({"encoder.x": torch.zeros(1)}, folder / STUDENT)
    (folder / META).write_text(json.dumps({"passed_through_from": "checkpoints/stage1/final"}))
    with pytest.raises(ValueError, match="does not describe its encoder.*rerun the stage"):
        read_encoder(folder, FRAMES, MEL)
    with pytest.raises(FileNotFoundError, match="expected a checkpoint folder with meta.json and student"):
        read_encoder(tmp_path / "nowhere", FRAMES, MEL)


def test_a_passed_through_stage_still_describes_its_encoder(tmp_path):
    """Stage 2 of a raw-patch objective copies stage 1's final/: its meta keeps stage 1's description."""
    from sslam.pretrain.checkpoint import pass_through_final

    trained, _ = pretrain_run(tmp_path, params(), name="stage1")
    (tmp_path / "checkpoints" / "stage2" / "step-0000004").mkdir(parents=True)
    pass_through_final(tmp_path / "checkpoints" / "stage1" / "final", tmp_path / "checkpoints" / "stage2", {"note": 1})
    folder = tmp_path / "checkpoints" / "stage2" / "final"
    assert json.loads((folder / META).read_text())["note"] == 1
    assert_same_encoder(read_encoder(folder, FRAMES, MEL), trained.encoder)
    assert sorted(p.name for p in folder.parent.iterdir()) == ["final"]


def test_the_embedding_api_reads_a_runs_input_from_its_meta(tmp_path):
    """A run's meta.json records its input: no params file or statistics are needed to embed with it."""
    from sslam.embed import load_model

    trained, _ = pretrain_run(tmp_path, params())
    model = load_model(str(tmp_path / "checkpoints" / "stage2" / "final"), "/nonexistent.yaml", "/nonexistent")
    assert (model.mean, model.std, model.window) == (-6.0, 3.0, section("features").target_frames)
    got, want = dict(model.encoder.named_parameters()), dict(trained.encoder.named_parameters())
    assert list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want)


def test_every_kind_of_encoder_name_resolves_and_an_unknown_one_lists_the_choices(tmp_path):
    cfg = merged(params(), {"imports": {"eat": {"path": "released/EAT"}}})
    runs = sorted(cfg.pretrain.stage2_runs)
    ck = tmp_path / "ck"
    got = {n: resolve(n, cfg, ck) for n in ["stage1", "stage2", "random7", "fbank_stats", runs[0], "eat"]}
    assert [(s.kind, s.folder, s.seed) for s in got.values()] == [
        ("stage", ck / "stage1" / "final", None),
        ("stage", ck / "stage2" / "final", None),
        ("random", None, 7),
        ("fbank_stats", None, None),
        ("run", ck / runs[0] / "final", None),
        ("import", ck / "eat" / "final", None),
    ]
    for name in ("stage3", "random", "fbank", "nope"):
        with pytest.raises(UnknownEncoder) as err:
            resolve(name, cfg, ck)
        message = str(err.value)
        assert f"encoder {name!r}" in message and "stage1, stage2, random<N>, fbank_stats" in message
        assert f"pretrain.stage2_runs ({runs})" in message and "imports (['eat'])" in message


def test_the_evaluation_refuses_an_unknown_encoder_before_reading_anything(tmp_path):
    from sslam.downstream.encoder import load_encoder, store_for_encoder

    with pytest.raises(UnknownEncoder, match="'mystery'"):
        load_encoder(params(), "mystery", FRAMES, MEL, tmp_path)
    with pytest.raises(UnknownEncoder, match="'mystery'"):
        store_for_encoder(params(), "mystery", "mono", object(), "pretrain", tmp_path)


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, at module level or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
    return found


def test_the_format_module_sits_above_the_config_and_below_its_users():
    """sslam.checkpoints reads the name grammar's built-in names from sslam.config.base and never imports
    the config modules that validate names (no circle at any level); no config module imports it, so a
    stage that only reads params.yaml does not depend on the checkpoint code (DVC's code deps)."""
    src = REPO / "src" / "sslam"
    config = {m for m in imports_of(src / "checkpoints.py") if m.startswith("sslam.config")}
    assert config <= {"sslam.config.base", "sslam.config.model", "sslam.config.features"}
    for module in sorted((src / "config").glob("*.py")):
        assert not {m for m in imports_of(module) if m.startswith(("sslam.checkpoints", "sslam.interop"))}, module
