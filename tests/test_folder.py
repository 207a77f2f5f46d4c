"""The folder source on real files the test makes: good, odd and broken."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
from conftest import clip_audio, section

from sslam.data import audioset_format as fmt
from sslam.data.folder import FolderSourceError, ingest_folder
from sslam.data.manifest import read_manifest

SR = 16000


def tone(freq: float, seconds: float, rate: int, channels: int = 1) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([x] * channels, axis=1) if channels > 1 else x


def dominant_freq(x: np.ndarray, rate: int) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / rate)[np.argmax(spec)])


@pytest.fixture
def lab(tmp_path: Path) -> tuple[Path, Path]:
    audio = tmp_path / "lab_audio"
    (audio / "sub").mkdir(parents=True)
    sf.write(audio / "good.wav", tone(440, 1.0, SR), SR)
    sf.write(audio / "stereo44k.wav", tone(1000, 1.5, 44100, channels=2), 44100)
    sf.write(audio / "sub" / "low8k.flac", tone(300, 1.0, 8000), 8000)
    sf.write(audio / "long.wav", tone(220, 12.0, SR), SR)
    sf.write(audio / "silent.wav", np.zeros(SR), SR)
    sf.write(audio / "nosamples.wav", np.zeros(0), SR)
    (audio / "empty.wav").write_bytes(b"")
    (audio / "corrupt.wav").write_bytes(b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(256)) * 4)
    sf.write(audio / "nan.wav", np.full(SR, np.nan, dtype=np.float32), SR, subtype="FLOAT")
    # a format libsndfile cannot read (AAC in MP4): must go through the ffmpeg fallback
    sf.write(audio / "src.wav", tone(660, 1.0, 22050), 22050)
    subprocess.run(
        [
            imageio_ffmpeg.get_ffmpeg_exe(),
            "-nostdin",
            "-v",
            "error",
            "-i",
            str(audio / "src.wav"),
            "-c:a",
            "aac",
            "-b:a",
            "96k",
            str(audio / "aac.m4a"),
        ],
        check=True,
    )
    (tmp_path / "outside.wav").write_bytes((audio / "good.wav").read_bytes())
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "filename,labels,split\n"
        "good.wav,dog,balanced\n"
        'stereo44k.wav,"dog, cat",balanced\n'
        "sub/low8k.flac,cat,eval\n"
        "long.wav,bird,balanced\n"
        "silent.wav,dog,balanced\n"
        "nosamples.wav,dog,balanced\n"
        "empty.wav,dog,balanced\n"
        "corrupt.wav,dog,balanced\n"
        "nan.wav,dog,balanced\n"
        "aac.m4a,bird,eval\n"
        "missing.wav,dog,eval\n"
        "../outside.wav,dog,eval\n"
        "good.wav,cat,BadSplit\n"
    )
    return audio, labels


def run(tmp_path: Path, audio: Path, labels: Path, **kw) -> tuple[Path, dict]:
    out = tmp_path / "corpus"
    update = dict(audio_dir=str(audio), labels_csv=str(labels), max_seconds=5.0, silence_dbfs=-70.0)
    cfg = section("download.folder", **update, **kw)
    summary = ingest_folder(cfg, out, SR, tmp_path / "failures.csv", 2, workers=1)
    return out, summary


def test_good_odd_and_broken_files(tmp_path, lab):
    audio, labels = lab
    out, summary = run(tmp_path, audio, labels)
    rows = pd.concat([read_manifest(p) for p in sorted((out / "manifests").glob("*.csv"))]).set_index("clip_id")
    ok = rows[rows["status"] == "ok"]
    assert set(ok.index) == {"good", "stereo44k", "sub__low8k", "long", "aac"}
    for _, row in ok.iterrows():
        data, rate = clip_audio(out, row.path, row.member)
        assert rate == SR and data.ndim == 1 and len(data) == round(row.duration * SR)
    # content survives conversion: the tone is still where it was
    expect = {"good": 440, "stereo44k": 1000, "sub__low8k": 300, "long": 220, "aac": 660}
    for cid, f in expect.items():
        data, _ = clip_audio(out, ok.loc[cid, "path"], ok.loc[cid, "member"])
        assert dominant_freq(data, SR) == pytest.approx(f, abs=2.0), cid
    assert ok.loc["long", "duration"] == pytest.approx(5.0)  # truncated to max_seconds
    assert ok.loc["stereo44k", "duration"] == pytest.approx(1.5, abs=1e-3)
    assert ok.loc["stereo44k", "labels"] == ["dog", "cat"]

    failed = rows[rows["status"] == "failed"]["reason"].to_dict()
    assert failed["silent"].startswith("silent: RMS -inf dBFS")
    assert failed["nosamples"].startswith("empty: no audio samples")
    assert failed["empty"] == "empty: file has 0 bytes"
    assert failed["corrupt"].startswith("decode error:")
    assert failed["nan"] == "corrupt: non-finite samples"
    assert failed["missing"].startswith("missing:")
    assert failed["outside"].startswith("unsafe path:")
    assert failed["good__2"].startswith("bad split:")
    assert summary["failed"] == 8 and summary["requested"] == 13 and summary["num_clips"] == 5
    assert summary["converted"] == {"downmixed": 1, "resampled": 3, "truncated": 1}

    table = pd.read_csv(tmp_path / "failures.csv", keep_default_na=False)
    assert list(table.columns) == ["clip_id", "source", "reason", "attempts"] and set(table["attempts"]) == {1}
    assert dict(zip(table["clip_id"], table["reason"])) == failed
    assert not list(out.rglob(".tmp-*")) and not (out / "audio" / "balanced" / "corrupt.flac").exists()
    # a flat ontology and class index of the labels seen
    assert [n.id for n in fmt.read_ontology(out / "ontology.json")] == ["bird", "cat", "dog"]
    assert list(fmt.read_class_labels(out / "class_labels_indices.csv")["mid"]) == ["bird", "cat", "dog"]


def test_labels_checked_against_a_given_ontology(tmp_path, lab):
    audio, _ = lab
    onto = [
        {
            "id": "/m/dog",
            "name": "Dog",
            "description": "",
            "citation_uri": "",
            "positive_examples": [],
            "child_ids": [],
            "restrictions": [],
        },
        {
            "id": "/m/cat",
            "name": "Cat",
            "description": "",
            "citation_uri": "",
            "positive_examples": [],
            "child_ids": [],
            "restrictions": [],
        },
    ]
    (tmp_path / "onto.json").write_text(json.dumps(onto))
    labels = tmp_path / "l.csv"
    labels.write_text('filename,labels\ngood.wav,Dog\nsub/low8k.flac,"/m/cat,Dog"\nlong.wav,Unicorn\n')
    out, summary = run(tmp_path, audio, labels, ontology_json=str(tmp_path / "onto.json"))
    df = read_manifest(out / "manifests" / "unbalanced.csv").set_index("clip_id")
    assert df.loc["good", "labels"] == ["/m/dog"] and df.loc["sub__low8k", "labels"] == ["/m/cat", "/m/dog"]
    assert df.loc["long", "status"] == "failed" and "unknown label: 'Unicorn'" in df.loc["long", "reason"]
    assert (out / "ontology.json").read_bytes() == (tmp_path / "onto.json").read_bytes()


def test_unusable_inputs_fail_with_a_clear_message(tmp_path, lab):
    audio, _ = lab
    bad = tmp_path / "bad.csv"
    bad.write_text("file,label\ngood.wav,dog\n")
    with pytest.raises(FolderSourceError, match=r"bad.csv: missing column\(s\) \['filename', 'labels'\]"):
        run(tmp_path, audio, bad)
    with pytest.raises(FolderSourceError, match="labels_csv: .* does not exist"):
        run(tmp_path, audio, tmp_path / "nope.csv")
    with pytest.raises(FolderSourceError, match="audio_dir: .* is not a folder"):
        run(tmp_path, tmp_path / "nope", bad)


def test_clipping_is_recorded_as_a_conversion(tmp_path):
    """Float input beyond full scale cannot be stored as 16-bit: it is clipped, and the manifest and the
    download metrics say so (half of this file's samples are at 1.5)."""
    audio = tmp_path / "loud"
    audio.mkdir()
    n = SR
    x = np.where(np.arange(n) % 2 == 0, 1.5, -0.25) * np.sign(np.sin(2 * np.pi * 5 * np.arange(n) / SR) + 1e-9)
    sf.write(audio / "hot.wav", x.astype(np.float32), SR, subtype="FLOAT")
    sf.write(audio / "fine.wav", tone(440, 1.0, SR), SR)
    labels = tmp_path / "labels.csv"
    labels.write_text("filename,labels,split\nhot.wav,dog,balanced\nfine.wav,dog,balanced\n")
    out, summary = run(tmp_path, audio, labels)
    rows = read_manifest(out / "manifests" / "balanced.csv").set_index("clip_id")
    assert rows.loc["hot", "status"] == "ok"
    assert rows.loc["hot", "reason"] == f"converted: clipped ({n // 2} of {n} samples, 50.0%, beyond full scale)"
    assert rows.loc["fine", "reason"] == ""
    assert summary["converted"] == {"clipped": 1}
    data, _ = clip_audio(out, rows.loc["hot", "path"], rows.loc["hot", "member"])
    assert data.max() <= 1.0 and np.isclose(data.max(), 1.0, atol=1e-4)
