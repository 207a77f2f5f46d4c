"""Our AudioSet writers against the published files and against an independent reader.

The independent reader below is written from AudioSet's published description (regular expressions
over raw lines), not with the project's parser, so a bug shared by writer and reader cannot hide.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from sslam.data import audioset_format as fmt

SEGMENT_ROW = re.compile(
    r'^([A-Za-z0-9_-]{11}), (\d+\.\d{3}), (\d+\.\d{3}), "((?:/[mgt]/[A-Za-z0-9_]+)(?:,/[mgt]/[A-Za-z0-9_]+)*)"$'
)
HEADER_1 = re.compile(r"^# Segments csv created \w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4}$")
HEADER_2 = re.compile(r"^# num_ytids=(\d+), num_segs=(\d+), num_unique_labels=(\d+), num_positive_labels=(\d+)$")
CLASS_ROW = re.compile(r'^(\d+),(/[mgt]/[A-Za-z0-9_]+),"((?:[^"]|"")*)"$')


def independent_segments(path: Path) -> list[tuple[str, float, float, list[str]]]:
    lines = path.read_text().split("\n")
    assert lines[-1] == "", "file must end with a newline"
    lines = lines[:-1]
    assert HEADER_1.match(lines[0]), lines[0]
    counts = HEADER_2.match(lines[1])
    assert counts, lines[1]
    assert lines[2] == "# YTID, start_seconds, end_seconds, positive_labels"
    rows = []
    for line in lines[3:]:
        m = SEGMENT_ROW.match(line)
        assert m, f"row not in AudioSet format: {line!r}"
        rows.append((m.group(1), float(m.group(2)), float(m.group(3)), m.group(4).split(",")))
    labels = [lab for r in rows for lab in r[3]]
    assert int(counts.group(1)) == len({r[0] for r in rows})
    assert int(counts.group(2)) == len(rows)
    assert int(counts.group(3)) == len(set(labels))
    assert int(counts.group(4)) == len(labels)
    return rows


def independent_class_index(path: Path) -> list[tuple[int, str, str]]:
    lines = path.read_text().split("\n")
    assert lines[0] == "index,mid,display_name" and lines[-1] == ""
    out = []
    for i, line in enumerate(lines[1:-1]):
        m = CLASS_ROW.match(line)
        assert m, line
        assert int(m.group(1)) == i
        out.append((i, m.group(2), m.group(3).replace('""', '"')))
    return out


def independent_ontology(path: Path) -> list[dict]:
    nodes = json.loads(path.read_text())
    keys = ["id", "name", "description", "citation_uri", "positive_examples", "child_ids", "restrictions"]
    ids = {n["id"] for n in nodes}
    for n in nodes:
        assert list(n) == keys
        assert all(c in ids for c in n["child_ids"])
        assert set(n["restrictions"]) <= {"abstract", "blacklist"}
    return nodes


# ----------------------------------------------------------------------------- real files


def test_writers_reproduce_the_published_files_byte_for_byte(audioset_labels, tmp_path):
    for name in ("eval_segments.csv", "balanced_train_segments.csv"):
        src = audioset_labels / name
        segments = fmt.read_segments_csv(src)
        created = src.read_text().split("\n", 1)[0].removeprefix("# Segments csv created ")
        assert fmt.format_segments_csv(segments, created) == src.read_text()
    expected_rows = {"eval_segments.csv": 20371, "balanced_train_segments.csv": 22160}
    for name, n in expected_rows.items():
        assert len(fmt.read_segments_csv(audioset_labels / name)) == n

    classes = fmt.read_class_labels(audioset_labels / "class_labels_indices.csv")
    assert len(classes) == 527
    assert (
        fmt.format_class_labels(list(zip(classes["mid"], classes["display_name"])))
        == (audioset_labels / "class_labels_indices.csv").read_text()
    )

    nodes = fmt.read_ontology(audioset_labels / "ontology.json")
    assert len(nodes) == 632
    assert fmt.format_ontology(nodes) == (audioset_labels / "ontology.json").read_text()


def test_segment_ids_starting_with_dash_and_spaces_after_commas(audioset_labels):
    segments = fmt.read_segments_csv(audioset_labels / "balanced_train_segments.csv")
    first = segments[0]
    assert first.ytid == "--PJHxphWEs" and first.start_seconds == 30.0 and first.end_seconds == 40.0
    assert first.labels == ("/m/09x0r", "/t/dd00088")


# ----------------------------------------------------------------------------- round trips


def test_written_files_parse_with_the_independent_reader(tmp_path):
    segs = [
        fmt.Segment("-abcdefghij", 0.0, 3.0, ("/t/sy00001",)),
        fmt.Segment("Zz_09-Zz_09", 30.0, 40.0, ("/t/sy00002", "/m/09x0r")),
    ]
    fmt.write_segments_csv(tmp_path / "s.csv", segs, "Sat Jun 14 00:00:00 2025")
    rows = independent_segments(tmp_path / "s.csv")
    assert rows == [(s.ytid, s.start_seconds, s.end_seconds, list(s.labels)) for s in segs]
    assert fmt.read_segments_csv(tmp_path / "s.csv") == segs

    fmt.write_class_labels(tmp_path / "c.csv", [("/m/a", 'Say "hi"'), ("/t/b", "Music, live")])
    assert independent_class_index(tmp_path / "c.csv") == [(0, "/m/a", 'Say "hi"'), (1, "/t/b", "Music, live")]


@pytest.mark.parametrize(
    "lines,match",
    [
        (
            ["YTID, start_seconds, end_seconds, positive_labels", 'x, 0, 1, "/m/a"'],
            ":1: expected '# Segments csv created",
        ),
        (["# Segments csv created X", "# wrong", "# YTID, start_seconds, end_seconds, positive_labels"], ":2:"),
        (
            [
                "# Segments csv created X",
                "# num_ytids=1, num_segs=1, num_unique_labels=1, num_positive_labels=1",
                "# YTID, start_seconds, end_seconds, positive_labels",
                'abc, x, 1.0, "/m/a"',
            ],
            ":4: start/end seconds must be numbers",
        ),
        (
            [
                "# Segments csv created X",
                "# num_ytids=1, num_segs=1, num_unique_labels=1, num_positive_labels=1",
                "# YTID, start_seconds, end_seconds, positive_labels",
                'abc, 5.0, 1.0, "/m/a"',
            ],
            ":4: need 0 <= start_seconds < end_seconds",
        ),
        (
            [
                "# Segments csv created X",
                "# num_ytids=1, num_segs=1, num_unique_labels=1, num_positive_labels=1",
                "# YTID, start_seconds, end_seconds, positive_labels",
                "abc, 0.0, 1.0",
            ],
            ":4: expected 4 fields",
        ),
    ],
)
def test_bad_segment_files_name_the_line(tmp_path, lines, match):
    p = tmp_path / "bad.csv"
    p.write_text("\n".join(lines) + "\n")
    with pytest.raises(fmt.FormatError, match=match):
        fmt.read_segments_csv(p)


def test_bad_ontologies_are_rejected(tmp_path):
    node = {
        "id": "/m/a",
        "name": "A",
        "description": "",
        "citation_uri": "",
        "positive_examples": [],
        "child_ids": ["/m/b"],
        "restrictions": [],
    }
    p = tmp_path / "o.json"
    p.write_text(json.dumps([node]))
    with pytest.raises(fmt.FormatError, match="names child '/m/b'"):
        fmt.read_ontology(p)
    b = dict(node, id="/m/b", child_ids=["/m/a"])
    p.write_text(json.dumps([node, b]))
    with pytest.raises(fmt.FormatError, match="cycle"):
        fmt.read_ontology(p)
    p.write_text(json.dumps([{k: v for k, v in node.items() if k != "restrictions"}]))
    with pytest.raises(fmt.FormatError, match="lacks key"):
        fmt.read_ontology(p)
