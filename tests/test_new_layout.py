"""The worked example of adding a dataset layout: one new file in ``src/sslam/data/layouts/`` and nothing
else. A copy of ``src/`` gets a made-up layout (a folder of wav files and a ``labels.txt``, with an
option of its own); a small dataset in that layout goes through the ``dataset@<name>`` stage's own
command, and the manifest, failures, task and cache hold what the files say."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import soundfile as sf
import yaml
from conftest import REPO

from sslam.data.layouts import layout_names
from sslam.data.manifest import read_manifest
from sslam.features.reader import FeatureStore

TOY_LAYOUT = '''"""A made-up layout: wav files and a labels file, one ``<file> <label> <split>`` line each."""

from __future__ import annotations

from pathlib import Path

from sslam.config.base import Section
from sslam.data.layouts import DatasetLayoutError, Layout, Listing
from sslam.data.layouts._common import clip_items


class ToyOptions(Section):
    labels_file: str = "labels.txt"  # datasets.<name>.labels_file


def list_toy(root: Path, labels_file: str) -> Listing:
    path = Path(root) / labels_file
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: missing")
    rows = [line.split() for line in path.read_text().splitlines() if line.strip()]
    classes = tuple(sorted({label for _, label, _ in rows}))
    items = clip_items((name, split, (label,)) for name, label, split in rows)
    return Listing("single_label", "train_eval", ("train", "eval"), classes, items)


LAYOUT = Layout(list_toy, options=ToyOptions, kind="single_label", protocol="train_eval")
'''

LABELS = {"a": ("dog", "train"), "b": ("cat", "train"), "c": ("dog", "eval"), "d": ("cat", "eval")}


def test_a_layout_added_as_one_file_runs_through_the_dataset_stage(tmp_path):
    assert "toy" not in layout_names()  # the repository's own registry: the new file exists only in the copy
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    (src / "sslam" / "data" / "layouts" / "toy.py").write_text(TOY_LAYOUT)

    root = tmp_path / "toy_dataset"
    root.mkdir()
    for k, name in enumerate(LABELS):
        sf.write(root / f"{name}.wav", 0.1 * np.random.default_rng(k).standard_normal(8000), 16000)
    lines = [f"{name}.wav {label} {split}" for name, (label, split) in LABELS.items()] + ["gone.wav cat eval"]
    (root / "my_labels.txt").write_text("\n".join(lines) + "\n")

    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {
        "toy": {"format": "toy", "root": str(root), "labels_file": "my_labels.txt", "target_frames": 32}
    }
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def stage(pythonpath: str | None) -> subprocess.CompletedProcess:
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env |= {"PYTHONPATH": pythonpath} if pythonpath else {}
        cmd = [sys.executable, str(REPO / "stages" / "dataset.py"), "--name", "toy", "--workers", "1"]
        return subprocess.run(cmd, cwd=project, env=env, capture_output=True, text=True, timeout=120)

    refused = stage(None)  # the repository's code has no such format: the params check names the registered ones
    assert refused.returncode == 2 and "format 'toy' is not a registered layout" in refused.stderr
    assert "'esc50'" in refused.stderr

    proc = stage(str(src))
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = project / "data" / "datasets" / "toy"
    man = read_manifest(out / "tasks" / "toy" / "manifest.csv", only_ok=True)
    assert {r.clip_id: (tuple(r.labels)[0], r.split) for r in man.itertuples()} == LABELS
    fails = pd.read_csv(out / "failures.csv", dtype=str)
    assert list(fails["clip_id"]) == ["gone"] and fails["reason"][0].startswith("missing")
    task = json.loads((out / "tasks" / "toy" / "task.json").read_text())
    assert (task["kind"], task["protocol"], task["splits"], task["classes"]) == (
        "single_label",
        "train_eval",
        ["train", "eval"],
        ["cat", "dog"],
    )
    assert task["source"]["format"] == "toy"
    store = FeatureStore(out / "features", "tasks/toy")
    assert sorted(store.index["clip_id"]) == ["a", "b", "c", "d"] and store.raw(0).shape == (32, 128)
    summary = json.loads((project / "metrics" / "datasets" / "toy.json").read_text())
    assert summary["listed"] == 5 and summary["clips"] == {"train": 2, "eval": 2}
    assert summary["failed"] == {"missing": 1}
    assert summary["stats"]["source"] == "training clips"
