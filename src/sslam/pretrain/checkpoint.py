"""Pretraining checkpoints: written atomically, resumed only by the same params and code.

A checkpoint is a folder ``step-NNNNNNN/`` (student and teacher weights as safetensors, optimizer, RNG
and running-centring state as a torch pickle, ``meta.json`` last): the training loop's own, for resuming.
``final/``, the weights later stages load, is the checkpoint folder format of :mod:`sslam.checkpoints`.
A fingerprint of what DVC tracks for the stage (its code, params and data) guards every resume.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file

from sslam.checkpoints import CENTRING, META, STUDENT, TEACHER, pass_through, save_weights, write_final
from sslam.config.pretrain import PretrainParams
from sslam.io import write_json_atomic
from sslam.pretrain.targets import PositionCentring


def fingerprint(cfg: PretrainParams, stage: str, inputs: dict[str, str], world_size: int) -> dict:
    """What decides a run, so a checkpoint made by another is never resumed: ``inputs``, the stage's code,
    params and data as DVC tracks them (:func:`sslam.provenance.stage_digest`), and the world size (the
    global batch and each rank's share of the data). Its model, objective and stage are also what
    :func:`sslam.checkpoints.read_encoder` builds the encoder of ``final/`` from."""
    return {
        "stage": stage,
        "model": cfg.model.model_dump(),
        "objective": cfg.pretrain.objective,
        "inputs": dict(inputs),
        "world_size": world_size,
    }


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / META).is_file())
    return done[-1] if done else None


def save_checkpoint(
    ckpt_dir: Path,
    step: int,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    meta: dict,
    keep: int,
    centring: PositionCentring | None = None,
) -> Path:
    """Written to a temporary folder renamed into place, meta.json last, so a half-written checkpoint is
    never taken for one; only the newest ``keep`` are kept."""
    final = ckpt_dir / f"step-{step:07d}"
    tmp = ckpt_dir / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(tmp, student, teacher)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "centring": centring.state_dict() if centring is not None else {},
        },
        tmp / "train_state.pt",
    )
    write_json_atomic(tmp / META, meta | {"step": step})
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)
    older = sorted(p for p in ckpt_dir.glob("step-*") if p != final)
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(
    folder: Path,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    centring: PositionCentring,
) -> int:
    """Restore a ``step-*`` checkpoint in place; returns its step."""
    student.load_state_dict(load_file(folder / STUDENT))
    teacher.load_state_dict(load_file(folder / TEACHER))
    state = torch.load(folder / "train_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    centring.load_state_dict(state.get("centring", {}))
    return json.loads((folder / META).read_text())["step"]


def export_final(
    ckpt_dir: Path,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    meta: dict,
    centring: PositionCentring | None = None,
    *,
    input_spec: dict,
) -> Path:
    """``final/`` (:func:`sslam.checkpoints.write_final`): the student encoder + decoder, the EMA teacher
    and, with ``center_targets: running``, the running target means (for the diagnostics); ``meta``
    (the fingerprint, the step) gains ``input_spec``, the input the encoder was trained on."""
    extra = {CENTRING: centring.state_dict()} if centring is not None and centring.means else {}
    return write_final(ckpt_dir, student, teacher, meta | {"input": input_spec}, extra)


def pass_through_final(init_from: Path, ckpt_dir: Path, meta: dict) -> Path:
    """``ckpt_dir/final`` = a copy of ``init_from`` (another stage's ``final/``), its meta with ``meta``
    added: how stage 2 hands the stage-1 checkpoint on when the objective has no stage 2, so the DVC graph
    stays one graph. The stage's step checkpoints go: a bootstrap run's would otherwise be resumed later."""
    if not (init_from / STUDENT).is_file():
        raise FileNotFoundError(f"{init_from}/{STUDENT} is missing: nothing to pass through")
    for old in ckpt_dir.glob("step-*"):
        shutil.rmtree(old)
    return pass_through(init_from, ckpt_dir, meta)
