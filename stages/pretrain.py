"""DVC stages `pretrain_stage1`, `pretrain_stage2` and `pretrain_stage2_run@<name>`.

    python stages/pretrain.py --stage stage1

starts its own workers (sslam.launch): `pretrain.num_processes` per machine on `pretrain.num_machines`
machines, through `accelerate launch` (or `srun` with `pretrain.launcher: slurm`); one process in all
trains in this one. Resumes from the newest checkpoint in `checkpoints/<stage>` (a persisted DVC output)
made from the same code, params and data as DVC tracks them. Writes `checkpoints/<stage>/final/`,
per-step curves with dvclive in `metrics/<stage>_live/`, and `metrics/pretrain_<stage>.json`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import statistics
import sys
from pathlib import Path

from sslam.config import load_config_or_exit

INPUTS_ENV = "SSLAM_STAGE_INPUTS"  # the stage's code/params/data digests, computed once and handed to workers


def curve_values(tsv: Path, column: str | None = None) -> list[float]:
    """The values of a TSV curve: ``column``, or a dvclive file's one value column."""
    with open(tsv) as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if not rows:
        return []
    name = column or [c for c in rows[0] if c not in ("timestamp", "step")][0]
    return [float(r[name]) for r in rows]


def curve_summary(tsv: Path, window: int = 10) -> dict:
    """First and last `window` logged values of a dvclive curve: did the loss fall?"""
    vals = curve_values(tsv)
    w = max(1, min(window, len(vals) // 2))
    return {"first": round(sum(vals[:w]) / w, 5), "last": round(sum(vals[-w:]) / w, 5), "logged_steps": len(vals)}


def final_diagnostics(cfg, stage: str, features: str, final: Path, clips: int = 64) -> dict:
    """How much of the final teacher's targets position alone explains, and the student's loss beside it."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from sslam.features.dataset import FeatureStore
    from sslam.models.student import Student, make_teacher
    from sslam.pretrain.diagnostics import target_diagnostics
    from sslam.pretrain.targets import PositionCentring

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


def pass_through(cfg, init: Path, ckpt: Path, metrics_file: Path, live_dir: Path) -> int:
    """Stage 2 of a raw-patch objective (``ssast``, ``msm``): SSLAM's stage 2 builds on the bootstrap
    objective only, so the stage-1 checkpoint goes on unchanged, and the metrics say so."""
    from accelerate import PartialState

    from sslam.io import write_json_atomic
    from sslam.pretrain.checkpoint import pass_through_final

    if not PartialState().is_main_process:
        return 0
    try:
        pass_through_final(init, ckpt, {"passed_through_from": str(init), "objective": cfg.pretrain.objective})
    except FileNotFoundError as err:
        print(f"pretrain: {err}", file=sys.stderr)
        return 2
    curves = live_dir / "plots" / "metrics"  # the stage's declared output: empty, no curve of an earlier run
    shutil.rmtree(curves, ignore_errors=True)
    curves.mkdir(parents=True)
    write_json_atomic(
        metrics_file,
        {"steps": 0, "objective": cfg.pretrain.objective, "checkpoint": "stage1", "variant": "none"},
    )
    print(f"pretrain stage 2: objective {cfg.pretrain.objective} has no stage 2; {ckpt}/final = {init}")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--stage", choices=["stage1", "stage2"], default="stage1")
    ap.add_argument("--init", default="checkpoints/stage1/final", help="stage 2: the stage-1 weights to start from")
    ap.add_argument("--features", default="data/features")
    ap.add_argument("--checkpoints", default=None, help="default: checkpoints/<stage>")
    ap.add_argument("--metrics-dir", default="metrics")
    ap.add_argument("--cpu", action="store_true", help="force the CPU (DDP over gloo when several processes)")
    ap.add_argument("--stop-after", type=int, default=None, help="stop after this step (testing resume)")
    ap.add_argument("--run", default=None, help="stage 2: a key of pretrain.stage2_runs (its variant and seed)")
    args = ap.parse_args(argv)
    cfg = load_config_or_exit(args.params)
    from sslam.launch import LaunchError, is_worker, launch
    from sslam.provenance import default_hash_cache, stage_digest

    inputs = json.loads(os.environ[INPUTS_ENV]) if INPUTS_ENV in os.environ else None  # from the launcher
    if inputs is None and not is_worker(os.environ):  # once per job, before any worker starts
        dvc_stage = f"pretrain_stage2_run@{args.run}" if args.run else f"pretrain_{args.stage}"
        data = [args.features] + ([args.init] if args.stage == "stage2" else [])
        try:
            inputs = stage_digest(__file__, dvc_stage, args.params, data, default_hash_cache())
        except (FileNotFoundError, KeyError) as err:
            print(f"pretrain: {err}", file=sys.stderr)
            return 2
    p = cfg.pretrain
    try:
        code = launch(
            p.num_processes,
            p.num_machines,
            p.launcher,
            p.rendezvous_port,
            __file__,
            argv if argv is not None else sys.argv[1:],
            env=os.environ | ({INPUTS_ENV: json.dumps(inputs)} if inputs is not None else {}),
        )
    except LaunchError as err:
        print(f"pretrain: {err}", file=sys.stderr)
        return 2
    if code is not None:  # the workers ran the stage
        return code
    from sslam.io import write_json_atomic
    from sslam.pretrain.loop import NonFiniteLoss, train_stage

    name, metrics_file = args.stage, Path(args.metrics_dir) / f"pretrain_{args.stage}.json"
    live_dir = Path(args.metrics_dir) / f"{args.stage}_live"
    if args.run is not None:
        if args.stage != "stage2" or args.run not in cfg.pretrain.stage2_runs:
            print(
                f"pretrain: --run {args.run!r} must name a key of pretrain.stage2_runs "
                f"({sorted(cfg.pretrain.stage2_runs)}) with --stage stage2",
                file=sys.stderr,
            )
            return 2
        cfg = cfg.model_copy(update={"pretrain": cfg.pretrain.stage2_run(args.run)})
        name, metrics_file = args.run, Path(args.metrics_dir) / "stage2_runs" / f"{args.run}.json"
        live_dir = Path(args.metrics_dir) / "stage2_runs" / f"{args.run}_live"
    ckpt = Path(args.checkpoints or f"checkpoints/{name}")
    if args.stage == "stage2" and cfg.pretrain.objective != "bootstrap":
        return pass_through(cfg, Path(args.init), ckpt, metrics_file, live_dir)
    timings = Path(args.metrics_dir) / "timings" / f"{name}.tsv"  # not a DVC output: machine-dependent
    try:
        result = train_stage(
            cfg,
            args.stage,
            args.features,
            ckpt,
            live_dir,
            cpu=args.cpu,
            stop_after=args.stop_after,
            init_from=args.init if args.stage == "stage2" else None,
            timings=timings,
            inputs=inputs,
            read_log=os.environ.get("SSLAM_READ_LOG"),
        )
    except NonFiniteLoss as err:
        print(f"pretrain: {err}", file=sys.stderr)
        return 3
    except (FileNotFoundError, ValueError) as err:
        print(f"pretrain: {err}", file=sys.stderr)
        return 2
    from accelerate import PartialState

    if PartialState().is_main_process and args.stop_after is None:
        curves = live_dir / "plots" / "metrics" / args.stage
        summary = {
            "steps": result.steps,
            "seed": cfg.pretrain.seed,
            "final": {
                t.stem: round(curve_values(t)[-1], 5)
                for t in sorted(curves.glob("*.tsv"))
                if t.stem not in ("lr", "ema_decay")
            },
            "loss_curve": curve_summary(curves / "loss.tsv"),
            "objective": cfg.pretrain.objective,
            "checkpoint": name,
            "world_size": result.world_size,
            "replicas_identical": result.replicas_identical,
            "global_batch": result.world_size
            * getattr(cfg.pretrain, args.stage).batch_size
            * getattr(cfg.pretrain, args.stage).grad_accum,
        }
        if cfg.pretrain.objective == "bootstrap":  # what the teacher's targets hold: bootstrap only
            summary["target_diagnostics"] = final_diagnostics(cfg, args.stage, args.features, ckpt / "final")
        # throughput is a timing, not science: printed and in metrics/timings/ (not tracked), never in the
        # metrics; the median over logged steps is also right when this call only resumed a finished run
        speed = statistics.median(curve_values(timings, "samples_per_s")) if timings.is_file() else float("nan")
        if args.stage == "stage2":
            summary["variant"] = cfg.pretrain.stage2.variant
        write_json_atomic(metrics_file, summary)
        # where this call resumed from is how it ran, not what it computed: printed, not a metric
        print(
            f"pretrain {name}: {result.steps} steps (this call from step {result.resumed_from}), loss "
            f"{summary['loss_curve']['first']:.4f} -> {summary['loss_curve']['last']:.4f}, {speed:.1f} clips/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
