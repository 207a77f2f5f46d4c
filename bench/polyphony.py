"""Benchmark: the polyphony analysis (Algorithm 2) at AS-2M scale.

Prints clips per second for the stage's way (ancestors within L computed once per label, then set
lookups per clip) against the naive way (walk the ontology for every label of every clip), measured
in the same run on the published eval labels (or the synthetic corpus when they are absent), and the
projected time for AS-2M's 2,041,789 clips.

    python bench/polyphony.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from sslam.data import audioset_format as fmt
from sslam.data.polyphony import OntologyGraph, RelationIndex, distinct_events

AS2M = 2_041_789


def naive_distinct(labels, graph: OntologyGraph, level: int) -> int:
    present = set(labels)
    parent = {x: x for x in present}

    def find(x):
        while parent[x] != x:
            x = parent[x]
        return x

    for a in present:
        for b in present:
            if a != b and (b in graph.ancestors_within(a, level) or b in graph.descendants_within(a, level)):
                parent[find(a)] = find(b)
    return len({find(x) for x in present})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=5, help="times the eval list is analysed")
    args = ap.parse_args()
    shared = Path(__file__).resolve().parents[2] / "shared" / "audioset"
    folder = shared if (shared / "eval_segments.csv").is_file() else Path("data/corpus")
    seg_file = folder / "eval_segments.csv" if folder == shared else folder / "segments" / "eval_segments.csv"
    graph = OntologyGraph.from_nodes(fmt.read_ontology(folder / "ontology.json"))
    clips = [s.labels for s in fmt.read_segments_csv(seg_file)]
    level = 2

    t0 = time.perf_counter()
    for _ in range(args.repeat):
        index = RelationIndex(graph, level)
        fast = [distinct_events(c, index, "components") for c in clips]
    fast_s = (time.perf_counter() - t0) / args.repeat
    t0 = time.perf_counter()
    naive = [naive_distinct(c, graph, level) for c in clips]
    naive_s = time.perf_counter() - t0
    assert fast == naive, "the two ways disagree"
    n = len(clips)
    print(f"{n} clips ({folder.name}), L={level}: cached {n / fast_s:,.0f} clips/s, naive {n / naive_s:,.0f} clips/s "
          f"-> {naive_s / fast_s:.1f}x; AS-2M projected {AS2M / (n / fast_s):.0f} s per level and rule")


if __name__ == "__main__":
    main()
