"""DVC stage `features`: the sharded log-mel cache (and waveforms) for every clip set of the corpus.

Resumable: finished shards are kept (the output is persisted in dvc.yaml), so a killed run continues;
a shard is reused only when this stage's code and params and its clips' content are what made it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from sslam.config.base import exit_on_error, load_sections
from sslam.config.features import FeaturesParams
from sslam.features.store import build_features
from sslam.io import write_json_atomic
from sslam.provenance import default_hash_cache, stage_digest


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="data/features")
    ap.add_argument("--metrics", default="metrics/features.json")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes (results do not depend on it)")
    args = ap.parse_args(argv)
    cfg = exit_on_error(load_sections, FeaturesParams, args.params)
    t0 = time.perf_counter()
    digest = stage_digest(__file__, "features", args.params)
    try:
        summary = build_features(
            cfg.data.corpus_dir,
            args.out,
            cfg.features,
            cfg.data.sample_rate,
            workers=args.workers,
            inputs=f"{digest['code']}:{digest['params']}",
            hash_cache=default_hash_cache(),
        )
    except (FileNotFoundError, ValueError) as err:
        print(f"features: {err}", file=sys.stderr)
        return 2
    write_json_atomic(args.metrics, summary)
    clips = sum(s["clips"] for s in summary["sets"].values())
    failed = sum(s["failed"] for s in summary["sets"].values())
    print(
        f"features: {clips} clips cached, {failed} failed, in {time.perf_counter() - t0:.1f}s; "
        f"mean {summary['stats']['mean']:.3f} std {summary['stats']['std']:.3f} ({summary['stats']['source']})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
