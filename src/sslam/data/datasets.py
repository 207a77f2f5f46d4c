"""Real downstream datasets in their published layouts: each reader lists a dataset's clips exactly as
its publishers lay them out (file names, list files, metadata columns) and returns a :class:`Listing`:
the task's kind, protocol, splits and classes, and one :class:`~sslam.data.folder.FolderItem` per listed
clip (relative path, split or fold, labels). Decoding, resampling to mono 16 kHz and the checks on each
file (missing, empty, unreadable, shorter than one analysis window, silent) are the folder source's
(``data/folder.py: convert_file``), so a bad file becomes a failures-table row with its reason, never a
dead task. A file listed twice is kept once and the repeat is a failed row ("listed twice").

Layout facts come from each dataset's README and public loaders; the readers check the
headers they rely on and name the file and the columns when they do not match.
"""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import soundfile as sf
from tqdm import tqdm

from sslam.config import SPASS_ENVIRONMENTS, DatasetConfig, FeaturesConfig
from sslam.data.folder import FolderItem, clip_path, convert_file, one_line
from sslam.data.manifest import ManifestRow, write_failures, write_manifest
from sslam.features.dataset import FeatureStore
from sslam.features.stats import valid_frame_stats
from sslam.features.store import build_features
from sslam.io import write_json_atomic, write_text_atomic
from sslam.provenance import HashCache, hash_cache_at

FORMATS = ("esc50", "speech_commands", "speech_commands_12", "hear", "strong_tsv", "urban_sed", "fsd50k", "spass")


class DatasetLayoutError(ValueError):
    """The dataset folder does not have the published layout (a missing metadata file, a wrong header)."""


@dataclass(frozen=True)
class Listing:
    kind: str  # single_label | multi_label
    protocol: str  # cross_validation | train_valid_test | train_eval
    splits: tuple[str, ...]  # folds (cross_validation) or the split names, in order
    classes: tuple[str, ...]
    items: tuple[FolderItem, ...]


def _clip_id(rel: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", str(Path(rel).with_suffix("")).replace("/", "__")).strip("._-") or "clip"


def _items(rows: Iterable[tuple[str, str, tuple[str, ...]]]) -> tuple[FolderItem, ...]:
    """(relative path, split, labels) -> items; a path listed again becomes a failed 'listed twice' row."""
    seen: dict[str, int] = {}
    out = []
    for rel, split, labels in rows:
        cid = _clip_id(rel)
        seen[cid] = seen.get(cid, 0) + 1
        if seen[cid] == 1:
            out.append(FolderItem(cid, split, rel, labels, ""))
        else:
            out.append(FolderItem(f"{cid}__{seen[cid]}", split, rel, labels, f"listed twice: {rel} (kept once)"))
    return tuple(out)


def _read_csv(path: Path, need: tuple[str, ...], delimiter: str = ",") -> list[dict[str, str]]:
    if not path.is_file():
        raise DatasetLayoutError(f"{path}: missing (expected the dataset's published metadata file)")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter=delimiter)
        header = reader.fieldnames or []
        missing = [c for c in need if c not in header]
        if missing:
            raise DatasetLayoutError(f"{path}: missing column(s) {missing}; header is {header}")
        return list(reader)


# ----------------------------------------------------------------------------- ESC-50


def list_esc50(root: str | Path) -> Listing:
    """``ESC-50-master/``: ``meta/esc50.csv`` (filename, fold, target, category, ...) and ``audio/``;
    5-fold cross-validation on the official folds, single label (the category)."""
    root = Path(root)
    rows = _read_csv(root / "meta" / "esc50.csv", ("filename", "fold", "category"))
    folds = sorted({int(r["fold"]) for r in rows})
    return Listing(
        "single_label",
        "cross_validation",
        tuple(f"fold{k}" for k in folds),
        tuple(sorted({r["category"] for r in rows})),
        _items((f"audio/{r['filename']}", f"fold{int(r['fold'])}", (r["category"],)) for r in rows),
    )


# ----------------------------------------------------------------------------- Speech Commands (KS2)


def list_speech_commands(root: str | Path) -> Listing:
    """The unpacked Speech Commands v0.02 archive: word folders, ``validation_list.txt`` and
    ``testing_list.txt`` (relative paths, no header); KS2: all 35 words, train = every clip in neither
    list, ``_background_noise_`` excluded; test accuracy, model selected on valid."""
    root = Path(root)
    lists = {}
    for split, name in (("valid", "validation_list.txt"), ("test", "testing_list.txt")):
        path = root / name
        if not path.is_file():
            raise DatasetLayoutError(f"{path}: missing (the archive ships validation_list.txt and testing_list.txt)")
        lists[split] = [ln.strip() for ln in path.read_text().splitlines() if ln.strip()]
    words = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("_"))
    if not words:
        raise DatasetLayoutError(f"{root}: no word folders")
    listed = {rel for rels in lists.values() for rel in rels}
    train = sorted(
        f"{w}/{f.name}"
        for w in words
        for f in (root / w).iterdir()
        if f.suffix == ".wav" and f"{w}/{f.name}" not in listed
    )
    rows = [(rel, "train", (rel.split("/")[0],)) for rel in train]
    for split in ("valid", "test"):
        rows += [(rel, split, (rel.split("/")[0],)) for rel in lists[split]]
    return Listing("single_label", "train_valid_test", ("train", "valid", "test"), tuple(words), _items(rows))


KS1_WORDS = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes")
UNKNOWN, SILENCE, BACKGROUND = "_unknown_", "_silence_", "_background_noise_"


def silence_split(name: str, valid_percent: int = 10) -> str:
    """train or valid for a silence window, decided by a hash of its name as the archive's own README
    assigns speakers to lists (stable when files are added); ``valid_percent`` of the windows validate."""
    return "valid" if int(hashlib.sha1(name.encode()).hexdigest(), 16) % 100 < valid_percent else "train"


KS1_TRAIN, KS1_TEST = "speech_commands_v0.02", "speech_commands_test_set_v0.02"


def list_speech_commands_12(root: str | Path, window_seconds: float = 1.0) -> Listing:
    """KS1, 12 classes, as TFDS / HEAR build it from v0.02: the 10 command words, every other word as
    ``_unknown_``, and ``_silence_`` cut from ``_background_noise_/*.wav`` in consecutive 1 s windows
    (train or valid by :func:`silence_split`); train / valid from the archive's lists as KS2; test is the
    separate v0.02 test-set archive (12 folders, ``_silence_`` and ``_unknown_`` included). ``root`` holds
    both archives unpacked, as their names: ``speech_commands_v0.02/`` and
    ``speech_commands_test_set_v0.02/`` (one folder, so DVC tracks both)."""
    root = Path(root)
    train_root, test_root = root / KS1_TRAIN, root / KS1_TEST
    for path, what in ((train_root, "the v0.02 archive"), (test_root, "the v0.02 test-set archive")):
        if not path.is_dir():
            raise DatasetLayoutError(f"{path}: missing (speech_commands_12: root holds {what} unpacked here)")
    ks2 = list_speech_commands(train_root)
    classes = (*KS1_WORDS, UNKNOWN, SILENCE)
    folders = sorted(p.name for p in test_root.iterdir() if p.is_dir())
    strange = [f for f in folders if f not in classes]
    if strange or not folders:
        raise DatasetLayoutError(f"{test_root}: test folders {strange or folders} are not the 12 KS1 classes {list(classes)}")
    items = [
        replace(i, source=f"{KS1_TRAIN}/{i.source}", labels=(i.labels[0] if i.labels[0] in KS1_WORDS else UNKNOWN,))
        for i in ks2.items
        if i.split != "test"
    ]
    noise = train_root / BACKGROUND
    for path in sorted(noise.glob("*.wav")) if noise.is_dir() else []:
        try:
            seconds = sf.info(str(path)).duration
        except RuntimeError as err:
            rel = f"{KS1_TRAIN}/{BACKGROUND}/{path.name}"
            items.append(FolderItem(_clip_id(rel), "train", rel, (SILENCE,), f"decode error: {one_line(str(err))}"))
            continue
        for k in range(int(seconds // window_seconds)):
            cid = f"{_clip_id(f'{BACKGROUND}/{path.name}')}__w{k:03d}"
            items.append(
                FolderItem(
                    cid, silence_split(cid), f"{KS1_TRAIN}/{BACKGROUND}/{path.name}", (SILENCE,), "",
                    k * window_seconds, window_seconds,
                )
            )
    test = [
        FolderItem(_clip_id(f"{KS1_TEST}/{c}/{f.name}"), "test", f"{KS1_TEST}/{c}/{f.name}", (c,), "")
        for c in folders
        for f in sorted((test_root / c).glob("*.wav"))
    ]
    return Listing("single_label", "train_valid_test", ("train", "valid", "test"), classes, (*items, *test))


# ----------------------------------------------------------------------------- HEAR


def list_hear(root: str | Path) -> Listing:
    """A HEAR task folder: ``task_metadata.json`` (prediction_type, split_mode, splits or nfolds, sample
    rates), ``labelvocabulary.csv`` (idx, label), ``{split}.json`` ({file: [labels]} for scene tasks) and
    the audio in ``<sample_rate>/<split>/``. Scene tasks only (event tasks need timestamps)."""
    root = Path(root)
    meta_file = root / "task_metadata.json"
    if not meta_file.is_file():
        raise DatasetLayoutError(f"{meta_file}: missing (a HEAR task folder has task_metadata.json)")
    meta = json.loads(meta_file.read_text())
    if meta.get("embedding_type", "scene") != "scene":
        raise DatasetLayoutError(f"{meta_file}: embedding_type {meta.get('embedding_type')!r}; only scene tasks")
    vocab = [r["label"] for r in _read_csv(root / "labelvocabulary.csv", ("idx", "label"))]
    mode = meta.get("split_mode", "trainvaltest")
    if mode == "trainvaltest":
        splits, protocol = ("train", "valid", "test"), "train_valid_test"
    elif mode in ("presplit_kfold", "new_split_kfold"):
        splits, protocol = tuple(f"fold{k:02d}" for k in range(int(meta["nfolds"]))), "cross_validation"
    else:
        raise DatasetLayoutError(f"{meta_file}: unknown split_mode {mode!r}")
    rates = sorted(int(p.name) for p in root.iterdir() if p.is_dir() and p.name.isdigit())
    if not rates:
        raise DatasetLayoutError(f"{root}: no <sample_rate>/ audio folder")
    rate = 16000 if 16000 in rates else rates[-1]
    rows = []
    for split in splits:
        path = root / f"{split}.json"
        if not path.is_file():
            raise DatasetLayoutError(f"{path}: missing (split_mode {mode} lists this split)")
        for name, labels in sorted(json.loads(path.read_text()).items()):
            rows.append((f"{rate}/{split}/{name}", split, tuple(str(x) for x in labels)))
    kind = "multi_label" if meta.get("prediction_type") == "multilabel" else "single_label"
    return Listing(kind, protocol, splits, tuple(vocab), _items(rows))


# ----------------------------------------------------------------------------- strong-label TSVs


def _events(path: Path, name_col: str, label_col: str, delimiter: str = "\t") -> dict[str, set[str]]:
    """An event table with a header, one row per event -> {file: its event labels}; a row without a
    label still counts the file."""
    labels: dict[str, set[str]] = {}
    for r in _read_csv(path, (name_col, label_col), delimiter=delimiter):
        labels.setdefault(r[name_col], set())
        if r[label_col]:
            labels[r[name_col]].add(r[label_col])
    return labels


def list_strong_tsv(root: str | Path, splits: dict[str, tuple[str, str]] | None = None) -> Listing:
    """DESED-style folders: per split a strong TSV (``filename onset offset event_label``, header, tabs)
    and an audio folder; clip labels = the set of its events. Default splits: ``train`` from
    ``metadata/train.tsv`` + ``audio/train``, ``eval`` from ``metadata/eval.tsv`` + ``audio/eval``."""
    root = Path(root)
    splits = splits or {s: (f"metadata/{s}.tsv", f"audio/{s}") for s in ("train", "eval")}
    rows, classes = [], set()
    for split, (tsv, audio) in splits.items():
        for name, labels in sorted(_events(root / tsv, "filename", "event_label").items()):
            rows.append((f"{audio}/{name}", split, tuple(sorted(labels))))
            classes |= labels
    return Listing("multi_label", "train_eval", tuple(splits), tuple(sorted(classes)), _items(rows))


def list_urban_sed(root: str | Path) -> Listing:
    """``URBAN-SED_v2.0.0/``: ``audio/{train,validate,test}/*.wav`` and ``annotations/<split>/*.txt``
    (tab-separated ``start end label``, no header). Clip labels from the events; train = train,
    validate folded into train, eval = test (keep clips with more than one label via ``min_labels``)."""
    root = Path(root)
    rows, classes = [], set()
    for split, out in (("train", "train"), ("validate", "train"), ("test", "eval")):
        ann_dir = root / "annotations" / split
        if not ann_dir.is_dir():
            raise DatasetLayoutError(f"{ann_dir}: missing (URBAN-SED ships annotations/{{train,validate,test}})")
        for ann in sorted(ann_dir.glob("*.txt")):
            labels = set()
            for ln in ann.read_text().splitlines():
                parts = ln.split("\t")
                if len(parts) >= 3 and parts[2].strip():
                    labels.add(parts[2].strip())
            rows.append((f"audio/{split}/{ann.stem}.wav", out, tuple(sorted(labels))))
            classes |= labels
    return Listing("multi_label", "train_eval", ("train", "eval"), tuple(sorted(classes)), _items(rows))


def list_fsd50k(root: str | Path) -> Listing:
    """``FSD50K.ground_truth/{dev,eval,vocabulary}.csv`` beside ``FSD50K.dev_audio/`` and
    ``FSD50K.eval_audio/``: dev's ``split`` column gives train / valid, eval.csv the test set; labels are
    the comma-joined ``labels`` (vocabulary names); mAP on eval."""
    root = Path(root)
    gt = root / "FSD50K.ground_truth"
    vocab_file = gt / "vocabulary.csv"
    if not vocab_file.is_file():
        raise DatasetLayoutError(f"{vocab_file}: missing")
    with open(vocab_file, newline="", encoding="utf-8") as f:
        vocab = [r[1] for r in csv.reader(f) if len(r) >= 2]
    rows = []
    for r in _read_csv(gt / "dev.csv", ("fname", "labels", "split")):
        split = {"train": "train", "val": "valid"}.get(r["split"])
        if split is None:
            raise DatasetLayoutError(f"{gt / 'dev.csv'}: split {r['split']!r} for {r['fname']} (expected train or val)")
        rows.append((f"FSD50K.dev_audio/{r['fname']}.wav", split, tuple(r["labels"].split(","))))
    for r in _read_csv(gt / "eval.csv", ("fname", "labels")):
        rows.append((f"FSD50K.eval_audio/{r['fname']}.wav", "test", tuple(r["labels"].split(","))))
    return Listing("multi_label", "train_valid_test", ("train", "valid", "test"), tuple(vocab), _items(rows))


def list_spass(root: str | Path, environment: str) -> Listing:
    """SPASS: one folder per environment (``<Env>/<env>NNNNN.wav``) and
    ``SPASS_META_DATA/<k>_MatrixLabels<Env>.csv`` (``audio_filename``, ``class``: one row per event).
    Clip labels = the set of its event classes; the reference's split: the sorted unique files, the first
    75% train, the last 25% eval."""
    if environment not in SPASS_ENVIRONMENTS:
        raise DatasetLayoutError(f"SPASS environment must be one of {SPASS_ENVIRONMENTS}, got {environment!r}")
    root = Path(root)
    k = SPASS_ENVIRONMENTS.index(environment) + 1
    meta = root / "SPASS_META_DATA" / f"{k}_MatrixLabels{environment}.csv"
    labels = _events(meta, "audio_filename", "class", delimiter=",")
    files = sorted(labels)
    cut = int(0.75 * len(files))
    rows = [
        (f"{environment}/{name}", "train" if i < cut else "eval", tuple(sorted(labels[name])))
        for i, name in enumerate(files)
    ]
    classes = sorted({lab for v in labels.values() for lab in v})
    return Listing("multi_label", "train_eval", ("train", "eval"), tuple(classes), _items(rows))


# ----------------------------------------------------------------------------- the dataset@<name> stage


def read_listing(cfg: DatasetConfig) -> Listing:
    """The reader ``cfg.format`` names, on ``cfg.root``."""
    root = Path(cfg.root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root}: not a folder (datasets root, format {cfg.format})")
    if cfg.format == "spass":
        return list_spass(root, cfg.environment)
    readers = {
        "esc50": list_esc50,
        "speech_commands": list_speech_commands,
        "speech_commands_12": list_speech_commands_12,
        "hear": list_hear,
        "strong_tsv": list_strong_tsv,
        "urban_sed": list_urban_sed,
        "fsd50k": list_fsd50k,
    }
    return readers[cfg.format](root)


JOURNAL = "conversions.jsonl"  # one line per converted clip: what made it (digest) and its manifest row


def _convert_or_reuse(args: tuple) -> tuple[ManifestRow, str]:
    """A clip converted earlier is reused only when the stage's code and params and its source file's content
    are what made it (``digest``), so a killed stage resumes and a changed source is converted again.
    Returns the row and the digest."""
    item, root, out_dir, sample_rate, max_seconds, silence_dbfs, frame_length_ms, inputs, cache_path, previous = args
    try:
        content = hash_cache_at(cache_path).file(root / item.source) if not item.problem else "problem"
    except OSError:
        content = "missing"
    digest = hashlib.sha256(f"{inputs}\x00{item}\x00{content}".encode()).hexdigest()[:16]
    if previous is not None and previous["digest"] == digest:
        row = ManifestRow(**{**previous["row"], "labels": tuple(previous["row"]["labels"])})
        if row.status != "ok" or (out_dir / row.path).is_file():
            return row, digest
    return convert_file(item, root, out_dir, sample_rate, max_seconds, silence_dbfs, frame_length_ms).row, digest


def _read_journal(path: Path) -> dict[str, dict]:
    """clip id -> its last record; a line cut short by a kill is skipped (that clip is converted again)."""
    records: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rec = json.loads(line)
                records[rec["row"]["clip_id"]] = rec
            except (json.JSONDecodeError, KeyError, TypeError):
                continue
    return records


TRAINING_SPLITS = {"train_eval": ("train",), "train_valid_test": ("train",)}  # cross_validation: every fold


def build_dataset(
    name: str,
    cfg: DatasetConfig,
    features: FeaturesConfig,
    sample_rate: int,
    out_dir: str | Path,
    workers: int = 1,
    inputs: str = "",
    hash_cache: HashCache | None = None,
) -> dict:
    """List, convert (mono FLAC at ``sample_rate``) and cache one dataset as a one-task corpus in ``out_dir``:
    ``tasks/<name>/{manifest.csv, task.json}``, ``failures.csv`` (every listed clip that could not be used,
    with the reason) and ``features/`` (the sharded store at the dataset's ``target_frames``; statistics
    pinned, or over the training clips' valid frames). Returns the summary for metrics. ``inputs``: the
    stage's code and params digest; converted clips and shards made from other inputs are made again."""
    out_dir = Path(out_dir)
    listing = read_listing(cfg)
    if not listing.items:
        raise DatasetLayoutError(f"{cfg.root}: the {cfg.format} listing has no clips")
    for key in ("kind", "protocol"):
        want = getattr(cfg, key)
        if want is not None and want != getattr(listing, key):
            raise DatasetLayoutError(
                f"datasets.{name}.{key} is {want!r} but the {cfg.format} layout at {cfg.root} is {getattr(listing, key)!r}"
            )
    task_dir = out_dir / "tasks" / name
    task_dir.mkdir(parents=True, exist_ok=True)
    journal = task_dir / JOURNAL
    previous = _read_journal(journal)
    cache_path = str(hash_cache.path) if hash_cache is not None and hash_cache.path is not None else None
    window = features.frame_length_ms  # a clip shorter than one analysis window is a failure row
    common = (Path(cfg.root), task_dir, sample_rate, cfg.max_seconds, cfg.silence_dbfs, window, inputs, cache_path)
    jobs = [(i, *common, previous.get(i.clip_id)) for i in listing.items]
    bar = dict(total=len(jobs), desc=f"dataset {name}", unit="clip", mininterval=1.0)
    rows: list[ManifestRow] = []
    records: list[dict] = []
    with open(journal, "a", buffering=1) as log:  # appended as clips finish: a killed stage resumes from it
        pool = get_context("fork").Pool(workers) if workers > 1 and len(jobs) > 1 else None
        results = pool.imap(_convert_or_reuse, jobs, chunksize=8) if pool is not None else map(_convert_or_reuse, jobs)
        try:
            for row, digest in tqdm(results, **bar):
                rows.append(row)
                records.append({"digest": digest, "row": asdict(row)})
                log.write(json.dumps(records[-1]) + "\n")
        finally:
            if pool is not None:
                pool.close()
                pool.join()
    kept = {r.path for r in rows if r.status == "ok"}
    for f in (task_dir / "audio").rglob("*.flac"):  # clips no longer listed, or whose source is gone
        if str(f.relative_to(task_dir)) not in kept:
            f.unlink()
    write_text_atomic(journal, "".join(json.dumps(r) + "\n" for r in records))  # this listing's clips only
    rows = [replace(r, path=f"tasks/{name}/{r.path}") if r.status == "ok" else r for r in rows]
    write_manifest(task_dir / "manifest.csv", rows)
    failed = [
        (r.clip_id, str(Path(cfg.root) / i.source), r.reason, 1)
        for r, i in zip(rows, listing.items)
        if r.status != "ok"
    ]
    write_failures(out_dir / "failures.csv", failed)
    if listing.kind == "multi_label":  # the labels per clip: the report's breakdown by degree of polyphony
        events = [(r.clip_id, lab) for r in rows if r.status == "ok" for lab in sorted(set(r.labels))]
        write_text_atomic(
            task_dir / "strong.tsv", "segment_id\tlabel\n" + "".join(f"{c}\t{lab}\n" for c, lab in events)
        )
    write_json_atomic(
        task_dir / "task.json",
        {
            "name": name,
            "kind": listing.kind,
            "protocol": listing.protocol,
            "splits": list(listing.splits),
            "classes": list(listing.classes),
            "class_names": list(listing.classes),
            "source": {"format": cfg.format, "root": str(cfg.root)},
        },
    )
    summary = build_features(
        out_dir, out_dir / "features", features, sample_rate, workers=workers, inputs=inputs, hash_cache=hash_cache
    )
    if cfg.norm_mean is None:  # statistics of the training clips only (all folds under cross-validation)
        store = FeatureStore(out_dir / "features", f"tasks/{name}")
        train = TRAINING_SPLITS.get(listing.protocol)
        picked = [i for i, s in enumerate(store.index["split"]) if train is None or s in train]
        if not picked:
            raise DatasetLayoutError(f"{cfg.root}: no decodable training clips to compute statistics from")
        st = valid_frame_stats((store.raw(i), store.frames(i)) for i in picked)
        summary["stats"] = {"mean": round(st.mean, 6), "std": round(max(st.std, 1e-6), 6), "source": "training clips"}
        write_json_atomic(out_dir / "features" / "stats.json", summary["stats"])
    reasons = Counter(r.reason.split(":")[0] for r in rows if r.status != "ok")
    per_split = {s: sum(1 for r in rows if r.split == s and r.status == "ok") for s in listing.splits}
    return {
        "format": cfg.format,
        "listed": len(rows),
        "clips": per_split,
        "failed": dict(reasons),
        "classes": len(listing.classes),
        "stats": summary["stats"],
    }
