"""Ablation tables from real `dvc exp` runs of a tiny project (a stage that writes a metric from params)."""

from __future__ import annotations

import json

from conftest import dvc_project

from sslam.experiments.ablations import main
from sslam.experiments.runs import runs_from_exp_show

MAKE = """import json, yaml
p = yaml.safe_load(open("params.yaml"))
v = {"max": 0.5, "average": 0.4, "waveform": 0.3}[p["mix"]["strategy"]]
v += 0.05 if p["srl"]["aggregation"] == "max" else 0
json.dump({"task": "square", "regime": "linear", "metric": "map",
           "encoders": {"stage2": {"map": v}, "random0": {"map": 0.2}}}, open("metrics/eval/square_linear.json", "w"))
"""
DVC_YAML = """stages:
  ev:
    cmd: python make.py
    deps: [make.py]
    params: [mix, srl]
    metrics:
      - metrics/eval/square_linear.json: {cache: false}
"""


def test_ablation_tables_from_dvc_experiments(tmp_path, monkeypatch):
    sh = dvc_project(
        tmp_path,
        {"params.yaml": "mix: {strategy: max}\nsrl: {aggregation: mean}\n", "make.py": MAKE, "dvc.yaml": DVC_YAML},
    )
    sh("dvc", "exp", "run", "-q", "-n", "avg", "-S", "mix.strategy=average")
    sh("dvc", "exp", "run", "-q", "-n", "wave", "-S", "mix.strategy=waveform")
    sh("dvc", "exp", "run", "-q", "-n", "srlmax", "-S", "mix.strategy=max", "-S", "srl.aggregation=max")
    sh("dvc", "exp", "run", "-q", "-n", "both", "-S", "mix.strategy=average", "-S", "srl.aggregation=max")
    shown = tmp_path / "exp.json"
    shown.write_text(sh("dvc", "exp", "show", "--json"))
    runs = {r.name: r for r in runs_from_exp_show(json.loads(shown.read_text()))}
    assert {"avg", "wave", "srlmax", "both"} <= set(runs)
    assert runs["wave"].metrics["square/linear/stage2"] == 0.3

    out = tmp_path / "ablations.md"
    assert main(["--json", str(shown), "--out", str(out)]) == 0
    md = out.read_text()
    t10 = md[md.index("## Table 10") : md.index("## Table 11")]
    t11 = md[md.index("## Table 11") :]
    # Table 10: the baseline and the two strategy runs, not `both` (it also changes srl.aggregation)
    assert "| max | 50.0 |" in t10 and "| avg | average | 40.0 |" in t10 and "| wave | waveform | 30.0 |" in t10
    assert "both" not in t10 and "srlmax" not in t10
    assert "| srlmax | max | 55.0 |" in t11 and "avg" not in t11
    assert "Only the baseline has these settings" in md[md.index("## Table 4") : md.index("## Table 5")]
