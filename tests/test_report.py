"""The report's tables and its check of the pretrained encoder against the random-init control."""

from __future__ import annotations

import pytest

from sslam.report.tables import control_check, render_markdown


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


def test_control_check_by_hand():
    c = control_check(evals())
    assert (
        c["mono/stage2"]["delta"] == 0.35
        and c["mono/stage2"]["control_spread"] == 0.1
        and c["mono/stage2"]["beats_control"]
    )
    sq = c["square/stage2"]
    assert (
        sq["control_mean"] == 0.47 and sq["control_spread"] == 0.04 and sq["delta"] == 0.03 and not sq["beats_control"]
    )
    assert set(c) == {"mono/stage2", "square/stage2"}  # fine-tuning has one control seed: no spread to compare


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


def test_sslam_vs_mb_ua_table_by_hand():
    from sslam.report.tables import render_comparison, variant_comparison

    def ev(task, metric, values):
        return {
            "task": task,
            "regime": "linear",
            "metric": metric,
            "encoders": {e: {metric: v} for e, v in values.items()},
        }

    runs = {"stage2": ("sslam", 0), "sslam_s1": ("sslam", 1), "mb_ua_s0": ("mb_ua", 0), "mb_ua_s1": ("mb_ua", 1)}
    evals = {
        ("a", "linear"): ev(
            "a", "map", {"stage2": 0.50, "sslam_s1": 0.52, "mb_ua_s0": 0.40, "mb_ua_s1": 0.43, "random0": 0.1}
        ),
        ("b", "linear"): ev("b", "accuracy", {"stage2": 0.50, "sslam_s1": 0.60, "mb_ua_s0": 0.52, "mb_ua_s1": 0.54}),
        ("c", "linear"): ev("c", "map", {"stage2": 0.30, "sslam_s1": 0.30, "mb_ua_s0": 0.40, "mb_ua_s1": 0.40}),
        ("a", "finetune"): ev("a", "map", {"stage2": 0.9}),
    }
    evals[("a", "finetune")]["regime"] = "finetune"
    c = variant_comparison(evals, runs)
    assert set(c) == {"a", "b", "c"}
    # a: means 0.51 vs 0.415, spreads 0.02 / 0.03 -> +0.095 beyond the spread
    assert c["a"]["sslam_mean"] == pytest.approx(0.51) and c["a"]["mb_ua_mean"] == pytest.approx(0.415)
    assert c["a"]["spread"] == pytest.approx(0.03) and c["a"]["verdict"] == "sslam higher"
    # b: +0.02 but the sslam seeds differ by 0.10 -> not visible
    assert c["b"]["difference"] == pytest.approx(0.02) and c["b"]["verdict"] == "within the seed spread"
    assert c["c"]["verdict"] == "mb_ua higher" and c["c"]["sslam"] == {"0": 0.3, "1": 0.3}
    md = render_comparison(c)
    assert "| a | map | 50.0 / 52.0 | 40.0 / 43.0 | 51.0 | 41.5 | +9.5 | 3.0 | sslam higher |" in md
    assert "SSLAM higher beyond the seed spread on 1 of 3 tasks, MB-UA on 1, within the spread on 1." in md
    # one seed of MB-UA: no spread, so no difference is called visible, however large
    one = variant_comparison(evals, {k: v for k, v in runs.items() if k != "mb_ua_s1"})
    assert one["a"]["difference"] == pytest.approx(0.11) and one["a"]["verdict"] == "one seed: no spread to judge by"
    assert "within the spread on 0, 3 with one seed only." in render_comparison(one)
