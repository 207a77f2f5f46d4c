"""Readers of real datasets in their published layouts, on small fixtures written here in those layouts
(file names, headers, list files, separators), bad and missing files included; labels, splits and folds
checked against values worked out by hand."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import REPO
from dataset_layouts import BUILDERS

from sslam.config.base import merged
from sslam.config.downstream import TaskConfig
from sslam.config.params import Config, load_config
from sslam.data.folder import convert_file
from sslam.data.layouts import DatasetLayoutError
from sslam.data.layouts.esc50 import list_esc50
from sslam.data.layouts.fsd50k import list_fsd50k
from sslam.data.layouts.hear import list_hear
from sslam.data.layouts.spass import list_spass
from sslam.data.layouts.speech_commands import list_speech_commands
from sslam.data.layouts.strong_tsv import list_strong_tsv
from sslam.data.layouts.urban_sed import list_urban_sed
from sslam.data.manifest import read_manifest
from sslam.downstream.tasks import task_event_counts, task_features
from sslam.features.reader import FeatureStore


def _stage():
    """``stages/dataset.py`` as a module: the stage's own ``build_dataset`` (convert, then cache)."""
    spec = importlib.util.spec_from_file_location("dataset_stage", REPO / "stages" / "dataset.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_dataset = _stage().build_dataset


def with_datasets(datasets: dict) -> Config:
    """The repository's params.yaml with these ``datasets`` entries, validated."""
    return merged(load_config(REPO / "params.yaml"), {"datasets": datasets})


def wav(path: Path, seconds: float = 0.5, rate: int = 44100, silent: bool = False, channels: int = 1) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * rate)
    x = (
        np.zeros((n, channels))
        if silent
        else 0.1 * np.random.default_rng(len(str(path))).standard_normal((n, channels))
    )
    sf.write(path, x, rate)


def by_id(listing):
    return {i.clip_id: i for i in listing.items}


def test_esc50_folds_labels_and_bad_rows(tmp_path):
    root = tmp_path / "ESC-50-master"
    meta = root / "meta" / "esc50.csv"
    meta.parent.mkdir(parents=True)
    meta.write_text(
        "filename,fold,target,category,esc10,src_file,take\n"
        "1-100032-A-0.wav,1,0,dog,True,100032,A\n"
        "1-110389-A-0.wav,1,0,dog,True,110389,A\n"
        "2-102414-A-17.wav,2,17,pouring_water,False,102414,A\n"
        "5-9032-A-0.wav,5,0,dog,True,9032,A\n"
        "5-9032-A-0.wav,5,0,dog,True,9032,A\n"  # listed twice
        "3-1234-A-1.wav,3,1,rooster,False,1234,A\n"  # listed, absent from disk
    )
    for name in ("1-100032-A-0.wav", "1-110389-A-0.wav", "2-102414-A-17.wav", "5-9032-A-0.wav"):
        wav(root / "audio" / name)
    got = list_esc50(root)
    assert got.kind == "single_label" and got.protocol == "cross_validation"
    assert got.splits == ("fold1", "fold2", "fold3", "fold5") and got.classes == ("dog", "pouring_water", "rooster")
    items = by_id(got)
    assert items["audio__2-102414-A-17"].split == "fold2" and items["audio__2-102414-A-17"].labels == ("pouring_water",)
    assert items["audio__5-9032-A-0__2"].problem.startswith("listed twice")
    # the folder source's checks turn the absent file and the repeat into failed rows with reasons
    out = {i.clip_id: convert_file(i, root, tmp_path / "out", 16000, 30.0, -70.0).row for i in got.items}
    assert out["audio__3-1234-A-1"].status == "failed" and out["audio__3-1234-A-1"].reason.startswith("missing")
    assert out["audio__5-9032-A-0__2"].status == "failed"
    ok = out["audio__1-100032-A-0"]
    assert ok.status == "ok" and ok.sample_rate == 16000 and ok.duration == pytest.approx(0.5, abs=1e-3)
    with pytest.raises(DatasetLayoutError, match="esc50.csv: missing"):
        list_esc50(tmp_path / "nowhere")


def test_speech_commands_ks2_splits_from_the_lists(tmp_path):
    root = tmp_path / "speech_commands_v0.02"
    for rel in (
        "yes/a1_nohash_0.wav",
        "yes/b2_nohash_0.wav",
        "yes/c3_nohash_0.wav",
        "no/a1_nohash_0.wav",
        "no/d4_nohash_1.wav",
        "_background_noise_/white_noise.wav",
    ):
        wav(root / rel, 1.0, 16000)
    (root / "validation_list.txt").write_text("yes/b2_nohash_0.wav\n")
    (root / "testing_list.txt").write_text("no/d4_nohash_1.wav\nyes/c3_nohash_0.wav\nno/gone_nohash_0.wav\n")
    got = list_speech_commands(root)
    assert got.classes == ("no", "yes") and got.protocol == "train_valid_test"
    split = {i.source: i.split for i in got.items}
    assert split == {
        "yes/a1_nohash_0.wav": "train",
        "no/a1_nohash_0.wav": "train",
        "yes/b2_nohash_0.wav": "valid",
        "no/d4_nohash_1.wav": "test",
        "yes/c3_nohash_0.wav": "test",
        "no/gone_nohash_0.wav": "test",  # listed but absent: reported by the conversion, not dropped
    }
    assert all(i.labels == (i.source.split("/")[0],) for i in got.items)
    (root / "testing_list.txt").unlink()
    with pytest.raises(DatasetLayoutError, match="testing_list.txt: missing"):
        list_speech_commands(root)


def test_hear_scene_task_trainvaltest_and_folds(tmp_path):
    root = tmp_path / "hear_task"
    (root / "48000" / "train").mkdir(parents=True)
    (root / "16000" / "train").mkdir(parents=True)
    (root / "task_metadata.json").write_text(
        json.dumps(
            {
                "task_name": "t",
                "embedding_type": "scene",
                "prediction_type": "multilabel",
                "split_mode": "trainvaltest",
                "evaluation": ["mAP"],
            }
        )
    )
    (root / "labelvocabulary.csv").write_text("idx,label\n0,cat\n1,dog\n")
    for split, files in {
        "train": {"a.wav": ["cat"], "b.wav": ["cat", "dog"]},
        "valid": {"c.wav": ["dog"]},
        "test": {"d.wav": []},
    }.items():
        (root / f"{split}.json").write_text(json.dumps(files))
    got = list_hear(root)
    assert got.kind == "multi_label" and got.splits == ("train", "valid", "test") and got.classes == ("cat", "dog")
    assert {i.source: (i.split, i.labels) for i in got.items}["16000/train/b.wav"] == ("train", ("cat", "dog"))
    meta = json.loads((root / "task_metadata.json").read_text()) | {
        "split_mode": "new_split_kfold",
        "nfolds": 2,
        "prediction_type": "multiclass",
    }
    (root / "task_metadata.json").write_text(json.dumps(meta))
    for k in range(2):
        (root / f"fold{k:02d}.json").write_text(json.dumps({f"f{k}.wav": ["cat"]}))
    folds = list_hear(root)
    assert (
        folds.protocol == "cross_validation" and folds.splits == ("fold00", "fold01") and folds.kind == "single_label"
    )


def test_strong_tsv_urban_sed_fsd50k_spass_labels_by_hand(tmp_path):
    desed = tmp_path / "desed"
    (desed / "metadata").mkdir(parents=True)
    (desed / "metadata" / "train.tsv").write_text(
        "filename\tonset\toffset\tevent_label\na.wav\t0.0\t1.0\tDog\na.wav\t2.0\t3.0\tCat\na.wav\t4.0\t5.0\tDog\n"
        "b.wav\t0.5\t1.0\tSpeech\n"
    )
    (desed / "metadata" / "eval.tsv").write_text("filename\tonset\toffset\tevent_label\nc.wav\t0\t1\tBlender\n")
    got = list_strong_tsv(desed)
    assert {i.source: (i.split, i.labels) for i in got.items} == {
        "audio/train/a.wav": ("train", ("Cat", "Dog")),
        "audio/train/b.wav": ("train", ("Speech",)),
        "audio/eval/c.wav": ("eval", ("Blender",)),
    }
    assert got.classes == ("Blender", "Cat", "Dog", "Speech")
    (desed / "metadata" / "eval.tsv").write_text("file\tonset\n")
    with pytest.raises(DatasetLayoutError, match=r"eval.tsv: missing column\(s\) \['filename', 'event_label'\]"):
        list_strong_tsv(desed)

    urban = tmp_path / "URBAN-SED_v2.0.0"
    for split in ("train", "validate", "test"):
        (urban / "annotations" / split).mkdir(parents=True)
    (urban / "annotations" / "train" / "soundscape_train_uniform0.txt").write_text(
        "0.1\t1.2\tdog_bark\n2.0\t3.0\tsiren\n"
    )
    (urban / "annotations" / "validate" / "soundscape_validate_bimodal1.txt").write_text("0\t1\tsiren\n")
    (urban / "annotations" / "test" / "soundscape_test_unimodal2.txt").write_text("0\t1\tjackhammer\n")
    u = {i.source: (i.split, i.labels) for i in list_urban_sed(urban).items}
    assert u == {
        "audio/train/soundscape_train_uniform0.wav": ("train", ("dog_bark", "siren")),
        "audio/validate/soundscape_validate_bimodal1.wav": ("train", ("siren",)),
        "audio/test/soundscape_test_unimodal2.wav": ("eval", ("jackhammer",)),
    }

    fsd = tmp_path / "fsd"
    (fsd / "FSD50K.ground_truth").mkdir(parents=True)
    (fsd / "FSD50K.ground_truth" / "vocabulary.csv").write_text("0,Bark,/m/05tny_\n1,Meow,/m/07qrkrw\n")
    (fsd / "FSD50K.ground_truth" / "dev.csv").write_text(
        'fname,labels,mids,split\n64760,"Bark,Meow","/m/05tny_,/m/07qrkrw",train\n16399,Meow,/m/07qrkrw,val\n'
    )
    (fsd / "FSD50K.ground_truth" / "eval.csv").write_text("fname,labels,mids\n37199,Bark,/m/05tny_\n")
    f = list_fsd50k(fsd)
    assert f.classes == ("Bark", "Meow")
    assert {i.source: (i.split, i.labels) for i in f.items} == {
        "FSD50K.dev_audio/64760.wav": ("train", ("Bark", "Meow")),
        "FSD50K.dev_audio/16399.wav": ("valid", ("Meow",)),
        "FSD50K.eval_audio/37199.wav": ("test", ("Bark",)),
    }

    spass = tmp_path / "SPASS"
    (spass / "SPASS_META_DATA").mkdir(parents=True)
    lines = ["audio_filename,class,start,end"] + [
        f"park{n:05d}.wav,{c},0,1" for n, c in [(1, "bird"), (1, "dog"), (2, "bird"), (3, "car"), (4, "bird")]
    ]
    (spass / "SPASS_META_DATA" / "2_MatrixLabelsPark.csv").write_text("\n".join(lines) + "\n")
    s = {i.source: (i.split, i.labels) for i in list_spass(spass, "Park").items}
    assert s == {  # 4 files sorted: the first int(0.75 * 4) = 3 train, the last eval
        "Park/park00001.wav": ("train", ("bird", "dog")),
        "Park/park00002.wav": ("train", ("bird",)),
        "Park/park00003.wav": ("train", ("car",)),
        "Park/park00004.wav": ("eval", ("bird",)),
    }


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_build_dataset_caches_the_clips_worked_out_by_hand(tmp_path, name):
    """The dataset stage's library call on each layout: the manifest holds exactly the good clips with
    their splits and labels, failures.csv exactly the bad ones with their reasons, task.json the
    layout's kind, protocol, splits and classes, the cache one row per good clip at target_frames."""
    exp = BUILDERS[name](tmp_path / "root")
    cfg = with_datasets({name: exp.params})
    out = tmp_path / "out"
    summary = build_dataset(name, cfg.datasets[name], task_features(cfg, name), 16000, out)
    man = read_manifest(out / "tasks" / name / "manifest.csv", only_ok=True)
    assert {r.clip_id: (r.split, tuple(r.labels)) for r in man.itertuples()} == exp.ok
    fails = pd.read_csv(out / "failures.csv", dtype=str)
    assert set(fails["clip_id"]) == set(exp.failed)
    for row in fails.itertuples():
        assert row.reason.startswith(exp.failed[row.clip_id]), (row.clip_id, row.reason)
    task = json.loads((out / "tasks" / name / "task.json").read_text())
    assert (task["kind"], task["protocol"]) == (exp.kind, exp.protocol)
    assert tuple(task["splits"]) == exp.splits and tuple(task["classes"]) == exp.classes
    assert summary["clips"] == exp.clips_per_split() and summary["listed"] == len(exp.ok) + len(exp.failed)
    store = FeatureStore(out / "features", f"tasks/{name}")
    assert len(store) == len(exp.ok) and store.raw(0).shape == (exp.params["target_frames"], 128)
    if "norm_mean" in exp.params:  # pinned statistics reach the store untouched
        assert (store.mean, store.std) == (exp.params["norm_mean"], exp.params["norm_std"])
    else:  # computed over the training clips only (every fold under cross-validation), as a float64 sum
        train = exp.splits if exp.protocol == "cross_validation" else ("train",)
        vals = np.concatenate(
            [
                store.raw(i)[: store.frames(i)].astype(np.float64).ravel()
                for i in range(len(store))
                if store.index["split"][i] in train
            ]
        )
        assert store.mean == pytest.approx(vals.mean(), abs=1e-4) and store.std == pytest.approx(vals.std(), rel=1e-4)
    if exp.kind == "multi_label":  # the labels per clip, for the breakdown by degree of polyphony
        strong = pd.read_csv(out / "tasks" / name / "strong.tsv", sep="\t", dtype=str)
        assert strong.groupby("segment_id")["label"].nunique().to_dict() == {
            c: len(set(v[1])) for c, v in exp.ok.items()
        }


def test_dataset_params_are_checked_before_any_work(tmp_path):
    exp = BUILDERS["esc50"](tmp_path / "root")
    with pytest.raises(ValueError, match=r"format spass needs environment, one of \['Market', 'Park'"):
        with_datasets({"p": {"format": "spass", "root": "x"}})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['environment'\].*format esc50 adds none"):
        with_datasets({"e": exp.params | {"environment": "Park"}})
    with pytest.raises(ValueError, match=r"format 'esc_50' is not a registered layout; registered: \['esc50', "):
        with_datasets({"e": exp.params | {"format": "esc_50"}})
    with pytest.raises(ValueError, match="name both a task and a dataset"):
        with_datasets({"mono": exp.params})
    with pytest.raises(ValueError, match="protocol 'train_eval' does not fit format esc50"):
        with_datasets({"e": exp.params | {"protocol": "train_eval"}})
    spass = with_datasets({"p": {"format": "spass", "root": "x", "environment": "Park"}}).datasets["p"]
    assert spass.options.environment == "Park" and spass.model_dump()["environment"] == "Park"
    assert merged(spass, {"target_frames": 64}).options == spass.options  # the format's keys survive a merge
    # a layout whose kind and protocol come from the data (HEAR) is checked on the listing, before converting
    hear = BUILDERS["hear_fixture"](tmp_path / "hear")
    wrong = with_datasets({"h": hear.params | {"protocol": "cross_validation"}})
    with pytest.raises(DatasetLayoutError, match="datasets.h.protocol is 'cross_validation' but the hear layout"):
        build_dataset("h", wrong.datasets["h"], task_features(wrong, "h"), 16000, tmp_path / "out")
    assert not (tmp_path / "out").exists()  # refused before converting anything


def test_audioset_strong_labels_count_distinct_events_of_the_real_eval_file(tmp_path):
    """The released ``audioset_eval_strong.tsv`` layout: header, segment ids ``<YTID>_<start ms>`` whose
    YTID may itself hold ``_``; a label repeated in a clip counts once (the degree of polyphony)."""
    tsv = tmp_path / "audioset_eval_strong.tsv"
    tsv.write_text(
        "segment_id\tstart_time_seconds\tend_time_seconds\tlabel\n"
        "a_b-c_d_30000\t0.0\t1.0\t/m/09x0r\n"
        "a_b-c_d_30000\t2.0\t3.0\t/m/09x0r\n"
        "a_b-c_d_30000\t2.5\t4.0\t/m/05tny_\n"
        "XyZ123abcde_0\t0.0\t10.0\t/m/04rlf\n"
    )
    task = TaskConfig(data="audioset", strong_labels=str(tsv))
    assert task_event_counts(task, "as20k", tmp_path / "corpus") == {"a_b-c_d": 2, "XyZ123abcde": 1}
    with pytest.raises(ValueError, match="strong_labels is for data: audioset"):
        TaskConfig(strong_labels=str(tsv))


def test_the_dataset_stage_converts_again_what_changed_and_drops_what_is_gone(tmp_path):
    """`python stages/dataset.py` (the stage's command): a rerun reuses every converted clip; a source whose
    content changed is converted again (and its features follow), one that disappeared becomes a failure
    row and its converted clip is removed; a journal line cut short by a kill is ignored."""
    import subprocess
    import sys

    import yaml

    exp = BUILDERS["esc50"](tmp_path / "root")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["datasets"] = {"esc": exp.params}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))

    def stage() -> None:
        cmd = [sys.executable, str(REPO / "stages" / "dataset.py"), "--name", "esc", "--workers", "1"]
        proc = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]

    out = tmp_path / "data" / "datasets" / "esc"
    clips = lambda: {p.name: (p.stat().st_mtime_ns, p.read_bytes()) for p in (out / "tasks").rglob("*.flac")}  # noqa: E731
    stage()
    first = clips()
    assert len(first) == len(exp.ok)
    stage()
    assert clips() == first  # resumed: nothing converted again

    changed, gone = "1-110-A-0", "2-121-A-1"
    data, rate = sf.read(tmp_path / "root" / "audio" / f"{changed}.wav")
    sf.write(tmp_path / "root" / "audio" / f"{changed}.wav", -0.5 * data, rate)
    (tmp_path / "root" / "audio" / f"{gone}.wav").unlink()
    with open(out / "tasks" / "esc" / "conversions.jsonl", "a") as f:
        f.write('{"digest": "abc", "row": {"clip_id"')  # what a kill mid-line leaves
    stage()
    now = clips()
    assert set(first) - set(now) == {f"audio__{gone}.flac"}
    for name in now:
        assert (now[name] == first[name]) == (name != f"audio__{changed}.flac"), name
    import io

    new, _ = sf.read(next((out / "tasks").rglob(f"audio__{changed}.flac")))
    old, _ = sf.read(io.BytesIO(first[f"audio__{changed}.flac"][1]))
    np.testing.assert_allclose(new, -0.5 * old, atol=2 / 32768)  # the new source's audio, not the old one's
    man = read_manifest(out / "tasks" / "esc" / "manifest.csv")
    assert man.set_index("clip_id").loc[f"audio__{gone}", "reason"].startswith("missing")
    fails = pd.read_csv(out / "failures.csv", dtype=str)
    assert f"audio__{gone}" in set(fails["clip_id"])
    store = FeatureStore(out / "features", "tasks/esc")
    assert f"audio__{gone}" not in set(store.index["clip_id"])


def test_data_never_imports_features_and_the_layout_registry_stays_light():
    """``data`` sits below ``features`` (the dataset stage caches the features, not ``data``), and the
    registry the params check asks imports only the listing types: no circle through ``sslam.config``."""
    from sslam.provenance import SRC, import_closure, imported_modules

    data = SRC / "sslam" / "data"
    package = lambda f: ".".join(f.relative_to(SRC).parent.parts)  # noqa: E731
    upward = {
        str(f.relative_to(SRC)): sorted(m for m in imported_modules(f, package(f)) if m.startswith("sslam.features"))
        for f in data.rglob("*.py")
    }
    assert not {f: m for f, m in upward.items() if m}
    registry = data / "layouts" / "__init__.py"
    static = {m for m in imported_modules(registry, "sslam.data.layouts", discovered=False) if m != "sslam.data"}
    assert static == {"sslam.data.listing", "sslam.data.listing.DatasetLayoutError", "sslam.data.listing.Listing"}
    # what it finds at run time is code its users depend on (DVC reruns them when a layout changes)
    assert {data / "layouts" / "esc50.py", data / "listing.py"} <= import_closure(registry)
