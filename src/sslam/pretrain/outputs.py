"""What a pretraining stage leaves beside its checkpoints: the metrics summary of a trained stage, and for
a stage 2 that does not train (an objective without one: the raw-patch objectives), the stage-1 checkpoint
handed on.

The summary (``metrics/pretrain_<stage>.json``, ``metrics/stage2_runs/<run>.json``) holds only what the
params, code and data decide; throughput is the machine's, so it is printed and kept in
``metrics/timings/`` (not a DVC output), never in the metrics.
"""

from __future__ import annotations

import math
import shutil
import statistics
from pathlib import Path
from typing import TYPE_CHECKING

from sslam.config.pretrain import PretrainParams
from sslam.io import write_json_atomic
from sslam.pretrain.checkpoint import pass_through_final
from sslam.pretrain.curves import curve_summary, curves_folder, read_curve, read_curves
from sslam.pretrain.objectives import get_objective

if TYPE_CHECKING:
    from sslam.pretrain.loop import RunResult

SCHEDULES = ("lr", "ema_decay")  # logged beside the losses, but not losses: no final value in the summary


def stage_summary(
    cfg: PretrainParams, stage: str, name: str, result: RunResult, live_dir: Path, features: str | Path, final: Path
) -> dict:
    """The metrics of a finished stage ``stage`` (``stage1`` / ``stage2``) trained as ``name`` (the stage,
    or a stage-2 run), from its logged curves and its ``final`` checkpoint."""
    curves = read_curves(curves_folder(live_dir, stage))
    scfg = getattr(cfg.pretrain, stage)
    summary = {
        "steps": result.steps,
        "seed": cfg.pretrain.seed,
        "final": {k: round(c.values[-1], 5) for k, c in curves.items() if k not in SCHEDULES},
        "loss_curve": curve_summary(curves["loss"].values),
        "objective": cfg.pretrain.objective,
        "checkpoint": name,
        "world_size": result.world_size,
        "replicas_identical": result.replicas_identical,
        "global_batch": result.world_size * scfg.batch_size * scfg.grad_accum,
        "clip_lists": result.clip_lists,  # the train set actually read (sslam.data.clip_lists)
    }
    diagnostics = get_objective(cfg.pretrain.objective).target_diagnostics  # bootstrap: the teacher's targets
    if diagnostics is not None:
        summary["target_diagnostics"] = diagnostics(cfg, stage, features, final)
    if stage == "stage2":
        summary["variant"] = cfg.pretrain.stage2.variant
    return summary


def median_throughput(timings: Path) -> float:
    """Median clips/s over the logged steps of a timings file (NaN without one); also right when a call
    only resumed a finished run."""
    return statistics.median(read_curve(timings, "samples_per_s").values) if timings.is_file() else math.nan


def pass_through(cfg: PretrainParams, init: Path, ckpt: Path, metrics_file: Path, live_dir: Path) -> None:
    """Stage 2 of an objective without one (``ssast``, ``msm``: SSLAM's stage 2 builds on the bootstrap
    objective only): the stage-1 checkpoint ``init`` goes on unchanged as ``ckpt/final``, the curves
    folder (a declared output) is left empty, and the metrics say so. FileNotFoundError: no ``init``."""
    pass_through_final(init, ckpt, {"passed_through_from": str(init), "objective": cfg.pretrain.objective})
    curves = live_dir / "plots" / "metrics"  # no curve of an earlier run may stay
    shutil.rmtree(curves, ignore_errors=True)
    curves.mkdir(parents=True)
    write_json_atomic(
        metrics_file,
        {"steps": 0, "objective": cfg.pretrain.objective, "checkpoint": "stage1", "variant": "none"},
    )
