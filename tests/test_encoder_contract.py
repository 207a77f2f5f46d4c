"""Every registered encoder, through the one contract (models/contract.py): the same tests of shapes,
masking, the stage-1 objective, every stage-2 variant, linear evaluation and fine-tuning, on tiny sizes. The
objectives have no encoder-specific branch, so what passes here for one encoder passes for the next.

The cases come from the registry (``sslam.models.registry.ENCODERS``): each encoder with ``masked_tokens:
auto``, and the built-ins in their other mode too. ``SSLAM_TEST_ENCODERS=name[,name]`` runs only those
encoders (tests/test_new_encoder.py runs a new one this way)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
from conftest import REPO, section
from pretrain_helpers import tiny_setup

from sslam.config.base import merged
from sslam.config.model import ModelConfig
from sslam.models.registry import ENCODERS, build_encoder, resolved_masked_tokens
from sslam.pretrain.masking import inverse_block_mask, visible_indices
from sslam.pretrain.objectives.bootstrap import stage1_losses, stage2_losses
from sslam.pretrain.student import Student, make_teacher
from sslam.provenance import import_closure

FRAMES, MEL = 64, 32  # grid 4 x 2 with 16 x 16 patches
SELECTED = [n for n in os.environ.get("SSLAM_TEST_ENCODERS", "").split(",") if n] or list(ENCODERS)
OTHER_MODE = [("transformer", "mask_token"), ("mamba", "drop")]  # the built-ins in their non-default mode
CASES = sorted({(name, "auto") for name in SELECTED} | {c for c in OTHER_MODE if c[0] in SELECTED})
IDS = [f"{e}-{m}" for e, m in CASES]


def tiny_model(encoder: str, masked: str = "auto", **extra) -> ModelConfig:
    """params.yaml's model section at 2 blocks of 32 channels (2 heads, 1 decoder layer)."""
    return section(
        "model",
        encoder=encoder,
        masked_tokens=masked,
        embed_dim=32,
        depth=2,
        num_heads=2,
        decoder_layers=1,
        decoder_groups=4,
        xlstm={"num_heads": 2, "expand": 2},
        **extra,
    )


def test_the_cases_name_registered_encoders():
    assert set(SELECTED) <= set(ENCODERS), f"SSLAM_TEST_ENCODERS names {SELECTED}; registered: {list(ENCODERS)}"


def test_every_encoder_is_tracked_by_dvc():
    """An encoder module is named in sslam/models/__init__.py, so the code DVC tracks for the stages that
    build encoders (the import closure, sslam.provenance) holds it; the registry would find it without."""
    closure = import_closure(REPO / "src" / "sslam" / "models" / "registry.py")
    untracked = [
        e.name for e in ENCODERS.values() if Path(sys.modules[e.cls.__module__].__file__).resolve() not in closure
    ]
    assert not untracked, f"encoders {untracked}: add their modules to the import in src/sslam/models/__init__.py"


def visible(n_rows: int, seed: int = 0) -> torch.Tensor:
    mask = inverse_block_mask(n_rows, (4, 2), 0.5, 1, 0.0, torch.Generator().manual_seed(seed))
    return visible_indices(mask)


@pytest.mark.parametrize("encoder,masked", CASES, ids=IDS)
def test_forward_shapes_and_positions(encoder, masked):
    torch.manual_seed(0)
    cfg = tiny_model(encoder, masked)
    enc = build_encoder(cfg, FRAMES, MEL).eval()
    assert enc.grid == (4, 2) and enc.num_patches == 8 and enc.patch_size == (16, 16) and enc.dim == 32
    assert enc.masked_tokens == resolved_masked_tokens(cfg)
    x = torch.randn(3, FRAMES, MEL)
    h, layers = enc(x, return_layers=True)
    assert h.shape == (3, 1 + 8, 32) and len(layers) == enc.num_layers == 2
    assert all(t.shape == (3, 8, 32) for t in layers)
    keep = visible(6)  # 2 clones of 3 clips, 4 of 8 patches visible
    h, layers = enc(x, keep=keep, clones=2, return_layers=True)
    m = 4 if enc.masked_tokens == "drop" else 8
    assert h.shape == (6, 1 + m, 32) and all(t.shape == (6, 4, 32) for t in layers)
    pos = enc.output_positions(keep)
    assert (pos is None) == (enc.masked_tokens == "mask_token")
    # every patch visible: the same as no mask at all
    all_keep = torch.arange(8).expand(3, 8)
    h_all, l_all = enc(x, keep=all_keep, return_layers=True)
    h_none, l_none = enc(x, return_layers=True)
    assert torch.allclose(h_all, h_none, atol=1e-5) and all(
        torch.allclose(a, b, atol=1e-5) for a, b in zip(l_all, l_none)
    )


@pytest.mark.parametrize("encoder,masked", CASES, ids=IDS)
def test_masked_patches_carry_nothing_into_the_student(encoder, masked):
    """Whatever enters for a masked patch (dropped, or replaced by the mask embedding), its content is gone:
    changing the masked input leaves every output unchanged."""
    torch.manual_seed(0)
    enc = build_encoder(tiny_model(encoder, masked), FRAMES, MEL).eval()
    x = torch.randn(2, FRAMES, MEL)
    keep = visible(2, seed=3)
    hidden = torch.ones(2, 8, dtype=torch.bool).scatter(1, keep, False)  # (B, N) masked patches
    frame_mask = hidden.view(2, 4, 2).repeat_interleave(16, 1).repeat_interleave(16, 2)
    y = torch.where(frame_mask, torch.randn_like(x) * 5, x)
    a, la = enc(x, keep=keep, return_layers=True)
    b, lb = enc(y, keep=keep, return_layers=True)
    assert torch.allclose(a, b, atol=1e-5) and all(torch.allclose(p, q, atol=1e-5) for p, q in zip(la, lb))
    assert not torch.allclose(enc(x)[0], enc(y)[0], atol=1e-3)  # unmasked, the change is seen


def layer_groups_cover_every_parameter_once(enc) -> bool:
    ids = [id(p) for group in enc.layer_groups() for p in group]
    return len(ids) == len(set(ids)) == len(list(enc.parameters()))


@pytest.mark.parametrize("encoder,masked", CASES, ids=IDS)
def test_layer_groups_drop_path_and_teacher(encoder, masked):
    torch.manual_seed(0)
    student = Student(tiny_model(encoder, masked), FRAMES, MEL)
    enc = student.encoder
    assert layer_groups_cover_every_parameter_once(enc) and len(enc.layer_groups()) == 1 + enc.num_layers
    enc.set_drop_path(0.2)
    assert [b.drop_path for b in enc.blocks] == pytest.approx([0.0, 0.2])
    x = torch.randn(2, FRAMES, MEL)
    enc.eval()
    assert torch.equal(enc(x)[0], enc(x)[0])  # no stochastic depth in eval
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    assert torch.allclose(teacher(x)[0], enc(x)[0], atol=1e-6)  # an exact copy to start with


MASK = section("mask", ratio=0.5, block_size=1, prob_adjust=0.0, clone_batch=2)


@pytest.mark.parametrize("encoder,masked", CASES, ids=IDS)
def test_stage1_objective_trains_every_student_parameter(encoder, masked):
    torch.manual_seed(0)
    student = Student(tiny_model(encoder, masked), FRAMES, MEL)
    teacher = make_teacher(student)
    stage = section("pretrain.stage1", top_k_layers=2, center_targets="batch")
    out = stage1_losses(student, teacher, torch.randn(4, FRAMES, MEL), MASK, stage, seed=1)
    assert set(out) == {"loss", "local", "global"} and all(torch.isfinite(v) for v in out.values())
    assert torch.allclose(out["loss"], out["local"] + out["global"])
    out["loss"].backward()
    unused = [n for n, p in student.named_parameters() if p.requires_grad and (p.grad is None or not p.grad.any())]
    # a noise-filled decoder never uses its mask token; a `drop` encoder never uses one either
    assert not [n for n in unused if "mask_token" not in n], unused


@pytest.mark.parametrize("variant", ["mb_ua", "mb_pma", "mb_ua_pma", "sslam"])
@pytest.mark.parametrize("encoder,masked", CASES, ids=IDS)
def test_stage2_variants_run_through_the_contract(encoder, masked, variant):
    torch.manual_seed(0)
    student = Student(tiny_model(encoder, masked), FRAMES, MEL)
    teacher = make_teacher(student)
    stage = section("pretrain.stage2", variant=variant, top_k_layers=2, global_top_k_layers=1, clone_batch=None)
    mix = section("mix", strategy="max", partial=True, partial_mode="reference", mixed_fraction=0.5)
    srl = section("srl", weight=1.0)
    out = stage2_losses(student, teacher, torch.randn(4, FRAMES, MEL), MASK, stage, mix, srl, seed=2)
    assert ("srl" in out) == (variant == "sslam") and all(torch.isfinite(v) for v in out.values())
    # the total is exactly the variant's terms (both globals on, SRL weight 1), whatever the encoder
    expected = out["local"] + sum(v for k, v in out.items() if k.startswith("global_")) + out.get("srl", 0.0)
    assert torch.allclose(out["loss"], expected)
    if variant in ("mb_ua_pma", "sslam"):  # local = mean over the masked tokens of both halves
        assert torch.allclose(out["local"], (out["local_unmixed"] + out["local_mixed"]) / 2, atol=1e-5)
    out["loss"].backward()
    assert any(p.grad is not None and p.grad.any() for p in student.encoder.parameters())


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sslam.config.params import load_config

    params, feats = tiny_setup(tmp_path_factory.mktemp("contract"))
    return load_config(params), feats


@pytest.mark.parametrize("encoder,masked", CASES, ids=IDS)
def test_linear_evaluation_and_finetuning_on_every_encoder(tiny, encoder, masked):
    from sslam.downstream.encoder import load_encoder
    from sslam.downstream.finetune import finetune
    from sslam.downstream.linear import linear_eval
    from sslam.downstream.tasks import load_task

    cfg, feats = tiny
    cfg = merged(cfg, {"model": merged(cfg.model, {"encoder": encoder, "masked_tokens": masked})})
    task, store = load_task(cfg.data.corpus_dir, "keywords", cfg.tasks["keywords"], feats)
    frames, mel = store.raw(0).shape
    frozen = load_encoder(cfg, "random0", frames, mel)
    before = {k: v.clone() for k, v in frozen.state_dict().items()}
    recipe = merged(cfg.linear_recipe("keywords"), {"epochs": 3, "select_every": 1})
    lin = linear_eval(frozen, task, store, recipe, seed=0).metrics
    assert 0.0 <= lin["accuracy"] <= 1.0
    assert all(torch.equal(before[k], v) for k, v in frozen.state_dict().items())  # linear: the encoder stays frozen
    trained = []

    def fresh():
        trained.append(load_encoder(cfg, "random0", frames, mel))
        return trained[-1]

    recipe = merged(cfg.finetune_recipe("keywords"), {"epochs": 1, "batch_size": 2})
    res = finetune(fresh, task, store, recipe, seed=0).metrics
    assert 0.0 <= res["accuracy"] <= 1.0
    # fine-tuning trains the encoder itself, through the contract's layer groups, every block included
    # (one block may skip a whole branch under drop path in a one-step run, so: every block, not every tensor)
    after = trained[-1].state_dict()
    for i in range(trained[-1].num_layers):
        block = [k for k in after if k.startswith(f"blocks.{i}.")]
        assert any(not torch.equal(before[k], after[k]) for k in block), f"block {i} did not train"
