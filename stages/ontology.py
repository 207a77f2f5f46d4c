"""DVC stage `ontology`: how polyphonic are the corpus's labels? (paper Appendix B.1, Algorithm 2)

Writes metrics/polyphony.json, metrics/polyphony_levels.csv and two PNGs; prints every reading beside
the paper's AS-2M figures. `--labels` analyses another AudioSet label folder (ontology.json and the segment CSVs).
"""

from __future__ import annotations

import argparse
import sys

from sslam.config.base import exit_on_error, load_sections
from sslam.config.data import OntologyParams
from sslam.data.polyphony import PAPER_PERCENT, RULES, analyse_folder
from sslam.io import write_json_atomic
from sslam.report.polyphony import markdown_table, write_outputs


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--labels", default=None, help="label folder to analyse instead of data.corpus_dir")
    ap.add_argument("--metrics-dir", default="metrics")
    args = ap.parse_args(argv)
    cfg = exit_on_error(load_sections, OntologyParams, args.params)
    folder = args.labels or cfg.data.corpus_dir
    levels, rule = cfg.ontology.levels, cfg.ontology.rule
    try:
        result = analyse_folder(folder, levels, RULES)
    except (FileNotFoundError, ValueError) as err:
        print(f"ontology: {err}", file=sys.stderr)
        return 2
    summary = {
        "labels": str(folder),
        "rule": rule,
        "levels": levels,
        "paper_as2m_percent": {str(k): v for k, v in PAPER_PERCENT.items()},
        "splits": {
            s: {k: v for k, v in e.items() if k not in ("histogram", "clip_list")}
            | {"polyphonic_percent": {str(lv): e["percent"][rule][str(lv)] for lv in levels}}
            for s, e in result.items()
        },
        "histogram": {s: e["histogram"][rule] for s, e in result.items()},
        # per split, the segments analysed (ids <ytid>_<start ms>, downloaded or not): sslam.data.clip_lists
        "clip_lists": {s: e["clip_list"] for s, e in result.items()},
    }
    write_json_atomic(f"{args.metrics_dir}/polyphony.json", summary)
    write_outputs(result, rule, levels, args.metrics_dir)
    print(markdown_table(result, levels))
    return 0


if __name__ == "__main__":
    sys.exit(main())
