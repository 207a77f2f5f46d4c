"""Two real processes (torchrun, Accelerator forced to the CPU): each reads its own part of an epoch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

WORKER = textwrap.dedent("""
    import json, sys
    from accelerate import Accelerator
    from sslam.features.dataset import PretrainDataset, FeatureStore, ShardedSampler, batched_loader
    acc = Accelerator(cpu=True)
    store = FeatureStore(sys.argv[1], "unbalanced")
    sampler = ShardedSampler(len(store), rank=acc.process_index, world_size=acc.num_processes, seed=5)
    seen = {}
    for epoch in range(2):
        sampler.set_epoch(epoch)
        ids = list(sampler)
        loader = batched_loader(PretrainDataset(store), 2, sampler=sampler)
        n = sum(x.shape[0] for x in loader)
        seen[epoch] = {"ids": ids, "rows_read": n}
    with open(f"{sys.argv[2]}/rank{acc.process_index}.json", "w") as f:
        json.dump({"world": acc.num_processes, "seen": seen}, f)
""")


def test_each_rank_reads_its_own_part(tmp_path):
    from test_features import FeaturesConfig, ManifestRow, SR, build_features, write_flac_atomic, write_manifest
    import numpy as np

    corpus = tmp_path / "corpus"
    rows = []
    for k in range(9):
        write_flac_atomic(corpus / f"a/{k}.flac", 0.1 * np.sin(np.arange(SR) * (k + 1) / 50), SR)
        rows.append(ManifestRow(f"c{k}", "unbalanced", f"a/{k}.flac", 1.0, SR, (), "ok", ""))
    write_manifest(corpus / "manifests" / "unbalanced.csv", rows)
    build_features(corpus, tmp_path / "f", FeaturesConfig(target_frames=64, shard_size=4, store_waveforms=False), SR)
    (tmp_path / "worker.py").write_text(WORKER)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29611",
           str(tmp_path / "worker.py"), str(tmp_path / "f"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    for epoch in ("0", "1"):
        a, b = (r["seen"][epoch]["ids"] for r in ranks)
        assert len(a) == len(b) == 5 and set(a) | set(b) == set(range(9))
        assert len(set(a) & set(b)) <= 1  # 9 clips over 2 ranks: one repeat pads the epoch
        assert all(r["seen"][epoch]["rows_read"] == 5 for r in ranks)
    assert ranks[0]["seen"]["0"]["ids"] != ranks[0]["seen"]["1"]["ids"]  # reshuffled per epoch
