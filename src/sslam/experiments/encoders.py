"""The encoder comparison (Transformer / Mamba / xLSTM) from `dvc exp` runs: per task, each encoder's SSLAM
checkpoint beside its own random-init control, in one table.

A run is a row when its params differ from the baseline's only in the encoder keys (``model.encoder``,
``model.masked_tokens``, each encoder's own section ``model.<encoder>.*`` and the clone batches); the baseline (the
commit the experiments start from) is a row too. The latest run of each encoder wins. Run them with

    make exp ARGS="-n mamba -S model.encoder=mamba"
    make exp ARGS="-n xlstm -S model.encoder=xlstm"
    sslam-encoders      # (or python -m sslam.experiments.encoders) -> metrics/encoders.md, metrics/encoders.json

Each cell is ``pretrained / control`` in %: ``evaluate.linear_encoders``' first entry (the SSLAM stage-2
checkpoint, ``stage2``) against ``random0`` (the same encoder, untrained, seed 0), both frozen under linear
evaluation; the fine-tuned pair likewise where fine-tuning ran. "mean gain" is the mean over the tasks of
pretrained minus control, in points, so an encoder is credited only for what pretraining added to it.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

from sslam.experiments.runs import (
    FLOOR,
    Run,
    add_run_arguments,
    changed_params,
    experiment_runs,
    floor_scores,
    write_table,
)
from sslam.models.registry import ENCODERS

# the encoder, its own section (model.<name>.*, for the registered encoders that have one) and how masked
# tokens reach it
ENCODER_PREFIXES = (
    "model.encoder",
    "model.masked_tokens",
    *(f"model.{name}." for name, entry in ENCODERS.items() if entry.options is not None),
)
ENCODER_KEYS = ("mask.clone_batch", "pretrain.stage2.clone_batch")  # the batch an encoder's memory allows
PRETRAINED, CONTROL = "stage2", "random0"
OLDEST_ENCODER = "transformer"  # what a run from before ``model.encoder`` existed trained


def is_encoder_key(key: str) -> bool:
    return key.startswith(ENCODER_KEYS + ENCODER_PREFIXES)  # the clone batches may be per-mode mappings


@dataclass(frozen=True)
class EncoderRow:
    run: str
    encoder: str
    settings: dict[str, object]  # the encoder keys this run changed from the baseline
    scores: dict[str, tuple[float | None, float | None]]  # "task/regime" -> (pretrained, control)

    def mean_gain(self, regime: str) -> float | None:
        gains = [p - c for k, (p, c) in self.scores.items() if k.endswith("/" + regime) and None not in (p, c)]
        return sum(gains) / len(gains) if gains else None


def encoder_rows(runs: list[Run], baseline: Run) -> list[EncoderRow]:
    """The baseline and the latest run per encoder that changed only encoder keys (``runs`` newest first,
    as ``dvc exp show`` lists them)."""
    chosen: dict[str, tuple[Run, dict]] = {}
    for r in [baseline, *runs]:
        differs = changed_params(r, baseline)
        if r is not baseline and (not differs or not all(is_encoder_key(k) for k in differs)):
            continue
        enc = str(r.params.get("model.encoder", OLDEST_ENCODER))
        if enc not in chosen:
            chosen[enc] = (r, differs)
    rows = []
    for enc, (r, differs) in chosen.items():
        pairs = {}
        for key in r.metrics:
            task, regime, name = key.split("/")
            if name == PRETRAINED:
                pairs[f"{task}/{regime}"] = (r.metrics[key], r.metrics.get(f"{task}/{regime}/{CONTROL}"))
        rows.append(EncoderRow(r.name, enc, differs, pairs))
    return rows


def _cell(pair: tuple[float | None, float | None] | None) -> str:
    if pair is None:
        return "-"
    return " / ".join("-" if v is None else f"{100 * v:.1f}" for v in pair)


def render(rows: list[EncoderRow], floor: dict[str, float] | None = None) -> str:
    """The table; ``floor``: ``task/linear`` -> the ``fbank_stats`` score, a last row every encoder must beat."""
    floor = floor or {}
    columns = sorted({k for r in rows for k in r.scores}, key=lambda k: (k.split("/")[1] != "linear", k))
    lines = [
        "# Encoders: SSLAM checkpoint / random-init control of the same encoder",
        "",
        f"Cells: `{PRETRAINED}` (SSLAM stage 2) / `{CONTROL}` (untrained, seed 0), in % (accuracy or mAP, as each "
        "task's metric). Mean gain: mean over the tasks of pretrained minus control, in points.",
        "",
        "| encoder | run | settings | " + " | ".join(columns) + " | mean gain, linear | mean gain, fine-tuned |",
        "|" + " --- |" * (len(columns) + 5),
    ]
    for r in rows:
        settings = ", ".join(f"{k}={v}" for k, v in sorted(r.settings.items()) if k != "model.encoder") or "params.yaml"
        gains = [r.mean_gain(g) for g in ("linear", "finetune")]
        lines.append(
            f"| {r.encoder} | {r.run} | {settings} | "
            + " | ".join(_cell(r.scores.get(c)) for c in columns)
            + " | "
            + " | ".join("-" if g is None else f"{100 * g:+.1f}" for g in gains)
            + " |"
        )
    if floor:
        lines.append(
            f"| {FLOOR} (floor) | - | no network: mean and std of the log-mel | "
            + " | ".join(f"{100 * floor[c]:.1f}" if c in floor else "-" for c in columns)
            + " | - | - |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap)
    ap.add_argument("--out", default="metrics/encoders.md")
    args = ap.parse_args(argv)
    runs, baseline = experiment_runs(args)
    rows = encoder_rows(runs, baseline)
    floor = floor_scores([baseline, *runs])
    summary = {
        r.encoder: {
            "run": r.run,
            "settings": r.settings,
            "scores": {k: {PRETRAINED: p, CONTROL: c} for k, (p, c) in sorted(r.scores.items())},
            "mean_gain": {g: r.mean_gain(g) for g in ("linear", "finetune")},
        }
        for r in rows
    }
    write_table(args.out, render(rows, floor), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
