"""The comparison grid: encoder x pretraining objective, frozen linear evaluation, one table (the shape of
the masked-spectrogram overview's), from `dvc exp` runs.

A run is a row when its params differ from the baseline's only in the grid's keys (the encoder and its
sizes, ``pretrain.objective`` and its sections, the clone batch, ``pretrain.seed``) and in what is evaluated
(``evaluate.*``, ``pretrain.stage2_runs``). Runs of the same (encoder, objective) with other seeds are
averaged, with their spread. Queue the grid with, e.g.,

    for e in transformer mamba xlstm; do for o in bootstrap ssast msm; do
      dvc exp run --queue -n $e-$o -S model.encoder=$e -S pretrain.objective=$o \\
        -S 'evaluate.linear_encoders=[stage2,stage1,random0]' -S 'evaluate.finetune_tasks=[]' \\
        -S 'pretrain.stage2_runs={}'
    done; done
    dvc exp run --run-all
    python bench/objectives.py --out metrics/grid_cost.json   # optional: the cost columns
    sslam-grid --cost metrics/grid_cost.json   # (or python -m sslam.experiments.grid) -> metrics/grid.{md,json}

Each cell is the linear-evaluation score (accuracy or mAP, %) of the row's pretrained encoder: ``stage2``,
which is SSLAM's stage 2 for ``bootstrap`` and the stage-1 checkpoint passed through for ``ssast`` and
``msm`` (the ``checkpoint`` column says which; ``bootstrap`` also gets a row for its stage-1 checkpoint, the
same steps as the others). The overall score normalises each task by the random-init control of the same
encoder (``random0``): the mean over the tasks of pretrained minus control, in points, so an encoder is
credited only for what pretraining added. The cost columns (``--cost``) are what ``bench/objectives.py``
measured on one machine in one run: stage-1 clips/s and peak memory of each (encoder, objective), the same
batch for all; this tool trains nothing.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

from sslam.experiments.encoders import CONTROL, ENCODER_KEYS, ENCODER_PREFIXES, OLDEST_ENCODER
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
from sslam.pretrain.objectives import get_objective, objective_names

# the objective and the options sections of the objectives (pretrain.<options>.*, for the objectives that have one)
OBJECTIVE_PREFIXES = (
    "pretrain.objective",
    *(f"pretrain.{o}." for o in sorted({get_objective(n).options for n in objective_names()} - {None})),
)
GRID_PREFIXES = (*ENCODER_PREFIXES, *ENCODER_KEYS, *OBJECTIVE_PREFIXES, "pretrain.seed")
EVALUATION_PREFIXES = ("evaluate.", "pretrain.stage2_runs")
OLDEST_OBJECTIVE = "bootstrap"  # what a run from before ``pretrain.objective`` existed trained


def trains_stage2(objective: str) -> bool:
    """Did a run of ``objective`` train a stage 2 (SSLAM's, on bootstrap), or pass stage 1 through? An
    objective no longer registered counts as passing through."""
    return objective in objective_names() and get_objective(objective).trains_stage2


def is_grid_key(key: str) -> bool:
    return key.startswith(GRID_PREFIXES + EVALUATION_PREFIXES)


@dataclass
class GridRow:
    encoder: str
    objective: str
    checkpoint: str  # the encoder name evaluated: stage2 (SSLAM or passed-through stage 1) or stage1
    settings: dict[str, object]  # the training keys the row's runs changed from the baseline (seed excluded)
    runs: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    scores: dict[str, list[float]] = field(default_factory=dict)  # task -> per seed
    controls: dict[str, list[float]] = field(default_factory=dict)

    @property
    def label(self) -> str:
        if trains_stage2(self.objective):
            return f"{self.objective} + SSLAM stage 2" if self.checkpoint == "stage2" else f"{self.objective} (stage 1)"
        return self.objective

    def task_mean(self, task: str) -> float:
        return statistics.fmean(self.scores[task])

    def overall_per_seed(self) -> list[float]:
        """Per seed: the mean over tasks of pretrained minus the same encoder's control (points / 100)."""
        tasks = sorted(t for t in self.scores if t in self.controls)
        return [
            statistics.fmean(self.scores[t][i] - self.controls[t][i] for t in tasks) for i in range(len(self.seeds))
        ]

    def overall(self) -> float:
        return statistics.fmean(self.overall_per_seed())

    def spread(self) -> float | None:
        per = self.overall_per_seed()
        return max(per) - min(per) if len(per) > 1 else None


def grid_rows(runs: list[Run], baseline: Run) -> list[GridRow]:
    """Rows from the baseline and every run that changed only grid and evaluation keys; each (encoder,
    objective, seed) counts once (the newest run: ``runs`` come newest first, as ``dvc exp show`` lists)."""
    rows: dict[tuple[str, str, str], GridRow] = {}
    for r in [baseline, *runs]:
        differs = changed_params(r, baseline)
        if r is not baseline and not all(is_grid_key(k) for k in differs):
            continue
        enc = str(r.params.get("model.encoder", OLDEST_ENCODER))
        obj = str(r.params.get("pretrain.objective", OLDEST_OBJECTIVE))
        seed = int(r.params.get("pretrain.seed", 0))
        training = {k: v for k, v in differs.items() if k.startswith(GRID_PREFIXES) and k != "pretrain.seed"}
        checkpoints = ["stage2", "stage1"] if trains_stage2(obj) else ["stage2"]
        for ck in checkpoints:
            per_task = {
                key.split("/")[0]: v
                for key, v in r.metrics.items()
                if key.endswith(f"/linear/{ck}") and r.metrics.get(key.replace(f"/{ck}", f"/{CONTROL}")) is not None
            }
            if not per_task:
                continue
            row = rows.setdefault((enc, obj, ck), GridRow(enc, obj, ck, training))
            if seed in row.seeds:
                continue
            row.runs.append(r.name)
            row.seeds.append(seed)
            for task, v in per_task.items():
                row.scores.setdefault(task, []).append(v)
                row.controls.setdefault(task, []).append(r.metrics[f"{task}/linear/{CONTROL}"])
    first = str(baseline.params.get("model.encoder", OLDEST_ENCODER))  # the baseline's encoder, then by name
    order = {name: i for i, name in enumerate([first, *(e for e in ENCODERS if e != first)])}
    return sorted(
        rows.values(), key=lambda g: (order.get(g.encoder, len(order)), g.objective, g.checkpoint != "stage2")
    )


def read_cost(path: str | Path) -> dict[tuple[str, str], dict]:
    """(encoder, objective) -> {clips_per_s, peak_mb, ...}: what ``bench/objectives.py --out`` measured."""
    return {tuple(k.split("/")): v for k, v in json.loads(Path(path).read_text()).items()}


# ----------------------------------------------------------------------------- rendering


def render(
    rows: list[GridRow], cost: dict[tuple[str, str], dict] | None = None, floor: dict[str, float] | None = None
) -> str:
    """The grid; ``floor``: ``task/linear`` -> the ``fbank_stats`` score, shown under the controls."""
    tasks = sorted({t for r in rows for t in r.scores})
    cost = cost or {}
    floor = floor or {}
    lines = [
        "# Encoder x objective: frozen linear evaluation",
        "",
        "Cells: linear-evaluation score in % (accuracy or mAP, each task's metric) of the row's pretrained "
        "encoder, the mean over its seeds. Overall: the mean over the tasks of pretrained minus the same "
        "encoder's random-init control (`random0`), in points (± the spread between seeds, where there are two "
        "or more). Cost: stage-1 clips/s and peak memory above the process baseline, measured by "
        "`bench/objectives.py` in one run on one machine (the same batch for every row).",
        "",
        "| encoder | objective | checkpoint | seeds | " + " | ".join(tasks) + " | overall | clips/s | peak MB |",
        "|" + " --- |" * (len(tasks) + 7),
    ]
    for r in rows:
        spread = r.spread()
        overall = f"{100 * r.overall():+.1f}" + ("" if spread is None else f" ± {100 * spread / 2:.1f}")
        c = cost.get((r.encoder, r.objective))
        lines.append(
            f"| {r.encoder} | {r.label} | {r.checkpoint} | {', '.join(map(str, sorted(r.seeds)))} | "
            + " | ".join(f"{100 * r.task_mean(t):.1f}" if t in r.scores else "-" for t in tasks)
            + f" | {overall} | "
            + (f"{c['clips_per_s']:.1f} | {c['peak_mb']:.0f} |" if c else "- | - |")
        )
    controls = sorted({r.encoder for r in rows})
    lines += ["", "Random-init controls (`random0`, seed 0 of each encoder):", ""]
    lines += ["| encoder | " + " | ".join(tasks) + " |", "|" + " --- |" * (len(tasks) + 1)]
    for enc in controls:
        r = next(g for g in rows if g.encoder == enc)
        lines.append(
            f"| {enc} | "
            + " | ".join(f"{100 * r.controls[t][0]:.1f}" if t in r.controls else "-" for t in tasks)
            + " |"
        )
    if floor:
        lines.append(
            f"| {FLOOR} (floor, no network) | "
            + " | ".join(f"{100 * floor[f'{t}/linear']:.1f}" if f"{t}/linear" in floor else "-" for t in tasks)
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_arguments(ap)
    ap.add_argument("--out", default="metrics/grid.md")
    ap.add_argument("--cost", help="the cost columns: the JSON `python bench/objectives.py --out` wrote")
    args = ap.parse_args(argv)
    runs, baseline = experiment_runs(args)
    rows = grid_rows(runs, baseline)
    floor = floor_scores([baseline, *runs])
    cost = read_cost(args.cost) if args.cost else {}
    summary = [
        {
            "encoder": r.encoder,
            "objective": r.objective,
            "checkpoint": r.checkpoint,
            "runs": r.runs,
            "seeds": r.seeds,
            "scores": r.scores,
            "controls": r.controls,
            "overall": r.overall(),
            "overall_per_seed": r.overall_per_seed(),
            "cost": cost.get((r.encoder, r.objective)),
        }
        for r in rows
    ]
    write_table(args.out, render(rows, cost, floor), summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
