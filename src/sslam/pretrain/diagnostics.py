"""Is the student learning content, or only where a patch sits?

Masked latent bootstrapping regresses teacher features. When those features are mostly a function of
the patch position (fixed sin-cos positions, a background that looks the same in every clip, a teacher
that has barely moved from its initialisation), a predictor that knows only the position does well and
the student learns little about the sound. These numbers make that visible after a run; all are
losses per masked token on the same clips and masks:

- on the reference (uncentred) targets, whatever ``center_targets`` the run trained with:
  ``position_only_loss`` (predict, at each position, the mean target there over the other half of the
  batch), ``zero_loss`` (predict zeros: the targets' scale) and ``position_share`` = 1 - position_only
  / zero, the share of the reference target that position alone explains;
- on the targets the student was trained on (centred or not): ``student_loss``, beside
  ``trained_position_only_loss`` and ``trained_zero_loss`` computed the same way. A student that
  learned content scores below the position-only predictor of its own targets.

:func:`checkpoint_diagnostics` computes them for a finished stage from its ``final/`` weights.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from sslam.config.pretrain import MaskConfig, PretrainParams
from sslam.features.reader import FeatureStore
from sslam.pretrain.losses import token_loss
from sslam.pretrain.masking import inverse_block_mask, visible_indices
from sslam.pretrain.student import Student, make_teacher
from sslam.pretrain.targets import PositionCentring, average_top_layers, final_target


def _position_only_and_zero(y: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """Losses on the second half of the batch of predicting the first half's per-position mean, and zeros."""
    half = y.shape[0] // 2
    a, b = y[:half], y[half:]
    by_position = a.mean(0, keepdim=True).expand_as(b)
    m = mask[half:]
    return float(token_loss(by_position, b)[m].mean()), float(token_loss(torch.zeros_like(b), b)[m].mean())


@torch.no_grad()
def target_diagnostics(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    x: torch.Tensor,
    top_k_layers: int,
    mask: MaskConfig,
    seed: int = 0,
    centring: PositionCentring | None = None,
) -> dict[str, float]:
    """``centring``: how the run centred its targets (None: not at all); its running means are used as
    they are, never updated here."""
    if x.shape[0] < 4:
        raise ValueError(f"target diagnostics need at least 4 clips, got {x.shape[0]}")
    student.eval()
    teacher.eval()
    _, layers = teacher(x.float(), return_layers=True)
    pre = average_top_layers(layers, top_k_layers)
    reference = final_target(pre)
    trained = final_target(centring(pre, "local", update=False)) if centring is not None else reference
    g = torch.Generator().manual_seed(seed)
    masked = inverse_block_mask(x.shape[0], teacher.grid, mask.ratio, mask.block_size, mask.prob_adjust, g)
    masked = masked.to(x.device)
    _, pred = student(x, visible_indices(masked), 1, torch.Generator(device=x.device).manual_seed(seed + 1))
    half = x.shape[0] // 2
    pos, zero = _position_only_and_zero(reference, masked)
    t_pos, t_zero = _position_only_and_zero(trained, masked)
    stu = float(token_loss(pred[half:], trained[half:])[masked[half:]].mean())
    return {
        "position_only_loss": round(pos, 4),
        "zero_loss": round(zero, 4),
        "position_share": round(1 - pos / zero, 4),
        "student_loss": round(stu, 4),
        "trained_position_only_loss": round(t_pos, 4),
        "trained_zero_loss": round(t_zero, 4),
    }


def checkpoint_diagnostics(cfg: PretrainParams, stage: str, features: str | Path, final: Path, clips: int = 64) -> dict:
    """:func:`target_diagnostics` of a stage's ``final/`` checkpoint (student, teacher and, where the run
    kept running means, its centring), on the first ``clips`` clips of ``pretrain.train_set``; the global
    RNG is left as it was."""
    store = FeatureStore(features, cfg.pretrain.train_set)
    x = store.batch(np.arange(min(clips, len(store))))
    student = Student(cfg.model, x.shape[1], x.shape[2])
    student.load_state_dict(load_file(final / "student.safetensors"))
    teacher = make_teacher(student)
    teacher.load_state_dict(load_file(final / "teacher.safetensors"))
    scfg = getattr(cfg.pretrain, stage)
    centring = PositionCentring(scfg.center_targets, scfg.center_momentum)
    if (final / "centring.safetensors").is_file():
        centring.load_state_dict(load_file(final / "centring.safetensors"))
    with torch.random.fork_rng():
        return target_diagnostics(
            student, teacher, x, scfg.top_k_layers, cfg.mask, seed=cfg.pretrain.seed, centring=centring
        )
