"""Benchmark: the polyphony analysis (Algorithm 2) at AS-2M scale.

Prints clips per second for the stage's way (ancestors within L computed once per label, then set
lookups per clip) against the naive way (walk the ontology for every label of every clip), measured
in the same run, and the projected time for AS-2M's 2,041,789 clips. Labels: the eval split of a synthetic
corpus generated in a temporary folder, or with --labels another folder (a corpus, or AudioSet's files:
ontology.json and the segment CSVs).

    python bench/polyphony.py [--repeat 5] [--clips 2000] [--labels DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from _corpus import synthetic_corpus

from sslam.data import audioset_format as fmt
from sslam.data.polyphony import OntologyGraph, RelationIndex, distinct_events

AS2M = 2_041_789


# the generator always writes every task: the smallest each allows, since only the eval labels are read
def naive_distinct(labels: Sequence[str], graph: OntologyGraph, level: int) -> int:
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


def synthetic_labels(out_dir: Path, clips: int) -> Path:
    """A fresh clone has neither data/ nor the published lists: the download stage's generator writes an
    AudioSet-shaped ontology and eval list (its audio, 1 s clips, is written too and not read)."""
    return synthetic_corpus(out_dir, {"eval": clips}, clip_seconds=1.0)


def read_labels(folder: Path) -> tuple[OntologyGraph, list[tuple[str, ...]]]:
    """Ontology and eval labels from AudioSet's layout (files side by side) or a corpus (segments/)."""
    seg_file = folder / "eval_segments.csv"
    if not seg_file.is_file():
        seg_file = folder / "segments" / "eval_segments.csv"
    graph = OntologyGraph.from_nodes(fmt.read_ontology(folder / "ontology.json"))
    return graph, [s.labels for s in fmt.read_segments_csv(seg_file)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5, help="times the eval list is analysed the stage's way")
    ap.add_argument("--labels", default=None, help="a folder with ontology.json and eval_segments.csv")
    ap.add_argument("--clips", type=int, default=2000, help="eval clips of the generated corpus")
    args = ap.parse_args()
    level = 2

    with tempfile.TemporaryDirectory() as tmp:
        if args.labels:
            folder, source = Path(args.labels), args.labels
        else:
            t0 = time.perf_counter()
            folder = synthetic_labels(Path(tmp) / "corpus", args.clips)
            source = f"synthetic corpus generated in {time.perf_counter() - t0:.1f} s"
        graph, clips = read_labels(folder)

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
    print(
        f"{n} clips ({source}), L={level}: cached {n / fast_s:,.0f} clips/s, naive {n / naive_s:,.0f} clips/s "
        f"-> {naive_s / fast_s:.1f}x; AS-2M projected {AS2M / (n / fast_s):.0f} s per level and rule"
    )


if __name__ == "__main__":
    main()
