"""Records tests/data/redesign_before.json: the numbers tests/test_redesign_regression.py checks.

Run it with the code *before* the redesign (a git worktree of that commit, here /tmp/before):

    cd /tmp/before && PYTHONPATH=/tmp/before/src:/tmp/before/tests \
        /work/main/.venv/bin/python /work/main/tests/data/record_redesign.py

For each encoder (transformer, mamba, xlstm) and stage-1 objective (bootstrap, ssast, msm): the loss of
each of the 4 stage-1 steps through ``train_stage`` on tiny_setup's corpus, and the float64 sum and sum
of squares of every tensor of ``final/student.safetensors`` (8 significant digits). For bootstrap also the
3 stage-2 steps from that stage-1 checkpoint, for the variants sslam and mb_ua. One torch thread
(``pretrain.cpu_threads: 1``): the numbers do not depend on the machine's core count.

``noise``: a few tensors have (nearly) no gradient, e.g. the key bias inside ``qkv.bias`` (softmax is
blind to it) and SSAST's discriminative head biases (InfoNCE is blind to a shift shared by the
candidates). AdamW turns their float-noise gradients into full-size steps, so their values depend on the
order of float operations, not on the math. The recording is repeated with other vectorised kernels
(ATEN_CPU_CAPABILITY default, avx2) and two threads; ``noise[name]`` is the largest change seen, relative
to the tensor's scale (L2 norm for the sum, sum of squares for itself), where above 1e-6. The test widens
those tensors' tolerance to ten times it. The run procedure below is the test's (keep the two in step)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from pretrain_helpers import tiny_setup
from safetensors.torch import load_file

from sslam.config.params import load_config
from sslam.pretrain.loop import train_stage

OUT = Path(__file__).resolve().parent / "redesign_before.json"
ENCODERS = ("transformer", "mamba", "xlstm")
OBJECTIVES = ("bootstrap", "ssast", "msm")
VARIANTS = ("sslam", "mb_ua")
PERTURBED = ({"ATEN_CPU_CAPABILITY": "default"}, {"ATEN_CPU_CAPABILITY": "avx2"}, {"THREADS": "2"})


def overrides(encoder: str, objective: str, variant: str | None = None, threads: int = 1) -> dict[str, object]:
    """The dotted params overrides of one run, on top of tiny_setup's params.yaml (stage 1: 4 steps)."""
    out: dict[str, object] = {
        "model.encoder": encoder,
        "model.masked_tokens": "drop" if encoder == "transformer" and objective == "bootstrap" else "mask_token",
        "pretrain.objective": objective,
        "pretrain.ssast.mask_count": 24,  # of the 4 x 8 patch grid (64 frames x 128 mel): 119 does not fit
        "pretrain.cpu_threads": threads,
    }
    if variant is not None:
        out["pretrain.stage2.variant"] = variant
    return out


def tensor_sums(final: Path) -> dict[str, list[float]]:
    """name -> [sum, sum of squares] in float64, 8 significant digits."""
    weights = load_file(final / "student.safetensors")
    return {
        k: [float(f"{float(t.double().sum()):.8g}"), float(f"{float((t.double() ** 2).sum()):.8g}")]
        for k, t in sorted(weights.items())
    }


def run(params: Path, feats: Path, out: Path, stage: str, ov: dict, init_from: Path | None = None) -> dict:
    """One train_stage run: {"losses": [loss per step], "student": tensor_sums(final/)}."""
    logs: dict[int, float] = {}
    train_stage(
        load_config(params, ov),
        stage,
        feats,
        out,
        None,
        cpu=True,
        init_from=init_from,
        step_hook=lambda s, losses: logs.__setitem__(s, float(losses["loss"])),
    )
    return {"losses": [logs[k] for k in sorted(logs)], "student": tensor_sums(out / "final")}


def record(threads: int = 1) -> dict:
    """``{"<encoder>/<objective>": {"stage1": run, ["stage2/<variant>": run, ...]}}``."""
    result: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        params, feats = tiny_setup(root, steps=4, checkpoint_every=100)
        for encoder in ENCODERS:
            for objective in OBJECTIVES:
                s1 = root / f"{encoder}-{objective}" / "stage1"
                case = {"stage1": run(params, feats, s1, "stage1", overrides(encoder, objective, threads=threads))}
                if objective == "bootstrap":
                    for variant in VARIANTS:
                        ov = overrides(encoder, objective, variant, threads)
                        s2 = root / f"{encoder}-{objective}" / f"stage2-{variant}"
                        case[f"stage2/{variant}"] = run(params, feats, s2, "stage2", ov, s1 / "final")
                result[f"{encoder}/{objective}"] = case
    return result


def noise(want: dict, others: list[dict]) -> None:
    """Adds each run's ``noise`` (see the module docstring) to ``want``."""
    for key, case in want.items():
        for stage, got in case.items():
            spread: dict[str, float] = {}
            for name, (s, q) in got["student"].items():
                for other in others:
                    s2, q2 = other[key][stage]["student"][name]
                    d = max(abs(s - s2) / math.sqrt(q) if q else abs(s - s2), abs(q - q2) / q if q else abs(q2))
                    spread[name] = max(spread.get(name, 0.0), d)
            got["noise"] = {k: float(f"{v:.2g}") for k, v in sorted(spread.items()) if v > 1e-6}


def main() -> None:
    t0 = time.perf_counter()
    if len(sys.argv) == 3 and sys.argv[1] == "--perturbed":  # a child of main(): one perturbed recording
        Path(sys.argv[2]).write_text(json.dumps(record(int(os.environ.get("THREADS", "1")))))
        return
    from conftest import REPO

    import sslam

    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
    print(f"sslam from {sslam.__file__} (commit {commit}), torch {torch.__version__}", file=sys.stderr)
    cases = record()
    others = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, env in enumerate(PERTURBED):
            path = Path(tmp) / f"{i}.json"
            subprocess.run(
                [sys.executable, __file__, "--perturbed", str(path)],
                env=os.environ | env,
                check=True,
                capture_output=True,
            )
            others.append(json.loads(path.read_text()))
    noise(cases, others)
    out = {"commit": commit, "torch": torch.__version__, "cases": cases}
    OUT.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {OUT} in {time.perf_counter() - t0:.1f} s", file=sys.stderr)


if __name__ == "__main__":
    main()
