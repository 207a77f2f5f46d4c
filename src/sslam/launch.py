"""Starting pretraining on every GPU of one machine or of many: the pretraining stage is its own launcher.

``dvc repro`` runs ``python stages/pretrain.py ...`` once, on one machine. That call decides from
``pretrain.{num_processes, num_machines, launcher}`` and the environment what to start:

- one process in all: it trains itself, in this process;
- ``launcher: local``: ``accelerate launch`` with ``num_processes`` workers on this machine (NCCL between
  GPUs, gloo on the CPU), joined to the other machines' workers when ``num_machines > 1``: this machine's
  rank and the main machine's address come from the environment, torchrun's (``NODE_RANK``,
  ``MASTER_ADDR``, ``MASTER_PORT``) or SLURM's (``SLURM_NODEID``, ``SLURM_JOB_NODELIST``), never from a
  file edited per node;
- ``launcher: slurm``: ``srun`` runs the same command once per node of the job's allocation (one task
  per node, each then a ``local`` launcher as above) and waits, so DVC, on the head node, records the
  outputs the nodes wrote to the shared filesystem.

A worker (``LOCAL_RANK`` is set: accelerate / torchrun started it) always trains.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

NODE_TASK = "SSLAM_NODE_TASK"  # set by the slurm launcher for the per-node tasks it starts under srun


class LaunchError(RuntimeError):
    """The launch settings and the environment disagree; the message says what to set."""


@dataclass(frozen=True)
class Machine:
    """This machine's place in the job: its rank among ``count`` machines and where rank 0 listens."""

    rank: int
    count: int
    main_address: str
    port: int


def is_worker(env: Mapping[str, str]) -> bool:
    """Started by accelerate or torchrun as one of the training processes."""
    return "LOCAL_RANK" in env


def first_host(nodelist: str) -> str:
    """The first host of a SLURM hostlist (``node[03-05,9],gpu1`` -> ``node03``), the rendezvous host."""
    first = re.match(r"([^,\[]*)(\[([^\]]*)\])?([^,]*)", nodelist.strip())
    if first is None or not first.group(0):
        raise LaunchError(f"SLURM_JOB_NODELIST {nodelist!r}: no host in it")
    prefix, ranges, suffix = first.group(1), first.group(3), first.group(4)
    if ranges is None:
        return prefix + suffix
    start = ranges.split(",")[0].split("-")[0]
    if "[" in suffix:  # rack[1-2]-node[3-4]: the first of each bracket
        return prefix + start + first_host(suffix)
    return prefix + start + suffix


def this_machine(num_machines: int, default_port: int, env: Mapping[str, str]) -> Machine:
    """Rank and rendezvous of this machine, from the environment when there are several."""
    port = int(env.get("MASTER_PORT", default_port))
    if num_machines == 1:
        return Machine(0, 1, "127.0.0.1", int(env.get("MASTER_PORT", 0)))  # 0: a free port on this machine
    if "NODE_RANK" in env and "MASTER_ADDR" in env:
        rank, address = int(env["NODE_RANK"]), env["MASTER_ADDR"]
    elif "SLURM_NODEID" in env and "SLURM_JOB_NODELIST" in env:
        nodes = int(env.get("SLURM_NNODES", num_machines))
        if nodes != num_machines:
            raise LaunchError(
                f"pretrain.num_machines is {num_machines} but this SLURM job has {nodes} nodes (SLURM_NNODES): "
                f"allocate {num_machines} nodes or set pretrain.num_machines: {nodes}"
            )
        rank, address = int(env["SLURM_NODEID"]), env.get("MASTER_ADDR") or first_host(env["SLURM_JOB_NODELIST"])
    else:
        raise LaunchError(
            f"pretrain.num_machines is {num_machines}: this machine's rank and the main machine's address come "
            "from the environment, NODE_RANK and MASTER_ADDR (torchrun's names) or SLURM_NODEID and "
            "SLURM_JOB_NODELIST (inside a SLURM job; pretrain.launcher: slurm starts one task per node itself)"
        )
    if not 0 <= rank < num_machines:
        raise LaunchError(f"machine rank {rank} is outside 0..{num_machines - 1} (pretrain.num_machines)")
    return Machine(rank, num_machines, address, port)


def accelerate_config(processes_per_machine: int, machine: Machine) -> dict:
    """accelerate's launch settings, complete, so no hidden default config of the user's can change a run.
    MULTI_GPU starts one worker per process with torchrun; each worker takes NCCL on GPUs, gloo on the CPU."""
    return {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "MULTI_GPU",
        "num_processes": processes_per_machine * machine.count,  # accelerate counts every machine's
        "num_machines": machine.count,
        "machine_rank": machine.rank,
        "main_process_ip": machine.main_address,
        "main_process_port": machine.port,
        "rdzv_backend": "static",
        "same_network": True,
        "gpu_ids": "all",
        "mixed_precision": "no",  # the training code sets pretrain.mixed_precision on its Accelerator
        "use_cpu": False,
        "main_training_function": "main",
        "debug": False,
    }


def slurm_command(num_machines: int, script: str, argv: Sequence[str]) -> list[str]:
    """srun: the stage command once per node of the allocation; a failed node ends the job."""
    srun = shutil.which("srun")
    if srun is None:
        raise LaunchError("pretrain.launcher is slurm but srun is not on PATH (run dvc inside a SLURM allocation)")
    return [
        srun,
        f"--nodes={num_machines}",
        f"--ntasks={num_machines}",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
        sys.executable,
        script,
        *argv,
    ]


def launch(
    num_processes: int,
    num_machines: int,
    launcher: str,
    default_port: int,
    script: str,
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> int | None:
    """Start the workers of ``script argv`` and wait for them; their exit code. None: this process is the
    only one (or already a worker) and should train itself."""
    env = dict(os.environ if env is None else env)
    if is_worker(env):
        return None
    if launcher == "slurm" and NODE_TASK not in env:
        cmd = slurm_command(num_machines, script, argv)
        print("launch: " + " ".join(cmd), flush=True)
        return subprocess.run(cmd, env=env | {NODE_TASK: "1"}).returncode
    machine = this_machine(num_machines, default_port, env)
    if num_processes * num_machines == 1:
        return None
    with tempfile.TemporaryDirectory(prefix="sslam-launch-") as tmp:
        config = Path(tmp) / "accelerate.yaml"
        config.write_text(yaml.safe_dump(accelerate_config(num_processes, machine)))
        cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config), script, *argv]
        print(
            f"launch: machine {machine.rank} of {machine.count}, {num_processes} processes here "
            f"(world size {num_processes * num_machines}), rendezvous {machine.main_address}:{machine.port}",
            flush=True,
        )
        return subprocess.run(cmd, env=env).returncode
