"""DVC stage `dataset@<name>`: one real dataset, in its published layout, as its own one-task corpus.

Lists the clips with the format's layout (``src/sslam/data/layouts/<format>.py``: splits or folds,
labels), converts each to mono FLAC at the corpus rate (``sslam.data.datasets``), then caches the log-mel
at the dataset's target_frames (``sslam.features``) and writes data/datasets/<name>/ with its failures
table. Resumable: converted clips and finished shards are kept (the output is persisted), each only while
this stage's code (its layout modules included: the registry declares them, ``sslam.provenance``), its
params and its source file's content are what made it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from sslam.config.params import load_config_or_exit

if TYPE_CHECKING:
    from sslam.config.downstream import DatasetConfig
    from sslam.config.features import FeaturesConfig
    from sslam.provenance import HashCache


def build_dataset(
    name: str,
    cfg: DatasetConfig,
    features: FeaturesConfig,
    sample_rate: int,
    out_dir: str | Path,
    workers: int = 1,
    inputs: str = "",
    hash_cache: HashCache | None = None,
) -> dict:
    """List, convert and cache one dataset as a one-task corpus in ``out_dir``: ``tasks/<name>/`` and
    ``failures.csv`` (the data half, :func:`sslam.data.datasets.convert_dataset`), then ``features/`` (the
    sharded store at the dataset's ``target_frames``; statistics pinned, or over the training clips' valid
    frames). Returns the summary for metrics. ``inputs``: the code and params digest; converted clips and
    shards made from other inputs are made again."""
    from sslam.data.datasets import convert_dataset
    from sslam.data.layouts import DatasetLayoutError
    from sslam.features.reader import FeatureStore
    from sslam.features.stats import valid_frame_stats
    from sslam.features.store import build_features
    from sslam.io import write_json_atomic

    out_dir = Path(out_dir)
    converted = convert_dataset(
        name, cfg, sample_rate, out_dir, features.frame_length_ms, workers=workers, inputs=inputs, hash_cache=hash_cache
    )
    summary = build_features(
        out_dir, out_dir / "features", features, sample_rate, workers=workers, inputs=inputs, hash_cache=hash_cache
    )
    stats = summary["stats"]
    if cfg.norm_mean is None:  # statistics of the training clips only (all folds under cross-validation)
        store = FeatureStore(out_dir / "features", f"tasks/{name}")
        picked = [i for i, s in enumerate(store.index["split"]) if converted.listing.trains_on(s)]
        if not picked:
            raise DatasetLayoutError(f"{cfg.root}: no decodable training clips to compute statistics from")
        st = valid_frame_stats((store.raw(i), store.frames(i)) for i in picked)
        stats = {"mean": round(st.mean, 6), "std": round(max(st.std, 1e-6), 6), "source": "training clips"}
        write_json_atomic(out_dir / "features" / "stats.json", stats)
    return {**converted.summary(), "stats": stats}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--name", required=True, help="a key of params.yaml datasets")
    ap.add_argument("--metrics-dir", default="metrics/datasets")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (results do not depend on it)")
    args = ap.parse_args(argv)
    cfg = load_config_or_exit(args.params)
    if args.name not in cfg.datasets:
        print(f"dataset: {args.name!r} is not in params.yaml datasets ({sorted(cfg.datasets)})", file=sys.stderr)
        return 2
    from sslam.data.layouts import DatasetLayoutError
    from sslam.downstream.tasks import task_features, task_location
    from sslam.io import write_json_atomic
    from sslam.provenance import default_hash_cache, stage_digest

    dataset = cfg.datasets[args.name]
    corpus, _ = task_location(cfg, args.name)
    t0 = time.perf_counter()
    digest = stage_digest(__file__, f"dataset@{args.name}", args.params)
    try:
        summary = build_dataset(
            args.name,
            dataset,
            task_features(cfg, args.name),
            cfg.data.sample_rate,
            corpus,
            workers=args.workers,
            inputs=f"{digest['code']}:{digest['params']}",
            hash_cache=default_hash_cache(),
        )
    except (DatasetLayoutError, FileNotFoundError, ValueError) as err:
        print(f"dataset {args.name}: {err}", file=sys.stderr)
        return 2
    write_json_atomic(f"{args.metrics_dir}/{args.name}.json", summary)
    failed = sum(summary["failed"].values())
    print(
        f"dataset {args.name}: {summary['listed']} listed, {sum(summary['clips'].values())} cached "
        f"{summary['clips']}, {failed} failed {summary['failed']} (see {corpus}/failures.csv), "
        f"in {time.perf_counter() - t0:.1f}s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
