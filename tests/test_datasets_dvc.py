"""Real datasets through DVC: every published layout beside the synthetic corpus in one `dvc repro`, in
a temporary copy of the repository; labels, splits or folds and failures checked against the values
worked out by hand (tests/dataset_layouts.py), and an edit to one task reruns only that task's stages."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml
from dataset_layouts import BUILDERS
from test_pipeline_e2e import commit, copy_repo, sh, tiny_pipeline

pytestmark = pytest.mark.slow


def test_every_layout_beside_the_synthetic_corpus_in_one_repro(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    expected = {name: build(tmp_path / "datasets" / name) for name, build in BUILDERS.items()}
    params = tiny_pipeline(repo)
    params["datasets"] = {name: exp.params for name, exp in expected.items()}
    params["evaluate"].update(
        linear_encoders=["stage2", "random0"],
        finetune_tasks=[],
        finetune_datasets=["esc50"],
        finetune_encoders=["random0"],
    )
    params["finetune"].update(epochs=1)
    params["linear_eval"].update(epochs=3)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    sh(["dvc", "repro"], repo)
    for name, exp in expected.items():
        out = repo / "data" / "datasets" / name
        summary = json.loads((repo / "metrics" / "datasets" / f"{name}.json").read_text())
        assert summary["clips"] == exp.clips_per_split(), name
        fails = pd.read_csv(out / "failures.csv", dtype=str)
        assert {r.clip_id: r.reason.split(":")[0] for r in fails.itertuples()} == {
            c: r.split(":")[0] for c, r in exp.failed.items()
        }, name
        task = json.loads((out / "tasks" / name / "task.json").read_text())
        assert tuple(task["splits"]) == exp.splits and tuple(task["classes"]) == exp.classes, name
        man = pd.read_csv(out / "tasks" / name / "manifest.csv", dtype=str, keep_default_na=False)
        ok = man[man["status"] == "ok"]
        assert dict(zip(ok["clip_id"], ok["split"], strict=True)) == {c: s for c, (s, _) in exp.ok.items()}, name
        lin = json.loads((repo / "metrics" / "eval" / f"{name}_linear.json").read_text())
        metric = "map" if exp.kind == "multi_label" else "accuracy"
        assert lin["metric"] == metric and lin["protocol"] == exp.protocol and lin["data"] == f"datasets/{name}"
        for enc in ("stage2", "random0"):
            assert 0.0 <= lin["encoders"][enc][metric] <= 1.0, (name, enc)
        if exp.protocol == "cross_validation":  # one score per official fold
            assert sorted(lin["encoders"]["random0"]["folds"]) == list(exp.splits)
    # URBAN-SED keeps clips with more than one label: 3 train + 2 eval of the 7 annotated, 1 absent
    urban = json.loads((repo / "metrics" / "eval" / "urban_sed_linear.json").read_text())["encoders"]["stage2"]
    assert (urban["clips_kept"], urban["clips_dropped"]) == (5, 1)
    ft = json.loads((repo / "metrics" / "eval" / "esc50_finetune.json").read_text())
    assert sorted(ft["encoders"]["random0"]["folds"]) == list(expected["esc50"].splits)
    report = (repo / "metrics" / "report.md").read_text()
    assert "esc50 (real data)" in report and "mono (ESC-50)" in report and "spass_park (real data)" in report
    commit(repo, "datasets")
    assert "Running stage" not in sh(["dvc", "repro"], repo).stdout

    def stale_after(edit) -> set[str]:
        edit(params)
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        stale = set(json.loads(sh(["dvc", "status", "--json"], repo).stdout))
        sh(["git", "checkout", "params.yaml"], repo)
        return stale

    # one real task's clip length: that dataset's cache, its evaluations and the report, nothing else
    assert stale_after(lambda p: p["datasets"]["ks2"].update(target_frames=48)) == {
        "dataset@ks2",
        "dataset_linear_eval@ks2",
        "report",
    }
    params["datasets"]["ks2"]["target_frames"] = 32
    # one synthetic task's recipe: that task's evaluation and the report
    assert stale_after(lambda p: p["tasks"]["mono"].update(linear={"lr": 0.01})) == {"linear_eval@mono", "report"}
    del params["tasks"]["mono"]["linear"]
    # a file added to a dataset folder reruns that dataset only (DVC hashes the folder)
    (tmp_path / "datasets" / "spass_park" / "Park" / "park00009.wav").write_bytes(b"")
    assert set(json.loads(sh(["dvc", "status", "--json"], repo).stdout)) == {"dataset@spass_park"}
