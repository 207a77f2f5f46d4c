"""The redesign keeps every number: for each encoder and stage-1 objective, a few real training steps
through ``train_stage`` (and for bootstrap, stage 2's sslam and mb_ua from that checkpoint) give the losses
and final student weights recorded with the code before it (tests/data/redesign_before.json, made by
tests/data/record_redesign.py). Tolerances allow for another CPU's last digits, not for a change in the
math; tensors whose values are float noise (no gradient: the recording's ``noise``) get a wider one."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from conftest import REPO
from pretrain_helpers import tiny_setup
from safetensors.torch import load_file

from sslam.config.params import load_config
from sslam.pretrain.loop import train_stage


def train(
    params: Path, feats: Path, out: Path, encoder: str, objective: str, variant: str | None = None
) -> list[float]:
    """The one place this file meets sslam's API (adapt it here): stage 1 of tiny_setup's params with
    ``encoder`` and ``objective`` into ``out``, or with ``variant`` stage 2 from ``out.parent / "stage1"``;
    returns the loss of every step (the final weights are in ``out / "final"``)."""
    overrides: dict[str, object] = {
        "model.encoder": encoder,
        "model.masked_tokens": "drop" if encoder == "transformer" and objective == "bootstrap" else "mask_token",
        "pretrain.objective": objective,
        "pretrain.ssast.mask_count": 24,  # of the 4 x 8 patch grid: the default 119 does not fit
        "pretrain.cpu_threads": 1,  # as recorded: the numbers do not depend on the core count
    }
    if variant is not None:
        overrides["pretrain.stage2.variant"] = variant
    logs: dict[int, float] = {}
    threads = torch.get_num_threads()  # train_stage sets the process-wide count; later tests keep theirs
    try:
        train_stage(
            load_config(params, overrides),
            "stage1" if variant is None else "stage2",
            feats,
            out,
            None,
            cpu=True,
            init_from=None if variant is None else out.parent / "stage1" / "final",
            step_hook=lambda s, losses: logs.__setitem__(s, float(losses["loss"])),
        )
    finally:
        torch.set_num_threads(threads)
    return [logs[k] for k in sorted(logs)]


WANT = json.loads((REPO / "tests" / "data" / "redesign_before.json").read_text())["cases"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    return tiny_setup(tmp_path_factory.mktemp("tiny"), steps=4, checkpoint_every=100)


def check(losses: list[float], final: Path, want: dict, what: str) -> None:
    """Losses to rel 1e-4; every tensor's sum (to 1e-5 of its L2 norm or of itself) and sum of squares
    (rel 1e-5), the tolerance widened to 10x the recorded float noise where there is some."""
    assert losses == pytest.approx(want["losses"], rel=1e-4), f"{what}: losses"
    got = {k: t.double() for k, t in load_file(final / "student.safetensors").items()}
    assert sorted(got) == sorted(want["student"]), f"{what}: student tensor names"
    bad = []
    for name, (s, q) in want["student"].items():
        tol = max(1e-5, 10 * want["noise"].get(name, 0.0))
        gs, gq = float(got[name].sum()), float((got[name] ** 2).sum())
        if gs != pytest.approx(s, rel=tol, abs=tol * math.sqrt(q)) or gq != pytest.approx(q, rel=tol):
            bad.append(f"{name}: sum {gs:.8g} (was {s:.8g}), sum of squares {gq:.8g} (was {q:.8g})")
    assert not bad, f"{what}: student tensors moved:\n" + "\n".join(bad)


@pytest.mark.parametrize("objective", ["bootstrap", "ssast", "msm"])
@pytest.mark.parametrize("encoder", ["transformer", "mamba", "xlstm"])
def test_training_reproduces_recorded_numbers(tiny, tmp_path, encoder, objective):
    params, feats = tiny
    want = WANT[f"{encoder}/{objective}"]
    losses = train(params, feats, tmp_path / "stage1", encoder, objective)
    check(losses, tmp_path / "stage1" / "final", want["stage1"], "stage1")
    if objective == "bootstrap":
        for variant in ("sslam", "mb_ua"):
            out = tmp_path / f"stage2-{variant}"
            losses = train(params, feats, out, encoder, objective, variant)
            check(losses, out / "final", want[f"stage2/{variant}"], f"stage2/{variant}")
