"""A picture of a corpus: what each class looks like, and how labels relate to overlapping events."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from sslam.data import audioset_format as fmt  # noqa: E402
from sslam.data.manifest import read_manifest  # noqa: E402
from sslam.data.shards import read_audio  # noqa: E402
from sslam.features.fbank import kaldi_fbank  # noqa: E402
from sslam.io import atomic_path  # noqa: E402


def _logmel(corpus: Path, row) -> tuple[np.ndarray, float]:
    wave, sr = read_audio(corpus, row.path, row.member)
    return kaldi_fbank(torch.from_numpy(wave), sr).numpy().T, len(wave) / sr


def plot_corpus_overview(
    corpus: str | Path, out_png: str | Path, poly_examples: int = 3, max_classes: int = 20
) -> None:
    """Top: one log-mel per class of the monophonic task. Bottom: soundscapes with their strong labels
    drawn as bars and their weak labels (facets included) in the title."""
    corpus = Path(corpus)
    names = dict(zip(*fmt.read_class_labels(corpus / "class_labels_indices.csv")[["mid", "display_name"]].T.values))
    mono_path = corpus / "tasks" / "mono" / "manifest.csv"
    if mono_path.is_file():
        singles = read_manifest(mono_path, only_ok=True)
    else:  # other sources: the first clip of each leading label, from any split
        singles = pd.concat([read_manifest(p, only_ok=True) for p in sorted((corpus / "manifests").glob("*.csv"))])
        singles = singles[singles["labels"].str.len() > 0]
    firsts = singles.groupby(singles["labels"].str[0], sort=False).head(1).head(max_classes)
    poly = pd.DataFrame()
    if (corpus / "strong" / "eval.tsv").is_file():
        eval_manifest = read_manifest(corpus / "manifests" / "eval.csv", only_ok=True)
        strong = fmt.read_strong_labels(corpus / "strong" / "eval.tsv")
        strong["clip_id"] = strong["segment_id"].str.rsplit("_", n=1).str[0]
        counts = strong.groupby("clip_id")["label"].nunique()
        poly = eval_manifest[eval_manifest["clip_id"].map(counts).fillna(0) >= 3].head(poly_examples)

    cols = 5
    rows_top = int(np.ceil(len(firsts) / cols))
    fig = plt.figure(figsize=(3.2 * cols, 2.2 * rows_top + 2.8 * len(poly)), dpi=80)
    grid = fig.add_gridspec(rows_top + len(poly), cols, height_ratios=[1.0] * rows_top + [1.3] * len(poly))
    for k, row in enumerate(firsts.itertuples()):
        ax = fig.add_subplot(grid[k // cols, k % cols])
        mel, dur = _logmel(corpus, row)
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, dur, 0, mel.shape[0]))
        ax.set_title(names.get(row.labels[0], row.labels[0]), fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    for k, row in enumerate(poly.itertuples()):
        ax = fig.add_subplot(grid[rows_top + k, :])
        mel, dur = _logmel(corpus, row)
        ax.imshow(mel, origin="lower", aspect="auto", cmap="magma", extent=(0, dur, 0, mel.shape[0]))
        events = strong[strong["clip_id"] == row.clip_id].reset_index(drop=True)
        for j, ev in events.iterrows():
            y = mel.shape[0] * (0.96 - 0.07 * j)
            ax.plot(
                [ev.start_time_seconds, ev.end_time_seconds], [y, y], lw=4, color=f"C{j % 10}", solid_capstyle="butt"
            )
            ax.text(
                ev.end_time_seconds + 0.02, y, names.get(ev.label, ev.label), color="white", fontsize=8, va="center"
            )
        ax.set_title(
            f"{row.clip_id}: {events['label'].nunique()} sources, {len(row.labels)} labels: "
            + ", ".join(names.get(x, x) for x in row.labels),
            fontsize=8,
            loc="left",
        )
        ax.set_ylabel("mel bin")
    fig.axes[-1].set_xlabel("time (s)")
    fig.tight_layout()
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", metadata={"Software": None})
    plt.close(fig)
