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
import json
import os
import sys
from pathlib import Path

from sslam.config.base import exit_on_error, load_sections, merged
from sslam.config.pretrain import PretrainParams

INPUTS_ENV = "SSLAM_STAGE_INPUTS"  # the stage's code/params/data digests, computed once and handed to workers


def pass_through(cfg, init: Path, ckpt: Path, metrics_file: Path, live_dir: Path) -> int:
    """Stage 2 of an objective without one (the raw-patch objectives): the stage-1 checkpoint goes on
    (sslam.pretrain.outputs.pass_through)."""
    from accelerate import PartialState

    from sslam.pretrain.outputs import pass_through as hand_on

    if not PartialState().is_main_process:
        return 0
    try:
        hand_on(cfg, init, ckpt, metrics_file, live_dir)
    except FileNotFoundError as err:
        print(f"pretrain: {err}", file=sys.stderr)
        return 2
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
    cfg = exit_on_error(load_sections, PretrainParams, args.params)
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
    from sslam.pretrain.objectives import get_objective

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
        cfg = merged(cfg, {"pretrain": cfg.pretrain.stage2_run(args.run).model_dump()})
        name, metrics_file = args.run, Path(args.metrics_dir) / "stage2_runs" / f"{args.run}.json"
        live_dir = Path(args.metrics_dir) / "stage2_runs" / f"{args.run}_live"
    ckpt = Path(args.checkpoints or f"checkpoints/{name}")
    if args.stage == "stage2" and not get_objective(cfg.pretrain.objective).trains_stage2:
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

    from sslam.pretrain.outputs import median_throughput, stage_summary

    if PartialState().is_main_process and args.stop_after is None:
        summary = stage_summary(cfg, args.stage, name, result, live_dir, args.features, ckpt / "final")
        write_json_atomic(metrics_file, summary)
        # where this call resumed from and its throughput are how it ran, not what it computed: printed only
        print(
            f"pretrain {name}: {result.steps} steps (this call from step {result.resumed_from}), loss "
            f"{summary['loss_curve']['first']:.4f} -> {summary['loss_curve']['last']:.4f}, "
            f"{median_throughput(timings):.1f} clips/s"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
