"""Ablation tables (the paper's Tables 4-6 and 9-11) from whichever `dvc exp` runs exist.

Each table is defined by the params it varies. A run enters a table when its params differ from the
baseline's only in that table's keys; every run,
the baseline included, is a row labelled by its values of those keys. Run the ablations with, e.g.,

    dvc exp run --queue -S mix.strategy=average
    dvc exp run --queue -S mix.strategy=waveform
    dvc exp run --run-all
    sslam-ablations      # (or python -m sslam.experiments.ablations) -> metrics/ablations.md

The baseline is the commit the experiments start from. The numbers are read from each run's
``metrics/eval/<task>_<regime>.json``; the paper's
values (AS-2M pretraining, AS-20K fine-tuning) stand beside ours as context.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from sslam.experiments.runs import Run, add_run_arguments, changed_params, experiment_runs, write_table


@dataclass(frozen=True)
class Ablation:
    table: str
    title: str
    keys: tuple[str, ...]
    paper: dict[str, float]  # row label of the paper -> its AS-20K fine-tuning mAP (or the table's metric)


ABLATIONS = (
    Ablation(
        "Table 4",
        "partial vs full mixing",
        ("mix.partial", "mix.partial_mode", "mix.mixed_fraction"),
        {"Stage 2 with partial mixed audio": 40.6, "Stage 2 with mixed audio 75% of updates": 40.4},
    ),
    Ablation(
        "Table 5",
        "global loss on unmixed / mixed data / SRL",
        ("pretrain.stage2.global_unmixed", "pretrain.stage2.global_mixed", "srl.global_loss"),
        {
            "UM + PM global loss": 40.9,
            "UM global loss only": 40.7,
            "no global loss": 40.4,
            "UM + PM + SRL global loss": 40.6,
        },
    ),
    Ablation(
        "Table 6",
        "top-k teacher layers (global, local)",
        ("pretrain.stage2.global_top_k_layers", "pretrain.stage2.top_k_layers"),
        {
            "Global 12, Local 12": 40.5,
            "Global 1, Local 12": 40.6,
            "Global 3, Local 3": 39.3,
            "Global 1, Local 3": 39.4,
            "Global 1, Local 1": 38.8,
        },
    ),
    Ablation(
        "Table 9",
        "MB-PMA vs MB-UA-PMA (and the other variants)",
        ("pretrain.stage2.variant",),
        {"MB-PMA": 40.6, "MB-UA-PMA": 40.7, "SSLAM": 40.9},
    ),
    Ablation(
        "Table 10",
        "input mixing strategy",
        ("mix.strategy",),
        {"log-mel max": 40.9, "log-mel average": 40.8, "waveform average": 40.4},
    ),
    Ablation("Table 11", "SRL feature aggregation", ("srl.aggregation",), {"feature averaging": 40.9}),
)


def rows_for(ablation: Ablation, runs: list[Run], baseline: Run) -> list[Run]:
    """The baseline, then each run that differs from it only in the ablation's keys (one row per setting)."""
    keys = set(ablation.keys)
    chosen = [baseline]
    for r in runs:
        differs = set(changed_params(r, baseline))
        if differs and differs <= keys and all(r.params != c.params for c in chosen):
            chosen.append(r)
    return chosen


def render(runs: list[Run], baseline: Run, columns: list[str] | None = None) -> str:
    columns = columns or sorted({k for r in runs for k in r.metrics if "/random" not in k})
    lines = [
        "# Ablations (paper Tables 4-6, 9-11) from `dvc exp` runs",
        "",
        f"Baseline: `{baseline.name}`. A run is a row of a table when its params differ from the baseline's only "
        "in that table's keys. Metric columns: `task/regime/encoder`, in %.",
        "",
    ]
    for ab in ABLATIONS:
        rows = rows_for(ab, runs, baseline)
        lines += [f"## {ab.table}: {ab.title}", ""]
        if len(rows) < 2:
            lines += [f"Only the baseline has these settings; to fill it: `dvc exp run -S {ab.keys[0]}=<value>`.", ""]
        else:
            lines += [
                "| run | " + " | ".join(ab.keys) + " | " + " | ".join(columns) + " |",
                "|" + " --- |" * (1 + len(ab.keys) + len(columns)),
            ]
            for r in rows:
                vals = [f"{100 * r.metrics[c]:.1f}" if c in r.metrics else "-" for c in columns]
                lines.append(
                    f"| {r.name} | "
                    + " | ".join(str(r.params.get(k, "-")) for k in ab.keys)
                    + " | "
                    + " | ".join(vals)
                    + " |"
                )
            lines.append("")
        lines += [
            "Paper (AS-2M pretraining, AS-20K fine-tuning mAP): " + "; ".join(f"{k} {v}" for k, v in ab.paper.items()),
            "",
        ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap)
    ap.add_argument("--out", default="metrics/ablations.md")
    args = ap.parse_args(argv)
    runs, base = experiment_runs(args)
    write_table(args.out, render(runs, base))
    return 0


if __name__ == "__main__":
    sys.exit(main())
