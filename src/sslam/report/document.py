"""The `report` stage's document: which metrics enter it, and the order of its sections.

``metrics/report.md`` is the paper-style tables (:mod:`sslam.report.tables`) in a fixed order;
``metrics/report.json`` holds the intervals and paired comparisons behind them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from sslam.config.params import Config
from sslam.pretrain.objectives import get_objective
from sslam.report.clip_lists import feature_set_lists, render_clip_lists
from sslam.report.intervals import Predictions, Settings, encoder_intervals
from sslam.report.tables import (
    floor_table,
    load_eval,
    render_comparison,
    render_floor,
    render_markdown,
    render_masker,
    render_pretrain,
    variant_comparison,
)

PRETRAIN_STAGES = ("stage1", "stage2")


@dataclass(frozen=True)
class ReportInputs:
    """What the report reads from ``metrics/`` besides the per-clip predictions."""

    evals: dict[tuple[str, str], dict]  # (task, regime) -> metrics/eval/<task>_<regime>.json, configured ones only
    stale: list[tuple[str, str]]  # evaluations on disk that params no longer configure (a removed task)
    settings: dict[str, object]  # the run's stage-2 settings, shown atop the tables
    pretrain: dict[str, dict]  # stage or stage-2 run -> its pretraining metrics
    runs: dict[str, tuple[str, int]]  # stage-2 run -> (variant, seed); empty when no stage 2 trained
    feature_sets: dict[str, dict] = field(default_factory=dict)  # the features stage's sets: clips, sha256


def interval_settings(cfg: Config) -> Settings:
    r = cfg.report
    return Settings(r.bootstrap_samples, r.confidence, r.seed, r.interval)


def read_inputs(cfg: Config, metrics_dir: Path, features_dir: Path | None = None) -> ReportInputs:
    """The metrics the report renders; with ``features_dir``, the clip lists of the features stage's sets."""
    m = Path(metrics_dir)
    configured = {(t, "linear") for t in cfg.task_names} | {(t, "finetune") for t in cfg.finetuned_tasks}
    found = load_eval(m / "eval")
    two_stages = get_objective(cfg.pretrain.objective).trains_stage2  # else stage 2 passes stage 1 through
    settings = {
        "pretrain.objective": cfg.pretrain.objective,
        "variant": cfg.pretrain.stage2.variant if two_stages else "none",
        "mix.strategy": cfg.mix.strategy,
        "mix.partial": cfg.mix.partial,
        "mix.partial_mode": cfg.mix.partial_mode,
        "srl.aggregation": cfg.srl.aggregation,
    }
    pretrain = {
        st: json.loads((m / f"pretrain_{st}.json").read_text())
        for st in PRETRAIN_STAGES
        if (m / f"pretrain_{st}.json").is_file()
    }
    pretrain |= {
        name: json.loads((m / "stage2_runs" / f"{name}.json").read_text())
        for name in cfg.pretrain.stage2_runs
        if (m / "stage2_runs" / f"{name}.json").is_file()
    }
    runs = {"stage2": (cfg.pretrain.stage2.variant, cfg.pretrain.seed)} | {
        name: (r.variant, r.seed) for name, r in cfg.pretrain.stage2_runs.items()
    }
    if not two_stages:  # no stage 2 trained: every "variant" is the stage-1 checkpoint
        runs = {}
    return ReportInputs(
        evals={k: v for k, v in found.items() if k in configured},
        stale=sorted(set(found) - configured),
        settings=settings,
        pretrain=pretrain,
        runs=runs,
        feature_sets=feature_set_lists(features_dir) if features_dir is not None else {},
    )


def build_report(inputs: ReportInputs, preds: dict[tuple[str, str], Predictions], st: Settings) -> tuple[str, dict]:
    """(report.md's text, report.json's content)."""
    intervals = {k: encoder_intervals(p, st) for k, p in preds.items()}
    comparison = variant_comparison(preds, inputs.runs, st)
    floors = floor_table(preds, st)
    md = (
        render_markdown(inputs.evals, inputs.settings, intervals, st.level)
        + render_floor(floors)
        + render_comparison(comparison, st)
        + render_masker(preds, comparison, st)
        + render_pretrain(inputs.pretrain)
        + "\n"
        + render_clip_lists(inputs.feature_sets, inputs.pretrain, inputs.evals)
    )
    report = {
        "intervals": {
            f"{t}/{r}/{e}": iv.to_json()
            for (t, r), by_encoder in sorted(intervals.items())
            for e, iv in by_encoder.items()
        },
        "against_floors": floors,
        "sslam_vs_mb_ua": comparison,
    }
    return md, report


def mixture_task(cfg: Config) -> str | None:
    """The task whose clips the mixture figure draws: the first polyphonic one of the synthetic corpus."""
    return next((t for t, c in cfg.tasks.items() if c.kind == "multi_label" and c.data != "audioset"), None)
