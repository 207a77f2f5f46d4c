"""Algorithm 2 (paper Appendix B.1) on a small hand-built ontology, rule by rule."""

from __future__ import annotations

import itertools

import pytest

from sslam.data.audioset_format import OntologyNode, read_ontology, read_segments_csv
from sslam.data.polyphony import RULES, OntologyGraph, RelationIndex, analyse, analyse_folder, distinct_events

#   animal ─ wild ─ cat ─ roar          music ─ instrument ─ guitar
#                 └ bird                      └ genre ─ rock
#   vehicle ─ car     ("drum" has two parents: instrument and vehicle, a multi-parent node)
EDGES = {
    "animal": ["wild"], "wild": ["cat", "bird"], "cat": ["roar"], "roar": [], "bird": [],
    "music": ["instrument", "genre"], "instrument": ["guitar", "drum"], "guitar": [], "genre": ["rock"], "rock": [],
    "vehicle": ["car", "drum"], "car": [], "drum": [],
}


@pytest.fixture(scope="module")
def graph() -> OntologyGraph:
    return OntologyGraph.from_nodes([OntologyNode(id=k, name=k, child_ids=v) for k, v in EDGES.items()])


def count(graph, labels, level, rule):
    return distinct_events(labels, RelationIndex(graph, level), rule)


def test_relations_within_levels(graph):
    assert graph.ancestors_within("roar", 1) == {"cat"}
    assert graph.ancestors_within("roar", 2) == {"cat", "wild"}
    assert graph.ancestors_within("roar", 9) == {"cat", "wild", "animal"}
    assert graph.ancestors_within("drum", 1) == {"instrument", "vehicle"}
    assert graph.descendants_within("music", 2) == {"instrument", "genre", "guitar", "drum", "rock"}


@pytest.mark.parametrize(
    "labels,level,expected",
    [
        # parent and child are one event at L=1 under every rule that merges (drop_both removes both)
        (["cat", "roar"], 1, {"components": 1, "drop_both": 0, "keep_general": 1, "keep_specific": 1}),
        # grandparent and grandchild: unrelated at L=1 (two events), related at L=2 (cut-off)
        (["wild", "roar"], 1, {"components": 2, "drop_both": 2, "keep_general": 2, "keep_specific": 2}),
        (["wild", "roar"], 2, {"components": 1, "drop_both": 0, "keep_general": 1, "keep_specific": 1}),
        # siblings are kept apart at any level
        (["cat", "bird"], 4, {"components": 2, "drop_both": 2, "keep_general": 2, "keep_specific": 2}),
        # siblings with their shared parent: rules disagree
        (["wild", "cat", "bird"], 1, {"components": 1, "drop_both": 0, "keep_general": 1, "keep_specific": 2}),
        # a chain of three at L=1: the ends are unrelated but linked through the middle
        (["wild", "cat", "roar"], 1, {"components": 1, "drop_both": 0, "keep_general": 1, "keep_specific": 1}),
        # unrelated branches plus a facet pair
        (["music", "instrument", "car"], 1, {"components": 2, "drop_both": 1, "keep_general": 2, "keep_specific": 2}),
        # multi-parent node: drum relates to both instrument and vehicle
        (["instrument", "vehicle", "drum"], 1, {"components": 1, "drop_both": 0, "keep_general": 2, "keep_specific": 1}),
        (["guitar"], 3, {"components": 1, "drop_both": 1, "keep_general": 1, "keep_specific": 1}),
    ],
)
def test_each_rule_on_hand_made_clips(graph, labels, level, expected):
    for rule in RULES:
        assert count(graph, labels, level, rule) == expected[rule], rule


def test_every_rule_is_independent_of_label_order(graph):
    labels = ["music", "instrument", "guitar", "drum", "vehicle", "car", "wild", "roar"]
    for level, rule in itertools.product(range(1, 5), RULES):
        results = {count(graph, list(p), level, rule) for p in itertools.islice(itertools.permutations(labels), 0, 5000, 97)}
        assert len(results) == 1, (level, rule, results)


def test_percentages_and_histograms(graph):
    clips = [["cat", "roar"], ["cat", "bird"], ["guitar"], ["wild", "roar"]]
    res = analyse(clips, graph, [1, 2], ["components"])
    assert res.clips == 4 and res.multi_label_percent == 75.0
    assert res.percent["components"] == {1: 50.0, 2: 25.0}
    assert res.histogram["components"][2] == {1: 3, 2: 1}


def test_unknown_label_is_named(graph):
    with pytest.raises(KeyError, match="'unicorn' is not in the ontology"):
        count(graph, ["cat", "unicorn"], 1, "components")


def test_real_audioset_figures(shared_audioset):
    """Reproducible numbers on the published balanced and eval label files (also printed in the README)."""
    res = analyse_folder(shared_audioset, [1, 2, 3, 4])
    assert res["balanced"]["clips"] == 22160 and res["eval"]["clips"] == 20371
    assert res["balanced"]["percent"]["components"] == {"1": 62.0, "2": 53.97, "3": 49.77, "4": 48.46}
    assert res["eval"]["percent"]["drop_both"] == {"1": 54.97, "2": 44.44, "3": 39.88, "4": 38.7}
    for split in ("balanced", "eval"):
        for rule in RULES:
            p = res[split]["percent"][rule]
            assert p["1"] >= p["2"] >= p["3"] >= p["4"]  # deeper levels merge more labels
        assert res[split]["percent"]["drop_both"]["1"] <= res[split]["percent"]["components"]["1"] <= res[split]["percent"]["keep_specific"]["1"]
    # an independent count for one cell: clips whose labels hold >= 2 labels with no parent/child pair at L=1
    graph = OntologyGraph.from_nodes(read_ontology(shared_audioset / "ontology.json"))
    segs = read_segments_csv(shared_audioset / "eval_segments.csv")
    n = 0
    for s in segs:
        labs = set(s.labels)
        related = {a for a in labs for b in labs if a in graph.parents[b] or b in graph.parents[a]}
        n += len(labs - related) >= 2
    assert round(100 * n / len(segs), 2) == res["eval"]["percent"]["drop_both"]["1"]


def test_synthetic_truth_is_recovered_by_keep_specific(tmp_path):
    """On the synthetic corpus, facet labels are ancestors of present events, so keep_specific at a
    deep enough level counts exactly the distinct sources the strong labels hold."""
    from sslam.config import SyntheticConfig
    from sslam.data.synthetic import generate_corpus

    cfg = SyntheticConfig.model_validate({"clips": {"unbalanced": 60, "balanced": 30, "eval": 30},
                                          "tasks": {"mono": {"clips_per_class_per_fold": 1}, "urban": {"clips_train": 1, "clips_eval": 1}, "desed": {"num_classes": 2, "clips_train": 2, "clips_eval": 2},
                                                    "keywords": {"clips_per_class": {"train": 1, "valid": 1, "test": 1}}, "poly": {"environments": ["square"], "clips_train": 1, "clips_eval": 1}}})
    generate_corpus(cfg, tmp_path, 16000)
    res = analyse_folder(tmp_path, [1, 4])
    for split in ("unbalanced", "balanced", "eval"):
        e = res[split]
        assert e["percent"]["keep_specific"]["4"] == e["strong_label_percent"]
        assert e["multi_label_percent"] > e["strong_label_percent"]  # multi-label overstates polyphony
