"""Benchmark: one stage-1 training step, this design against a naive one, same batch and model.

This design (data2vec 2.0 / EAT): the student encodes only the visible patches of each clone; the
teacher encodes each clip once and its targets are repeated over the clones.
Naive (SSAST-style): the student encodes the full sequence with a mask token in masked places, and the
teacher runs once per clone. Both use the same decoder and losses.

Each variant runs in its own process, so its peak resident memory is its own. Prints training samples
(clips) per second and peak memory for each, and the ratio. The batch is real log-mel features: from a
synthetic corpus generated and cached in a temporary folder (a fresh clone has no data/), or from an
existing feature cache with --features.

    python bench/pretrain_step.py [--clones 4 16] [--steps 6] [--features data/features]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _corpus import synthetic_corpus
from torch import nn

from sslam.config.base import merged
from sslam.config.params import Config, load_config
from sslam.config.pretrain import MaskConfig, StageConfig
from sslam.features.reader import FeatureStore
from sslam.features.store import build_features
from sslam.pretrain.losses import cls_loss, patch_loss
from sslam.pretrain.masking import inverse_block_mask
from sslam.pretrain.objectives.bootstrap import clones_per_clip, stage1_losses
from sslam.pretrain.student import Student, make_teacher
from sslam.pretrain.targets import cls_target, layer_averaged_targets


def naive_losses(
    student: Student,
    mask_token: nn.Parameter,
    teacher,
    x: torch.Tensor,
    mask_cfg: MaskConfig,
    stage: StageConfig,
    seed: int,
) -> torch.Tensor:
    """The same objective without the clone batch's savings: the teacher runs once per clone and the
    student's encoder sees the whole sequence with mask tokens in place (SSAST / MAE-encoder style)."""
    b, clones = x.shape[0], clones_per_clip(mask_cfg, stage, "drop")
    enc, dec = student.encoder, student.decoder
    mask = inverse_block_mask(
        b * clones,
        teacher.grid,
        mask_cfg.ratio,
        mask_cfg.block_size,
        mask_cfg.prob_adjust,
        torch.Generator().manual_seed(seed),
    )
    with torch.no_grad():  # teacher once per clone
        _, layers = teacher(x.repeat_interleave(clones, 0), return_layers=True)
        y = layer_averaged_targets(layers, stage.top_k_layers)
        y_cls = cls_target(y)
    tok = enc.tokens(x).repeat_interleave(clones, 0)
    tok = torch.where(mask[:, :, None], mask_token.to(tok.dtype), tok)  # full sequence, mask tokens in place
    h = enc.pre_norm(torch.cat([enc.cls_token.expand(tok.shape[0], -1, -1), tok], 1))
    for blk in enc.blocks:
        h, _ = blk(h)
    z = h[:, 1:].transpose(1, 2).reshape(h.shape[0], -1, *enc.grid)
    for blk in dec.blocks:
        z = z + blk(z)
    pred = dec.proj(z.flatten(2).transpose(1, 2))
    return patch_loss(pred, y, mask) + stage.cls_loss_weight * cls_loss(h[:, 0], y_cls, stage.cls_loss_reduction)


PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


# the generator always writes every task: the smallest each allows, since only the unbalanced split is read
def write_batch(cfg: Config, out_dir: Path, features: str | None) -> Path:
    """One stage-1 batch as the loop reads it (``FeatureStore.batch`` of ``pretrain.train_set``), saved for
    the variant processes: from ``features``, or from a synthetic corpus of one batch generated and cached here."""
    batch = cfg.pretrain.stage1.batch_size
    if features is None:
        synthetic_corpus(out_dir / "corpus", {cfg.pretrain.train_set: batch}, cfg.data.sample_rate)
        build_features(out_dir / "corpus", out_dir / "features", cfg.features, cfg.data.sample_rate)
        features = out_dir / "features"
    store = FeatureStore(features, cfg.pretrain.train_set)
    x = store.batch([i % len(store) for i in range(batch)])
    if tuple(x.shape[1:]) != (cfg.features.target_frames, cfg.features.num_mel_bins):
        raise SystemExit(
            f"{features}: clips of {tuple(x.shape[1:])} (frames, mel), the params say "
            f"({cfg.features.target_frames}, {cfg.features.num_mel_bins})"
        )
    np.save(out_dir / "batch.npy", x.numpy())
    return out_dir / "batch.npy"


def run_variant(variant: str, clones: int, steps: int, params: str, batch_file: str) -> dict:
    cfg = load_config(params)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    frames, mel, batch = cfg.features.target_frames, cfg.features.num_mel_bins, cfg.pretrain.stage1.batch_size
    torch.manual_seed(0)
    student = Student(cfg.model, frames, mel)
    teacher = make_teacher(student)
    mask_token = nn.Parameter(torch.zeros(1, 1, cfg.model.embed_dim))
    opt = torch.optim.AdamW(list(student.parameters()) + [mask_token], lr=1e-4)
    stage = merged(cfg.pretrain.stage1, {"clone_batch": clones, "center_targets": "none"})
    x = torch.from_numpy(np.load(batch_file))
    t0 = None
    for step in range(steps + 1):
        if step == 1:
            t0 = time.perf_counter()  # step 0 warms up allocators and kernels
        if variant == "ours":
            loss = stage1_losses(student, teacher, x, cfg.mask, stage, step)["loss"]
        else:
            loss = naive_losses(student, mask_token, teacher, x, cfg.mask, stage, step)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sec = (time.perf_counter() - t0) / steps
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"samples_per_s": batch / sec, "peak_mb": peak_mb, "batch": batch}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clones", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--params", default=str(PARAMS))
    ap.add_argument("--features", default=None, help="a feature cache (default: make one in a temporary folder)")
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--batch-file", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.clones[0], args.steps, args.params, args.batch_file)))
        return
    cfg = load_config(args.params)
    tmp = tempfile.TemporaryDirectory()
    batch_file = write_batch(cfg, Path(tmp.name), args.features)
    print(
        f"tiny model: dim {cfg.model.embed_dim}, depth {cfg.model.depth}, {cfg.features.target_frames} frames, "
        f"batch {cfg.pretrain.stage1.batch_size} clips, {torch.get_num_threads()} threads"
    )
    for c in args.clones:
        res = {}
        for v in ("ours", "naive"):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--variant",
                    v,
                    "--clones",
                    str(c),
                    "--steps",
                    str(args.steps),
                    "--params",
                    args.params,
                    "--batch-file",
                    str(batch_file),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            res[v] = json.loads(out.stdout.strip().splitlines()[-1])
        o, n = res["ours"], res["naive"]
        print(
            f"clone_batch {c:2d}: this design {o['samples_per_s']:.1f} clips/s, peak {o['peak_mb']:.0f} MB; "
            f"naive {n['samples_per_s']:.1f} clips/s, peak {n['peak_mb']:.0f} MB -> "
            f"{o['samples_per_s'] / n['samples_per_s']:.1f}x throughput, "
            f"{n['peak_mb'] / o['peak_mb']:.1f}x less memory"
        )
    tmp.cleanup()


if __name__ == "__main__":
    main()
