"""Pretraining checkpoints: written atomically, resumed only by the same params and code.

A checkpoint is a folder ``step-NNNNNNN/`` (student and teacher weights as safetensors, optimizer, RNG
and running-centring state as a torch pickle, ``meta.json`` last); ``final/`` holds the weights later
stages load. A fingerprint of what DVC tracks for the stage (its code, params and data) guards every
resume.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from sslam.config import Config
from sslam.io import write_json_atomic
from sslam.pretrain.targets import PositionCentring


def fingerprint(cfg: Config, stage: str, inputs: dict[str, str], world_size: int) -> dict:
    """What decides a run, so a checkpoint made by another is never resumed: ``inputs``, the stage's code,
    params and data as DVC tracks them (:func:`sslam.provenance.stage_digest`), and the world size (the
    global batch and each rank's share of the data). The model description is what loaders read."""
    return {
        "stage": stage,
        "model": cfg.model.model_dump(),
        "objective": cfg.pretrain.objective,
        "inputs": dict(inputs),
        "world_size": world_size,
    }


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    done = sorted(p for p in ckpt_dir.glob("step-*") if (p / "meta.json").is_file())
    return done[-1] if done else None


def _save_weights(folder: Path, student: torch.nn.Module, teacher: torch.nn.Module) -> None:
    for name, module in (("student", student), ("teacher", teacher)):
        save_file(
            {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}, folder / f"{name}.safetensors"
        )


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
    _save_weights(tmp, student, teacher)
    torch.save(
        {
            "optimizer": optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "centring": centring.state_dict() if centring is not None else {},
        },
        tmp / "train_state.pt",
    )
    write_json_atomic(tmp / "meta.json", meta | {"step": step})
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
    student.load_state_dict(load_file(folder / "student.safetensors"))
    teacher.load_state_dict(load_file(folder / "teacher.safetensors"))
    state = torch.load(folder / "train_state.pt", weights_only=False)
    optimizer.load_state_dict(state["optimizer"])
    centring.load_state_dict(state.get("centring", {}))
    return json.loads((folder / "meta.json").read_text())["step"]


def export_final(
    ckpt_dir: Path,
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    meta: dict,
    centring: PositionCentring | None = None,
) -> None:
    """``final/``: the weights later stages load (student encoder + decoder, and the EMA teacher; with
    ``center_targets: running`` also the running target means, for the diagnostics)."""
    tmp = ckpt_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _save_weights(tmp, student, teacher)
    if centring is not None and centring.means:
        save_file(centring.state_dict(), tmp / "centring.safetensors")
    write_json_atomic(tmp / "meta.json", meta)
    shutil.rmtree(ckpt_dir / "final", ignore_errors=True)
    os.replace(tmp, ckpt_dir / "final")


def pass_through_final(init_from: Path, ckpt_dir: Path, meta: dict) -> None:
    """``ckpt_dir/final`` = a copy of ``init_from`` (another stage's ``final/``) with ``meta``: how stage 2
    hands the stage-1 checkpoint on when the objective has no stage 2, so the DVC graph stays one graph."""
    if not (init_from / "student.safetensors").is_file():
        raise FileNotFoundError(f"{init_from}/student.safetensors is missing: nothing to pass through")
    tmp = ckpt_dir / ".tmp-final"
    shutil.rmtree(tmp, ignore_errors=True)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(init_from, tmp)
    write_json_atomic(tmp / "meta.json", meta)
    for old in ckpt_dir.glob("step-*"):  # a bootstrap run's checkpoints would otherwise be resumed later
        shutil.rmtree(old)
    shutil.rmtree(ckpt_dir / "final", ignore_errors=True)
    os.replace(tmp, ckpt_dir / "final")
