"""Small synthetic corpora for the benchmarks: a fresh clone has no data/, so each benchmark generates
the few clips it needs with the download stage's own generator (``make bench`` skips this file)."""

from __future__ import annotations

from pathlib import Path

from sslam.config.base import load_sections, merged
from sslam.config.data import DownloadParams
from sslam.data.synthetic import generate_corpus

# every downstream task at a token size: the benchmarks time pretraining splits or one chosen task
TINY_TASKS = {
    "mono": {"num_classes": 2, "clips_per_class_per_fold": 1},
    "keywords": {"num_classes": 2, "clips_per_class": {"train": 1, "valid": 1, "test": 1}},
    "poly": {"environments": ["square"], "clips_train": 1, "clips_eval": 1},
    "urban": {"clips_train": 1, "clips_eval": 1},
    "desed": {"num_classes": 2, "clips_train": 1, "clips_eval": 1},
}


def synthetic_corpus(
    out_dir: Path, splits: dict[str, int], sample_rate: int = 16000, workers: int = 1, **synthetic: object
) -> Path:
    """Generate the AudioSet-shaped ``splits`` (clips per split; the others empty) and token-sized tasks;
    ``synthetic`` overrides other ``download.synthetic`` keys (e.g. ``clip_seconds``)."""
    sizes = {"unbalanced": 0, "balanced": 0, "eval": 0} | splits
    download = load_sections(DownloadParams, Path(__file__).resolve().parent.parent / "params.yaml").download
    cfg = merged(download.synthetic, {"clips": sizes, "tasks": TINY_TASKS, **synthetic})
    generate_corpus(cfg, out_dir, sample_rate, download.clips_per_shard, workers=workers)
    return out_dir
