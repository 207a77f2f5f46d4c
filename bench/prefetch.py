"""Benchmark: pretraining steps/s with reads overlapped with compute (``pretrain.prefetch_batches``) against
reads in the loop, when reading a micro-batch costs about one step.

At the paper's scale the feature store (about 500 GiB for AS-2M) does not fit in page cache, so every
micro-batch is a cold read from disk or a network filesystem. This benchmark makes that cost explicit:
each ``FeatureStore.read`` call first waits ``--read-factor`` x the measured compute time of a step
(a stand-in for the cold read, which like a real read holds no CPU). Three runs of the same steps with
the project's loader (``MicroBatches``) and the tiny default model's stage-1 step:

- compute only: batches already in memory (the ceiling);
- reads in the loop (``prefetch 0``): each step waits for its read, then computes;
- prefetch (``prefetch N``): a background thread reads the next N micro-batches while the step computes.

Prints steps/s of each and the ratios; the targets are prefetch >= 1.8x reads-in-the-loop and within
10% of compute only. Also checks that the prefetched batches are exactly the ones read in the loop.

    python bench/prefetch.py [--steps 30] [--read-factor 1.0] [--prefetch 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from _corpus import synthetic_corpus
from accelerate import Accelerator

from sslam.config.params import load_config
from sslam.features.reader import FeatureStore
from sslam.features.store import build_features
from sslam.pretrain.loop import MicroBatches
from sslam.pretrain.objectives.bootstrap import stage1_losses
from sslam.pretrain.student import Student, make_teacher

PARAMS = Path(__file__).resolve().parents[1] / "params.yaml"


class SlowStore(FeatureStore):
    """The store with a fixed wait before each batch read: a cold read that costs time but no CPU."""

    delay = 0.0

    def read(self, indices):
        time.sleep(self.delay)
        return super().read(indices)


def timed_steps(batches, step, steps: int) -> tuple[float, list]:
    """steps/s over ``steps`` steps (after one warm-up step), and the store rows each step read."""
    rows = []
    x, idx = batches(0)
    step(x)
    t0 = time.perf_counter()
    for k in range(1, steps + 1):
        x, idx = batches(k)
        rows.append(idx)
        step(x)
    return steps / (time.perf_counter() - t0), rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--read-factor", type=float, default=1.0, help="read delay in units of one compute step")
    ap.add_argument("--prefetch", type=int, default=2)
    ap.add_argument("--params", default=str(PARAMS))
    args = ap.parse_args()
    cfg = load_config(args.params)
    scfg = cfg.pretrain.stage1
    with tempfile.TemporaryDirectory() as tmp:
        synthetic_corpus(Path(tmp) / "corpus", {cfg.pretrain.train_set: 4 * scfg.batch_size}, cfg.data.sample_rate)
        build_features(Path(tmp) / "corpus", Path(tmp) / "features", cfg.features, cfg.data.sample_rate)
        store = SlowStore(Path(tmp) / "features", cfg.pretrain.train_set)
        acc = Accelerator(cpu=True)
        torch.manual_seed(0)
        student = Student(cfg.model, cfg.features.target_frames, cfg.features.num_mel_bins)
        teacher = make_teacher(student)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4)
        counter = iter(range(10**9))

        def step(x: torch.Tensor) -> None:
            loss = stage1_losses(student, teacher, x, cfg.mask, scfg, next(counter))["loss"]
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        def loader(prefetch: int) -> MicroBatches:
            return MicroBatches(store, acc, scfg.batch_size, cfg.pretrain.seed, "stage1", None, prefetch)

        in_memory = loader(0)
        cached = {k: in_memory(k) for k in range(args.steps + 1)}
        compute, rows = timed_steps(lambda k: cached[k], step, args.steps)
        store.delay = args.read_factor / compute
        plain_loader, ahead_loader = loader(0), loader(args.prefetch)
        plain, plain_rows = timed_steps(plain_loader, step, args.steps)
        ahead, ahead_rows = timed_steps(ahead_loader, step, args.steps)
        ahead_loader.close()
        assert plain_rows == ahead_rows == rows, "prefetch changed which clips a step reads"

    print(
        f"tiny model (dim {cfg.model.embed_dim}, depth {cfg.model.depth}), {scfg.batch_size} clips x "
        f"{cfg.features.target_frames} frames per step, {torch.get_num_threads()} threads; read delay "
        f"{1000 * store.delay:.0f} ms = {args.read_factor:g} x one compute step"
    )
    print(f"compute only (in memory):        {compute:6.2f} steps/s")
    print(f"reads in the loop (prefetch 0):  {plain:6.2f} steps/s")
    print(f"prefetch {args.prefetch}:                     {ahead:6.2f} steps/s")
    print(
        f"prefetch / reads in the loop: {ahead / plain:.2f}x (target >= 1.8x); "
        f"prefetch / compute only: {ahead / compute:.2f} (target >= 0.90)"
    )


if __name__ == "__main__":
    main()
