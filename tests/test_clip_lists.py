"""Which clips a result used: the clip-list hash against hashlib and `sort -u | sha256sum`, `python -m
sslam.clips diff` naming a dropped clip (files, folders, git revisions through DVC's cache), and the
clip lists the pretraining, evaluation and ontology metrics and the report carry."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import REPO
from pretrain_helpers import tiny_setup

from sslam.data.clip_lists import clip_list_sha256, clip_list_summary
from sslam.data.manifest import ManifestRow, write_manifest

ENV = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}", DVC_NO_ANALYTICS="1")


def by_hand(ids: list[str]) -> str:
    """The definition, written out: sorted unique ids, each followed by a newline, UTF-8, SHA-256."""
    text = "".join(i + "\n" for i in sorted(set(ids)))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def clips(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The command a user types."""
    cmd = [sys.executable, "-m", "sslam.clips", *args]
    return subprocess.run(cmd, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=120)


def write_corpus(root: Path, eval_ids: list[str], failed: tuple[str, ...] = ("gone",)) -> Path:
    """A corpus folder's manifests: an AudioSet-shaped eval split (ok clips, and failed ones that do not
    count) and a task with two splits."""
    row = ManifestRow  # clip_id, split, path, duration, sample_rate, labels, status, reason
    rows = [row(c, "eval", f"audio/eval/{c}.flac", 1.0, 16000, ("/m/a",), "ok", "") for c in eval_ids]
    rows += [row(c, "eval", "", 0.0, 16000, ("/m/a",), "failed", "unavailable") for c in failed]
    write_manifest(root / "manifests" / "eval.csv", rows)
    task = [row(f"t{k}", "train" if k < 3 else "eval", f"t{k}.flac", 1.0, 16000, ("x",), "ok", "") for k in range(5)]
    write_manifest(root / "tasks" / "t" / "manifest.csv", task)
    return root


# ----------------------------------------------------------------------------- the hash


def test_hash_is_the_sha256_of_the_sorted_unique_ids_one_per_line(tmp_path):
    ids = ["clip-3", "clip-1", "clip-2", "clip-1"]
    assert clip_list_sha256(ids) == by_hand(ids)
    # fixed values: `printf 'clip-1\nclip-2\nclip-3\n' | sha256sum`, and the SHA-256 of no bytes
    assert clip_list_sha256(ids) == "ea5702385481a1853e4688687d86336c6026e3be2373aa185eac59211ab3fd60"
    assert clip_list_sha256([]) == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert clip_list_summary(ids) == {"clips": 3, "sha256": by_hand(ids)}
    # the documented recomputation, non-ASCII ids and upper case included (code-point order = C byte order)
    odd = ["zebra", "Zebra", "é-clip", "a_1000", "a_999", "-x"]
    (tmp_path / "ids.txt").write_text("".join(i + "\n" for i in odd + odd[:2]), encoding="utf-8")
    shell = subprocess.run(
        "LC_ALL=C sort -u ids.txt | sha256sum", shell=True, cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert shell.stdout.split()[0] == clip_list_sha256(odd)
    for bad in (["a\nb"], ["a\r"], [""]):
        with pytest.raises(ValueError, match="clip id"):
            clip_list_sha256(bad)


def test_dropping_one_clip_changes_the_hash_and_diff_names_it(tmp_path):
    ids = [f"yt{k:03d}_30000" for k in range(6)]
    a = write_corpus(tmp_path / "a", ids)
    b = write_corpus(tmp_path / "b", [i for i in ids if i != "yt004_30000"])
    assert clip_list_sha256(ids) != clip_list_sha256(ids[:4] + ids[5:])

    same = clips("diff", str(a), str(write_corpus(tmp_path / "a2", list(reversed(ids)), failed=("other",))))
    assert same.returncode == 0, same.stderr  # order and failed rows do not matter
    assert f"eval: same 6 clips (sha256 {by_hand(ids)[:16]})" in same.stdout

    diff = clips("diff", str(a), str(b))
    assert diff.returncode == 1, diff.stderr
    assert "eval: A 6 clips, B 5; 1 only in A, 0 only in B" in diff.stdout
    assert "  only in A: yt004_30000\n" in diff.stdout
    assert "tasks/t/train: same 3 clips" in diff.stdout and "tasks/t/eval: same 2 clips" in diff.stdout
    # one manifest file against another, and the hash of each
    files = clips("diff", str(a / "manifests" / "eval.csv"), str(b / "manifests" / "eval.csv"))
    assert files.returncode == 1 and "only in A: yt004_30000" in files.stdout
    hashed = clips("hash", str(b))
    assert hashed.returncode == 0
    got = {line.split()[0]: (int(line.split()[1]), line.split()[2]) for line in hashed.stdout.splitlines()}
    assert got["eval"] == (5, by_hand([i for i in ids if i != "yt004_30000"]))
    assert got["tasks/t/train"] == (3, by_hand(["t0", "t1", "t2"]))
    by_set = {line.split()[0]: line.split()[1:] for line in clips("hash", "--by", "set", str(b)).stdout.splitlines()}
    assert by_set == {"eval": ["5", got["eval"][1]], "tasks/t": ["5", by_hand([f"t{k}" for k in range(5)])]}


def test_diff_lists_a_capped_number_of_ids_unless_all(tmp_path, capsys):
    from sslam.clips import LIST_CAP, main

    ids = [f"c{k:03d}" for k in range(LIST_CAP + 5)]
    a, b = write_corpus(tmp_path / "a", ids), write_corpus(tmp_path / "b", [])
    assert main(["diff", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert f"{len(ids)} only in A" in out and "c019" in out and "c020" not in out and "... and 5 more" in out
    assert main(["diff", "--all", str(a), str(b)]) == 1
    assert "c024" in capsys.readouterr().out
    assert main(["diff", str(a), str(tmp_path / "nothing")]) == 2  # neither a path nor a revision


def test_diff_of_two_git_revisions_reads_dvc_tracked_manifests(tmp_path):
    """git + DVC: the corpus dvc-added, a row dropped and re-added; `diff HEAD~1 HEAD` names the clip, read
    from the local DVC cache; without the cache, a clear error."""
    repo = tmp_path / "repo"
    repo.mkdir()

    def sh(*cmd: str) -> None:
        subprocess.run(cmd, cwd=repo, env=ENV, check=True, capture_output=True, text=True)

    def commit(message: str) -> None:
        sh("dvc", "add", "-q", "data/corpus")
        sh("git", "add", "-A")
        sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", message)

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    ids = ["keep_1", "keep_2", "dropped_3"]
    write_corpus(repo / "data" / "corpus", ids)
    commit("three clips")
    write_corpus(repo / "data" / "corpus", ids[:2])
    commit("one dropped")
    diff = clips("diff", "HEAD~1", "HEAD", cwd=repo)
    assert diff.returncode == 1, diff.stderr
    assert "eval: A 3 clips, B 2; 1 only in A, 0 only in B" in diff.stdout and "only in A: dropped_3" in diff.stdout
    assert clips("diff", "HEAD", "data/corpus", cwd=repo).returncode == 0  # a revision against the workspace
    one_file = clips("diff", "HEAD~1:data/corpus/manifests/eval.csv", "HEAD", cwd=repo)
    assert one_file.returncode == 1 and "dropped_3" in one_file.stdout
    shutil.rmtree(repo / ".dvc" / "cache")
    gone = clips("diff", "HEAD~1", "HEAD", cwd=repo)
    assert gone.returncode == 2 and "not in the local DVC cache" in gone.stderr, gone.stderr


# ----------------------------------------------------------------------------- the metrics


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path, Path]:
    """(params, features, root) of the tiny corpus; evaluation: the fbank-statistics floor for 2 epochs,
    desed keeping only clips with two of its classes (a filter that drops some)."""
    root = tmp_path_factory.mktemp("clip_lists")
    params, feats = tiny_setup(root, steps=2, checkpoint_every=100)
    p = yaml.safe_load(params.read_text())
    p["tasks"]["desed"]["min_labels"] = 2
    p["evaluate"]["linear_encoders"] = ["fbank_stats"]
    p["linear_eval"].update(epochs=2, warmup_epochs=1, select_every=1)
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    return params, feats, root


def corpus_of(params: Path) -> Path:
    return Path(yaml.safe_load(params.read_text())["data"]["corpus_dir"])


def index_ids(feats: Path, set_name: str) -> pd.DataFrame:
    return pd.read_csv(feats / set_name / "index.csv", dtype=str, keep_default_na=False)


def test_pretraining_and_evaluation_metrics_record_their_clip_lists(tiny):
    params, feats, root = tiny
    metrics = root / "metrics"
    common = ["--params", str(params), "--features", str(feats), "--metrics-dir"]
    pre = [sys.executable, "stages/pretrain.py", *common, str(metrics), "--checkpoints", str(root / "ck"), "--cpu"]
    proc = subprocess.run(pre, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((metrics / "pretrain_stage1.json").read_text())["clip_lists"]
    assert got == {"unbalanced": {"clips": 32, "sha256": by_hand(list(index_ids(feats, "unbalanced")["clip_id"]))}}

    ev = [sys.executable, "stages/evaluate.py", *common, str(metrics / "eval"), "--task", "desed", "--regime"]
    ev += ["linear", "--checkpoints", str(root / "ck"), "--predictions-dir", str(root / "preds")]
    proc = subprocess.run(ev, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads((metrics / "eval" / "desed_linear.json").read_text())
    index = index_ids(feats, "tasks/desed")
    classes = set(json.loads((corpus_of(params) / "tasks" / "desed" / "task.json").read_text())["classes"])
    kept = index[[len(classes & set(s.split(","))) >= 2 for s in index["labels"]]]
    assert 0 < len(kept) < len(index)  # the filter dropped some clips: the lists are after it
    assert out["clip_lists"] == {
        s: {"clips": len(g), "sha256": by_hand(list(g["clip_id"]))} for s, g in kept.groupby("split")
    }
    assert out["clip_lists_read"] == {"tasks/desed": {"clips": len(index), "sha256": by_hand(list(index["clip_id"]))}}

    from sslam.report.clip_lists import feature_set_lists, render_clip_lists

    features = feature_set_lists(feats)
    assert features["tasks/desed"] == out["clip_lists_read"]["tasks/desed"]
    pretrain = {"stage1": json.loads((metrics / "pretrain_stage1.json").read_text())}
    section = render_clip_lists(features, pretrain, {("desed", "linear"): out})
    assert "## Clip lists" in section and f"| unbalanced | 32 | {got['unbalanced']['sha256'][:16]} |" in section
    assert "Every set trained or evaluated on is the features stage's" in section and "Mismatch" not in section
    other = dict(features, unbalanced={"clips": 33, "sha256": "0" * 64})  # another download's features
    section = render_clip_lists(other, pretrain, {("desed", "linear"): out})
    assert "**Mismatch**: pretraining stage1 read `unbalanced` (32 clips" in section
    assert "features stage's has 33 clips, 0000000000000000" in section


def test_ontology_metrics_record_the_segments_analysed(tiny, tmp_path):
    params, _, _ = tiny
    corpus = corpus_of(params)
    proc = subprocess.run(
        [sys.executable, "stages/ontology.py", "--params", str(params), "--metrics-dir", str(tmp_path)],
        cwd=REPO,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = json.loads((tmp_path / "polyphony.json").read_text())["clip_lists"]
    want = {}
    for split, name in (("unbalanced", "unbalanced_train"), ("balanced", "balanced_train"), ("eval", "eval")):
        with open(corpus / "segments" / f"{name}_segments.csv", newline="") as f:
            rows = [r for r in csv.reader(f, skipinitialspace=True) if r and not r[0].startswith("#")]
        want[split] = {"clips": len(rows), "sha256": by_hand([f"{r[0]}_{round(float(r[1]) * 1000)}" for r in rows])}
    assert got == want
