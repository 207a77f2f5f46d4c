"""The report's tables and its check of the pretrained encoder against the random-init control."""

from __future__ import annotations

import numpy as np
import pytest

from sslam.report.intervals import Predictions, Settings
from sslam.report.tables import render_markdown


def evals() -> dict:
    def d(task, regime, metric, enc):
        return {"task": task, "regime": regime, "metric": metric, "encoders": enc}

    return {
        ("mono", "linear"): d(
            "mono",
            "linear",
            "accuracy",
            {"stage2": {"accuracy": 0.9}, "random0": {"accuracy": 0.5}, "random1": {"accuracy": 0.6}},
        ),
        ("square", "linear"): d(
            "square",
            "linear",
            "map",
            {
                "stage2": {
                    "map": 0.50,
                    "polyphony": {"{2,3}": {"clips": 4, "map": 0.6}, "{14+}": {"clips": 1, "map": 1.0}},
                },
                "random0": {"map": 0.45},
                "random1": {"map": 0.49},
            },
        ),
        ("square", "finetune"): d("square", "finetune", "map", {"stage2": {"map": 0.7}, "random0": {"map": 0.6}}),
    }


def test_markdown_tables_hold_the_numbers():
    md = render_markdown(evals(), {"variant": "sslam", "mix.strategy": "max"})
    assert "| stage2 | linear | 90.0 |" in md
    assert "| stage2 | finetune | 70.0 |" in md and "| random0 | linear | 45.0 |" in md
    assert "| square | stage2 | linear | 60.0 (4) | 100.0 (1) |" in md
    assert "| SSLAM, paper | linear | 64.2 |" in md and "square (SPASS square)" in md
    assert "`variant=sslam`" in md


def test_pretrain_section_shows_the_target_diagnostics():
    from sslam.report.tables import render_pretrain

    d = {
        "steps": 900,
        "seed": 0,
        "loss_curve": {"first": 700.0, "last": 200.5},
        "target_diagnostics": {
            "position_share": 0.234,
            "student_loss": 1.5,
            "position_only_loss": 8.7,
            "trained_position_only_loss": 2.5,
        },
    }
    md = render_pretrain({"stage1": d, "mb_ua_s1": d | {"variant": "mb_ua", "seed": 1}})
    assert "| stage1 | - | 0 | 900 | 700.0 -> 200.5 | 23% | 1.5 | 2.5 |" in md
    assert "| mb_ua_s1 | mb_ua | 1 | 900 |" in md
    assert render_pretrain({}) == ""


def predictions(correct: dict[str, np.ndarray], condition: np.ndarray | None = None) -> Predictions:
    """Accuracy predictions over 2 classes: encoder e gets clip i right where correct[e][i]."""
    n = len(next(iter(correct.values())))
    labels = np.arange(n) % 2
    scores = {}
    for e, c in correct.items():
        pred = np.where(c, labels, 1 - labels)
        scores[e] = np.eye(2)[pred] * 0.8 + 0.1
    return Predictions("accuracy", np.array([f"c{i}" for i in range(n)]), labels, scores, condition)


def test_sslam_vs_mb_ua_by_paired_bootstrap():
    """Task a: both SSLAM seeds right on 90% of 200 clips, MB-UA on 30%: SSLAM higher, the interval
    holds +60 points; task b: identical predictions: [0, 0], no difference resolved; per condition too."""
    from sslam.report.tables import render_comparison, render_masker, variant_comparison

    rng = np.random.default_rng(0)
    good, bad = rng.random(200) < 0.9, rng.random(200) < 0.3
    runs = {"stage2": ("sslam", 0), "sslam_s1": ("sslam", 1), "mb_ua_s0": ("mb_ua", 0), "mb_ua_s1": ("mb_ua", 1)}
    cond = np.array(["-20", "0"] * 100)
    preds = {
        ("a", "linear"): predictions(
            {"stage2": good, "sslam_s1": good, "mb_ua_s0": bad, "mb_ua_s1": bad, "fbank_stats": bad, "random0": bad},
            cond,
        ),
        ("b", "linear"): predictions({"stage2": good, "mb_ua_s0": good}),
        ("a", "finetune"): predictions({"stage2": good, "mb_ua_s0": bad}),
    }
    st = Settings(samples=400)
    c = variant_comparison(preds, runs, st)
    assert set(c) == {"a", "a @ -20", "a @ 0", "b"}  # linear only; conditions in numeric order
    a = c["a"]
    assert a["difference"]["point"] == pytest.approx(good.mean() - bad.mean(), abs=1e-5)
    assert a["difference"]["low"] > 0.4 and a["verdict"] == "sslam higher"
    assert a["seeds"] == {"sslam": ["stage2", "sslam_s1"], "mb_ua": ["mb_ua_s0", "mb_ua_s1"]}
    assert c["a @ -20"]["clips"] == 100 and c["a @ -20"]["a"]["point"] == pytest.approx(good[::2].mean(), abs=1e-5)
    b = c["b"]
    assert (b["difference"]["low"], b["difference"]["high"]) == (0.0, 0.0) and b["verdict"].startswith("no difference")
    md = render_comparison(c, st)
    assert "SSLAM higher on 1, MB-UA higher on 0, no difference resolved on 1." in md
    masker = render_masker(preds, c, st)
    assert "| a | -20 | 100 |" in masker and "| a | 0 | 100 |" in masker and "sslam higher" in masker


def test_floor_checks_name_the_floor_when_it_wins():
    from sslam.report.tables import floor_table, render_floor

    rng = np.random.default_rng(1)
    good, bad = rng.random(150) < 0.85, rng.random(150) < 0.4
    preds = {("t", "linear"): predictions({"stage2": bad, "random0": bad, "random1": bad, "fbank_stats": good})}
    f = floor_table(preds, Settings(samples=400))
    row = f["t/stage2"]
    assert row["control"]["verdict"].startswith("no difference") and row["control"]["difference"]["point"] == 0.0
    assert row["fbank_stats"]["verdict"] == "fbank_stats higher"
    assert "for 1 of 1 task / encoder pairs: t/stage2." in render_floor(f)


def test_two_discordant_clips_resolve_no_difference():
    """A right on all 200 clips, B wrong on 2: an exact sign test on 2 of 2 discordant clips gives p = 0.5,
    so the verdict must not name a winner. Paired differences draw clips with replacement (a resample may
    miss both clips), while the scores' own intervals use Dirichlet weights by default."""
    from scipy.stats import binomtest

    from sslam.report.intervals import compare

    right = np.ones(200, dtype=bool)
    two_wrong = right.copy()
    two_wrong[[3, 77]] = False
    p = predictions({"a": right, "b": two_wrong})
    assert binomtest(2, 2).pvalue == 0.5
    c = compare(p, ["a"], ["b"], ("a", "b"), Settings(samples=2000))
    assert c.difference.point == pytest.approx(0.01) and c.difference.low == 0.0
    assert c.verdict.startswith("no difference")
    classic = compare(p, ["a"], ["b"], ("a", "b"), Settings(samples=2000, method="percentile"))
    assert classic.verdict.startswith("no difference") and c.b.high < 1.0  # Dirichlet: a score interval is open


def test_the_report_stage_leaves_the_experiment_tools_out():
    """The `report` stage renders this run's metrics; the tables over `dvc exp` runs (sslam.experiments) are
    run by hand and never become its dependencies."""
    from conftest import REPO

    from sslam.provenance import import_closure

    closure = {f.relative_to(REPO).as_posix() for f in import_closure(REPO / "stages" / "report.py")}
    assert "src/sslam/report/tables.py" in closure
    assert not [f for f in closure if f.startswith("src/sslam/experiments/")]


def test_loss_curves_come_from_the_dvclive_folder(tmp_path):
    """One reader for dvclive's TSVs: the pretraining summary and the report's plot see the same curve."""
    from sslam.pretrain.curves import curve_summary, curves_folder, read_curves

    folder = curves_folder(tmp_path / "live", "stage1")
    folder.mkdir(parents=True)
    (folder / "loss.tsv").write_text("timestamp\tstep\tloss\n1\t0\t4.0\n2\t5\t2.0\n3\t10\t1.0\n")
    (folder / "lr.tsv").write_text("timestamp\tstep\tlr\n")
    curves = read_curves(folder)
    assert list(curves) == ["loss", "lr"] and curves["lr"].values == []
    assert curves["loss"].steps == [0, 5, 10] and curves["loss"].values == [4.0, 2.0, 1.0]
    assert curve_summary(curves["loss"].values, window=1) == {"first": 4.0, "last": 1.0, "logged_steps": 3}
