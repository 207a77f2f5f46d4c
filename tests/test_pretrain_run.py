"""Stage-1 training for real: DDP over gloo with two processes, kill and resume, NaN stop."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO
from pretrain_helpers import tiny_setup, torchrun
from safetensors.torch import load_file

STAGE = str(REPO / "stages" / "pretrain.py")


def stage_cmd(params: Path, feats: Path, ckpt: Path, metrics: Path, extra: list[str] = ()) -> list[str]:
    return [
        sys.executable,
        STAGE,
        "--params",
        str(params),
        "--features",
        str(feats),
        "--checkpoints",
        str(ckpt),
        "--metrics-dir",
        str(metrics),
        "--cpu",
        *extra,
    ]


def run_stage(
    params: Path, feats: Path, ckpt: Path, metrics: Path, extra: list[str] = ()
) -> subprocess.CompletedProcess:
    cmd = stage_cmd(params, feats, ckpt, metrics, extra)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600)


WORKER = """
import sys, torch
from accelerate import PartialState
from sslam.config.params import load_config
from sslam.pretrain.loop import train_stage
cfg = load_config(sys.argv[1])
losses = {}
def on_step(step, logs):
    losses[step] = logs["loss"]
def on_end(student, teacher):
    rank = PartialState().process_index
    torch.save({"world": PartialState().num_processes, "losses": losses,
                "student": {k: v.clone() for k, v in student.state_dict().items()},
                "teacher": {k: v.clone() for k, v in teacher.state_dict().items()}}, f"{sys.argv[4]}/rank{rank}.pt")
train_stage(cfg, "stage1", sys.argv[2], sys.argv[3], None, cpu=True, step_hook=on_step, end_hook=on_end)
"""


@pytest.mark.slow
def test_two_processes_ddp_keep_identical_weights(tmp_path):
    """torchrun starts two real processes; the Accelerator on the CPU runs DDP over gloo."""
    params, feats = tiny_setup(tmp_path, steps=4, checkpoint_every=100)
    (tmp_path / "worker.py").write_text(WORKER)
    proc = torchrun(tmp_path / "worker.py", 29623, params, feats, tmp_path / "ckpt", tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt") for r in range(2))
    assert r0["world"] == r1["world"] == 2
    assert r0["losses"] != r1["losses"]  # each rank trained on its own clips ...
    for part in ("student", "teacher"):  # ... and gradients were averaged: identical weights
        assert r0[part].keys() == r1[part].keys()
        assert all(torch.equal(r0[part][k], r1[part][k]) for k in r0[part]), part
    saved = load_file(tmp_path / "ckpt" / "final" / "student.safetensors")
    assert all(torch.equal(saved[k], r0["student"][k]) for k in saved)
    init = tiny_initial_student(params)
    assert any(not torch.equal(init[k], saved[k]) for k in saved)  # training moved the weights


def tiny_initial_student(params: Path) -> dict:
    from sslam.config.params import load_config
    from sslam.pretrain.student import Student

    cfg = load_config(params)
    torch.manual_seed(cfg.pretrain.seed)
    return Student(cfg.model, 64, 128).state_dict()


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tmp_path):
    params, feats = tiny_setup(tmp_path, steps=60, checkpoint_every=5)
    clean = run_stage(params, feats, tmp_path / "clean", tmp_path / "m_clean")
    assert clean.returncode == 0, clean.stderr[-3000:]

    cmd = stage_cmd(params, feats, tmp_path / "killed", tmp_path / "m_killed")
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and not (tmp_path / "killed" / "step-0000010" / "meta.json").exists():
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "killed" / "final").exists(), "the kill came too late to test a resume"
    resumed = run_stage(params, feats, tmp_path / "killed", tmp_path / "m_killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming stage1" in resumed.stdout + resumed.stderr
    for name in ("student.safetensors", "teacher.safetensors"):
        a, b = load_file(tmp_path / "clean" / "final" / name), load_file(tmp_path / "killed" / "final" / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    # only the newest checkpoints are kept, and no temporary folder is left
    assert sorted(p.name for p in (tmp_path / "killed").iterdir()) == ["final", "step-0000055", "step-0000060"]
    import json

    m = json.loads((tmp_path / "m_killed" / "pretrain_stage1.json").read_text())
    assert m["loss_curve"]["logged_steps"] == 60
    # the metrics say what was computed, not how the run went: killed-and-resumed equals uninterrupted
    assert m == json.loads((tmp_path / "m_clean" / "pretrain_stage1.json").read_text())
    import re

    assert int(re.search(r"this call from step (\d+)", resumed.stdout).group(1)) >= 10


def test_non_finite_loss_names_step_term_and_checkpoint(tmp_path, monkeypatch):
    import sslam.pretrain.loop as L
    import sslam.pretrain.objectives.bootstrap as bootstrap
    from sslam.config.params import load_config

    params, feats = tiny_setup(tmp_path, steps=8, checkpoint_every=2)
    real = bootstrap.stage1_losses

    def poisoned(student, teacher, x, mask, stage, seed, centring=None, _calls=[0]):  # noqa: B006  a call counter
        out = real(student, teacher, x, mask, stage, seed, centring)
        _calls[0] += 1
        if _calls[0] == 4:  # step 3
            out["local"] = out["local"] * float("nan")
            out["loss"] = out["local"] + out["global"]
        return out

    monkeypatch.setattr(bootstrap, "stage1_losses", poisoned)
    with pytest.raises(
        L.NonFiniteLoss, match=r"stage1 step 3: loss term 'loss' is not finite .* last good checkpoint: .*step-0000002"
    ):
        L.train_stage(load_config(params), "stage1", feats, tmp_path / "ck", None, cpu=True)


def test_loss_falls_on_the_tiny_corpus(tmp_path):
    from sslam.config.params import load_config
    from sslam.pretrain.loop import train_stage

    params, feats = tiny_setup(tmp_path, steps=40, checkpoint_every=100)
    losses = {}
    train_stage(
        load_config(params),
        "stage1",
        feats,
        tmp_path / "ck",
        tmp_path / "live",
        cpu=True,
        step_hook=lambda step, logs: losses.__setitem__(step, logs["local"]),
    )
    first, last = sum(losses[s] for s in range(5)) / 5, sum(losses[s] for s in range(35, 40)) / 5
    assert last < 0.9 * first  # measured: about 7.6 -> 6.2
    assert (tmp_path / "live" / "plots" / "metrics" / "stage1" / "loss.tsv").is_file()


@pytest.mark.parametrize("strategy", ["max", "average", "waveform"])
def test_stage2_runs_with_every_mixing_strategy(tmp_path, strategy):
    from sslam.config.params import load_config
    from sslam.pretrain.loop import train_stage

    params, feats = tiny_setup(tmp_path, steps=2, checkpoint_every=100)
    cfg = load_config(params)
    train_stage(cfg, "stage1", feats, tmp_path / "s1", None, cpu=True)
    cfg2 = load_config(params, {"mix.strategy": strategy})
    seen = []
    train_stage(
        cfg2,
        "stage2",
        feats,
        tmp_path / "s2",
        tmp_path / "live2",
        cpu=True,
        init_from=tmp_path / "s1" / "final",
        step_hook=lambda step, logs: seen.append(logs),
    )
    assert len(seen) == 3 and {"local_unmixed", "global_unmixed", "local_mixed", "global_mixed", "srl"} <= set(seen[0])
    curves = {p.stem for p in (tmp_path / "live2" / "plots" / "metrics" / "stage2").glob("*.tsv")}
    assert {"local_unmixed", "global_unmixed", "local_mixed", "global_mixed", "srl", "loss"} <= curves
    assert (tmp_path / "s2" / "final" / "student.safetensors").is_file()
    # stage 2 started from stage 1's weights, not from a fresh initialisation
    with pytest.raises(FileNotFoundError, match="stage 1's final checkpoint"):
        train_stage(cfg2, "stage2", feats, tmp_path / "s3", None, cpu=True, init_from=tmp_path / "missing")


def test_prefetched_micro_batches_are_the_ones_read_in_the_loop(tmp_path):
    """Read-ahead threads change when a batch is read, never what it holds: the same rows and bytes over
    epoch boundaries, with random crops, and from a resumed step (what was read ahead is dropped)."""
    from accelerate import Accelerator

    from sslam.features.reader import FeatureStore
    from sslam.pretrain.loop import MicroBatches

    _, feats = tiny_setup(tmp_path)
    store, acc = FeatureStore(feats, "unbalanced"), Accelerator(cpu=True)
    plain = MicroBatches(store, acc, 5, 3, "stage1", crop=40, prefetch=0)
    ahead = MicroBatches(store, acc, 5, 3, "stage1", crop=40, prefetch=3)
    for k in [*range(0, 15), *range(20, 26), 7, 8]:  # 6 batches per epoch; a jump ahead and one back
        (xa, ia), (xb, ib) = plain(k), ahead(k)
        assert ia == ib and torch.equal(xa, xb) and xa.shape[1] == 40, k
    ahead.close()
    # without crops the batch is the store's own rows, normalised: an independent per-clip read
    whole = MicroBatches(store, acc, 5, 3, "stage1", prefetch=2)
    for k in range(8):
        x, idx = whole(k)
        assert torch.equal(x, torch.stack([store[i] for i in idx]))
    whole.close()
