"""The runs of `dvc exp`, read back for the experiment tables: each run's params (flat dotted keys) and
its evaluation scores, the baseline the others are compared with, and the options every table shares.

The runs come from ``dvc exp show --json`` (run here, or a saved copy with ``--json``); the numbers from
each run's ``metrics/eval/<task>_<regime>.json``.
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
from sslam.report.intervals import FLOOR  # the non-learned floor of linear evaluation (downstream/encoder.py)


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
