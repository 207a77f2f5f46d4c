"""Benchmark: one stage-1 training step, this design against a naive one, same batch and model.

This design (data2vec 2.0 / EAT): the student encodes only the visible patches of each clone; the
teacher encodes each clip once and its targets are repeated over the clones.
Naive (SSAST-style): the student encodes the full sequence with a mask token in masked places, and the
teacher runs once per clone. Both use the same decoder and losses.

Each variant runs in its own process, so its peak resident memory is its own. Prints training samples
(clips) per second and peak memory for each, and the ratio.

    python bench/pretrain_step.py [--clones 4 16] [--steps 6]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch
from torch import nn

from sslam.config import load_config
from sslam.pretrain.losses import cls_loss, patch_loss
from sslam.pretrain.masking import inverse_block_mask, visible_indices
from sslam.pretrain.model import StepSettings, Student, make_teacher, stage1_losses
from sslam.pretrain.targets import cls_target, layer_averaged_targets


def naive_losses(student: Student, mask_token: nn.Parameter, teacher, x: torch.Tensor, s: StepSettings, seed: int) -> torch.Tensor:
    b = x.shape[0]
    enc, dec = student.encoder, student.decoder
    mask = inverse_block_mask(b * s.clones, teacher.grid, s.mask_ratio, s.block, s.adjust, torch.Generator().manual_seed(seed))
    with torch.no_grad():  # teacher once per clone
        _, layers = teacher(x.repeat_interleave(s.clones, 0), return_layers=True)
        y = layer_averaged_targets(layers, s.top_k)
        y_cls = cls_target(y)
    tok = enc.tokens(x).repeat_interleave(s.clones, 0)
    tok = torch.where(mask[:, :, None], mask_token.to(tok.dtype), tok)  # full sequence, mask tokens in place
    h = enc.pre_norm(torch.cat([enc.cls_token.expand(tok.shape[0], -1, -1), tok], 1))
    for blk in enc.blocks:
        h, _ = blk(h)
    z = h[:, 1:].transpose(1, 2).reshape(h.shape[0], -1, *enc.grid)
    for blk in dec.blocks:
        z = z + blk(z)
    pred = dec.proj(z.flatten(2).transpose(1, 2))
    return patch_loss(pred, y, mask) + s.cls_weight * cls_loss(h[:, 0], y_cls, s.cls_reduction)


def run_variant(variant: str, clones: int, steps: int) -> dict:
    cfg = load_config()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    frames, mel, batch = cfg.features.target_frames, cfg.features.num_mel_bins, cfg.pretrain.stage1.batch_size
    torch.manual_seed(0)
    student = Student(cfg.model, frames, mel)
    teacher = make_teacher(student)
    mask_token = nn.Parameter(torch.zeros(1, 1, cfg.model.embed_dim))
    opt = torch.optim.AdamW(list(student.parameters()) + [mask_token], lr=1e-4)
    s = StepSettings(clones, cfg.mask.ratio, cfg.mask.block_size, cfg.mask.prob_adjust, cfg.pretrain.stage1.top_k_layers, 1.0, "sum")
    x = torch.randn(batch, frames, mel)
    t0 = None
    for step in range(steps + 1):
        if step == 1:
            t0 = time.perf_counter()  # step 0 warms up allocators and kernels
        loss = stage1_losses(student, teacher, x, s, step)["loss"] if variant == "ours" else naive_losses(student, mask_token, teacher, x, s, step)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    sec = (time.perf_counter() - t0) / steps
    return {"samples_per_s": batch / sec, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "batch": batch}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--clones", type=int, nargs="+", default=[4, 16])
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--variant", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.clones[0], args.steps)))
        return
    cfg = load_config()
    print(f"tiny model: dim {cfg.model.embed_dim}, depth {cfg.model.depth}, {cfg.features.target_frames} frames, "
          f"batch {cfg.pretrain.stage1.batch_size} clips, {torch.get_num_threads()} threads")
    for c in args.clones:
        res = {}
        for v in ("ours", "naive"):
            out = subprocess.run([sys.executable, __file__, "--variant", v, "--clones", str(c), "--steps", str(args.steps)],
                                 capture_output=True, text=True, check=True)
            res[v] = json.loads(out.stdout.strip().splitlines()[-1])
        o, n = res["ours"], res["naive"]
        print(f"clone_batch {c:2d}: this design {o['samples_per_s']:.1f} clips/s, peak {o['peak_mb']:.0f} MB; "
              f"naive {n['samples_per_s']:.1f} clips/s, peak {n['peak_mb']:.0f} MB -> "
              f"{o['samples_per_s'] / n['samples_per_s']:.1f}x throughput, {n['peak_mb'] / o['peak_mb']:.1f}x less memory")


if __name__ == "__main__":
    main()
