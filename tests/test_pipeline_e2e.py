"""The whole pipeline as it stands, run by DVC in a temporary copy of the repository."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO

from sslam.data.shards import iter_shard

pytestmark = pytest.mark.slow


def sh(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    return proc


def commit(repo: Path, message: str) -> None:
    sh(["git", "add", "-A"], repo)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message], repo)


def copy_repo(dest: Path) -> Path:
    """The tracked and untracked-but-not-ignored files, as a fresh clone would have them."""
    files = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split("\0")
    for f in filter(None, files):
        src = REPO / f
        if src.is_file():
            (dest / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / f)
    sh(["git", "init", "-q"], dest)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], dest)
    sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "copy"], dest)
    return dest


# Stages whose outputs are exact functions of params and code (integers, PCM samples from float64
# synthesis, text): a fresh clone must reproduce their committed lock entries byte for byte. Stages
# computing float32 spectra may differ in a last bit across CPU models, so they are only required to run.
BIT_EXACT_STAGES = ("download", "ontology")


def test_default_repro_reproduces_the_committed_lock(tmp_path):
    """A fresh clone's `dvc repro` of the exact stages on the defaults reproduces their committed lock
    entries byte for byte, and the committed lock names every stage of dvc.yaml. The float stages
    (pretraining and after) are equal across machines only to a few decimals (README), so they are not
    rerun here: their whole chain runs in the small end-to-end test below, whose duration does not
    depend on matching checkpoint hashes made elsewhere."""
    committed = yaml.safe_load((REPO / "dvc.lock").read_text())["stages"]
    repo = copy_repo(tmp_path / "repo")
    sh(["dvc", "repro", *BIT_EXACT_STAGES], repo)
    fresh = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for stage in BIT_EXACT_STAGES:
        assert fresh[stage] == committed[stage], f"stage {stage} does not reproduce its committed lock entry"
    names = set(sh(["dvc", "stage", "list", "--name-only"], repo).stdout.split())
    assert names == set(committed), f"dvc.lock and dvc.yaml disagree: {sorted(names ^ set(committed))}"


def small_corpus(repo: Path, clip_seconds: float, poly_train: int, poly_eval: int) -> tuple[dict, dict]:
    """The copy's params with a corpus of 20 clips per split, 4 mono classes and one soundscape."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    syn = params["download"]["synthetic"]
    syn.update(num_classes=10, clip_seconds=clip_seconds, clips={"unbalanced": 20, "balanced": 20, "eval": 20})
    syn["tasks"]["mono"].update(num_classes=4, clips_per_class_per_fold=1)
    syn["tasks"]["poly"].update(environments=["square"], clips_train=poly_train, clips_eval=poly_eval)
    syn["tasks"]["keywords"].update(num_classes=2, clips_per_class={"train": 2, "valid": 1, "test": 1})
    syn["tasks"]["urban"].update(clips_train=10, clips_eval=8, events_per_clip=[1, 5])  # 3 of 18 clips hold 2+ labels
    syn["tasks"]["desed"].update(num_classes=4, clips_train=2, clips_eval=2)
    syn["tasks"]["masked"].update(clips_per_class_per_ratio={"train": 1, "eval": 1}, tmr_db=[-10.0, 0.0])
    return params, syn


def tiny_pipeline(repo: Path) -> dict:
    """The smallest params that still run every stage: 1 s clips, a 32-wide model, a few pretraining
    steps, no extra stage-2 runs, the mono and square tasks (for tests of what sits beside the pipeline)."""
    params, _ = small_corpus(repo, 1.0, 4, 4)
    params["features"].update(target_frames=96, shard_size=16)
    params["model"].update(embed_dim=32, depth=2, num_heads=2, decoder_layers=1, decoder_groups=4)
    params["pretrain"]["stage1"].update(steps=4, batch_size=4, warmup_steps=1, checkpoint_every=4, top_k_layers=2)
    params["pretrain"]["stage2"].update(steps=2, batch_size=4, warmup_steps=1, checkpoint_every=4, top_k_layers=2)
    params["pretrain"]["stage2_runs"] = {}
    params["tasks"] = {k: params["tasks"][k] for k in ("mono", "square")}
    return params


def test_small_pipeline_end_to_end(tmp_path):
    repo = copy_repo(tmp_path / "repo")
    params, _ = small_corpus(repo, 1.5, 10, 5)
    params["features"].update(target_frames=160, shard_size=16)
    params["model"].update(embed_dim=32, depth=2, num_heads=2, decoder_layers=2, decoder_groups=4)
    params["pretrain"]["stage1"].update(steps=10, batch_size=4, warmup_steps=2, checkpoint_every=5, top_k_layers=2)
    params["pretrain"]["stage2"].update(
        steps=4, batch_size=4, warmup_steps=1, checkpoint_every=5, top_k_layers=2, clone_batch=2
    )
    params["tasks"] = {k: params["tasks"][k] for k in ("mono", "keywords", "square", "urban", "as20k", "masked")}
    params["pretrain"]["stage2_runs"] = {"mb_ua_s0": {"variant": "mb_ua", "seed": 0}}
    params["evaluate"].update(
        finetune_tasks=["square"], linear_encoders=["stage2", "mb_ua_s0", "random0", "random1", "fbank_stats"]
    )
    params["finetune"].update(epochs=2)
    params["linear_eval"].update(epochs=5)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    # the README's first command as a user types it, from a shell whose PATH lacks the project's
    # environment: make puts .venv/bin first. The copy shares the environment `make test` just used
    # (`-o .venv/.installed` only tells make not to reinstall it into the copy)
    (repo / ".venv").symlink_to(REPO / ".venv")
    bare = dict(os.environ, PATH="/usr/local/bin:/usr/bin:/bin", DVC_NO_ANALYTICS="1")
    bare.pop("VIRTUAL_ENV", None)

    def make(command: str) -> subprocess.CompletedProcess:
        make_args = ["make", "-o", ".venv/.installed", *shlex.split(command)[1:]]
        return subprocess.run(make_args, cwd=repo, env=bare, capture_output=True, text=True)

    out = make("make repro")
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "Running stage 'download'" in out.stdout and "Running stage 'code'" in out.stdout
    assert "up to date" in sh(["dvc", "status"], repo).stdout.lower()
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert lock["stages"]["download"]["params"]["params.yaml"]["download"]["synthetic"]["num_classes"] == 10
    metrics = yaml.safe_load((repo / "metrics" / "download.json").read_text())
    assert metrics["num_clips"] == 60 + 4 * 5 + 15 + 2 * 4 + 18 + 4 + 8 * 2 * 2  # ... + masked
    in_shards = [c for tar in (repo / "data" / "corpus").rglob("*.tar") for c in iter_shard(tar)]
    assert len(in_shards) == metrics["num_clips"] and not list((repo / "data" / "corpus").rglob("*.flac"))
    pre = yaml.safe_load((repo / "metrics" / "pretrain_stage1.json").read_text())
    assert pre["steps"] == 10 and pre["loss_curve"]["logged_steps"] == 10
    assert (repo / "checkpoints" / "stage1" / "final" / "student.safetensors").is_file()
    lin = json.loads((repo / "metrics" / "eval" / "square_linear.json").read_text())
    assert lin["metric"] == "map" and set(lin["encoders"]) == {
        "stage2",
        "mb_ua_s0",
        "random0",
        "random1",
        "fbank_stats",
    }
    assert 0.0 < lin["encoders"]["stage2"]["map"] <= 1.0
    assert set(json.loads((repo / "metrics" / "eval" / "square_finetune.json").read_text())["encoders"]) == {
        "stage2",
        "random0",
    }
    diag = pre["target_diagnostics"]
    assert 0.0 <= diag["position_only_loss"] and diag["zero_loss"] > 0 and diag["position_share"] <= 1.0
    kws = json.loads((repo / "metrics" / "eval" / "keywords_linear.json").read_text())
    assert kws["protocol"] == "train_valid_test" and kws["recipe"]["select_every"] == 10
    assert all(1 <= e["selection"]["selected_epoch"] <= 5 for e in kws["encoders"].values())
    urban = json.loads((repo / "metrics" / "eval" / "urban_linear.json").read_text())["encoders"]["stage2"]
    assert urban["clips_kept"] + urban["clips_dropped"] == 18 and urban["clips_dropped"] > 0
    as20k = json.loads((repo / "metrics" / "eval" / "as20k_linear.json").read_text())
    assert as20k["data"] == "audioset" and 0.0 < as20k["encoders"]["stage2"]["map"] <= 1.0
    report = (repo / "metrics" / "report.md").read_text()
    assert "## Table 2 (shape)" in report and "square" in report
    assert "## SSLAM vs MB-UA" in report and "| square | map |" in report
    # the masker task: accuracy per ratio in the metrics, per-clip scores for the report, its table
    masked = json.loads((repo / "metrics" / "eval" / "masked_linear.json").read_text())["encoders"]["stage2"]
    assert {c: v["clips"] for c, v in masked["by_condition"].items()} == {"-10": 8, "0": 8}
    with np.load(repo / "data" / "eval" / "masked_linear.npz") as z:
        assert len(z["clip_id"]) == 16 and sorted(set(z["condition"].tolist())) == ["-10", "0"]
        assert z["scores_fbank_stats"].shape == (16, 8)
    assert "## The masker task" in report and "| masked | -10 | 8 |" in report
    intervals = json.loads((repo / "metrics" / "report.json").read_text())["intervals"]
    iv = intervals["square/linear/stage2"]
    assert iv["point"] == pytest.approx(lin["encoders"]["stage2"]["map"], abs=1e-5) and iv["low"] <= iv["high"]
    run = json.loads((repo / "metrics" / "stage2_runs" / "mb_ua_s0.json").read_text())
    assert (
        run["variant"] == "mb_ua"
        and set(run["final"]) >= {"local_unmixed", "global_unmixed"}
        and "srl" not in run["final"]
    )
    for png in ("pretrain_losses.png", "map_by_polyphony.png", "mixture_example.png"):
        assert (repo / "metrics" / "plots" / png).read_bytes()[:4] == b"\x89PNG"
    png = (repo / "metrics" / "plots" / "corpus_overview.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    pre2 = yaml.safe_load((repo / "metrics" / "pretrain_stage2.json").read_text())
    assert {"local_unmixed", "global_unmixed", "local_mixed", "global_mixed", "srl"} <= set(pre2["final"])
    commit(repo, "first run")
    # nothing changed: a second repro runs nothing and changes no tracked file
    assert "Running stage" not in sh(["dvc", "repro"], repo).stdout
    assert sh(["git", "status", "--porcelain"], repo).stdout == ""
    # a second run of the same commit from nothing (checkpoints and every output recomputed) on the same
    # machine: bit-identical, so no tracked file changes and `dvc metrics diff` is empty
    shutil.rmtree(repo / "checkpoints")
    sh(["dvc", "repro", "--force"], repo)
    assert sh(["git", "status", "--porcelain"], repo).stdout == ""
    assert json.loads(sh(["dvc", "metrics", "diff", "--json"], repo).stdout) == {}
    # the headline experiment: a mixing change reruns stage 2 (and what follows it) and nothing before
    params["mix"]["strategy"] = "average"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    changed = set(json.loads(sh(["dvc", "status", "--json"], repo).stdout))
    # stage 2 and the report (which prints the mixing settings) now; the evaluations follow once stage 2's
    # checkpoint changes; nothing upstream of stage 2
    assert changed == {"pretrain_stage2", "pretrain_stage2_run@mb_ua_s0", "report"}, changed
    sh(["git", "checkout", "params.yaml"], repo)
    # the README's experiment commands, in the project's environment
    exp = sh(shlex.split("dvc exp run -S mix.strategy=average"), repo)
    assert "Running stage 'pretrain_stage2'" in exp.stdout and "Running stage 'download'" not in exp.stdout
    assert yaml.safe_load((repo / "params.yaml").read_text())["mix"]["strategy"] == "average"
    moved = json.loads(sh(["dvc", "metrics", "diff", "--json"], repo).stdout)
    assert "metrics/pretrain_stage2.json" in moved and "metrics/pretrain_stage1.json" not in moved
    shown = sh(shlex.split("dvc metrics diff"), repo).stdout
    assert "metrics/pretrain_stage2.json" in shown and "metrics/pretrain_stage1.json" not in shown
    table = sh(shlex.split("dvc exp show --only-changed --md"), repo).stdout
    assert table.lstrip().startswith("|") and "mix.strategy" in table and "average" in table
    # a bad param stops the stage at start-up, naming the key
    params["mix"]["strategy"] = "foo"
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    proc = subprocess.run(
        ["python", "stages/pretrain.py", "--stage", "stage1"],  # a stage that reads mix
        cwd=repo,
        capture_output=True,
        text=True,
        env=dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}"),
    )
    assert proc.returncode == 2 and "mix.strategy" in proc.stderr and "'average'" in proc.stderr


def test_metrics_diff_across_two_git_branches(tmp_path):
    """Two branches with different params, the cheap part of the pipeline run on each, and
    `dvc metrics diff` between them shows the metric that changed."""
    repo = copy_repo(tmp_path / "repo")
    params, syn = small_corpus(repo, 1.0, 4, 4)

    def run_branch(name: str, ancestor_prob: float) -> None:
        sh(["git", "checkout", "-q", "-B", name], repo)
        syn["ancestor_label_prob"] = ancestor_prob
        (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        sh(["dvc", "repro", "ontology"], repo)
        sh(["git", "add", "-A"], repo)
        sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", name], repo)

    run_branch("few-facets", 0.1)
    run_branch("many-facets", 0.9)
    diff = json.loads(sh(["dvc", "metrics", "diff", "few-facets", "many-facets", "--json"], repo).stdout)
    changed = diff["metrics/download.json"]["splits.eval.labels_per_clip"]
    assert changed["new"] > changed["old"] and changed["diff"] == pytest.approx(changed["new"] - changed["old"])
    poly = diff["metrics/polyphony.json"]
    assert poly["splits.eval.multi_label_percent"]["diff"] > 0
    # the true polyphony (strong labels) does not depend on how many facet labels annotators add
    assert "splits.eval.strong_label_percent" not in poly or poly["splits.eval.strong_label_percent"]["diff"] == 0
