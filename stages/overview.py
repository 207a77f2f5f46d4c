"""DVC stage `overview`: a picture of the corpus (one log-mel per class; soundscapes with their events)."""

from __future__ import annotations

import argparse
import sys

from sslam.config.base import exit_on_error, load_sections
from sslam.config.data import DataParams
from sslam.report.corpus import plot_corpus_overview


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", default="metrics/plots/corpus_overview.png")
    args = ap.parse_args(argv)
    cfg = exit_on_error(load_sections, DataParams, args.params)
    plot_corpus_overview(cfg.data.corpus_dir, args.out)
    print(f"overview -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
