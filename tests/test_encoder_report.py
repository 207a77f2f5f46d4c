"""The encoder comparison table from real `dvc exp` runs of a tiny project (a stage that writes metrics
from params): which runs become rows, the pretrained / control pairs and the mean gain by hand."""

from __future__ import annotations

import json

from conftest import dvc_project

from sslam.experiments.encoders import main

MAKE = """import json, yaml
p = yaml.safe_load(open("params.yaml"))
enc = p["model"]["encoder"]
pre = {"transformer": 0.60, "mamba": 0.50, "xlstm": 0.45}[enc] + 0.01 * p["model"]["mamba"]["d_state"]
pre += 0.1 * p["pretrain"]["lr"]
ctrl = {"transformer": 0.40, "mamba": 0.42, "xlstm": 0.30}[enc]
for task, scale in (("square", 1.0), ("mono", 0.5)):
    json.dump({"task": task, "regime": "linear", "metric": "map",
               "encoders": {"stage2": {"map": scale * pre}, "random0": {"map": scale * ctrl},
                            "fbank_stats": {"map": scale * 0.35}}},
              open(f"metrics/eval/{task}_linear.json", "w"))
json.dump({"task": "square", "regime": "finetune", "metric": "map",
           "encoders": {"stage2": {"map": 0.9}, "random0": {"map": 0.7}}},
          open("metrics/eval/square_finetune.json", "w"))
"""
DVC_YAML = """stages:
  ev:
    cmd: python make.py
    deps: [make.py]
    params: [model, mask, pretrain]
    metrics:
      - metrics/eval/square_linear.json: {cache: false}
      - metrics/eval/mono_linear.json: {cache: false}
      - metrics/eval/square_finetune.json: {cache: false}
"""


def test_encoder_table_from_dvc_experiments(tmp_path):
    params = "model: {encoder: transformer, mamba: {d_state: 0}}\nmask: {clone_batch: 4}\npretrain: {lr: 0.0}\n"
    sh = dvc_project(tmp_path, {"params.yaml": params, "make.py": MAKE, "dvc.yaml": DVC_YAML})

    def exp(*args: str) -> None:  # each from the commit's params: `dvc exp run` leaves the last run's in place
        sh("git", "checkout", "--", "params.yaml")
        sh("dvc", "exp", "run", "-q", *args)

    exp("-n", "mamba_old", "-S", "model.encoder=mamba")
    sh(
        "dvc",
        "exp",
        "run",
        "-q",
        "-n",
        "mamba",
        "-S",
        "model.encoder=mamba",
        "-S",
        "model.mamba.d_state=2",
        "-S",
        "mask.clone_batch=1",
    )
    exp("-n", "xlstm", "-S", "model.encoder=xlstm", "-S", "mask.clone_batch=1")
    exp("-n", "xlstm_lr", "-S", "model.encoder=xlstm", "-S", "pretrain.lr=1.0")
    shown = tmp_path / "exp.json"
    shown.write_text(sh("dvc", "exp", "show", "--json"))

    out = tmp_path / "encoders.md"
    assert main(["--json", str(shown), "--out", str(out)]) == 0
    md = out.read_text()
    table = json.loads(out.with_suffix(".json").read_text())
    assert set(table) == {"transformer", "mamba", "xlstm"}
    # the latest mamba run wins; xlstm_lr changed a non-encoder key (pretrain.lr): not a row
    assert table["mamba"]["run"] == "mamba" and table["xlstm"]["run"] == "xlstm"
    assert table["mamba"]["settings"] == {"model.encoder": "mamba", "model.mamba.d_state": 2, "mask.clone_batch": 1}
    assert table["mamba"]["scores"]["square/linear"] == {"stage2": 0.52, "random0": 0.42}
    # mean gain (linear) by hand: square 0.52 - 0.42, mono 0.26 - 0.21 -> 0.075
    assert abs(table["mamba"]["mean_gain"]["linear"] - 0.075) < 1e-9
    assert abs(table["xlstm"]["mean_gain"]["linear"] - (0.15 + 0.075) / 2) < 1e-9
    assert abs(table["transformer"]["mean_gain"]["finetune"] - 0.2) < 1e-9
    row = next(line for line in md.splitlines() if line.startswith("| mamba |"))
    assert "| 26.0 / 21.0 | 52.0 / 42.0 | 90.0 / 70.0 | +7.5 | +20.0 |" in row
    assert "mask.clone_batch=1, model.mamba.d_state=2" in row
    floor = next(line for line in md.splitlines() if line.startswith("| fbank_stats (floor) |"))
    assert floor.endswith("| 17.5 | 35.0 | - | - | - |")  # linear columns only; no gain for the floor
