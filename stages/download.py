"""DVC stage `download`: bring a corpus into `data.corpus_dir` in AudioSet's formats.

Sources (`download.source`): `synthetic` (built-in, from a seed), `folder` (an audio folder and a labels
CSV), `audioset` (label files, then segments through yt-dlp). Writes the corpus folder,
`metrics/download.json` and `metrics/download_failures.csv`.

The corpus folder is a persisted DVC output, so an interrupted AudioSet download resumes where it
stopped; the synthetic and folder sources rebuild it from scratch, and a change of source clears it.
For AS-2M across N machines run `python stages/download.py --shard i/N` on machine i (0-based).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from sslam.config.base import exit_on_error, load_sections
from sslam.config.data import DownloadParams
from sslam.data.clip_lists import clip_list_summary
from sslam.data.manifest import corpus_manifests, read_manifest, write_failures
from sslam.io import write_json_atomic

SOURCE_MARKER = "source.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--metrics", default="metrics/download.json")
    ap.add_argument(
        "--workers",
        type=int,
        default=min(2, os.cpu_count() or 1),
        help="processes for synthetic/folder (results do not depend on it)",
    )
    ap.add_argument("--shard", default="0/1", help="audioset only: this machine's part i/N of the segment list")
    args = ap.parse_args(argv)
    cfg = exit_on_error(load_sections, DownloadParams, args.params)

    out = Path(cfg.data.corpus_dir)
    source = cfg.download.source
    marker = out / SOURCE_MARKER
    previous = json.loads(marker.read_text()).get("source") if marker.is_file() else None
    if out.exists() and (source != "audioset" or previous != "audioset"):
        shutil.rmtree(out)  # a stale corpus from another source or other params must not leak in
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(marker, {"source": source})
    failures_csv = Path(args.metrics).with_name("download_failures.csv")
    t0 = time.perf_counter()
    if source == "synthetic":
        from sslam.data.synthetic import generate_corpus

        summary = generate_corpus(
            cfg.download.synthetic, out, cfg.data.sample_rate, cfg.download.clips_per_shard, workers=args.workers
        )
        write_failures(failures_csv, [])  # the synthetic source cannot fail a clip; the table is still an output
    elif source == "folder":
        from sslam.data.folder import FolderSourceError, ingest_folder

        try:
            summary = ingest_folder(
                cfg.download.folder,
                out,
                cfg.data.sample_rate,
                failures_csv,
                cfg.download.clips_per_shard,
                workers=args.workers,
            )
        except FolderSourceError as err:
            print(err, file=sys.stderr)
            return 2
    else:
        from sslam.data.audioset_download import download_audioset, parse_shard
        from sslam.data.audioset_format import FormatError

        try:
            shard = parse_shard(args.shard)
            summary, failures = download_audioset(
                cfg.download.audioset, out, cfg.data.sample_rate, cfg.download.clips_per_shard, shard
            )
        except (ValueError, FileNotFoundError, FormatError, OSError) as err:
            print(f"download (audioset): {err}", file=sys.stderr)
            return 2
        write_failures(failures_csv, failures)
    summary["clip_lists"] = {  # which clips this corpus holds, per split and task (sslam.data.clip_lists)
        name: clip_list_summary(read_manifest(path, only_ok=True)["clip_id"])
        for name, path in corpus_manifests(out).items()
    }
    write_json_atomic(args.metrics, summary)
    print(f"download ({source}): {summary['num_clips']} clips in {time.perf_counter() - t0:.1f}s -> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
