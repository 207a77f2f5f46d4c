"""Benchmark: one stage-1 training step of each pretraining objective on each encoder, against the reference
(params.yaml's encoder and objective) measured in the same run.

Each (encoder, objective) runs in its own process, so its peak resident memory is its own. It builds the
student and teacher the loop builds and takes stage-1 steps through the loop's own objective
(``make_objective``): clips/s from the median step time (a first step warms up allocators and kernels) and
peak memory above the process's baseline after building the model. The batch is random and log-mel shaped
(speed and memory do not depend on content), ``pretrain.stage1.batch_size`` clips for every pair. Prints
each pair and its ratio to the reference; ``--out`` writes the numbers as JSON, the cost columns of the
encoder x objective grid (``sslam-grid --cost``).

    python bench/objectives.py [--encoders mamba xlstm] [--objectives bootstrap msm] [--steps 3]
        [--set pretrain.stage1.batch_size=8] [--out metrics/grid_cost.json]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import yaml

from sslam.config.params import load_config
from sslam.io import write_json_atomic
from sslam.models.registry import ENCODERS
from sslam.pretrain.objectives import objective_names

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def measure(overrides: dict, steps: int, params: str) -> dict:
    """Stage-1 clips/s and peak memory of one configuration, in this process."""
    from sslam.pretrain.loop import make_objective
    from sslam.pretrain.student import Student, make_teacher
    from sslam.pretrain.targets import PositionCentring

    cfg = load_config(params, overrides)
    torch.manual_seed(0)
    frames = cfg.pretrain.crop_frames(cfg.features.frame_shift_ms) or cfg.features.target_frames
    batch, obj = cfg.pretrain.stage1.batch_size, cfg.pretrain.objective
    student = Student(cfg.model, frames, cfg.features.num_mel_bins, obj)
    teacher = make_teacher(student)
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
    stage = cfg.pretrain.stage1
    centring = PositionCentring(stage.center_targets, stage.center_momentum)
    step_losses = make_objective(cfg, "stage1", None, torch.device("cpu"), student, teacher, centring)  # the loop's
    x = torch.randn(batch, frames, cfg.features.num_mel_bins) * 0.5
    base, times = peak_rss_mb(), []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        step_losses(x, [], step)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {
        "clips_per_s": batch / statistics.median(times[1:]),
        "peak_mb": peak_rss_mb() - base,
        "setting": {"objective": obj, "encoder": cfg.model.encoder, "batch": batch, "frames": frames},
    }


def measure_apart(overrides: dict, steps: int, params: str) -> dict:
    """:func:`measure` in its own process, so the peak memory is this configuration's alone."""
    cmd = [sys.executable, __file__, "--measure", json.dumps(overrides), "--steps", str(steps), "--params", params]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def parse_sets(pairs: list[str]) -> dict:
    """``key=value`` pairs (dotted params keys, YAML values), as ``dvc exp run -S`` takes them."""
    out = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep:
            raise SystemExit(f"--set {p!r}: expected key=value")
        out[key] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--encoders", nargs="+", default=list(ENCODERS))
    ap.add_argument("--objectives", nargs="+", default=list(objective_names()))
    ap.add_argument("--steps", type=int, default=3, help="timed stage-1 steps per pair (after one warm-up step)")
    ap.add_argument("--params", default=str(PARAMS))
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a params override, for all")
    ap.add_argument("--out", default=None, help="write the numbers as JSON (sslam-grid --cost)")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # internal: one configuration, as JSON overrides
    args = ap.parse_args()
    if args.measure is not None:
        print(json.dumps(measure(json.loads(args.measure), args.steps, args.params)))
        return
    common = parse_sets(args.set)
    cfg = load_config(args.params, common)
    reference = (cfg.model.encoder, cfg.pretrain.objective)
    pairs = [reference] + [(e, o) for e in args.encoders for o in args.objectives if (e, o) != reference]
    print(
        f"tiny model: dim {cfg.model.embed_dim}, depth {cfg.model.depth}, batch {cfg.pretrain.stage1.batch_size} "
        f"clips, {args.steps} timed steps, {torch.get_num_threads()} threads; reference {reference[0]} x {reference[1]}"
    )
    results = {}
    for enc, obj in pairs:
        over = common | {"model.encoder": enc, "pretrain.objective": obj}
        results[f"{enc}/{obj}"] = r = measure_apart(over, args.steps, args.params)
        ref = results[f"{reference[0]}/{reference[1]}"]
        print(
            f"{enc:>11} x {obj:<9}: {r['clips_per_s']:7.1f} clips/s, peak {r['peak_mb']:5.0f} MB -> "
            f"{r['clips_per_s'] / ref['clips_per_s']:.2f}x the reference's throughput, "
            f"{r['peak_mb'] / max(ref['peak_mb'], 1e-9):.2f}x its memory"
        )
    if args.out:
        write_json_atomic(args.out, results)


if __name__ == "__main__":
    main()
