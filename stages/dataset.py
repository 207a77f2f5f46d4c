"""DVC stage `dataset@<name>`: one real dataset, in its published layout, as its own one-task corpus.

Lists the clips with the format's reader (splits or folds, labels), converts each to mono FLAC at the
corpus rate, caches the log-mel at the dataset's target_frames and writes data/datasets/<name>/ with
its failures table. Resumable: converted clips and finished shards are kept (the output is persisted),
each only while this stage's code and params and its source file's content are what made it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from sslam.config import load_config_or_exit


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
    from sslam.data.datasets import DatasetLayoutError, build_dataset
    from sslam.io import write_json_atomic
    from sslam.provenance import default_hash_cache, stage_digest

    corpus, _ = cfg.task_location(args.name)
    t0 = time.perf_counter()
    digest = stage_digest(__file__, f"dataset@{args.name}", args.params)
    try:
        summary = build_dataset(
            args.name,
            cfg.datasets[args.name],
            cfg.task_features(args.name),
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
