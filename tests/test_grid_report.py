"""The encoder x objective table: which runs are rows, seeds averaged, the overall score by hand; its cost
columns from the benchmark's output."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import REPO

from sslam.experiments.grid import grid_rows, read_cost, render
from sslam.experiments.runs import Run

BASE = {"model.encoder": "transformer", "pretrain.objective": "bootstrap", "pretrain.seed": 0, "mix.strategy": "max"}


def run(name: str, metrics: dict[str, float], **params) -> Run:
    flat = BASE | {k.replace("__", "."): v for k, v in params.items()}
    return Run(name, flat, metrics)


def scores(task_values: dict, pretrained: str = "stage2", stage1: float | None = None) -> dict:
    out = {}
    for task, (p, c) in task_values.items():
        out[f"{task}/linear/{pretrained}"] = p
        out[f"{task}/linear/random0"] = c
        if stage1 is not None:
            out[f"{task}/linear/stage1"] = stage1
        out[f"{task}/finetune/{pretrained}"] = 0.99  # fine-tuning is not part of this table
    return out


def test_rows_seeds_and_overall_by_hand():
    base = Run("main", BASE, scores({"a": (0.6, 0.4), "b": (0.5, 0.5)}, stage1=0.45))
    runs = [  # newest first
        run("m-msm", scores({"a": (0.7, 0.3), "b": (0.4, 0.5)}), model__encoder="mamba", pretrain__objective="msm"),
        run(
            "m-msm-s1",
            scores({"a": (0.5, 0.3), "b": (0.6, 0.5)}),
            model__encoder="mamba",
            pretrain__objective="msm",
            pretrain__seed=1,
        ),
        run("m-msm-old", scores({"a": (0.0, 0.0), "b": (0.0, 0.0)}), model__encoder="mamba", pretrain__objective="msm"),
        run("other", scores({"a": (0.9, 0.1)}), mix__strategy="average"),  # not a grid key: not a row
    ]
    older = Run("older", {"model.encoder": "xlstm", "pretrain.seed": 0}, scores({"a": (0.5, 0.4)}))
    assert [r.encoder for r in grid_rows([older], base)] == ["transformer", "transformer", "xlstm"]  # keys it lacks
    rows = grid_rows(runs, base)
    labels = [(r.encoder, r.label, r.checkpoint) for r in rows]
    assert labels == [
        ("transformer", "bootstrap + SSLAM stage 2", "stage2"),
        ("transformer", "bootstrap (stage 1)", "stage1"),
        ("mamba", "msm", "stage2"),
    ]
    boot, stage1, msm = rows
    assert boot.overall() == pytest.approx(((0.6 - 0.4) + (0.5 - 0.5)) / 2)
    assert stage1.overall() == pytest.approx(((0.45 - 0.4) + (0.45 - 0.5)) / 2)
    # two seeds (the older seed-0 run is ignored): per seed ((0.7-0.3)+(0.4-0.5))/2 and ((0.5-0.3)+(0.6-0.5))/2
    assert sorted(msm.seeds) == [0, 1] and msm.runs == ["m-msm", "m-msm-s1"]
    assert msm.overall_per_seed() == pytest.approx([0.15, 0.15]) and msm.spread() == pytest.approx(0.0)
    assert msm.task_mean("a") == pytest.approx(0.6)
    md = render(rows, {("mamba", "msm"): {"clips_per_s": 12.34, "peak_mb": 456.0}})
    assert "| mamba | msm | stage2 | 0, 1 | 60.0 | 50.0 | +15.0 ± 0.0 | 12.3 | 456 |" in md
    assert "| transformer | bootstrap + SSLAM stage 2 | stage2 | 0 | 60.0 | 50.0 | +10.0 | - | - |" in md
    from sslam.experiments.runs import floor_scores

    base_floor = Run("floor", {}, {"a/linear/fbank_stats": 0.55, "a/linear/stage2": 0.6})
    floor = floor_scores([base_floor, *runs])
    assert floor == {"a/linear": 0.55}
    assert "| fbank_stats (floor, no network) | 55.0 | - |" in render(rows, None, floor)


def test_cost_columns_are_what_the_benchmark_measured(tmp_path):
    """bench/objectives.py measures a configuration (its objective, encoder, batch and crop frames reach the
    measured model) and writes what ``sslam-grid --cost`` renders; the tool itself trains nothing."""
    cost_file = tmp_path / "cost.json"
    sets = {
        "model.encoder": "mamba",  # the reference, and the only pair: one measurement
        "pretrain.objective": "msm",
        "pretrain.stage1.batch_size": 3,
        "pretrain.crop_seconds": 0.64,
    }
    cmd = [sys.executable, str(REPO / "bench" / "objectives.py"), "--encoders", "mamba", "--objectives", "msm"]
    cmd += ["--steps", "1", "--out", str(cost_file)] + [a for k, v in sets.items() for a in ("--set", f"{k}={v}")]
    out = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr
    assert "1.00x the reference's throughput" in out.stdout
    cost = read_cost(cost_file)
    c = cost[("mamba", "msm")]
    assert c["setting"] == {"objective": "msm", "encoder": "mamba", "batch": 3, "frames": 64}
    assert 0 < c["clips_per_s"] < 1e4 and c["peak_mb"] >= 0
    base = Run("main", BASE | {"model.encoder": "mamba", "pretrain.objective": "msm"}, scores({"a": (0.6, 0.4)}))
    md = render(grid_rows([], base), cost)
    assert f"| +20.0 | {c['clips_per_s']:.1f} | {c['peak_mb']:.0f} |" in md


def test_running_experiments_are_not_rows():
    """A running `dvc exp` shows the baseline's metrics files until it finishes: it must not become a row."""
    from sslam.experiments.runs import runs_from_exp_show

    def rev(name, enc):
        return {
            "rev": name,
            "name": name,
            "data": {"params": {"params.yaml": {"data": {"model": {"encoder": enc}}}}, "metrics": {}},
        }

    data = [
        {
            "rev": "abc1234",
            "name": "main",
            "data": rev("main", "transformer")["data"],
            "experiments": [
                {"executor": {"state": "running"}, "name": "x", "revs": [rev("x", "xlstm")]},
                {"executor": None, "name": "m", "revs": [rev("m", "mamba")]},
            ],
        }
    ]
    assert [r.name for r in runs_from_exp_show(data)] == ["main", "m"]
