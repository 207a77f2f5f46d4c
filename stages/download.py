"""DVC stage `download`: bring a corpus into `data.corpus_dir` in AudioSet's formats.

Sources (`download.source`): `synthetic` (built-in, from a seed), `folder` (an existing audio folder and a
labels CSV). Writes the corpus folder and `metrics/download.json`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from sslam.config import ConfigError, load_config
from sslam.data.folder import write_failures
from sslam.io import write_json_atomic


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics", default="metrics/download.json")
    ap.add_argument("--workers", type=int, default=min(2, os.cpu_count() or 1), help="processes (results do not depend on it)")
    args = ap.parse_args(argv)
    try:
        cfg = load_config(args.params)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return 2

    out = Path(cfg.data.corpus_dir)
    if out.exists():  # a stale corpus from other params must not leak into this one
        shutil.rmtree(out)
    failures = Path(args.metrics).with_name("download_failures.csv")
    t0 = time.perf_counter()
    source = cfg.download.source
    if source == "synthetic":
        from sslam.data.synthetic import generate_corpus

        summary = generate_corpus(cfg.download.synthetic, out, cfg.data.sample_rate, workers=args.workers)
        write_failures(failures, [])  # the synthetic source cannot fail a clip; the table is still an output
    elif source == "folder":
        from sslam.data.folder import FolderSourceError, ingest_folder

        try:
            summary = ingest_folder(cfg.download.folder, out, cfg.data.sample_rate, failures, workers=args.workers)
        except FolderSourceError as err:
            print(err, file=sys.stderr)
            return 2
    else:
        print("download.source 'audioset' is not available yet: use 'synthetic' or 'folder'", file=sys.stderr)
        return 2
    write_json_atomic(args.metrics, summary)
    print(f"download ({source}): {summary['num_clips']} clips in {time.perf_counter() - t0:.1f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
