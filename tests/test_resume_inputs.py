"""A persisted pretraining stage resumes only what the same code, params and data made: `dvc repro` after
an edit of a file in the stage's import closure, or after the features changed, trains from step 0; an
edit outside the closure still resumes. Run in a copy whose own `src/` is the code that runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sslam.provenance import data_digest, stage_digest


@pytest.mark.slow
def test_stage1_retrains_after_a_change_dvc_tracks_and_resumes_otherwise(tmp_path):
    from test_pipeline_e2e import copy_repo, tiny_pipeline

    repo = copy_repo(tmp_path / "repo")
    params = tiny_pipeline(repo)
    params["evaluate"].update(finetune_tasks=["square"], linear_encoders=["stage1", "random0"])
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = dict(
        os.environ,
        PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        PYTHONPATH=str(repo / "src"),  # the copy's code runs (and is what DVC and the digests see)
        DVC_NO_ANALYTICS="1",
    )

    def run(*cmd: str) -> str:
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"{cmd}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        return proc.stdout + proc.stderr

    final = repo / "checkpoints" / "stage1" / "final" / "student.safetensors"
    assert "this call from step 0" in run("dvc", "repro", "pretrain_stage1")
    trained = load_file(final)

    # outside the closure (the report's code): the stage's inputs are unchanged, so it resumes
    with open(repo / "src" / "sslam" / "report" / "tables.py", "a") as f:
        f.write("\n# an edit the pretraining stage does not import\n")
    said = run(sys.executable, "stages/pretrain.py", "--stage", "stage1")
    assert "resuming stage1 from checkpoints/stage1/step-0000004 (step 4)" in said and "from step 4" in said

    # inside the closure: every learning rate halved; DVC reruns the stage and it trains from the start
    schedule = repo / "src" / "sslam" / "schedule.py"
    schedule.write_text(schedule.read_text().replace("return w * peak + (1.0 - w) * floor", "return 0.5 * peak * w"))
    said = run("dvc", "repro", "pretrain_stage1")
    assert "resuming" not in said and "this call from step 0" in said
    halved = load_file(final)
    assert any(not torch.equal(trained[k], halved[k]) for k in trained)

    # the data: pinned statistics change every input the encoder sees; the features rerun, stage 1 retrains
    params["features"].update(norm_mean=-5.0, norm_std=4.0)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    said = run("dvc", "repro", "pretrain_stage1")
    assert "Running stage 'features'" in said and "resuming" not in said and "this call from step 0" in said
    assert any(not torch.equal(halved[k], v) for k, v in load_file(final).items())
    meta = json.loads((final.parent / "meta.json").read_text())
    script = repo / "stages" / "pretrain.py"
    assert meta["fingerprint"]["inputs"] == stage_digest(
        script, "pretrain_stage1", repo / "params.yaml", [repo / "data" / "features"], src=repo / "src"
    )
    assert "pretrain_stage1" not in run("dvc", "status", "pretrain_stage1")


def test_data_digest_follows_content_not_names_or_times(tmp_path):
    from sslam.provenance import HashCache

    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.bin").write_bytes(b"one")
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(b"two")
    (tmp_path / "d" / ".tmp-x").write_bytes(b"a killed writer's leftover")
    cache = HashCache(tmp_path / "hashes.sqlite")
    before = data_digest([tmp_path / "d"], cache)
    assert data_digest([tmp_path / "d"], HashCache(None)) == before  # the table only saves work
    os.utime(tmp_path / "d" / "a.bin", ns=(1, 1))
    assert data_digest([tmp_path / "d"], cache) == before  # touched, same bytes
    (tmp_path / "d" / ".tmp-x").write_bytes(b"other leftovers")
    assert data_digest([tmp_path / "d"], cache) == before
    time.sleep(0.05)  # a new mtime: file systems stamp times at a clock tick of a few ms
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(b"TWO")  # same size, new content
    assert data_digest([tmp_path / "d"], cache) != before
    time.sleep(0.05)
    (tmp_path / "d" / "sub" / "b.bin").write_bytes(b"two")
    assert data_digest([tmp_path / "d"], cache) == before
    (tmp_path / "d" / "sub" / "b.bin").rename(tmp_path / "d" / "sub" / "c.bin")  # a rename is a change
    assert data_digest([tmp_path / "d"], cache) != before


def _hash_in_worker(table: str, files: list[str], barrier, out) -> None:
    from sslam.provenance import HashCache

    barrier.wait()  # every worker opens the new table at the same moment
    out.put([HashCache(table).file(f) for f in files])


def test_worker_processes_share_a_new_hash_table(tmp_path):
    """Feature and dataset workers open the table together, the first time included (the journal-mode
    switch of a new database takes a lock): every one gets the files' true SHA-256."""
    import hashlib
    from multiprocessing import get_context

    ctx = get_context("fork")
    files = []
    for k in range(8):
        (tmp_path / f"f{k}").write_bytes(os.urandom(1000 + k))
        files.append(str(tmp_path / f"f{k}"))
    truth = [hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in files]
    for trial in range(3):
        table = str(tmp_path / f"t{trial}" / "hashes.sqlite")
        barrier, out = ctx.Barrier(12), ctx.Queue()
        procs = [ctx.Process(target=_hash_in_worker, args=(table, files, barrier, out)) for _ in range(12)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert [p.exitcode for p in procs] == [0] * 12
        assert [out.get(timeout=5) for _ in procs] == [truth] * 12
