"""The built-in synthetic polyphonic corpus: AudioSet's formats, made from a seed, no internet.

Every clip has its own random generator seeded from (seed, split, index), so a clip does not change
when another split's size does, clips can be rendered in any order or process, and the same seed gives
the same bytes.
"""

from __future__ import annotations

import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from tqdm import tqdm

from sslam.config.data import SyntheticConfig
from sslam.data import audioset_format as fmt
from sslam.data.catalogue import MAX_CLASSES, Catalogue, build_catalogue
from sslam.data.manifest import ManifestRow, write_manifest
from sslam.data.shards import ShardWriter, add_clip
from sslam.data.sounds import pink_noise
from sslam.io import flac_bytes, write_json_atomic, write_text_atomic

AUDIOSET_SPLITS = ("unbalanced", "balanced", "eval")
SEGMENT_FILES = fmt.SPLIT_FILES
CREATED = "Sat Jun 14 00:00:00 2025"  # fixed, so the header line is reproducible
YTID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
MONO_TASK = "mono"
KEYWORDS_TASK = "keywords"
URBAN_TASK = "urban"
DESED_TASK = "desed"
MASKED_TASK = "masked"
NUM_FOLDS = 5
# The masker task's classes, by catalogue name. Every target has energy in 800-1200 Hz, the band every
# masker covers (Wind 300-1200, Surf 150-3000, Tapping 500-1500, Rattle 800-3000 Hz): whichever masker a
# clip draws overlaps its target in frequency; drawn independently of the target, it says nothing of it.
MASKED_TARGETS = (
    "Wailing siren", "Rising whistle", "Beeping", "Flute", "Buzzer", "Yelp siren", "Falling whistle", "Vibrato tone",
)
MASKERS = ("Wind", "Surf", "Tapping", "Rattle")
MASKER_DB = -20.0  # the masker's RMS level (dB re the unit-RMS sound, x 0.5 as every event); the target's: + TMR


@dataclass(frozen=True)
class Event:
    label: str  # a leaf id
    onset: float  # seconds
    offset: float
    gain_db: float


@dataclass(frozen=True)
class ClipPlan:
    """Everything needed to render and label one clip; rendering needs nothing else."""

    clip_id: str
    split: str
    folder: str  # the clip set's audio folder in the corpus (its shards: src/sslam/data/shards.py)
    seed: tuple[int, ...]
    events: tuple[Event, ...]
    labels: tuple[str, ...]
    start_seconds: float
    rms_levels: bool = False  # gain_db relative to the sound at unit RMS over its span (else: at peak 1)


def clip_rng(seed: int, stream: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, zlib.crc32(stream.encode()), index])


def make_ytid(rng: np.random.Generator) -> str:
    return "".join(YTID_ALPHABET[i] for i in rng.integers(0, 64, size=11))


def draw_events(
    rng: np.random.Generator,
    classes: Sequence[str],
    weights: np.ndarray | None,
    count: int,
    clip_seconds: float,
    min_dur: float,
    max_frac: float,
    gain_db: tuple[float, float],
    first: str | None = None,
) -> tuple[Event, ...]:
    """Random events at random onsets; ``first`` forces one event's class (balanced splits)."""
    events = []
    for k in range(count):
        label = first if (k == 0 and first is not None) else str(rng.choice(classes, p=weights))
        dur = rng.uniform(min(min_dur, clip_seconds), max(min_dur, max_frac * clip_seconds))
        dur = min(dur, clip_seconds)
        onset = rng.uniform(0.0, clip_seconds - dur)
        events.append(Event(label, round(onset, 3), round(onset + dur, 3), float(rng.uniform(*gain_db))))
    return tuple(events)


def weak_labels(
    rng: np.random.Generator, cat: Catalogue, events: Iterable[Event], ancestor_prob: float
) -> tuple[str, ...]:
    """Event classes plus, like AudioSet annotators, some of their non-abstract ancestors."""
    present = {e.label for e in events}
    ancestors = sorted({a for lab in present for a in cat.ancestors(lab) if a not in cat.abstract} - present)
    chosen = [a for a in ancestors if rng.random() < ancestor_prob]
    order = {i: k for k, i in enumerate(cat.labelled_ids())}
    return tuple(sorted(present | set(chosen), key=order.__getitem__))


def render_clip(plan: ClipPlan, cat: Catalogue, sr: int, clip_seconds: float, background_db: float) -> np.ndarray:
    """Sum the planned events and a pink background; peak-limited to 0.9 full scale."""
    rng = np.random.default_rng(list(plan.seed) + [1])
    n = int(round(clip_seconds * sr))
    mix = np.zeros(n)
    for ev in plan.events:
        a, b = int(round(ev.onset * sr)), min(n, int(round(ev.offset * sr)))
        if b - a < 2:
            continue
        sound = cat.recipes[ev.label].render(rng, b - a, sr)
        if plan.rms_levels:
            sound = sound / max(float(np.sqrt(np.mean(sound**2))), 1e-12)
        mix[a:b] += 0.5 * 10 ** (ev.gain_db / 20) * sound
    mix += 10 ** (background_db / 20) * pink_noise(rng, n, sr)
    peak = np.max(np.abs(mix))
    if peak > 0.9:
        mix *= 0.9 / peak
    return mix


# ----------------------------------------------------------------------------- planning


def _class_prior(seed: int, stream: str, n: int, concentration: float) -> np.ndarray:
    rng = clip_rng(seed, "prior/" + stream, 0)
    return rng.dirichlet(np.full(n, concentration))


def plan_audioset_split(cfg: SyntheticConfig, cat: Catalogue, split: str, used_ids: set[str]) -> list[ClipPlan]:
    count = getattr(cfg.clips, split)
    classes = list(cat.leaf_ids)
    if split == "unbalanced":
        # AudioSet's unbalanced set is long-tailed: a Zipf-like prior over a seeded class ranking
        rank = clip_rng(cfg.seed, "rank", 0).permutation(len(classes))
        weights = 1.0 / (rank + 1.0) ** 0.8
        weights /= weights.sum()
    else:
        weights = None
    plans = []
    lo, hi = cfg.events_per_clip
    for i in range(count):
        rng = clip_rng(cfg.seed, split, i)
        ytid = _unique_ytid(rng, used_ids)
        start = float(10 * rng.integers(0, 30))
        first = classes[i % len(classes)] if split != "unbalanced" else None
        events = draw_events(
            rng, classes, weights, int(rng.integers(lo, hi + 1)), cfg.clip_seconds, 0.3, 0.7, (-20.0, 0.0), first
        )
        labels = weak_labels(rng, cat, events, cfg.ancestor_label_prob)
        plans.append(
            ClipPlan(ytid, split, f"audio/{split}", (cfg.seed, zlib.crc32(split.encode()), i), events, labels, start)
        )
    return plans


def plan_mono_task(cfg: SyntheticConfig, cat: Catalogue, used_ids: set[str]) -> list[ClipPlan]:
    """ESC-50 analogue: one event per clip, the first ``num_classes`` leaves, 5 folds, ESC-50 file names."""
    t = cfg.tasks.mono
    classes = cat.leaf_ids[: t.num_classes]
    plans = []
    i = 0
    for fold in range(1, NUM_FOLDS + 1):
        for target, label in enumerate(classes):
            for _ in range(t.clips_per_class_per_fold):
                rng = clip_rng(cfg.seed, MONO_TASK, i)
                src = int(rng.integers(100000, 999999))
                clip_id = f"{fold}-{src}-A-{target}"
                while clip_id in used_ids:
                    src += 1
                    clip_id = f"{fold}-{src}-A-{target}"
                used_ids.add(clip_id)
                events = draw_events(rng, classes, None, 1, cfg.clip_seconds, 0.6, 1.0, (-6.0, 0.0), label)
                plans.append(
                    ClipPlan(
                        clip_id, f"fold{fold}", f"tasks/{MONO_TASK}/audio",
                        (cfg.seed, zlib.crc32(MONO_TASK.encode()), i), events, (label,), 0.0,
                    )
                )
                i += 1
    return plans


def plan_keywords_task(cfg: SyntheticConfig, cat: Catalogue, used_ids: set[str]) -> list[ClipPlan]:
    """Keyword-spotting analogue: one short event per clip (the last ``num_classes`` leaves, so not the
    mono task's classes), train / valid / test splits with fixed counts per class."""
    t = cfg.tasks.keywords
    classes = cat.leaf_ids[-t.num_classes:]
    plans = []
    i = 0
    for split in ("train", "valid", "test"):
        for label in classes:
            for _ in range(t.clips_per_class[split]):
                rng = clip_rng(cfg.seed, KEYWORDS_TASK, i)
                clip_id = _unique_ytid(rng, used_ids)
                dur = float(rng.uniform(*t.event_seconds))
                onset = float(rng.uniform(0.0, cfg.clip_seconds - dur))
                events = (Event(label, round(onset, 3), round(onset + dur, 3), float(rng.uniform(-12.0, 0.0))),)
                plans.append(ClipPlan(clip_id, split, f"tasks/{KEYWORDS_TASK}/audio",
                                      (cfg.seed, zlib.crc32(KEYWORDS_TASK.encode()), i), events, (label,), 0.0))
                i += 1
    return plans


def plan_poly_task(cfg: SyntheticConfig, cat: Catalogue, env: str, used_ids: set[str],
                   sizes: tuple[int, int] | None = None, events_per_clip: Sequence[int] | None = None,
                   classes: Sequence[str] | None = None) -> list[ClipPlan]:
    """SPASS-like soundscape: the environment has its own skewed class prior; labels are event classes.
    ``sizes`` (train, eval), ``events_per_clip`` and ``classes`` default to ``tasks.poly``'s and all leaves."""
    t = cfg.tasks.poly
    classes = list(classes or cat.leaf_ids)
    prior = _class_prior(cfg.seed, env, len(classes), concentration=0.5)
    lo, hi = events_per_clip or t.events_per_clip
    n_train, n_eval = sizes or (t.clips_train, t.clips_eval)
    plans = []
    i = 0
    for split, count in (("train", n_train), ("eval", n_eval)):
        for _ in range(count):
            rng = clip_rng(cfg.seed, env, i)
            clip_id = _unique_ytid(rng, used_ids)
            events = draw_events(
                rng, classes, prior, int(rng.integers(lo, hi + 1)), cfg.clip_seconds, 0.3, 0.7, (-20.0, 0.0)
            )
            order = {c: k for k, c in enumerate(classes)}
            labels = tuple(sorted({e.label for e in events}, key=order.__getitem__))
            plans.append(
                ClipPlan(clip_id, split, f"tasks/{env}/audio", (cfg.seed, zlib.crc32(env.encode()), i), events, labels, 0.0)
            )
            i += 1
    return plans


def plan_masked_task(cfg: SyntheticConfig, cat: Catalogue, used_ids: set[str]) -> list[ClipPlan]:
    """Each clip: one target event (:data:`MASKED_TARGETS`) inside a masker that spans the whole clip
    (:data:`MASKERS`, drawn independently of the target), at each ratio of ``tmr_db`` in turn (target RMS
    over its span / masker RMS, in dB); labelled by the target alone. ``cat``: the whole catalogue (the
    maskers need not be among the pretraining corpus's classes)."""
    t = cfg.tasks.masked
    targets, maskers = leaves_named(cat, MASKED_TARGETS), leaves_named(cat, MASKERS)
    plans = []
    i = 0
    for split in ("train", "eval"):
        for tmr in t.tmr_db:
            for label in targets:
                for _ in range(t.clips_per_class_per_ratio[split]):
                    rng = clip_rng(cfg.seed, MASKED_TASK, i)
                    clip_id = _unique_ytid(rng, used_ids)
                    dur = min(float(rng.uniform(*t.target_seconds)), cfg.clip_seconds)
                    onset = round(float(rng.uniform(0.0, cfg.clip_seconds - dur)), 3)
                    masker = Event(str(rng.choice(maskers)), 0.0, cfg.clip_seconds, MASKER_DB)
                    target = Event(label, onset, round(onset + dur, 3), MASKER_DB + float(tmr))
                    seed = (cfg.seed, zlib.crc32(MASKED_TASK.encode()), i)
                    plans.append(
                        ClipPlan(clip_id, split, f"tasks/{MASKED_TASK}/audio", seed,
                                 (masker, target), (label,), 0.0, rms_levels=True)
                    )
                    i += 1
    return plans


def leaves_named(cat: Catalogue, names: Sequence[str]) -> list[str]:
    """The leaf ids of catalogue classes given by name."""
    by_name = {cat.names[i]: i for i in cat.leaf_ids}
    return [by_name[n] for n in names]


def masked_conditions(plans: Sequence[ClipPlan]) -> list[tuple[str, str]]:
    """(clip_id, target-to-masker ratio in dB) of the masker task's clips: the condition evaluation breaks
    its accuracy down by."""
    return [(p.clip_id, f"{p.events[1].gain_db - p.events[0].gain_db:g}") for p in plans]


def desed_class_subset(cat: Catalogue, n: int) -> list[str]:
    """Every other leaf, starting from the second, so the subset spans the sound families (as DESED's
    classes span speech, appliances, animals and water) and differs from the mono task's prefix."""
    picked = list(cat.leaf_ids[1::2])[:n]
    return picked + [c for c in cat.leaf_ids if c not in picked][: n - len(picked)]


def _unique_ytid(rng: np.random.Generator, used: set[str]) -> str:
    while True:
        ytid = make_ytid(rng)
        if ytid not in used:
            used.add(ytid)
            return ytid


# ----------------------------------------------------------------------------- writing


_WORKER_STATE: dict = {}


def _init_worker(sr: int, clip_seconds: float, background_db: float) -> None:
    """Rendering reads the whole catalogue (a class renders the same whatever ``num_classes``): the
    masker task's sounds need not be among the corpus's classes."""
    _WORKER_STATE.update(cat=build_catalogue(MAX_CLASSES), sr=sr, clip_seconds=clip_seconds, bg=background_db)


def _render_flac(plan: ClipPlan) -> bytes:
    s = _WORKER_STATE
    return flac_bytes(render_clip(plan, s["cat"], s["sr"], s["clip_seconds"], s["bg"]), s["sr"])


def write_conditions(path: Path, rows: Sequence[tuple[str, str]]) -> None:
    """conditions.csv: clip_id, condition (the task's per-clip condition evaluation breaks down by)."""
    write_text_atomic(path, "clip_id,condition\n" + "".join(f"{c},{v}\n" for c, v in rows))


def _manifest_rows(plans: Sequence[ClipPlan], sr: int, clip_seconds: float) -> list[ManifestRow]:
    n = int(round(clip_seconds * sr))
    return [ManifestRow(p.clip_id, p.split, p.folder, n / sr, sr, p.labels, "ok", "") for p in plans]


def _strong(plans: Sequence[ClipPlan], with_start: bool) -> list[fmt.StrongEvent]:
    out = []
    for p in plans:
        seg = f"{p.clip_id}_{int(p.start_seconds * 1000)}" if with_start else p.clip_id
        out.extend(fmt.StrongEvent(seg, e.onset, e.offset, e.label) for e in sorted(p.events, key=lambda e: (e.onset, e.label)))
    return out


def generate_corpus(
    cfg: SyntheticConfig, out_dir: str | Path, sample_rate: int, clips_per_shard: int, workers: int = 1
) -> dict:
    """Write the whole corpus under ``out_dir`` (audio in shards of ``clips_per_shard`` clips, written in
    plan order, so the same seed gives the same bytes); returns summary statistics for metrics."""
    out_dir = Path(out_dir)
    manifests: dict[Path, list[ClipPlan]] = {}
    cat = build_catalogue(cfg.num_classes)
    fmt.write_ontology(out_dir / "ontology.json", cat.nodes)
    fmt.write_class_labels(out_dir / "class_labels_indices.csv", [(i, cat.names[i]) for i in cat.labelled_ids()])

    used: set[str] = set()
    all_plans: list[ClipPlan] = []
    summary: dict = {"source": "synthetic", "num_leaf_classes": len(cat.leaf_ids), "num_label_classes": len(cat.labelled_ids()), "splits": {}}
    for split in AUDIOSET_SPLITS:
        plans = plan_audioset_split(cfg, cat, split, used)
        all_plans += plans
        segments = [fmt.Segment(p.clip_id, p.start_seconds, p.start_seconds + cfg.clip_seconds, p.labels) for p in plans]
        fmt.write_segments_csv(out_dir / "segments" / SEGMENT_FILES[split], segments, CREATED)
        fmt.write_strong_labels(out_dir / "strong" / f"{split}.tsv", _strong(plans, with_start=True))
        manifests[out_dir / "manifests" / f"{split}.csv"] = plans
        summary["splits"][split] = _split_summary(plans, cat)

    u = cfg.tasks.urban
    tasks = {  # name: (plans, classes, kind, protocol)
        MONO_TASK: (plan_mono_task(cfg, cat, used), cat.leaf_ids[: cfg.tasks.mono.num_classes], "single_label", "cross_validation"),
        KEYWORDS_TASK: (plan_keywords_task(cfg, cat, used), cat.leaf_ids[-cfg.tasks.keywords.num_classes:], "single_label", "train_valid_test"),
    }
    for env in cfg.tasks.poly.environments:
        tasks[env] = (plan_poly_task(cfg, cat, env, used), cat.leaf_ids, "multi_label", "train_eval")
    tasks[URBAN_TASK] = (plan_poly_task(cfg, cat, URBAN_TASK, used, (u.clips_train, u.clips_eval), u.events_per_clip),
                         cat.leaf_ids, "multi_label", "train_eval")
    d = cfg.tasks.desed
    desed_classes = desed_class_subset(cat, d.num_classes)
    tasks[DESED_TASK] = (plan_poly_task(cfg, cat, DESED_TASK, used, (d.clips_train, d.clips_eval), d.events_per_clip,
                                        desed_classes), desed_classes, "multi_label", "train_eval")
    full = build_catalogue(MAX_CLASSES)
    masked = plan_masked_task(cfg, full, used)
    tasks[MASKED_TASK] = (masked, leaves_named(full, MASKED_TARGETS), "single_label", "train_eval")
    for name, (plans, classes, kind, protocol) in tasks.items():
        all_plans += plans
        task_dir = out_dir / "tasks" / name
        classes = list(classes)
        names = full.names
        splits = sorted({p.split for p in plans}, key=[p.split for p in plans].index)
        write_json_atomic(
            task_dir / "task.json",
            {
                "name": name,
                "kind": kind,
                "protocol": protocol,
                "splits": splits,
                "classes": classes,
                "class_names": [names[c] for c in classes],
            },
        )
        manifests[task_dir / "manifest.csv"] = plans
        fmt.write_strong_labels(task_dir / "strong.tsv", _strong(plans, with_start=False))
        if name == MASKED_TASK:
            write_conditions(task_dir / "conditions.csv", masked_conditions(plans))
        summary["splits"][f"task/{name}"] = _split_summary(plans, cat)

    init = (sample_rate, cfg.clip_seconds, cfg.background_db)
    bar = dict(total=len(all_plans), desc="synthesising clips", unit="clip", mininterval=1.0)
    rows = iter(_manifest_rows(all_plans, sample_rate, cfg.clip_seconds))
    written: dict[str, ManifestRow] = {}
    writer: ShardWriter | None = None
    with ExitStack() as stack:
        if workers > 1:  # fork: workers inherit the imports
            pool = stack.enter_context(get_context("fork").Pool(workers, initializer=_init_worker, initargs=init))
            encoded = pool.imap(_render_flac, all_plans, chunksize=8)
        else:
            _init_worker(*init)
            encoded = map(_render_flac, all_plans)
        for row, flac in zip(rows, tqdm(encoded, **bar)):
            if writer is None or writer.folder != out_dir / row.path:
                if writer is not None:
                    writer.close()
                writer = ShardWriter(out_dir / row.path, out_dir, clips_per_shard)
            written[row.clip_id] = add_clip(writer, row, flac)
        if writer is not None:
            writer.close()
    for manifest, plans in manifests.items():
        write_manifest(manifest, [written[p.clip_id] for p in plans])
    summary["num_clips"] = len(all_plans)
    return summary


def _split_summary(plans: Sequence[ClipPlan], cat: Catalogue) -> dict:
    if not plans:
        return {"clips": 0}
    events = np.array([len(p.events) for p in plans])
    distinct = np.array([len({e.label for e in p.events}) for p in plans])
    labels = np.array([len(p.labels) for p in plans])
    return {
        "clips": len(plans),
        "events_per_clip": round(float(events.mean()), 4),
        "distinct_sources_per_clip": round(float(distinct.mean()), 4),
        "labels_per_clip": round(float(labels.mean()), 4),
        "multi_label_share": round(float((labels >= 2).mean()), 4),
        "polyphonic_share": round(float((distinct >= 2).mean()), 4),
    }

