"""The report's tables and its check of the pretrained encoder against the random-init control."""

from __future__ import annotations

from sslam.report.tables import control_check, render_markdown


def evals() -> dict:
    def d(task, regime, metric, enc):
        return {"task": task, "regime": regime, "metric": metric, "encoders": enc}

    return {
        ("mono", "linear"): d("mono", "linear", "accuracy", {"stage2": {"accuracy": 0.9}, "random0": {"accuracy": 0.5}, "random1": {"accuracy": 0.6}}),
        ("square", "linear"): d("square", "linear", "map", {
            "stage2": {"map": 0.50, "polyphony": {"{2,3}": {"clips": 4, "map": 0.6}, "{14+}": {"clips": 1, "map": 1.0}}},
            "random0": {"map": 0.45}, "random1": {"map": 0.49}}),
        ("square", "finetune"): d("square", "finetune", "map", {"stage2": {"map": 0.7}, "random0": {"map": 0.6}}),
    }


def test_control_check_by_hand():
    c = control_check(evals())
    assert c["mono/stage2"]["delta"] == 0.35 and c["mono/stage2"]["control_spread"] == 0.1 and c["mono/stage2"]["beats_control"]
    sq = c["square/stage2"]
    assert sq["control_mean"] == 0.47 and sq["control_spread"] == 0.04 and sq["delta"] == 0.03 and not sq["beats_control"]
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

    d = {"steps": 900, "loss_curve": {"first": 700.0, "last": 200.5}, "samples_per_second": 66.0,
         "target_diagnostics": {"position_share": 0.234, "student_loss": 1.5, "position_only_loss": 8.7}}
    md = render_pretrain({"stage1": d})
    assert "| stage1 | 900 | 700.0 -> 200.5 | 66.0 | 23% | 1.5 | 8.7 |" in md
    assert render_pretrain({}) == ""
