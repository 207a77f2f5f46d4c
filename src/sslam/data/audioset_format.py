"""AudioSet's published file formats, written and read exactly.

Every source (synthetic, folder, AudioSet itself) writes these, so later stages never know which
source produced a corpus. Formats, as published by Google:

- segment CSV: three ``#`` header lines, then ``YTID, start_seconds, end_seconds, "label1,label2"``
  (comma and space between fields, times with three decimals, the label list always quoted);
- ``class_labels_indices.csv``: ``index,mid,display_name`` with the display name always quoted;
- ``ontology.json``: a list of nodes with ``id, name, description, citation_uri, positive_examples,
  child_ids, restrictions``, two-space indent, lists on one line;
- strong labels TSV: ``segment_id, start_time_seconds, end_time_seconds, label`` tab-separated.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import pandas as pd

from sslam.io import write_text_atomic

ONTOLOGY_KEYS = ("id", "name", "description", "citation_uri", "positive_examples", "child_ids", "restrictions")
SEGMENTS_COLUMNS_LINE = "# YTID, start_seconds, end_seconds, positive_labels"
STRONG_HEADER = "segment_id\tstart_time_seconds\tend_time_seconds\tlabel"
RESTRICTIONS = ("abstract", "blacklist")
# AudioSet's split names and the file names Google publishes them under
SPLIT_FILES = {
    "unbalanced": "unbalanced_train_segments.csv",
    "balanced": "balanced_train_segments.csv",
    "eval": "eval_segments.csv",
}


class FormatError(ValueError):
    """A metadata file that does not follow AudioSet's format; names the file, line and field."""


# ----------------------------------------------------------------------------- segments


@dataclass(frozen=True)
class Segment:
    ytid: str
    start_seconds: float
    end_seconds: float
    labels: tuple[str, ...]


def format_segments_csv(segments: Sequence[Segment], created: str) -> str:
    labels = [lab for s in segments for lab in s.labels]
    lines = [
        f"# Segments csv created {created}",
        f"# num_ytids={len({s.ytid for s in segments})}, num_segs={len(segments)}, "
        f"num_unique_labels={len(set(labels))}, num_positive_labels={len(labels)}",
        SEGMENTS_COLUMNS_LINE,
    ]
    for s in segments:
        for lab in s.labels:
            if "," in lab or '"' in lab:
                raise FormatError(f"label id {lab!r} of segment {s.ytid} cannot hold ',' or '\"'")
        lines.append(f'{s.ytid}, {s.start_seconds:.3f}, {s.end_seconds:.3f}, "{",".join(s.labels)}"')
    return "\n".join(lines) + "\n"


def write_segments_csv(path: str | Path, segments: Sequence[Segment], created: str) -> None:
    write_text_atomic(path, format_segments_csv(segments, created))


def read_segments_csv(path: str | Path) -> list[Segment]:
    """Parse a segment CSV, checking the header lines and every row; errors name the line."""
    path = Path(path)
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    if len(lines) < 3 or not lines[0].startswith("# Segments csv created"):
        raise FormatError(f"{path}:1: expected '# Segments csv created ...' (is this an AudioSet segment CSV?)")
    if not re.match(r"# num_ytids=\d+, num_segs=\d+, num_unique_labels=\d+, num_positive_labels=\d+$", lines[1]):
        raise FormatError(f"{path}:2: expected '# num_ytids=N, num_segs=N, num_unique_labels=N, num_positive_labels=N'")
    if lines[2].strip() != SEGMENTS_COLUMNS_LINE:
        raise FormatError(f"{path}:3: expected {SEGMENTS_COLUMNS_LINE!r}, got {lines[2]!r}")
    segments = []
    reader = csv.reader(io.StringIO("\n".join(lines[3:])), skipinitialspace=True)
    for offset, row in enumerate(reader):
        lineno = offset + 4
        if not row:
            continue
        if len(row) != 4:
            raise FormatError(f"{path}:{lineno}: expected 4 fields (YTID, start, end, \"labels\"), got {len(row)}")
        ytid, start, end, labels = row
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            raise FormatError(f"{path}:{lineno}: start/end seconds must be numbers, got {start!r}, {end!r}") from None
        if not end_s > start_s >= 0:
            raise FormatError(f"{path}:{lineno}: need 0 <= start_seconds < end_seconds, got {start_s}, {end_s}")
        label_list = tuple(lab.strip() for lab in labels.split(",") if lab.strip())
        if not label_list:
            raise FormatError(f"{path}:{lineno}: segment {ytid} has no labels")
        segments.append(Segment(ytid.strip(), start_s, end_s, label_list))
    return segments


# ----------------------------------------------------------------------------- class index


def format_class_labels(classes: Sequence[tuple[str, str]]) -> str:
    lines = ["index,mid,display_name"]
    for i, (mid, name) in enumerate(classes):
        lines.append(f'{i},{mid},"{name.replace(chr(34), chr(34) * 2)}"')
    return "\n".join(lines) + "\n"


def write_class_labels(path: str | Path, classes: Sequence[tuple[str, str]]) -> None:
    write_text_atomic(path, format_class_labels(classes))


def read_class_labels(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    df = pd.read_csv(path, dtype={"index": int, "mid": str, "display_name": str}, keep_default_na=False)
    if list(df.columns) != ["index", "mid", "display_name"]:
        raise FormatError(f"{path}: expected header 'index,mid,display_name', got {','.join(df.columns)}")
    if list(df["index"]) != list(range(len(df))):
        raise FormatError(f"{path}: column 'index' must count 0..{len(df) - 1} in order")
    if df["mid"].duplicated().any():
        dup = df.loc[df["mid"].duplicated(), "mid"].iloc[0]
        raise FormatError(f"{path}: label id {dup!r} appears twice")
    return df


# ----------------------------------------------------------------------------- ontology


@dataclass
class OntologyNode:
    id: str
    name: str
    description: str = ""
    citation_uri: str = ""
    positive_examples: list[str] = field(default_factory=list)
    child_ids: list[str] = field(default_factory=list)
    restrictions: list[str] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ONTOLOGY_KEYS}


def format_ontology(nodes: Iterable[OntologyNode]) -> str:
    """AudioSet's own layout: two-space indent, one key per line, lists on one line."""
    blocks = []
    for node in nodes:
        d = node.as_dict()
        body = ",\n".join(f"    {json.dumps(k)}: {json.dumps(v, ensure_ascii=False)}" for k, v in d.items())
        blocks.append("  {\n" + body + "\n  }")
    return "[\n" + ",\n".join(blocks) + "\n]\n"


def write_ontology(path: str | Path, nodes: Iterable[OntologyNode]) -> None:
    write_text_atomic(path, format_ontology(nodes))


def read_ontology(path: str | Path) -> list[OntologyNode]:
    """Load and check an ontology: every key present, child ids resolve, no cycles."""
    path = Path(path)
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise FormatError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(raw, list):
        raise FormatError(f"{path}: expected a JSON list of nodes, got {type(raw).__name__}")
    nodes = []
    for i, item in enumerate(raw):
        if not isinstance(item, dict):
            raise FormatError(f"{path}: node #{i} is not an object")
        missing = [k for k in ONTOLOGY_KEYS if k not in item]
        if missing:
            raise FormatError(f"{path}: node #{i} ({item.get('id', '?')}) lacks key(s) {missing}")
        bad = [r for r in item["restrictions"] if r not in RESTRICTIONS]
        if bad:
            raise FormatError(f"{path}: node {item['id']} has unknown restriction(s) {bad}; allowed {RESTRICTIONS}")
        nodes.append(OntologyNode(**{k: item[k] for k in ONTOLOGY_KEYS}))
    ids = {n.id for n in nodes}
    if len(ids) != len(nodes):
        raise FormatError(f"{path}: duplicate node ids")
    for n in nodes:
        for c in n.child_ids:
            if c not in ids:
                raise FormatError(f"{path}: node {n.id} names child {c!r}, which is not in the ontology")
    _check_acyclic(path, nodes)
    return nodes


def _check_acyclic(path: Path, nodes: list[OntologyNode]) -> None:
    children = {n.id: n.child_ids for n in nodes}
    state: dict[str, int] = {}  # 1 = on the current path, 2 = done

    for root in children:
        stack = [(root, iter(children[root]))]
        if state.get(root):
            continue
        state[root] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                raise FormatError(f"{path}: the ontology has a cycle through {nxt}")
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(children[nxt])))


# ----------------------------------------------------------------------------- strong labels


@dataclass(frozen=True)
class StrongEvent:
    segment_id: str
    start: float
    end: float
    label: str


def format_strong_labels(events: Sequence[StrongEvent]) -> str:
    lines = [STRONG_HEADER] + [f"{e.segment_id}\t{e.start:.3f}\t{e.end:.3f}\t{e.label}" for e in events]
    return "\n".join(lines) + "\n"


def write_strong_labels(path: str | Path, events: Sequence[StrongEvent]) -> None:
    write_text_atomic(path, format_strong_labels(events))


def read_strong_labels(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    df = pd.read_csv(path, sep="\t", dtype={"segment_id": str, "label": str})
    if "\t".join(df.columns) != STRONG_HEADER:
        raise FormatError(f"{path}: expected header {STRONG_HEADER!r}")
    return df
