"""Figures and tables for the polyphony analysis (the paper's Figure 3, and event-count histograms)."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sslam.data.polyphony import PAPER_PERCENT, RULES  # noqa: E402
from sslam.io import atomic_path, write_text_atomic  # noqa: E402


def _save(fig, path: str | Path) -> None:
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)


def levels_table(result: dict, rule: str, levels: list[int]) -> str:
    """CSV for `dvc plots`: one row per level, one column per split, plus the paper's AS-2M figure."""
    splits = list(result)
    buf = io.StringIO()
    buf.write(",".join(["level", *splits, "paper_as2m"]) + "\n")
    for lv in levels:
        paper = PAPER_PERCENT.get(lv)
        row = (
            [str(lv)]
            + [f"{result[s]['percent'][rule][str(lv)]:.2f}" for s in splits]
            + ["" if paper is None else f"{paper:.1f}"]
        )
        buf.write(",".join(row) + "\n")
    return buf.getvalue()


def markdown_table(result: dict, levels: list[int]) -> str:
    """Every rule x split x level, with the paper's AS-2M figures beside: the stage prints this."""
    head = "| split | rule | " + " | ".join(f"L={lv}" for lv in levels) + " |"
    lines = [head, "|" + " --- |" * (len(levels) + 2)]
    lines.append(
        "| AS-2M (paper) | - | " + " | ".join(f"{PAPER_PERCENT.get(lv, float('nan')):.1f}" for lv in levels) + " |"
    )
    for split, entry in result.items():
        for rule in RULES:
            if rule in entry["percent"]:
                vals = " | ".join(f"{entry['percent'][rule][str(lv)]:.1f}" for lv in levels)
                lines.append(f"| {split} ({entry['clips']} clips) | {rule} | {vals} |")
        if "strong_label_percent" in entry:
            lines.append(
                f"| {split} | truth from strong labels | "
                + " | ".join(f"{entry['strong_label_percent']:.1f}" for _ in levels)
                + " |"
            )
    return "\n".join(lines) + "\n"


def plot_levels(result: dict, rule: str, levels: list[int], path: str | Path) -> None:
    """Grouped bars: % of clips with >= 2 distinct events per level, per split, the paper's beside."""
    series = {
        f"{s} ({result[s]['clips']} clips)": [result[s]["percent"][rule][str(lv)] for lv in levels] for s in result
    }
    series["AS-2M, paper Fig. 3"] = [PAPER_PERCENT.get(lv, np.nan) for lv in levels]
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    width = 0.8 / len(series)
    x = np.arange(len(levels))
    for i, (name, vals) in enumerate(series.items()):
        color = "0.6" if name.startswith("AS-2M") else f"C{i}"
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, vals, width, label=name, color=color)
        ax.bar_label(bars, fmt="%.1f", fontsize=7)
    ax.set_xticks(x, [f"L={lv}" for lv in levels])
    ax.set_ylabel("% clips with >= 2 distinct events")
    ax.set_title(f"Polyphony of the labels (rule: {rule})")
    ax.set_ylim(0, 100)
    ax.legend(fontsize=8, loc="upper right")
    fig.tight_layout()
    _save(fig, path)


def plot_histogram(result: dict, rule: str, levels: list[int], path: str | Path) -> None:
    """How many distinct events clips hold, per split, for each level (and multi-label for contrast)."""
    fig, axes = plt.subplots(1, len(result), figsize=(4.5 * len(result), 3.4), dpi=100, squeeze=False)
    for ax, (split, entry) in zip(axes[0], result.items()):
        hist = entry["histogram"][rule]
        top = max(int(c) for h in hist.values() for c in h) if hist else 1
        counts = np.arange(0, top + 1)
        width = 0.8 / len(levels)
        for i, lv in enumerate(levels):
            h = hist[str(lv)]
            vals = [100.0 * h.get(str(c), 0) / entry["clips"] for c in counts]
            ax.bar(counts + (i - (len(levels) - 1) / 2) * width, vals, width, label=f"L={lv}")
        ax.set_title(f"{split}: {entry['clips']} clips", fontsize=9)
        ax.set_xlabel("distinct events per clip")
        ax.set_xticks(counts)
    axes[0][0].set_ylabel("% clips")
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"Distinct events per clip (rule: {rule})", fontsize=10)
    fig.tight_layout()
    _save(fig, path)


def write_outputs(result: dict, rule: str, levels: list[int], metrics_dir: str | Path) -> None:
    metrics_dir = Path(metrics_dir)
    write_text_atomic(metrics_dir / "polyphony_levels.csv", levels_table(result, rule, levels))
    plot_levels(result, rule, levels, metrics_dir / "plots" / "polyphony_levels.png")
    plot_histogram(result, rule, levels, metrics_dir / "plots" / "polyphony_histogram.png")
