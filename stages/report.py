"""DVC stage `report`: paper-style tables (metrics/report.md, metrics/report.json) and figures."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sslam.config import load_config_or_exit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics-dir", default="metrics")
    ap.add_argument("--features", default="data/features")
    ap.add_argument("--predictions", default="data/eval")
    args = ap.parse_args(argv)
    cfg = load_config_or_exit(args.params)
    from sslam.features.dataset import FeatureStore
    from sslam.io import write_json_atomic, write_text_atomic
    from sslam.report.intervals import Settings, encoder_intervals, load_predictions
    from sslam.report.tables import (
        floor_table,
        load_eval,
        plot_loss_curves,
        plot_mixture,
        plot_polyphony,
        render_comparison,
        render_floor,
        render_markdown,
        render_masker,
        render_pretrain,
        variant_comparison,
    )

    m = Path(args.metrics_dir)
    configured = {(t, "linear") for t in cfg.task_names} | {(t, "finetune") for t in cfg.finetuned_tasks}
    found = load_eval(m / "eval")
    evals = {k: v for k, v in found.items() if k in configured}
    for stale in sorted(set(found) - configured):  # a task removed from params leaves its file
        print(
            f"report: ignoring metrics/eval/{stale[0]}_{stale[1]}.json (not in tasks / datasets / evaluate.finetune_*)"
        )
    settings = {
        "pretrain.objective": cfg.pretrain.objective,
        "variant": cfg.pretrain.stage2.variant if cfg.pretrain.objective == "bootstrap" else "none",
        "mix.strategy": cfg.mix.strategy,
        "mix.partial": cfg.mix.partial,
        "mix.partial_mode": cfg.mix.partial_mode,
        "srl.aggregation": cfg.srl.aggregation,
    }
    pretrain = {
        st: json.loads((m / f"pretrain_{st}.json").read_text())
        for st in ("stage1", "stage2")
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
    if cfg.pretrain.objective != "bootstrap":  # no stage 2 trained: every "variant" is the stage-1 checkpoint
        runs = {}
    st = Settings(cfg.report.bootstrap_samples, cfg.report.confidence, cfg.report.seed, cfg.report.interval)
    preds = load_predictions(args.predictions, evals)
    intervals = {k: encoder_intervals(p, st) for k, p in preds.items()}
    comparison = variant_comparison(preds, runs, st)
    floors = floor_table(preds, st)
    md = (
        render_markdown(evals, settings, intervals, st.level)
        + render_floor(floors)
        + render_comparison(comparison, st)
        + render_masker(preds, comparison, st)
        + render_pretrain(pretrain)
    )
    write_text_atomic(m / "report.md", md)
    report = {
        "intervals": {
            f"{t}/{r}/{e}": iv.to_json()
            for (t, r), by_encoder in sorted(intervals.items())
            for e, iv in by_encoder.items()
        },
        "against_floors": floors,
        "sslam_vs_mb_ua": comparison,
    }
    write_json_atomic(m / "report.json", report)
    plot_loss_curves({"stage1": m / "stage1_live", "stage2": m / "stage2_live"}, m / "plots" / "pretrain_losses.png")
    plot_polyphony(evals, m / "plots" / "map_by_polyphony.png")
    first_poly = next((t for t, c in cfg.tasks.items() if c.kind == "multi_label" and c.data != "audioset"), None)
    if first_poly:
        plot_mixture(
            FeatureStore(args.features, cfg.tasks[first_poly].feature_set(first_poly)),
            cfg.mix.strategy,
            cfg.mix.mixed_fraction,
            cfg.model.patch[0],
            m / "plots" / "mixture_example.png",
        )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
