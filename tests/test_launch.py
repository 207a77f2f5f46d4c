"""Many processes and many machines, started by the pipeline's own command: `dvc repro` with
`pretrain.num_processes: 2`, two "machines" on loopback, and `pretrain.launcher: slurm` under an srun
stand-in, all on the CPU over gloo, against the same run started by torchrun."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sslam.launch import LaunchError, Machine, accelerate_config, first_host, launch, this_machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the launch plan


@pytest.mark.parametrize(
    "nodelist, host",
    [
        ("gpu07", "gpu07"),
        ("node[03-05,9]", "node03"),
        ("node[12,3],login1", "node12"),
        ("rack[1-2]-node[3-4]", "rack1-node3"),
        ("127.0.0.[1-2]", "127.0.0.1"),
        ("a,b", "a"),
    ],
)
def test_first_host_of_a_slurm_nodelist(nodelist, host):
    assert first_host(nodelist) == host


def test_machine_rank_and_rendezvous_come_from_the_environment():
    assert this_machine(1, 29500, {}) == Machine(0, 1, "127.0.0.1", 0)  # one machine: any free port
    torchrun_env = {"NODE_RANK": "1", "MASTER_ADDR": "10.0.0.5", "MASTER_PORT": "1234"}
    assert this_machine(2, 29500, torchrun_env) == Machine(1, 2, "10.0.0.5", 1234)
    slurm = {"SLURM_NODEID": "3", "SLURM_NNODES": "4", "SLURM_JOB_NODELIST": "gpu[10-13]"}
    assert this_machine(4, 29500, slurm) == Machine(3, 4, "gpu10", 29500)
    with pytest.raises(LaunchError, match="SLURM job has 4 nodes"):
        this_machine(2, 29500, slurm)
    with pytest.raises(LaunchError, match="NODE_RANK and MASTER_ADDR"):
        this_machine(2, 29500, {})
    with pytest.raises(LaunchError, match="outside 0..1"):
        this_machine(2, 29500, {"NODE_RANK": "2", "MASTER_ADDR": "h"})


def test_accelerate_is_told_every_machines_processes():
    cfg = accelerate_config(8, Machine(2, 4, "gpu10", 29500))
    assert (cfg["num_processes"], cfg["num_machines"], cfg["machine_rank"]) == (32, 4, 2)
    assert cfg["distributed_type"] == "MULTI_GPU" and cfg["main_process_ip"] == "gpu10"


def test_one_process_trains_in_place_and_a_worker_never_relaunches():
    assert launch(1, 1, "local", 29500, "x.py", []) is None
    assert launch(8, 1, "local", 29500, "x.py", [], env={"LOCAL_RANK": "3"}) is None


def test_slurm_without_srun_says_so(monkeypatch):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(LaunchError, match="srun is not on PATH"):
        launch(1, 2, "slurm", 29500, "x.py", [], env={"PATH": "/nonexistent"})


# ----------------------------------------------------------------------------- real runs

SRUN = """#!{python}
# srun stand-in: `--nodes=N` tasks of the command on this machine, each with SLURM's per-node variables
import os, subprocess, sys
args, nodes = sys.argv[1:], 1
while args and args[0].startswith("--"):
    a = args.pop(0)
    if a.startswith("--nodes="):
        nodes = int(a.split("=")[1])
env = dict(os.environ, SLURM_NNODES=str(nodes), SLURM_JOB_NODELIST=f"127.0.0.[1-{{nodes}}]", SLURM_JOB_ID="77")
procs = [subprocess.Popen(args, env=dict(env, SLURM_NODEID=str(i), SLURM_PROCID=str(i))) for i in range(nodes)]
sys.exit(max(p.wait() for p in procs))
"""


def run(cmd: list[str], cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    base = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=base | (env or {}), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def weights(folder: Path) -> dict[str, torch.Tensor]:
    return {f"{n}.{k}": v for n in ("student", "teacher") for k, v in load_file(folder / f"{n}.safetensors").items()}


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    different = [k for k in wa if not torch.equal(wa[k], wb[k])]
    assert not different, f"{a} and {b} differ in {different[:5]}"


def read_log(folder: Path, rank: int) -> dict[int, list[int]]:
    """epoch -> the store rows rank read in it, in order."""
    out: dict[int, list[int]] = {}
    for line in (folder / f"rank{rank}.tsv").read_text().splitlines():
        epoch, _, rows = line.split("\t")
        out.setdefault(int(epoch), []).extend(int(r) for r in rows.split(","))
    return out


@pytest.mark.slow
def test_the_pipeline_starts_its_workers_on_one_machine_and_on_two(tmp_path):
    from test_pipeline_e2e import copy_repo, tiny_pipeline

    repo = copy_repo(tmp_path / "repo")
    params = tiny_pipeline(repo)
    params["evaluate"].update(finetune_tasks=["square"], linear_encoders=["stage1", "random0"])
    params["pretrain"].update(num_processes=2, cpu_threads=1)  # one thread each: every run adds in one order
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    logs = tmp_path / "reads"

    # 1. dvc repro: two workers from the stage's own command
    out = run(["dvc", "repro", "pretrain_stage1"], repo, {"SSLAM_READ_LOG": str(logs)})
    said = out.stdout + out.stderr
    assert "2 processes here (world size 2)" in said
    assert said.count("pretrain stage1: 4 steps") == 1, "only rank 0 prints the run's summary"
    m = json.loads((repo / "metrics" / "pretrain_stage1.json").read_text())
    assert (m["world_size"], m["global_batch"], m["replicas_identical"]) == (2, 8, True)

    # each rank read its own part of every epoch: the seeded permutation strided by rank, never the other's
    clips, per_epoch = 20, 2 * 4  # 10 clips per rank, 2 micro-batches of 4
    r0, r1 = read_log(logs, 0), read_log(logs, 1)
    assert sorted(r0) == sorted(r1) == [0, 1]
    for epoch in (0, 1):
        perm = torch.randperm(clips, generator=torch.Generator().manual_seed(params["pretrain"]["seed"] + epoch))
        assert r0[epoch] == perm[0::2][:per_epoch].tolist()
        assert r1[epoch] == perm[1::2][:per_epoch].tolist()
        assert not set(r0[epoch]) & set(r1[epoch])
    final = repo / "checkpoints" / "stage1" / "final"

    # 2. the same run started by torchrun: the same weights
    stage = ["stages/pretrain.py", "--stage", "stage1"]
    port = str(free_port())
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", port]
    run([*torchrun, *stage, "--checkpoints", str(tmp_path / "torchrun"), "--metrics-dir", str(tmp_path / "mt")], repo)
    assert_same_weights(final, tmp_path / "torchrun" / "final")

    # 3. two machines (one process each) meeting on loopback, each told its rank by the environment
    two = yaml.safe_load((repo / "params.yaml").read_text())
    two["pretrain"].update(num_processes=1, num_machines=2)
    (tmp_path / "two.yaml").write_text(yaml.safe_dump(two, sort_keys=False))
    port = str(free_port())
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")
    args = [*stage, "--params", str(tmp_path / "two.yaml"), "--checkpoints", str(tmp_path / "two")]
    nodes = [
        subprocess.Popen(
            [sys.executable, *args, "--metrics-dir", str(tmp_path / f"m{r}")],
            cwd=repo,
            env=env | {"NODE_RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port},
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for r in (0, 1)
    ]
    outs = [p.communicate(timeout=600)[0] for p in nodes]
    assert [p.returncode for p in nodes] == [0, 0], "\n".join(o[-2000:] for o in outs)
    assert "machine 1 of 2" in outs[1]
    m0 = json.loads((tmp_path / "m0" / "pretrain_stage1.json").read_text())
    assert (m0["world_size"], m0["replicas_identical"]) == (2, True)  # both machines ended with equal weights
    assert not (tmp_path / "m1" / "pretrain_stage1.json").exists()  # the other machine's rank is not the main one
    assert_same_weights(final, tmp_path / "two" / "final")

    # 4. launcher slurm: dvc repro on the "head node" runs the stage once per node under srun and waits
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text(SRUN.format(python=sys.executable))
    (bin_dir / "srun").chmod(0o755)
    two["pretrain"]["launcher"] = "slurm"
    (repo / "params.yaml").write_text(yaml.safe_dump(two, sort_keys=False))
    path = f"{bin_dir}:{Path(sys.executable).parent}:{os.environ['PATH']}"
    out = run(["dvc", "repro", "pretrain_stage1"], repo, {"PATH": path, "MASTER_PORT": str(free_port())})
    said = out.stdout + out.stderr
    assert "srun --nodes=2 --ntasks=2 --ntasks-per-node=1" in said and "machine 1 of 2" in said
    assert_same_weights(final, tmp_path / "two" / "final")  # the slurm run's output, recorded by DVC
    assert "pretrain_stage1" not in run(["dvc", "status", "pretrain_stage1"], repo).stdout
