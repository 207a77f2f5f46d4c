"""Ablation tables (the paper's Tables 4-6 and 9-11) from whichever `dvc exp` runs exist.

Each table is defined by the params it varies. A run enters a table when its params differ from the
baseline's only in that table's keys; every run,
the baseline included, is a row labelled by its values of those keys. Run the ablations with, e.g.,

    dvc exp run --queue -S mix.strategy=average
    dvc exp run --queue -S mix.strategy=waveform
    dvc exp run --run-all
    python -m sslam.report.ablations            # -> metrics/ablations.md

The baseline is the commit the experiments start from. The numbers are read from each run's
``metrics/eval/<task>_<regime>.json``; the paper's
values (AS-2M pretraining, AS-20K fine-tuning) stand beside ours as context.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sslam.io import write_text_atomic


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


@dataclass(frozen=True)
class Run:
    name: str
    params: dict[str, Any]  # flat dotted keys
    metrics: dict[str, float]  # "<task>/<regime>/<encoder>" -> metric value


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, dict):
        return {prefix: tree}
    out: dict[str, Any] = {}
    for k, v in tree.items():
        out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def _eval_metrics(files: dict[str, Any]) -> dict[str, float]:
    out = {}
    for path, entry in files.items():
        d = (entry or {}).get("data") or {}
        if not (path.startswith("metrics/eval/") and "encoders" in d):
            continue
        for enc, res in d["encoders"].items():
            if d.get("metric") in res:
                out[f"{d['task']}/{d['regime']}/{enc}"] = float(res[d["metric"]])
    return out


def _run(entry: dict, name: str) -> Run | None:
    data = entry.get("data") or {}
    params = ((data.get("params") or {}).get("params.yaml") or {}).get("data")
    if params is None:
        return None
    return Run(name, flatten(params), _eval_metrics(data.get("metrics") or {}))


def runs_from_exp_show(exp_show: list[dict]) -> list[Run]:
    """The workspace, each baseline commit and each finished experiment of ``dvc exp show --json``."""
    runs = []
    for base in exp_show:
        rev = base.get("rev", "?")
        name = "workspace" if rev == "workspace" else (base.get("name") or rev[:7])
        r = _run(base, name)
        if r:
            runs.append(r)
        for exp in base.get("experiments") or []:
            revs = exp.get("revs") or []
            state = (exp.get("executor") or {}).get("state")
            if state not in (None, "success"):  # running or queued: its metrics are still the baseline's
                continue
            if revs:
                r = _run(revs[0], revs[0].get("name") or revs[0].get("rev", "?")[:7])
                if r:
                    runs.append(r)
    return runs


FLOOR = "fbank_stats"  # the non-learned floor of linear evaluation (downstream/encoder.py)


def floor_scores(runs: list[Run]) -> dict[str, float]:
    """``task/linear`` -> the ``fbank_stats`` floor's score, from the first run holding it (no network: the
    same for every run on the same features)."""
    out: dict[str, float] = {}
    for r in runs:
        for key, v in r.metrics.items():
            task, regime, name = (key.split("/") + ["", ""])[:3]
            if name == FLOOR and v is not None:
                out.setdefault(f"{task}/{regime}", v)
    return out


def changed_params(run: Run, baseline: Run) -> dict[str, Any]:
    """The params ``run`` set differently from ``baseline``. A key the run lacks was added to params.yaml
    after it ran: the run had the behaviour the key's default keeps, so that is no change."""
    return {k: v for k, v in run.params.items() if k not in baseline.params or v != baseline.params[k]}


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


def exp_show(repo: str | Path = ".", all_commits: bool = False) -> list[dict]:
    """``dvc exp show --json`` (``all_commits``: the experiments of every commit, ``-A``)."""
    cmd = [sys.executable, "-m", "dvc", "exp", "show", "--json", *(["-A"] if all_commits else [])]
    out = subprocess.run(cmd, cwd=repo, check=True, capture_output=True, text=True).stdout
    return json.loads(out)


def runs_and_baseline(json_path: str | None, baseline: str | None, all_commits: bool = False) -> tuple[list[Run], Run]:
    """The runs of a saved ``dvc exp show --json`` (or of running it here) and the baseline among them:
    the run named ``baseline``, else the first that is not the workspace (the commit the experiments start
    from; the workspace holds the last experiment after ``dvc exp run``). Exits with status 2 and a message if none."""
    data = json.loads(Path(json_path).read_text()) if json_path else exp_show(all_commits=all_commits)
    runs = runs_from_exp_show(data)
    base = next((r for r in runs if (r.name == baseline if baseline else r.name != "workspace")), None)
    if base is None:
        print(f"no run named {baseline!r} (runs: {[r.name for r in runs]})", file=sys.stderr)
        raise SystemExit(2)
    return runs, base


def add_run_arguments(ap: argparse.ArgumentParser) -> None:
    """The options every experiment table shares: where the runs come from and which is the baseline."""
    ap.add_argument("--json", help="a saved `dvc exp show --json` (default: run it here)")
    ap.add_argument(
        "--baseline",
        default=None,
        help="the run the others are compared with (default: the commit the experiments start from; "
        "not the workspace, which `dvc exp run` leaves holding the last experiment)",
    )
    ap.add_argument("--all-commits", action="store_true", help="runs of every commit (dvc exp show -A)")


def experiment_runs(args: argparse.Namespace) -> tuple[list[Run], Run]:
    """(the experiments, newest first, neither the baseline nor the workspace; the baseline)."""
    runs, base = runs_and_baseline(args.json, args.baseline, args.all_commits)
    return [r for r in runs if r is not base and r.name != "workspace"], base


def write_table(out: str | Path, md: str, summary: Any = None) -> None:
    """The markdown table, its JSON summary beside it (``.json``) when given, and the table on stdout."""
    out = Path(out)
    write_text_atomic(out, md)
    if summary is not None:
        write_text_atomic(out.with_suffix(".json"), json.dumps(summary, indent=2, sort_keys=True) + "\n")
    print(md)


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
