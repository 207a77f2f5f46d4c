"""Algorithm 2 (paper Appendix B.1) on a small hand-built ontology, rule by rule."""

from __future__ import annotations

import itertools

import pytest
from conftest import section

from sslam.data.audioset_format import OntologyNode, read_ontology, read_segments_csv
from sslam.data.polyphony import RULES, OntologyGraph, RelationIndex, analyse, analyse_folder, distinct_events

#   animal ─ wild ─ cat ─ roar          music ─ instrument ─ guitar
#                 └ bird                      └ genre ─ rock
#   vehicle ─ car     ("drum" has two parents: instrument and vehicle, a multi-parent node)
EDGES = {
    "animal": ["wild"],
    "wild": ["cat", "bird"],
    "cat": ["roar"],
    "roar": [],
    "bird": [],
    "music": ["instrument", "genre"],
    "instrument": ["guitar", "drum"],
    "guitar": [],
    "genre": ["rock"],
    "rock": [],
    "vehicle": ["car", "drum"],
    "car": [],
    "drum": [],
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
        (
            ["instrument", "vehicle", "drum"],
            1,
            {"components": 1, "drop_both": 0, "keep_general": 2, "keep_specific": 1},
        ),
        (["guitar"], 3, {"components": 1, "drop_both": 1, "keep_general": 1, "keep_specific": 1}),
    ],
)
def test_each_rule_on_hand_made_clips(graph, labels, level, expected):
    for rule in RULES:
        # no abstract node in this ontology: the concrete reading is drop_both itself
        want = expected["drop_both" if rule == "drop_both_concrete" else rule]
        assert count(graph, labels, level, rule) == want, rule


#   music ─ genre (abstract) ─ rock          animal ─ dog ─ bark
#         │                  └ jazz
#         └ guitar
ABSTRACT_EDGES = {
    "music": ["genre", "guitar"],
    "genre": ["rock", "jazz"],
    "rock": [],
    "jazz": [],
    "guitar": [],
    "animal": ["dog"],
    "dog": ["bark"],
    "bark": [],
}


@pytest.fixture(scope="module")
def abstract_graph() -> OntologyGraph:
    return OntologyGraph.from_nodes(
        [
            OntologyNode(id=k, name=k, child_ids=v, restrictions=["abstract"] if k == "genre" else [])
            for k, v in ABSTRACT_EDGES.items()
        ]
    )


def test_concrete_hierarchy_leaves_abstract_nodes_out(abstract_graph):
    assert abstract_graph.abstract == {"genre"}
    concrete = abstract_graph.concrete()
    assert abstract_graph.ancestors_within("rock", 2) == {"genre", "music"}
    assert concrete.ancestors_within("rock", 9) == set() and concrete.descendants_within("music", 9) == {"guitar"}
    assert concrete.ancestors_within("genre", 9) == set() and concrete.descendants_within("genre", 9) == set()
    assert concrete.ancestors_within("bark", 2) == {"dog", "animal"}  # a concrete chain is untouched


# distinct events at L = 1, 2, 3: (drop_both, drop_both_concrete), counted by hand
ABSTRACT_CLIPS = [
    # music and rock are two steps apart through the abstract genre: related from L=2 only under
    # drop_both, never under the concrete reading
    (["music", "rock"], (2, 0, 0), (2, 2, 2)),
    # music-guitar is a concrete pair at L=1 (both dropped); rock survives unless linked through genre
    (["music", "guitar", "rock"], (1, 0, 0), (1, 1, 1)),
    # a concrete chain counts steps the same way under both readings
    (["animal", "bark"], (2, 0, 0), (2, 0, 0)),
    (["animal", "dog", "bark"], (0, 0, 0), (0, 0, 0)),
    # siblings under the abstract node: unrelated in both
    (["rock", "jazz"], (2, 2, 2), (2, 2, 2)),
    # an abstract label present is related to nothing under the concrete reading
    (["genre", "rock", "music"], (0, 0, 0), (3, 3, 3)),
    (["bark", "rock"], (2, 2, 2), (2, 2, 2)),
    (["dog", "bark", "music", "rock"], (2, 0, 0), (2, 2, 2)),
]


@pytest.mark.parametrize("labels,drop_both,concrete", ABSTRACT_CLIPS)
def test_drop_both_concrete_by_hand(abstract_graph, labels, drop_both, concrete):
    for level in (1, 2, 3):
        assert count(abstract_graph, labels, level, "drop_both") == drop_both[level - 1], level
        assert count(abstract_graph, labels, level, "drop_both_concrete") == concrete[level - 1], level


def test_drop_both_concrete_polyphonic_percent(abstract_graph):
    clips = [c[0] for c in ABSTRACT_CLIPS]
    res = analyse(clips, abstract_graph, [1, 2, 3], ["drop_both", "drop_both_concrete"])
    # polyphonic (>= 2 events) by hand, clips 1..8. drop_both: L=1 clips 1,3,5,7,8; L>=2 clips 5,7
    assert res.percent["drop_both"] == {1: 62.5, 2: 25.0, 3: 25.0}
    # drop_both_concrete: L=1 clips 1,3,5,6,7,8; L>=2 clips 1,5,6,7,8
    assert res.percent["drop_both_concrete"] == {1: 75.0, 2: 62.5, 3: 62.5}
    assert res.histogram["drop_both_concrete"][2] == {0: 2, 1: 1, 2: 4, 3: 1}


def test_every_rule_is_independent_of_label_order(graph):
    labels = ["music", "instrument", "guitar", "drum", "vehicle", "car", "wild", "roar"]
    for level, rule in itertools.product(range(1, 5), RULES):
        results = {
            count(graph, list(p), level, rule) for p in itertools.islice(itertools.permutations(labels), 0, 5000, 97)
        }
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


def test_real_audioset_figures(audioset_labels):
    """Reproducible numbers on the published balanced and eval label files (also printed in the README)."""
    res = analyse_folder(audioset_labels, [1, 2, 3, 4])
    assert res["balanced"]["clips"] == 22160 and res["eval"]["clips"] == 20371
    assert res["balanced"]["percent"]["components"] == {"1": 62.0, "2": 53.97, "3": 49.77, "4": 48.46}
    assert res["eval"]["percent"]["drop_both"] == {"1": 54.97, "2": 44.44, "3": 39.88, "4": 38.7}
    assert res["balanced"]["percent"]["drop_both_concrete"] == {"1": 53.89, "2": 50.92, "3": 49.04, "4": 47.65}
    assert res["eval"]["percent"]["drop_both_concrete"] == {"1": 54.97, "2": 51.56, "3": 49.67, "4": 48.49}
    for split in ("balanced", "eval"):
        for rule in RULES:
            p = res[split]["percent"][rule]
            assert p["1"] >= p["2"] >= p["3"] >= p["4"]  # deeper levels merge more labels
        assert (
            res[split]["percent"]["drop_both"]["1"]
            <= res[split]["percent"]["components"]["1"]
            <= res[split]["percent"]["keep_specific"]["1"]
        )
        # no clip holds an abstract label, and at L=1 a related pair is a direct edge between two
        # present (concrete) labels: the concrete reading differs from drop_both only from L=2
        assert res[split]["percent"]["drop_both_concrete"]["1"] == res[split]["percent"]["drop_both"]["1"]
    # an independent count for one cell: clips whose labels hold >= 2 labels with no parent/child pair at L=1
    graph = OntologyGraph.from_nodes(read_ontology(audioset_labels / "ontology.json"))
    segs = read_segments_csv(audioset_labels / "eval_segments.csv")
    n = 0
    for s in segs:
        labs = set(s.labels)
        related = {a for a in labs for b in labs if a in graph.parents[b] or b in graph.parents[a]}
        n += len(labs - related) >= 2
    assert round(100 * n / len(segs), 2) == res["eval"]["percent"]["drop_both"]["1"]


def test_synthetic_truth_is_recovered_by_keep_specific(tmp_path):
    """On the synthetic corpus, facet labels are ancestors of present events, so keep_specific at a
    deep enough level counts exactly the distinct sources the strong labels hold."""
    from sslam.data.synthetic import generate_corpus

    cfg = section(
        "download.synthetic",
        clips={"unbalanced": 60, "balanced": 30, "eval": 30},
        tasks={
            "mono": {"clips_per_class_per_fold": 1},
            "urban": {"clips_train": 1, "clips_eval": 1},
            "desed": {"num_classes": 2, "clips_train": 2, "clips_eval": 2},
            "keywords": {"clips_per_class": {"train": 1, "valid": 1, "test": 1}},
            "poly": {"environments": ["square"], "clips_train": 1, "clips_eval": 1},
        },
    )
    generate_corpus(cfg, tmp_path, 16000, clips_per_shard=64)
    res = analyse_folder(tmp_path, [1, 4])
    for split in ("unbalanced", "balanced", "eval"):
        e = res[split]
        assert e["percent"]["keep_specific"]["4"] == e["strong_label_percent"]
        assert e["multi_label_percent"] > e["strong_label_percent"]  # multi-label overstates polyphony
