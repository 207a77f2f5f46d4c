"""The worked example of adding a pretraining objective: one new file in ``src/sslam/pretrain/objectives/``
and nothing else. A copy of ``src/`` gets a made-up objective (predict each masked patch's mean log-mel with
a linear head; no options section); the pretraining stage's own command trains it for two steps on a tiny
corpus, and stage 2 passes its checkpoint through. The repository's own code refuses the name, listing the
objectives it has. The module is the one docs/method.md shows ("Adding an objective")."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys

import yaml
from conftest import REPO
from pretrain_helpers import tiny_setup
from safetensors.torch import load_file

from sslam.pretrain.objectives import objective_names

TOY_OBJECTIVE = '''"""A made-up objective: predict the mean of each masked patch's raw log-mel with a linear head."""

from __future__ import annotations

import torch
from torch import nn

from sslam.config.model import ModelConfig
from sslam.models.contract import PatchEncoder
from sslam.pretrain.masking import visible_indices
from sslam.pretrain.objectives import LossSetup, Objective, StepLosses
from sslam.pretrain.raw_patch import random_mask, raw_patches, require_mask_tokens


def build_heads(cfg: ModelConfig, encoder: PatchEncoder) -> dict[str, nn.Module]:
    return {"mean_head": nn.Linear(cfg.embed_dim, 1)}


def stage1_step(setup: LossSetup) -> StepLosses:
    student, ratio = setup.student, setup.cfg.mask.ratio

    def losses(x: torch.Tensor, idx: list[int], seed: int) -> dict[str, torch.Tensor]:
        encoder = student.encoder
        require_mask_tokens(encoder, "toy")
        masked = random_mask(x.shape[0], encoder.num_patches, ratio, torch.Generator().manual_seed(seed))
        masked = masked.to(x.device)
        h, _ = encoder(x, keep=visible_indices(masked))
        pred = student.mean_head(h[:, 1:]).squeeze(-1)
        target = raw_patches(x.float(), encoder.patch_size).mean(-1)
        mse = (pred[masked].float() - target[masked]).pow(2).mean()
        return {"loss": mse, "mse": mse}

    return losses


OBJECTIVE = Objective(heads=build_heads, stage1=stage1_step, predicts_masked=True)
'''


def test_the_registry_stays_light_and_its_objectives_are_tracked():
    """The params check asks the registry for names: it imports no sslam module (no circle through
    ``sslam.config``); what it finds at run time is code its users depend on (DVC reruns them)."""
    from sslam.provenance import SRC, import_closure, imported_modules

    registry = SRC / "sslam" / "pretrain" / "objectives" / "__init__.py"
    assert imported_modules(registry, "sslam.pretrain.objectives", discovered=False) == set()
    assert {registry.with_name(f"{n}.py") for n in objective_names()} <= import_closure(registry)


def test_the_manual_shows_the_whole_example():
    assert TOY_OBJECTIVE in (REPO / "docs" / "method.md").read_text()  # docs/method.md, "Adding an objective"


def test_an_objective_added_as_one_file_trains_through_the_pretrain_stage(tmp_path):
    assert "toy" not in objective_names()  # the repository's own registry: the new file exists only in the copy
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (src / "sslam" / "pretrain" / "objectives" / "toy.py").write_text(TOY_OBJECTIVE)

    params, feats = tiny_setup(tmp_path / "tiny", steps=2, checkpoint_every=100)
    raw = yaml.safe_load(params.read_text())
    raw["pretrain"]["objective"] = "toy"
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    project = tmp_path / "project"
    project.mkdir()
    ckpt, metrics = project / "checkpoints", project / "metrics"

    def stage(pythonpath: str | None, *args: str) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env |= {"PYTHONPATH": pythonpath} if pythonpath else {}
        cmd = [
            sys.executable,
            str(REPO / "stages" / "pretrain.py"),
            *("--params", str(params), "--features", str(feats), "--metrics-dir", str(metrics), "--cpu"),
            *args,
        ]
        return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=300)

    refused = stage(None, "--stage", "stage1")  # the repository's code has no such objective
    assert refused.returncode == 2
    assert "pretrain.objective 'toy' is not a registered objective" in refused.stderr
    assert "['bootstrap', 'msm', 'ssast']" in refused.stderr

    proc = stage(str(src), "--stage", "stage1", "--checkpoints", str(ckpt / "stage1"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    s1 = json.loads((metrics / "pretrain_stage1.json").read_text())
    assert (s1["objective"], s1["steps"], set(s1["final"])) == ("toy", 2, {"loss", "mse"})
    assert all(math.isfinite(v) for v in s1["final"].values()) and "target_diagnostics" not in s1
    weights = load_file(ckpt / "stage1" / "final" / "student.safetensors")
    assert weights["mean_head.weight"].shape == (1, 32) and "encoder.mask_token" in weights  # predicts_masked
    assert not any(k.startswith("decoder") for k in weights)
    meta = json.loads((ckpt / "stage1" / "final" / "meta.json").read_text())
    assert meta["fingerprint"]["objective"] == "toy"

    # no stage 2 of its own: the stage-1 checkpoint goes on
    init = ["--init", str(ckpt / "stage1" / "final")]
    proc = stage(str(src), "--stage", "stage2", "--checkpoints", str(ckpt / "stage2"), *init)
    assert proc.returncode == 0, proc.stderr[-3000:]
    s2 = json.loads((metrics / "pretrain_stage2.json").read_text())
    assert s2 == {"steps": 0, "objective": "toy", "checkpoint": "stage1", "variant": "none"}
    passed = load_file(ckpt / "stage2" / "final" / "student.safetensors")
    assert passed.keys() == weights.keys()
