"""The report's "Clip lists" section: which clips this run's results used, and whether they are the features
stage's.

Each pretraining and evaluation metrics file records the clip lists it read (count and SHA-256 of the sorted
ids, :mod:`sslam.data.clip_lists`); the features stage's sets are hashed here from their ``index.csv``. A
result computed on other clips than the features stage now holds (a stale metrics file, a hand-made
features folder) is named, so two reports that differ by their data say so.
"""

from __future__ import annotations

from pathlib import Path

from sslam.clips import local_clip_sets
from sslam.data.clip_lists import clip_list_summary

SHORT = 16  # hex digits of the sha256 shown


def feature_set_lists(features_dir: str | Path) -> dict[str, dict]:
    """set -> {"clips", "sha256"} of every ``<set>/index.csv`` of the features folder ({} without one)."""
    root = Path(features_dir)
    if not root.is_dir() or not any(root.rglob("index.csv")):
        return {}
    return {name: clip_list_summary(ids) for name, ids in sorted(local_clip_sets(root, by="set").items())}


def _short(summary: dict) -> str:
    return f"{summary['clips']} clips, {summary['sha256'][:SHORT]}"


def _check(what: str, name: str, got: dict, features: dict[str, dict]) -> str | None:
    """None when ``got`` is the features stage's set ``name``, else the mismatch in words."""
    want = features.get(name)
    if want is None:
        return f"{what} read `{name}` ({_short(got)}), which the features stage does not hold"
    if want["sha256"] != got["sha256"]:
        return f"{what} read `{name}` ({_short(got)}); the features stage's has {_short(want)}"
    return None


def render_clip_lists(features: dict[str, dict], pretrain: dict[str, dict], evals: dict[tuple[str, str], dict]) -> str:
    """The section: the features stage's sets (clips, short sha256), then whether the pretraining's train
    set and every evaluation's sets are those sets; each mismatch named."""
    lines = [
        "## Clip lists",
        "",
        f"Clips per features set and the first {SHORT} hex digits of the SHA-256 of their sorted ids "
        "(`python -m sslam.clips hash data/features --by set`; the per-split lists each result used are in "
        "its metrics file, `clip_lists`).",
        "",
    ]
    if features:
        lines += ["| set | clips | sha256 |", "| --- | ---: | --- |"]
        lines += [f"| {name} | {s['clips']} | {s['sha256'][:SHORT]} |" for name, s in features.items()]
        lines.append("")
    else:
        lines += ["No features sets found.", ""]
    problems, unrecorded = [], []
    trained: dict[tuple[str, str], tuple[dict, list[str]]] = {}  # (set, sha256) -> (its summary, stages)
    for stage, m in pretrain.items():
        if m.get("steps", 0) == 0:  # a stage 2 passed through: it trained on nothing
            continue
        if not m.get("clip_lists"):
            unrecorded.append(stage)
        for name, got in (m.get("clip_lists") or {}).items():
            trained.setdefault((name, got["sha256"]), (got, []))[1].append(stage)
            problems.append(_check(f"pretraining {stage}", name, got, features))
    for (name, _), (got, stages) in trained.items():
        lines.append(f"- Pretraining: {', '.join(stages)} trained on `{name}` ({_short(got)}).")
    read, evaluations = set(), 0
    for (task, regime), m in sorted(evals.items()):
        if str(m.get("data", "")).startswith("datasets/"):  # a real dataset: its own features, not the stage's
            continue
        evaluations += 1
        if "clip_lists_read" not in m:
            unrecorded.append(f"{task}/{regime}")
        for name, got in (m.get("clip_lists_read") or {}).items():
            read.add(name)
            problems.append(_check(f"evaluation {task}/{regime}", name, got, features))
    lines.append(f"- Evaluations: {evaluations} evaluations read {len(read)} features sets.")
    problems = [p for p in problems if p is not None]
    if problems:
        lines += [f"- **Mismatch**: {p}." for p in problems]
    elif trained or read:
        lines.append("- Every set trained or evaluated on is the features stage's.")
    if unrecorded:
        lines.append(f"- No clip list recorded (metrics from before clip lists): {', '.join(unrecorded)}.")
    return "\n".join(lines) + "\n"
