"""Two real processes (torchrun, Accelerator forced to the CPU): each reads its own part of an epoch,
batch by batch, the way the pretraining loop does (``ShardedSampler`` indices -> ``FeatureStore.batch``)."""

from __future__ import annotations

import json
import textwrap

import pytest
from conftest import section
from pretrain_helpers import torchrun

pytestmark = pytest.mark.slow

BATCH = 2

# The reads of src/sslam/pretrain/loop.py's MicroBatches: micro-batch k is batch b of epoch e
# (divmod by the full batches per epoch, the last partial batch dropped), indices from the sampler.
WORKER = textwrap.dedent(f"""
    import json, sys
    from accelerate import Accelerator
    from sslam.features.reader import FeatureStore, ShardedSampler
    acc = Accelerator(cpu=True)
    store = FeatureStore(sys.argv[1], "unbalanced")
    sampler = ShardedSampler(len(store), rank=acc.process_index, world_size=acc.num_processes, seed=5)
    per_epoch = len(sampler) // {BATCH}
    seen = {{}}
    for k in range(2 * per_epoch):
        epoch, b = divmod(k, per_epoch)
        if b == 0:
            sampler.set_epoch(epoch)
            ids = list(sampler)
            seen[epoch] = {{"ids": ids, "read": [], "sums": []}}
        idx = ids[b * {BATCH} : (b + 1) * {BATCH}]
        x = store.batch(idx)
        seen[epoch]["read"] += idx
        seen[epoch]["sums"] += x.sum(dim=(1, 2)).tolist()
    with open(f"{{sys.argv[2]}}/rank{{acc.process_index}}.json", "w") as f:
        json.dump({{"world": acc.num_processes, "seen": seen}}, f)
""")


def test_each_rank_reads_its_own_part(tmp_path):
    import numpy as np
    from test_features import SR, ManifestRow, build_features, write_flac_atomic, write_manifest

    from sslam.features.reader import FeatureStore

    corpus = tmp_path / "corpus"
    rows = []
    for k in range(9):
        write_flac_atomic(corpus / f"a/{k}.flac", 0.1 * np.sin(np.arange(SR) * (k + 1) / 50), SR)
        rows.append(ManifestRow(f"c{k}", "unbalanced", f"a/{k}.flac", 1.0, SR, (), "ok", ""))
    write_manifest(corpus / "manifests" / "unbalanced.csv", rows)
    build_features(
        corpus, tmp_path / "f", section("features", target_frames=64, shard_size=4, store_waveforms=False), SR
    )
    (tmp_path / "worker.py").write_text(WORKER)
    proc = torchrun(tmp_path / "worker.py", 29611, tmp_path / "f", tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["world"] == 2 for r in ranks)
    store = FeatureStore(tmp_path / "f", "unbalanced")
    sums = [store[i].sum().item() for i in range(len(store))]
    assert len(set(np.round(sums, 3))) == 9  # every clip tells itself apart by its sum
    for epoch in ("0", "1"):
        a, b = (r["seen"][epoch]["ids"] for r in ranks)
        assert len(a) == len(b) == 5 and set(a) | set(b) == set(range(9))
        assert len(set(a) & set(b)) <= 1  # 9 clips over 2 ranks: one repeat pads the epoch
        for r in ranks:
            seen = r["seen"][epoch]
            # two full batches of 2 from its own 5 ids, in sampler order; the fifth is dropped as in the loop
            assert seen["read"] == seen["ids"][:4]
            # and the rows it got are those clips' features, not another rank's or another shard's
            np.testing.assert_allclose(seen["sums"], [sums[i] for i in seen["read"]], rtol=1e-5)
    assert ranks[0]["seen"]["0"]["ids"] != ranks[0]["seen"]["1"]["ids"]  # reshuffled per epoch
