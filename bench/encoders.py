"""Benchmark: every registered encoder (the Transformer, the Mamba, the xLSTM built in) at the same width,
forward + backward, from 256 to 16,384 tokens with the batch fixed; and the parallel selective scan against
the step-by-step scan.

Prints, in one run:
- per encoder and token count: forward+backward seconds and peak resident memory (each measurement in
  its own process, so the peak is its own; memory over the process's baseline after building the model);
- each encoder's growth exponents (time and memory against tokens, least squares on log-log);
- the Mamba-to-Transformer time ratio at 512 tokens, and where (if anywhere) Mamba becomes faster;
- the parallel scan against the step-by-step scan at 512 tokens (forward + backward).

The xLSTM runs the mLSTM as the encoder does: the parallel (L x L) form up to ``MLSTM_CHUNK`` tokens, the
chunkwise form (memory linear in L) beyond. Inputs are random log-mel-shaped tensors: speed and memory do
not depend on content.

    python bench/encoders.py [--dim 64] [--depth 2] [--batch 1] [--max-tokens 16384] [--quick]
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sslam.config.base import merged
from sslam.config.model import ModelConfig
from sslam.config.params import load_config
from sslam.models.registry import ENCODERS, build_encoder

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


def encoder_config(name: str, dim: int, depth: int) -> ModelConfig:
    """params.yaml's model section at the benchmark's width and depth; the Mamba at SSAMBA's block and the
    xLSTM at the overview's expansion (the sizes docs/models.md reports), any other encoder as params.yaml."""
    return merged(
        load_config(PARAMS).model,
        {
            "encoder": name,
            "masked_tokens": "auto",
            "embed_dim": dim,
            "depth": depth,
            "num_heads": 4,
            "decoder_groups": 4,
            "mamba": {
                "d_state": 16,
                "d_conv": 4,
                "expand": 2,
                "bidirectional": True,
                "norm": "layernorm",
                "cls_position": "start",
            },
            "xlstm": {"num_heads": 4, "expand": 2, "conv_kernel": 4, "cls_position": "none"},
        },
    )


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(name: str, tokens: int, dim: int, depth: int, batch: int, repeats: int) -> dict:
    """One (encoder, token count): a grid of tokens x 1 patches (16 mel bins), mask-free full sequence."""
    torch.manual_seed(0)
    enc = build_encoder(encoder_config(name, dim, depth), frames=16 * tokens, mel=16)
    x = torch.randn(batch, 16 * tokens, 16)
    base = rss_mb()
    times = []
    for _ in range(repeats + 1):  # the first pass warms up allocators and kernels
        t0 = time.perf_counter()
        h, _ = enc(x)
        h.float().pow(2).mean().backward()
        times.append(time.perf_counter() - t0)
        enc.zero_grad(set_to_none=True)
    return {"seconds": min(times[1:]), "peak_mb": rss_mb() - base}


def scan_speed(tokens: int, repeats: int = 3) -> dict:
    from sslam.models.mamba import selective_scan, selective_scan_sequential

    g = torch.Generator().manual_seed(0)
    b, d, n = 2, 128, 16
    args = [
        torch.randn(b, d, tokens, generator=g),
        torch.rand(b, d, tokens, generator=g) * 0.1,
        -torch.rand(d, n, generator=g) - 0.5,
        torch.randn(b, n, tokens, generator=g),
        torch.randn(b, n, tokens, generator=g),
        torch.randn(d, generator=g),
    ]
    out = {}
    for label, fn in (("parallel", selective_scan), ("sequential", selective_scan_sequential)):
        best = math.inf
        for _ in range(repeats):
            leaves = [a.clone().requires_grad_(True) for a in args]
            t0 = time.perf_counter()
            fn(*leaves, delta_softplus=False).sum().backward()
            best = min(best, time.perf_counter() - t0)
        out[label] = best
    out["speedup"] = out["sequential"] / out["parallel"]
    return out


def slope(xs: list[float], ys: list[float]) -> float:
    """Least-squares exponent k in y ~ x^k."""
    return float(np.polyfit(np.log(xs), np.log(np.maximum(ys, 1e-9)), 1)[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=16384)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--quick", action="store_true", help="256 to 2048 tokens only (a smoke run)")
    ap.add_argument("--one", nargs=2, metavar=("ENCODER", "TOKENS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        res = measure(args.one[0], int(args.one[1]), args.dim, args.depth, args.batch, args.repeats)
        print(json.dumps(res))
        return
    top = 2048 if args.quick else args.max_tokens
    sizes = [256 * 2**k for k in range(int(math.log2(top // 256)) + 1)]
    print(
        f"encoders at width {args.dim}, {args.depth} blocks, batch {args.batch}, forward + backward, "
        f"{torch.get_num_threads()} threads"
    )
    table: dict[str, dict[int, dict]] = {}
    for name in ENCODERS:
        table[name] = {}
        for n in sizes:
            cmd = [
                sys.executable,
                __file__,
                "--one",
                name,
                str(n),
                "--dim",
                str(args.dim),
                "--depth",
                str(args.depth),
                "--batch",
                str(args.batch),
                "--repeats",
                str(args.repeats),
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                print(f"  {name:11s} {n:6d} tokens: failed ({proc.stderr.strip().splitlines()[-1][:100]})")
                continue
            table[name][n] = json.loads(proc.stdout.strip().splitlines()[-1])
            r = table[name][n]
            print(f"  {name:11s} {n:6d} tokens: {r['seconds'] * 1000:9.1f} ms, {r['peak_mb']:8.0f} MB", flush=True)
    for name, rows in table.items():
        if len(rows) >= 2:
            ns = sorted(rows)
            print(
                f"growth {name:11s}: time ~ tokens^{slope(ns, [rows[n]['seconds'] for n in ns]):.2f}, "
                f"memory ~ tokens^{slope(ns, [max(rows[n]['peak_mb'], 1.0) for n in ns]):.2f}"
            )
    t, m = table.get("transformer", {}), table.get("mamba", {})
    if 512 in t and 512 in m:
        print(f"Mamba / Transformer time at 512 tokens: {m[512]['seconds'] / t[512]['seconds']:.2f}x (target <= 4x)")
    faster = [n for n in sorted(set(t) & set(m)) if m[n]["seconds"] < t[n]["seconds"]]
    leaner = [n for n in sorted(set(t) & set(m)) if m[n]["peak_mb"] < t[n]["peak_mb"]]
    print(
        f"Mamba faster than the Transformer from: {faster[0] if faster else 'nowhere up to ' + str(sizes[-1])} "
        f"tokens; leaner from: {leaner[0] if leaner else 'nowhere up to ' + str(sizes[-1])} tokens"
    )
    s = scan_speed(512)
    print(
        f"selective scan at 512 tokens (batch 2, 128 channels, state 16, forward + backward): parallel "
        f"{s['parallel'] * 1000:.1f} ms, step-by-step {s['sequential'] * 1000:.1f} ms -> {s['speedup']:.1f}x "
        "(target >= 20x)"
    )


if __name__ == "__main__":
    main()
