"""A tiny corpus, feature cache and params for pretraining tests (seconds on the CPU)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import yaml
from conftest import REPO, section


def tiny_setup(root: Path, steps: int = 12, checkpoint_every: int = 4) -> tuple[Path, Path]:
    """Returns (params.yaml path, features dir) for a 2-block, 32-dim model on 64-frame clips."""
    from sslam.data.synthetic import generate_corpus
    from sslam.features.store import build_features

    corpus, feats = root / "corpus", root / "features"
    if not (feats / "stats.json").is_file():
        syn = section(
            "download.synthetic",
            num_classes=8,
            clip_seconds=1.0,
            clips={"unbalanced": 32, "balanced": 4, "eval": 4},
            tasks={
                "mono": {"num_classes": 2, "clips_per_class_per_fold": 1},
                "keywords": {"num_classes": 2, "clips_per_class": {"train": 1, "valid": 1, "test": 1}},
                "urban": {"clips_train": 1, "clips_eval": 1},
                "desed": {"num_classes": 2, "clips_train": 2, "clips_eval": 2},
                "poly": {"environments": ["square"], "clips_train": 2, "clips_eval": 2},
            },
        )
        generate_corpus(syn, corpus, 16000, clips_per_shard=64)
        build_features(corpus, feats, section("features", target_frames=64, shard_size=16, store_waveforms=True), 16000)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["corpus_dir"] = str(corpus)
    params["model"].update(embed_dim=32, depth=2, num_heads=2, decoder_layers=2, decoder_groups=4)
    params["mask"].update(clone_batch=2)
    params["pretrain"]["stage1"].update(
        steps=steps,
        batch_size=4,
        warmup_steps=2,
        checkpoint_every=checkpoint_every,
        top_k_layers=2,
        ema_anneal_steps=steps,
        log_every=1,
    )
    params["pretrain"]["stage2"].update(
        steps=3, batch_size=4, warmup_steps=1, checkpoint_every=100, top_k_layers=2, clone_batch=2, ema_anneal_steps=3
    )
    params["mix"].update(mixed_fraction=0.5)
    p = root / "params.yaml"
    p.write_text(yaml.safe_dump(params, sort_keys=False))
    return p, feats


def torchrun(script: Path, port: int, *args: object, timeout: int = 600) -> subprocess.CompletedProcess:
    """Two real processes under torchrun (DDP over gloo on the CPU) running ``script`` with ``args``."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(port),
        str(script),
        *map(str, args),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
