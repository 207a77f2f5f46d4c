"""Small fixtures of the real datasets, each written in its publishers' exact layout (file names, headers,
list files, separators) with bad files among the good: listed but absent, listed twice, empty, silent,
unreadable. Each builder returns what a person works out by hand from the files it wrote: the clips
that must be cached (id -> split, labels), the failures (id -> reason prefix), the classes and splits.
The ids follow the documented rule: the path under the root without its suffix, ``/`` -> ``__``."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf


@dataclass
class Expected:
    params: dict  # the datasets.<name> entry a user writes (root filled in)
    kind: str
    protocol: str
    classes: tuple[str, ...]
    splits: tuple[str, ...]
    ok: dict[str, tuple[str, tuple[str, ...]]]  # clip id -> (split, labels)
    failed: dict[str, str]  # clip id -> reason prefix

    def clips_per_split(self) -> dict[str, int]:
        return {s: sum(1 for sp, _ in self.ok.values() if sp == s) for s in self.splits}


def wav(path: Path, seconds: float = 0.5, rate: int = 44100, silent: bool = False, channels: int = 1) -> None:
    """A noise clip (different per path), or digital silence."""
    path.parent.mkdir(parents=True, exist_ok=True)
    n = int(seconds * rate)
    seed = int(hashlib.md5(str(path.name).encode()).hexdigest()[:8], 16)
    x = np.zeros((n, channels)) if silent else 0.1 * np.random.default_rng(seed).standard_normal((n, channels))
    sf.write(path, x, rate)


def empty(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")


def garbage(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"RIFF\x00\x00\x00\x00not a wave file at all" * 4)


def esc50(root: Path) -> Expected:
    """``ESC-50-master``: 5 folds x {dog, rooster}; one row absent from disk, one listed twice, one silent."""
    rows, ok = [], {}
    for fold in range(1, 6):
        for target, cat in ((0, "dog"), (1, "rooster")):
            name = f"{fold}-{100 + 10 * fold + target}-A-{target}.wav"
            rows.append(f"{name},{fold},{target},{cat},{cat == 'dog'},{100 + fold},A")
            wav(root / "audio" / name, rate=44100, channels=2 if fold == 3 else 1)  # fold 3 stereo: downmixed
            ok[f"audio__{name[:-4]}"] = (f"fold{fold}", (cat,))
    rows.append("3-999-A-1.wav,3,1,rooster,False,999,A")  # listed, absent
    rows.append(rows[0])  # listed twice
    rows.append("4-777-B-0.wav,4,0,dog,True,777,B")
    wav(root / "audio" / "4-777-B-0.wav", silent=True)
    (root / "meta").mkdir(parents=True, exist_ok=True)
    (root / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n" + "\n".join(rows) + "\n"
    )
    failed = {"audio__3-999-A-1": "missing", "audio__1-110-A-0__2": "listed twice", "audio__4-777-B-0": "silent"}
    return Expected(
        {"format": "esc50", "root": str(root), "target_frames": 64, "norm_mean": -6.627, "norm_std": 5.359},
        "single_label",
        "cross_validation",
        ("dog", "rooster"),
        ("fold1", "fold2", "fold3", "fold4", "fold5"),
        ok,
        failed,
    )


SC_TRAIN = {"yes": ["a1", "b2"], "no": ["a1", "c3"], "cat": ["d4", "e5"], "dog": ["f6", "g7"]}
SC_VALID = {"yes": ["h8"], "no": ["h8"], "cat": ["i9"], "dog": ["j1"]}
SC_TEST = {"yes": ["k2"], "no": ["k2"], "cat": ["l3"], "dog": ["m4"]}


def _speech_commands_archive(root: Path) -> tuple[dict, dict]:
    """The v0.02 archive (no top folder): word folders, the two list files, ``_background_noise_``."""
    ok, failed = {}, {}
    for split, table in (("train", SC_TRAIN), ("valid", SC_VALID), ("test", SC_TEST)):
        for word, speakers in table.items():
            for spk in speakers:
                wav(root / word / f"{spk}_nohash_0.wav", 1.0, 16000)
                ok[f"{word}__{spk}_nohash_0"] = (split, (word,))
    (root / "validation_list.txt").write_text(
        "".join(f"{w}/{s}_nohash_0.wav\n" for w, ss in SC_VALID.items() for s in ss)
    )
    (root / "testing_list.txt").write_text(
        "".join(f"{w}/{s}_nohash_0.wav\n" for w, ss in SC_TEST.items() for s in ss) + "no/zz_nohash_0.wav\n"
    )
    failed["no__zz_nohash_0"] = "missing"  # in testing_list.txt, not on disk
    empty(root / "cat" / "n5_nohash_0.wav")  # in neither list: train, 0 bytes
    failed["cat__n5_nohash_0"] = "empty"
    wav(root / "_background_noise_" / "white_noise.wav", 2.5, 16000)
    return ok, failed


def speech_commands(root: Path) -> Expected:
    """KS2 on four words: train = the clips in neither list; the background noise is not a class."""
    ok, failed = _speech_commands_archive(root)
    return Expected(
        {"format": "speech_commands", "root": str(root), "target_frames": 32},
        "single_label",
        "train_valid_test",
        ("cat", "dog", "no", "yes"),
        ("train", "valid", "test"),
        ok,
        failed,
    )


def speech_commands_12(root: Path) -> Expected:
    """KS1: yes / no stay, cat / dog are ``_unknown_``; the 2.5 s noise gives two 1 s ``_silence_`` windows
    (split by a SHA-1 of the window's id, 10% valid); test from the separate test-set archive."""
    ok2, failed2 = _speech_commands_archive(root / "speech_commands_v0.02")
    ok = {
        cid: (split, (labels[0] if labels[0] in ("yes", "no") else "_unknown_",))
        for cid, (split, labels) in ok2.items()
        if split != "test"
    }
    for k in range(2):
        cid = f"background_noise___white_noise__w{k:03d}"  # leading punctuation is not part of an id
        valid = int(hashlib.sha1(cid.encode()).hexdigest(), 16) % 100 < 10
        ok[cid] = ("valid" if valid else "train", ("_silence_",))
    failed = {"cat__n5_nohash_0": "empty"}  # the absent clip was a KS2 test clip
    test = root / "speech_commands_test_set_v0.02"
    for folder, names in {"yes": ["t1"], "no": ["t2"], "_unknown_": ["t3"], "_silence_": ["t4"]}.items():
        for n in names:
            wav(test / folder / f"{n}.wav", 1.0, 16000)
            ok[f"speech_commands_test_set_v0.02__{folder}__{n}"] = ("test", (folder,))
    garbage(test / "no" / "t9.wav")
    failed["speech_commands_test_set_v0.02__no__t9"] = "decode error"
    classes = ("down", "go", "left", "no", "off", "on", "right", "stop", "up", "yes", "_unknown_", "_silence_")
    return Expected(
        {"format": "speech_commands_12", "root": str(root), "target_frames": 32},
        "single_label",
        "train_valid_test",
        classes,
        ("train", "valid", "test"),
        ok,
        failed,
    )


def hear(root: Path) -> Expected:
    """A HEAR scene task, multiclass, trainvaltest, audio at 16 kHz and 48 kHz (the 16 kHz copy is read)."""
    import json

    (root / "task_metadata.json").parent.mkdir(parents=True, exist_ok=True)
    (root / "task_metadata.json").write_text(
        json.dumps(
            {
                "task_name": "fixture",
                "embedding_type": "scene",
                "prediction_type": "multiclass",
                "split_mode": "trainvaltest",
                "sample_duration": 0.5,
                "evaluation": ["top1_acc"],
            }
        )
    )
    (root / "labelvocabulary.csv").write_text("idx,label\n0,cat\n1,dog\n")
    table = {
        "train": {"a.wav": ["cat"], "b.wav": ["dog"], "c.wav": ["cat"], "d.wav": ["dog"]},
        "valid": {"e.wav": ["cat"], "f.wav": ["dog"], "gone.wav": ["dog"]},
        "test": {"g.wav": ["cat"], "h.wav": ["dog"]},
    }
    ok = {}
    for split, files in table.items():
        (root / f"{split}.json").write_text(json.dumps(files))
        for name, labels in files.items():
            if name != "gone.wav":
                wav(root / "16000" / split / name, 0.5, 16000)
                wav(root / "48000" / split / name, 0.5, 48000)
                ok[f"16000__{split}__{name[:-4]}"] = (split, tuple(labels))
    return Expected(
        {"format": "hear", "root": str(root), "target_frames": 32},
        "single_label",
        "train_valid_test",
        ("cat", "dog"),
        ("train", "valid", "test"),
        ok,
        {"16000__valid__gone": "missing"},
    )


def strong_tsv(root: Path) -> Expected:
    """DESED style: ``metadata/{train,eval}.tsv`` (``filename onset offset event_label``) + ``audio/<split>``."""
    events = {
        "train": {"a.wav": ["Dog", "Cat", "Dog"], "b.wav": ["Speech"], "c.wav": ["Cat", "Speech"], "d.wav": ["Dog"]},
        "eval": {"e.wav": ["Dog", "Speech"], "f.wav": ["Cat"], "g.wav": ["Speech", "Cat", "Dog"], "z.wav": ["Dog"]},
    }
    ok = {}
    (root / "metadata").mkdir(parents=True, exist_ok=True)
    for split, clips in events.items():
        lines = ["filename\tonset\toffset\tevent_label"]
        for name, labs in clips.items():
            lines += [f"{name}\t{0.1 * k:.1f}\t{0.1 * k + 0.2:.1f}\t{lab}" for k, lab in enumerate(labs)]
            if name != "z.wav":
                wav(root / "audio" / split / name)
                ok[f"audio__{split}__{name[:-4]}"] = (split, tuple(sorted(set(labs))))
        (root / "metadata" / f"{split}.tsv").write_text("\n".join(lines) + "\n")
    return Expected(
        {"format": "strong_tsv", "root": str(root), "target_frames": 64},
        "multi_label",
        "train_eval",
        ("Cat", "Dog", "Speech"),
        ("train", "eval"),
        ok,
        {"audio__eval__z": "missing"},
    )


def urban_sed(root: Path) -> Expected:
    """``URBAN-SED_v2.0.0``: ``annotations/<split>/*.txt`` (``start end label``, tabs, no header) beside
    ``audio/<split>/*.wav``; validate is folded into train, test is eval."""
    table = {
        "train": {
            "soundscape_train_uniform0": ["dog_bark", "siren"],
            "soundscape_train_bimodal1": ["siren", "drilling"],
        },
        "validate": {"soundscape_validate_uniform2": ["dog_bark", "drilling"]},
        "test": {
            "soundscape_test_uniform3": ["siren", "dog_bark"],
            "soundscape_test_bimodal4": ["drilling", "siren", "dog_bark"],
            "soundscape_test_unimodal5": ["siren"],
            "soundscape_test_unimodal6": ["dog_bark", "siren"],
        },
    }
    ok = {}
    for split, clips in table.items():
        (root / "annotations" / split).mkdir(parents=True, exist_ok=True)
        for stem, labs in clips.items():
            (root / "annotations" / split / f"{stem}.txt").write_text(
                "".join(f"{0.5 * k:.3f}\t{0.5 * k + 1:.3f}\t{lab}\n" for k, lab in enumerate(labs))
            )
            if stem != "soundscape_test_unimodal6":  # annotated, audio absent
                wav(root / "audio" / split / f"{stem}.wav")
                ok[f"audio__{split}__{stem}"] = ("eval" if split == "test" else "train", tuple(sorted(labs)))
    return Expected(
        {"format": "urban_sed", "root": str(root), "target_frames": 64, "min_labels": 2},
        "multi_label",
        "train_eval",
        ("dog_bark", "drilling", "siren"),
        ("train", "eval"),
        ok,
        {"audio__test__soundscape_test_unimodal6": "missing"},
    )


def fsd50k(root: Path) -> Expected:
    """``FSD50K.ground_truth/{vocabulary,dev,eval}.csv`` (vocabulary without a header) and the audio folders."""
    gt = root / "FSD50K.ground_truth"
    gt.mkdir(parents=True, exist_ok=True)
    (gt / "vocabulary.csv").write_text("0,Bark,/m/05tny_\n1,Meow,/m/07qrkrw\n2,Rain,/m/06mb1\n")
    dev = [
        ("101", "Bark,Meow", "train"),
        ("102", "Meow", "train"),
        ("103", "Rain", "train"),
        ("104", "Bark,Rain", "train"),
        ("105", "Meow,Rain", "val"),
        ("106", "Bark", "val"),
    ]
    ev = [("201", "Bark,Meow"), ("202", "Rain"), ("203", "Meow"), ("204", "Bark")]
    mids = {"Bark": "/m/05tny_", "Meow": "/m/07qrkrw", "Rain": "/m/06mb1"}

    def q(labels: str) -> str:
        return f'"{labels}"' if "," in labels else labels

    (gt / "dev.csv").write_text(
        "fname,labels,mids,split\n"
        + "".join(f"{f},{q(lab)},{q(','.join(mids[x] for x in lab.split(',')))},{s}\n" for f, lab, s in dev)
        + "102,Meow,/m/07qrkrw,train\n"  # listed twice
    )
    (gt / "eval.csv").write_text(
        "fname,labels,mids\n"
        + "".join(f"{f},{q(lab)},{q(','.join(mids[x] for x in lab.split(',')))}\n" for f, lab in ev)
    )
    ok = {}
    for f, lab, s in dev:
        wav(root / "FSD50K.dev_audio" / f"{f}.wav", 0.7)
        ok[f"FSD50K.dev_audio__{f}"] = ("valid" if s == "val" else "train", tuple(lab.split(",")))
    for f, lab in ev:
        if f != "204":
            wav(root / "FSD50K.eval_audio" / f"{f}.wav", 0.7)
            ok[f"FSD50K.eval_audio__{f}"] = ("test", tuple(lab.split(",")))
    return Expected(
        {"format": "fsd50k", "root": str(root), "target_frames": 64},
        "multi_label",
        "train_valid_test",
        ("Bark", "Meow", "Rain"),
        ("train", "valid", "test"),
        ok,
        {"FSD50K.dev_audio__102__2": "listed twice", "FSD50K.eval_audio__204": "missing"},
    )


def spass(root: Path) -> Expected:
    """SPASS Park: ``Park/parkNNNNN.wav`` and ``SPASS_META_DATA/2_MatrixLabelsPark.csv`` (one row per event);
    the 8 sorted files: the first 6 train, the last 2 eval; park00003 is silent."""
    events = {
        1: ["bird", "dog"],
        2: ["bird"],
        3: ["car"],
        4: ["dog", "car"],
        5: ["bird", "car"],
        6: ["dog"],
        7: ["bird", "dog"],
        8: ["car", "bird"],
    }
    (root / "SPASS_META_DATA").mkdir(parents=True, exist_ok=True)
    lines = ["audio_filename,class,start,end"]
    ok, failed = {}, {}
    for n, labs in events.items():
        name = f"park{n:05d}.wav"
        lines += [f"{name},{lab},{0.1 * k:.1f},{0.1 * k + 0.3:.1f}" for k, lab in enumerate(labs)]
        wav(root / "Park" / name, silent=n == 3)
        if n == 3:
            failed[f"Park__park{n:05d}"] = "silent"
        else:
            ok[f"Park__park{n:05d}"] = ("train" if n <= 6 else "eval", tuple(sorted(labs)))
    (root / "SPASS_META_DATA" / "2_MatrixLabelsPark.csv").write_text("\n".join(lines) + "\n")
    return Expected(
        {"format": "spass", "root": str(root), "environment": "Park", "target_frames": 64},
        "multi_label",
        "train_eval",
        ("bird", "car", "dog"),
        ("train", "eval"),
        ok,
        failed,
    )


BUILDERS = {
    "esc50": esc50,
    "ks2": speech_commands,
    "ks1": speech_commands_12,
    "hear_fixture": hear,
    "dcase_desed": strong_tsv,
    "urban_sed": urban_sed,
    "fsd50k": fsd50k,
    "spass_park": spass,
}
