"""DVC stage `report`: paper-style tables (metrics/report.md, metrics/report.json) and figures."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sslam.config.params import load_config_or_exit


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics-dir", default="metrics")
    ap.add_argument("--features", default="data/features")
    ap.add_argument("--predictions", default="data/eval")
    args = ap.parse_args(argv)
    cfg = load_config_or_exit(args.params)
    from sslam.features.reader import FeatureStore
    from sslam.io import write_json_atomic, write_text_atomic
    from sslam.report.document import build_report, interval_settings, mixture_task, read_inputs
    from sslam.report.intervals import load_predictions
    from sslam.report.tables import plot_loss_curves, plot_mixture, plot_polyphony

    m = Path(args.metrics_dir)
    inputs = read_inputs(cfg, m, Path(args.features))
    for task, regime in inputs.stale:  # a task removed from params leaves its file
        print(f"report: ignoring metrics/eval/{task}_{regime}.json (not in tasks / datasets / evaluate.finetune_*)")
    md, report = build_report(inputs, load_predictions(args.predictions, inputs.evals), interval_settings(cfg))
    write_text_atomic(m / "report.md", md)
    write_json_atomic(m / "report.json", report)
    plot_loss_curves({"stage1": m / "stage1_live", "stage2": m / "stage2_live"}, m / "plots" / "pretrain_losses.png")
    plot_polyphony(inputs.evals, m / "plots" / "map_by_polyphony.png")
    task = mixture_task(cfg)
    if task:
        plot_mixture(
            FeatureStore(args.features, cfg.tasks[task].feature_set(task)),
            cfg.mix.strategy,
            cfg.mix.mixed_fraction,
            cfg.model.patch[0],
            m / "plots" / "mixture_example.png",
        )
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
