from __future__ import annotations

import hashlib
import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch
import torchaudio
from conftest import clip_audio, section
from test_audioset_format import independent_class_index, independent_ontology, independent_segments

from sslam.config.data import SyntheticConfig
from sslam.data import audioset_format as fmt
from sslam.data.catalogue import LEAVES, build_catalogue
from sslam.data.manifest import read_manifest
from sslam.data.shards import ClipLocation, iter_shard, read_clip
from sslam.data.synthetic import SEGMENT_FILES, generate_corpus

SR = 16000
CLIPS_PER_SHARD = 8  # several shards per split


def small_config(**overrides) -> SyntheticConfig:
    base = dict(
        seed=7,
        num_classes=12,
        clip_seconds=2.0,
        clips={"unbalanced": 30, "balanced": 24, "eval": 24},
        tasks={
            "mono": {"num_classes": 6, "clips_per_class_per_fold": 2},
            "poly": {
                "environments": ["square", "park"],
                "clips_train": 40,
                "clips_eval": 10,
                "events_per_clip": [2, 5],
            },
            "keywords": {"num_classes": 4, "clips_per_class": {"train": 3, "valid": 2, "test": 1}},
            "urban": {"clips_train": 20, "clips_eval": 10, "events_per_clip": [1, 4]},
            "desed": {"num_classes": 5, "clips_train": 10, "clips_eval": 6, "events_per_clip": [1, 3]},
            "masked": {"clips_per_class_per_ratio": {"train": 1, "eval": 2}, "tmr_db": [-20.0, 0.0]},
        },
    )
    return section("download.synthetic", **{**base, **overrides})


def tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("corpus")
    summary = generate_corpus(small_config(), out, SR, CLIPS_PER_SHARD, workers=1)
    return out, summary


def test_same_seed_same_bytes_whatever_the_worker_count(corpus, tmp_path):
    out, _ = corpus
    generate_corpus(small_config(), tmp_path / "again", SR, CLIPS_PER_SHARD, workers=2)
    assert tree_digest(out) == tree_digest(tmp_path / "again")
    generate_corpus(small_config(seed=8), tmp_path / "other", SR, CLIPS_PER_SHARD, workers=1)
    assert tree_digest(out) != tree_digest(tmp_path / "other")


def test_a_split_size_change_leaves_other_clips_unchanged(corpus, tmp_path):
    out, _ = corpus
    cfg = small_config(clips={"unbalanced": 10, "balanced": 24, "eval": 24})
    generate_corpus(cfg, tmp_path / "c", SR, CLIPS_PER_SHARD)
    a, b = tree_digest(out), tree_digest(tmp_path / "c")
    evals = [k for k in a if k.startswith("audio/eval/")]
    assert evals and all(a[k] == b[k] for k in evals)


def test_metadata_follows_audioset_formats(corpus):
    out, _ = corpus
    nodes = independent_ontology(out / "ontology.json")
    index = independent_class_index(out / "class_labels_indices.csv")
    abstract = {n["id"] for n in nodes if "abstract" in n["restrictions"]}
    assert [mid for _, mid, _ in index] == [n["id"] for n in nodes if n["id"] not in abstract]
    known = {mid for _, mid, _ in index}
    for split, name in SEGMENT_FILES.items():
        rows = independent_segments(out / "segments" / name)
        manifest = read_manifest(out / "manifests" / f"{split}.csv")
        assert [r[0] for r in rows] == list(manifest["clip_id"])
        assert all(set(r[3]) <= known for r in rows)
        assert all(r[2] - r[1] == pytest.approx(2.0) for r in rows)


def test_ontology_shape_like_audioset():
    cat = build_catalogue(24)
    leaves = set(cat.leaf_ids)
    assert 20 <= len(leaves) <= 40 and len(LEAVES) == 40

    def longest(node: str) -> int:
        ps = cat.parents.get(node, ())
        return 1 + (max(longest(p) for p in ps) if ps else 0)

    assert max(longest(leaf) for leaf in leaves) >= 3
    assert any(len(cat.parents[leaf]) >= 2 for leaf in leaves), "no leaf with two parents"
    # facets: a labelled (non-abstract) ancestor describes the same sound as its child
    assert any(a not in cat.abstract for leaf in leaves for a in cat.ancestors(leaf))
    for n in range(8, 41):
        c = build_catalogue(n)
        assert max(longest(leaf) for leaf in c.leaf_ids) >= 3
        assert all(ch in {x.id for x in c.nodes} for x in c.nodes for ch in x.child_ids)


def test_audio_files_match_the_manifest(corpus):
    out, _ = corpus
    manifests = sorted((out / "manifests").glob("*.csv")) + sorted((out / "tasks").glob("*/manifest.csv"))
    total = 0
    for m in manifests:
        df = read_manifest(m)
        for row in df.itertuples():
            info = sf.info(io.BytesIO(read_clip(out, ClipLocation(row.path, row.member))))
            assert (info.samplerate, info.channels, info.frames, info.subtype) == (SR, 1, 2 * SR, "PCM_16")
            assert row.duration == pytest.approx(2.0) and row.status == "ok"
            total += 1
    in_shards = [c.meta["clip_id"] for p in sorted(out.rglob("*.tar")) for c in iter_shard(p)]
    assert total == len(in_shards) == len(set(in_shards))
    assert not list(out.rglob(".tmp-*")) and not list(out.rglob("*.part")) and not list(out.rglob("*.flac"))
    sizes = [len(list(iter_shard(p))) for p in sorted((out / "audio" / "unbalanced").glob("*.tar"))]
    assert sizes == [8] * (len(sizes) - 1) + [sizes[-1]] and len(sizes) > 1


def test_strong_labels_explain_the_weak_labels(corpus):
    out, _ = corpus
    cat = build_catalogue(12)
    leaves = set(cat.leaf_ids)
    for split in ("unbalanced", "balanced", "eval"):
        strong = fmt.read_strong_labels(out / "strong" / f"{split}.tsv")
        segs = {
            f"{s.ytid}_{int(s.start_seconds * 1000)}": s
            for s in fmt.read_segments_csv(out / "segments" / SEGMENT_FILES[split])
        }
        by_clip = strong.groupby("segment_id")["label"].apply(set)
        assert set(by_clip.index) == set(segs)
        for seg_id, events in by_clip.items():
            labels = set(segs[seg_id].labels)
            assert labels & leaves == events  # every event is labelled, every leaf label has an event
            for extra in labels - leaves:  # the rest are ancestors of present events (facets)
                assert any(extra in cat.ancestors(e) for e in events)
        assert (strong["end_time_seconds"] > strong["start_time_seconds"]).all()
        assert strong["end_time_seconds"].max() <= 2.0


def test_multi_label_is_not_polyphony(corpus):
    _, summary = corpus
    for split in ("unbalanced", "balanced", "eval"):
        s = summary["splits"][split]
        assert s["labels_per_clip"] > s["distinct_sources_per_clip"]
        assert s["multi_label_share"] > s["polyphonic_share"]


def test_balanced_splits_cover_every_class_evenly(corpus):
    out, _ = corpus
    strong = fmt.read_strong_labels(out / "strong" / "balanced.tsv")
    per_class = strong.groupby("label")["segment_id"].nunique()
    assert len(per_class) == 12 and per_class.min() >= 2


def _logmel_stats(corpus: Path, path: str, member: str) -> np.ndarray:
    wav = torch.from_numpy(clip_audio(corpus, path, member, dtype="float32")[0])[None]
    fb = torchaudio.compliance.kaldi.fbank(
        wav,
        htk_compat=True,
        sample_frequency=SR,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=128,
        dither=0.0,
        frame_shift=10,
    )
    return torch.cat([fb.mean(0), fb.std(0)]).numpy()


def test_classes_are_distinguishable_on_log_mel(corpus):
    """Nearest class centroid on log-mel statistics, fold 1 held out, must be near perfect."""
    out, _ = corpus
    df = read_manifest(out / "tasks" / "mono" / "manifest.csv")
    feats = np.stack([_logmel_stats(out, p, m) for p, m in zip(df["path"], df["member"])])
    labels = np.array([lab[0] for lab in df["labels"]])
    test = (df["split"] == "fold1").to_numpy()
    classes = sorted(set(labels))
    centroids = np.stack([feats[~test & (labels == c)].mean(0) for c in classes])
    pred = np.array(classes)[np.argmin(((feats[test, None] - centroids[None]) ** 2).sum(-1), axis=1)]
    assert (pred == labels[test]).mean() >= 0.9


def test_task_sets(corpus):
    out, _ = corpus
    mono = json.loads((out / "tasks" / "mono" / "task.json").read_text())
    assert mono["kind"] == "single_label" and mono["splits"] == [f"fold{i}" for i in range(1, 6)]
    df = read_manifest(out / "tasks" / "mono" / "manifest.csv")
    assert len(df) == 5 * 6 * 2 and all(len(x) == 1 for x in df["labels"])
    assert all(r.clip_id.startswith(r.split.removeprefix("fold") + "-") for r in df.itertuples())  # ESC-50 names
    dists = []
    for env in ("square", "park"):
        task = json.loads((out / "tasks" / env / "task.json").read_text())
        assert task["kind"] == "multi_label" and task["splits"] == ["train", "eval"]
        m = read_manifest(out / "tasks" / env / "manifest.csv")
        assert Counter(m["split"]) == {"train": 40, "eval": 10}
        assert all(len(x) >= 1 for x in m["labels"])
        strong = fmt.read_strong_labels(out / "tasks" / env / "strong.tsv")
        assert strong.groupby("segment_id").size().between(2, 5).all()
        counts = strong["label"].value_counts(normalize=True)
        dists.append(counts.reindex(build_catalogue(12).leaf_ids, fill_value=0.0).to_numpy())
    assert 0.5 * np.abs(dists[0] - dists[1]).sum() > 0.25  # environments differ in what they hold

    cat = build_catalogue(12)
    kws = json.loads((out / "tasks" / "keywords" / "task.json").read_text())
    assert (kws["kind"], kws["protocol"], kws["splits"]) == (
        "single_label",
        "train_valid_test",
        ["train", "valid", "test"],
    )
    assert kws["classes"] == list(cat.leaf_ids[-4:]) and not set(kws["classes"]) & set(mono["classes"])
    m = read_manifest(out / "tasks" / "keywords" / "manifest.csv")
    assert Counter(m["split"]) == {"train": 12, "valid": 8, "test": 4}
    strong = fmt.read_strong_labels(out / "tasks" / "keywords" / "strong.tsv")
    dur = strong["end_time_seconds"] - strong["start_time_seconds"]
    assert len(strong) == 24 and dur.between(0.25 - 1e-3, 0.6 + 1e-3).all()  # one short event per clip

    urban = read_manifest(out / "tasks" / "urban" / "manifest.csv")
    n_labels = urban["labels"].map(len)
    assert Counter(urban["split"]) == {"train": 20, "eval": 10} and (n_labels == 1).any() and (n_labels > 1).any()

    desed = json.loads((out / "tasks" / "desed" / "task.json").read_text())
    assert len(desed["classes"]) == 5 and desed["protocol"] == "train_eval"
    d = read_manifest(out / "tasks" / "desed" / "manifest.csv")
    assert set().union(*d["labels"]) <= set(desed["classes"]) and Counter(d["split"]) == {"train": 10, "eval": 6}


def test_masked_task_sets_the_target_to_masker_ratio_and_labels_the_target_only(corpus):
    """8 targets x 2 ratios x (1 train, 2 eval) clips; conditions.csv holds each clip's ratio; the target's
    RMS over its span over the masker's RMS over the clip is the ratio, measured on the rendered sounds
    (the whole mix minus the masker alone, background made negligible)."""
    from dataclasses import replace

    from sslam.data.catalogue import MAX_CLASSES
    from sslam.data.synthetic import MASKED_TARGETS, MASKERS, leaves_named, plan_masked_task, render_clip

    out, _ = corpus
    task = json.loads((out / "tasks" / "masked" / "task.json").read_text())
    full = build_catalogue(MAX_CLASSES)
    assert (task["kind"], task["protocol"], task["splits"]) == ("single_label", "train_eval", ["train", "eval"])
    assert task["classes"] == leaves_named(full, MASKED_TARGETS) and task["class_names"] == list(MASKED_TARGETS)
    m = read_manifest(out / "tasks" / "masked" / "manifest.csv")
    assert Counter(m["split"]) == {"train": 16, "eval": 32}
    conditions = pd.read_csv(out / "tasks" / "masked" / "conditions.csv", dtype=str)
    assert list(conditions["clip_id"]) == list(m["clip_id"])
    assert Counter(conditions["condition"]) == {"-20": 24, "0": 24}
    strong = fmt.read_strong_labels(out / "tasks" / "masked" / "strong.tsv")
    maskers = set(leaves_named(full, MASKERS))
    for clip, labels in zip(m["clip_id"], m["labels"]):
        events = set(strong.loc[strong["segment_id"] == clip, "label"])
        (masker,) = events & maskers
        assert list(labels) == sorted(events - {masker}) and labels[0] in task["classes"]  # the target alone

    plans = plan_masked_task(small_config(background_db=-120.0), full, set())
    for plan in (plans[0], plans[-1]):
        masker, target = plan.events
        whole = render_clip(plan, full, SR, 2.0, -120.0)
        alone = render_clip(replace(plan, events=(masker,)), full, SR, 2.0, -120.0)
        a, b = int(round(target.onset * SR)), int(round(target.offset * SR))
        rms = lambda x: np.sqrt(np.mean(x**2))  # noqa: E731
        tmr = 20 * np.log10(rms((whole - alone)[a:b]) / rms(alone))
        assert tmr == pytest.approx(target.gain_db - masker.gain_db, abs=0.01)
