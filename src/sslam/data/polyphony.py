"""How polyphonic are a corpus's labels? The SSLAM paper's Algorithm 2 (Appendix B.1), made precise.

Two labels of a clip are *related within L* when one is an ancestor of the other at most L parent
steps away (any path; a node may have several parents). Siblings and cousins are never related. The
paper removes "related labels" and counts clips left with at least two distinct sound events; its text
admits several readings, all offered here and all independent of label order:

- ``components``: related labels describe one event; the distinct events of a clip are the connected
  components of the "related within L" graph over its labels (keep one label per related group).
- ``drop_both``: every label that has a related label in the clip is removed, both ends of each pair
  (the literal "remove the related labels from the label set", applied to the original set).
- ``keep_general``: one way, toward ancestors: a label is removed when one of its ancestors within L is
  in the clip; the most general labels remain.
- ``keep_specific``: one way, toward descendants: a label is removed when one of its descendants within
  L is in the clip; the most specific labels remain.
- ``drop_both_concrete``: ``drop_both`` over the concrete hierarchy only. AudioSet marks some nodes
  ``abstract`` (e.g. "Music genre", "Human voice"): grouping nodes that are never used as labels. Here
  they are left out of the hierarchy entirely, with their edges: no path passes through an abstract
  node, so with A -> X (abstract) -> B, A and B are unrelated at every L, while a chain A -> B -> C of
  concrete nodes counts steps exactly as before. An abstract label present in a clip (the published
  AudioSet lists hold none) is related to nothing, so it counts as a distinct event of its own.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal, Sequence

from sslam.data.audioset_format import (
    SPLIT_FILES,
    OntologyNode,
    Segment,
    read_ontology,
    read_segments_csv,
    read_strong_labels,
)
from sslam.data.clip_lists import clip_list_summary

Rule = Literal["components", "drop_both", "keep_general", "keep_specific", "drop_both_concrete"]
RULES: tuple[Rule, ...] = ("components", "drop_both", "keep_general", "keep_specific", "drop_both_concrete")
# Figure 3 of the paper (AS-2M, its own copy): % of clips with >= 2 distinct events for L = 1..4
PAPER_PERCENT = {1: 42.5, 2: 37.8, 3: 36.4, 4: 35.6}


@dataclass(frozen=True)
class OntologyGraph:
    parents: dict[str, tuple[str, ...]]
    children: dict[str, tuple[str, ...]]
    abstract: frozenset[str] = frozenset()  # nodes whose restrictions hold "abstract"

    @classmethod
    def from_nodes(cls, nodes: Iterable[OntologyNode]) -> "OntologyGraph":
        nodes = list(nodes)
        children = {n.id: tuple(n.child_ids) for n in nodes}
        parents: dict[str, list[str]] = {n.id: [] for n in nodes}
        for n in nodes:
            for c in n.child_ids:
                parents[c].append(n.id)
        abstract = frozenset(n.id for n in nodes if "abstract" in n.restrictions)
        return cls({k: tuple(v) for k, v in parents.items()}, children, abstract)

    def concrete(self) -> "OntologyGraph":
        """The same nodes with every edge to or from an abstract node removed: no path crosses one.
        Abstract nodes stay as isolated nodes, so a clip holding one is still accepted."""
        ab = self.abstract

        def keep(edges: dict[str, tuple[str, ...]]) -> dict[str, tuple[str, ...]]:
            return {k: () if k in ab else tuple(m for m in v if m not in ab) for k, v in edges.items()}

        return OntologyGraph(keep(self.parents), keep(self.children), ab)

    def _within(self, start: str, level: int, step: dict[str, tuple[str, ...]]) -> frozenset[str]:
        seen: set[str] = set()
        frontier = {start}
        for _ in range(level):
            frontier = {m for n in frontier for m in step.get(n, ())} - seen
            seen |= frontier
        seen.discard(start)
        return frozenset(seen)

    def ancestors_within(self, node: str, level: int) -> frozenset[str]:
        return self._within(node, level, self.parents)

    def descendants_within(self, node: str, level: int) -> frozenset[str]:
        return self._within(node, level, self.children)


class RelationIndex:
    """Ancestors within L for every label, computed once per L (a clip's test is then set lookups),
    in the full hierarchy and, for ``drop_both_concrete``, in the one without abstract nodes."""

    def __init__(self, graph: OntologyGraph, level: int):
        self.level = level
        self.graph = graph
        self._anc: dict[str, frozenset[str]] = {}
        self._concrete_graph: OntologyGraph | None = None
        self._concrete_anc: dict[str, frozenset[str]] = {}

    def ancestors(self, label: str) -> frozenset[str]:
        a = self._anc.get(label)
        if a is None:
            if label not in self.graph.parents:
                raise KeyError(f"label {label!r} is not in the ontology")
            a = self._anc[label] = self.graph.ancestors_within(label, self.level)
        return a

    def concrete_ancestors(self, label: str) -> frozenset[str]:
        """Ancestors within L along paths through concrete nodes only (empty for an abstract label)."""
        a = self._concrete_anc.get(label)
        if a is None:
            if label not in self.graph.parents:
                raise KeyError(f"label {label!r} is not in the ontology")
            if self._concrete_graph is None:
                self._concrete_graph = self.graph.concrete()
            a = self._concrete_anc[label] = self._concrete_graph.ancestors_within(label, self.level)
        return a


def distinct_events(labels: Sequence[str], index: RelationIndex, rule: Rule) -> int:
    """Number of distinct sound events a clip's labels stand for, under ``rule``."""
    present = set(labels)
    if rule == "drop_both_concrete":
        related = set()
        for lab in present:
            hit = index.concrete_ancestors(lab) & present
            if hit:
                related |= hit
                related.add(lab)
        return len(present - related)
    # related pairs (ancestor, descendant) present in the clip
    pairs = [(a, lab) for lab in present for a in index.ancestors(lab) & present]
    if rule == "components":
        parent = {lab: lab for lab in present}

        def find(x: str) -> str:
            while parent[x] != x:
                parent[x] = parent[parent[x]]
                x = parent[x]
            return x

        for a, d in pairs:
            parent[find(a)] = find(d)
        return len({find(x) for x in present})
    if rule == "drop_both":
        related = {x for p in pairs for x in p}
        return len(present - related)
    if rule == "keep_general":
        return len(present - {d for _, d in pairs})
    if rule == "keep_specific":
        return len(present - {a for a, _ in pairs})
    raise ValueError(f"unknown rule {rule!r}; allowed {RULES}")


@dataclass(frozen=True)
class PolyphonyResult:
    clips: int
    percent: dict[str, dict[int, float]]  # rule -> level -> % of clips with >= 2 distinct events
    histogram: dict[str, dict[int, dict[int, int]]]  # rule -> level -> distinct count -> clips
    multi_label_percent: float


def analyse(label_lists: Sequence[Sequence[str]], graph: OntologyGraph, levels: Sequence[int], rules: Sequence[Rule] = RULES) -> PolyphonyResult:
    """Percentage of clips with at least two distinct events, for each rule and hierarchy level."""
    n = len(label_lists)
    percent: dict[str, dict[int, float]] = {r: {} for r in rules}
    hist: dict[str, dict[int, dict[int, int]]] = {r: {} for r in rules}
    for level in levels:
        index = RelationIndex(graph, level)
        for rule in rules:
            counts = Counter(distinct_events(labels, index, rule) for labels in label_lists)
            hist[rule][level] = dict(sorted(counts.items()))
            poly = sum(v for k, v in counts.items() if k >= 2)
            percent[rule][level] = round(100.0 * poly / n, 2) if n else 0.0
    multi = sum(len(set(x)) >= 2 for x in label_lists)
    return PolyphonyResult(n, percent, hist, round(100.0 * multi / n, 2) if n else 0.0)


# ----------------------------------------------------------------------------- corpora

def find_label_files(folder: str | Path) -> tuple[Path, dict[str, Path]]:
    """The ontology and the segment CSVs of a corpus (``segments/``) or of an AudioSet label folder."""
    folder = Path(folder)
    onto = folder / "ontology.json"
    if not onto.is_file():
        raise FileNotFoundError(f"{folder}: no ontology.json")
    seg_dir = folder / "segments" if (folder / "segments").is_dir() else folder
    splits = {s: seg_dir / f for s, f in SPLIT_FILES.items() if (seg_dir / f).is_file()}
    if not splits:
        raise FileNotFoundError(f"{seg_dir}: none of {sorted(SPLIT_FILES.values())}")
    return onto, splits


def strong_distinct_counts(strong_tsv: str | Path) -> dict[str, int]:
    """Distinct event classes per clip from a strong-label table: the true degree of polyphony."""
    df = read_strong_labels(strong_tsv)
    return df.groupby("segment_id")["label"].nunique().to_dict()


def segment_id(seg: Segment) -> str:
    """A segment's id, ``<ytid>_<start ms>``: AudioSet's clip id (the download's) and the strong labels'."""
    return f"{seg.ytid}_{int(round(seg.start_seconds * 1000))}"


def analyse_folder(folder: str | Path, levels: Sequence[int], rules: Sequence[Rule] = RULES) -> dict:
    """Every split of a corpus or AudioSet label folder, with the truth from strong labels where kept."""
    folder = Path(folder)
    onto, splits = find_label_files(folder)
    graph = OntologyGraph.from_nodes(read_ontology(onto))
    out: dict = {}
    for split, path in splits.items():
        segments = read_segments_csv(path)
        unknown = sorted({lab for s in segments for lab in s.labels} - set(graph.parents))
        if unknown:
            raise ValueError(f"{path}: label(s) {unknown[:5]} are not in {onto}")
        res = analyse([s.labels for s in segments], graph, levels, rules)
        entry = {
            "clips": res.clips,
            "multi_label_percent": res.multi_label_percent,
            "percent": {r: {str(k): v for k, v in p.items()} for r, p in res.percent.items()},
            "histogram": {r: {str(k): {str(c): n for c, n in h.items()} for k, h in hs.items()} for r, hs in res.histogram.items()},
        }
        ids = [segment_id(s) for s in segments]
        entry["clip_list"] = clip_list_summary(ids)  # the segments whose labels were analysed
        strong = folder / "strong" / f"{split}.tsv"
        if strong.is_file():
            truth = strong_distinct_counts(strong)
            entry["strong_label_percent"] = round(100.0 * sum(truth.get(i, 0) >= 2 for i in ids) / max(1, len(ids)), 2)
        out[split] = entry
    return out
