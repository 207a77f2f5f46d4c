"""The Transformer pipeline computes what it computed before the objectives, the student and the loop
were reorganised: losses and gradient norms of every objective on a tiny model, and a few real
training steps of both stages, against values recorded with the code before the change
(tests/data/*_before_contract.json). Tolerances allow for another CPU's last digits, not for a change
in the math: any change of masks, targets, mixing or the schedule moves these values by far more."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import REPO, section
from pretrain_helpers import tiny_setup

from sslam.pretrain.objectives.bootstrap import stage1_losses, stage2_losses
from sslam.pretrain.student import Student, make_teacher
from sslam.pretrain.targets import PositionCentring

DATA = REPO / "tests" / "data"
MASK = section("mask", ratio=0.8, block_size=2, prob_adjust=0.07, clone_batch=2)


def build() -> tuple[Student, torch.nn.Module]:
    torch.manual_seed(0)
    student = Student(section("model", embed_dim=32, depth=2, num_heads=2, decoder_layers=1, decoder_groups=4), 64, 32)
    return student, make_teacher(student)


def grad_norm(student: torch.nn.Module) -> float:
    return float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in student.parameters() if p.grad is not None)))


def clips() -> torch.Tensor:
    return torch.randn(4, 64, 32, generator=torch.Generator().manual_seed(7))


def recorded(name: str) -> dict:
    return json.loads((DATA / name).read_text())


def assert_close(got: dict, want: dict, rel: float = 1e-4) -> None:
    assert set(got) == set(want)
    for k in want:
        assert got[k] == pytest.approx(want[k], rel=rel), k


@pytest.mark.parametrize("center", ["none", "batch"])
def test_stage1_objective_unchanged(center):
    student, teacher = build()
    stage = section(
        "pretrain.stage1", top_k_layers=2, cls_loss_weight=1.0, cls_loss_reduction="sum", center_targets=center
    )
    out = stage1_losses(student, teacher, clips(), MASK, stage, seed=11, centring=PositionCentring(center))
    out["loss"].backward()
    got = {k: float(v.detach()) for k, v in out.items()} | {"grad_norm": grad_norm(student)}
    assert_close(got, recorded("objective_losses_before_contract.json")[f"stage1/{center}"])


@pytest.mark.parametrize("strategy", ["max", "average"])
@pytest.mark.parametrize("variant", ["mb_ua", "mb_pma", "mb_ua_pma", "sslam"])
def test_stage2_objectives_unchanged(variant, strategy):
    student, teacher = build()
    stage = section(
        "pretrain.stage2",
        variant=variant,
        top_k_layers=2,
        global_top_k_layers=1,
        cls_loss_weight=1.0,
        cls_loss_reduction="sum",
        center_targets="batch",
        clone_batch=None,
    )
    mix = section("mix", strategy=strategy, partial=True, partial_mode="reference", mixed_fraction=0.5)
    srl = section("srl", weight=1.0, aggregation="mean", global_loss=variant == "sslam")
    out = stage2_losses(student, teacher, clips(), MASK, stage, mix, srl, seed=13, centring=PositionCentring("batch"))
    out["loss"].backward()
    got = {k: float(v.detach()) for k, v in out.items()} | {"grad_norm": grad_norm(student)}
    assert_close(got, recorded("objective_losses_before_contract.json")[f"stage2/{variant}/{strategy}"])


def test_training_steps_of_both_stages_unchanged(tmp_path):
    """Four stage-1 and three stage-2 steps through train_stage: data order, masks, schedule, EMA."""
    from sslam.config.params import load_config
    from sslam.pretrain.loop import train_stage

    params, feats = tiny_setup(tmp_path, steps=4, checkpoint_every=100)
    cfg = load_config(params)
    want = recorded("loop_losses_before_contract.json")
    for stage in ("stage1", "stage2"):
        logs: dict[int, float] = {}
        train_stage(
            cfg,
            stage,
            feats,
            tmp_path / stage,
            None,
            cpu=True,
            init_from=tmp_path / "stage1" / "final" if stage == "stage2" else None,
            step_hook=lambda s, losses, logs=logs: logs.__setitem__(s, losses["loss"]),
        )
        assert [logs[k] for k in sorted(logs)] == pytest.approx(want[stage], rel=1e-4), stage
