"""The AudioSet downloader for real, without the internet: yt-dlp and ffmpeg against a loopback server.

The server on 127.0.0.1 serves media files made here with ffmpeg (MP4/AAC with a video track, and
WebM/Opus), and misbehaves on request: 429 once, 404, a connection dropped mid-file, a slow stream
for a kill-and-resume test. The downloader reaches it through the documented URL template.
"""

from __future__ import annotations

import http.server
import io
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import imageio_ffmpeg
import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import yaml
from conftest import REPO, section

from sslam.config.data import AudiosetConfig
from sslam.data import audioset_format as fmt
from sslam.data.audioset_download import (
    RateLimiter,
    backoff_delay,
    classify_error,
    download_audioset,
    parse_shard,
    shard_of,
    validate_segment,
)
from sslam.data.manifest import read_manifest
from sslam.data.shards import ClipLocation, iter_shard, read_clip

SR = 16000
CLIPS_PER_SHARD = 3


def shard_clips(corpus: Path) -> dict[str, bytes]:
    """clip id -> FLAC bytes of every sealed shard of the corpus, in shard and member order."""
    return {c.meta["clip_id"]: c.flac for p in sorted(corpus.rglob("*.tar")) for c in iter_shard(p)}


FFMPEG = imageio_ffmpeg.get_ffmpeg_exe()


def make_media(path: Path, kind: str) -> None:
    """12 s: 440 Hz for the first 6 s, then 1000 Hz, so a cut's content can be checked."""
    audio = [
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=440:duration=6:sample_rate=48000",
        "-f",
        "lavfi",
        "-i",
        "sine=frequency=1000:duration=6:sample_rate=48000",
    ]
    concat = "[0:a][1:a]concat=n=2:v=0:a=1,pan=stereo|c0=c0|c1=c0[a]"
    if kind == "mp4":
        cmd = [
            FFMPEG,
            "-v",
            "error",
            "-y",
            *audio,
            "-f",
            "lavfi",
            "-i",
            "color=c=black:s=64x64:d=12:r=10",
            "-filter_complex",
            concat,
            "-map",
            "2:v",
            "-map",
            "[a]",
            "-c:v",
            "mpeg4",
            "-c:a",
            "aac",
            "-b:a",
            "128k",
            str(path),
        ]
    else:
        cmd = [
            FFMPEG,
            "-v",
            "error",
            "-y",
            *audio,
            "-filter_complex",
            concat,
            "-map",
            "[a]",
            "-c:a",
            "libopus",
            "-b:a",
            "96k",
            str(path),
        ]
    subprocess.run(cmd, check=True)


class MediaServer:
    """Serves /media/<name>; each name can be told how to misbehave."""

    def __init__(self, media_dir: Path):
        self.media_dir = media_dir
        self.behaviour: dict[str, str] = {}
        self.requests: Counter[str] = Counter()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                name = self.path.rsplit("/", 1)[-1]
                server.requests[name] += 1
                n = server.requests[name]
                mode = server.behaviour.get(name, "ok")
                path = server.media_dir / name
                if mode == "gone" or not path.is_file():
                    return self._status(404)
                if mode == "flaky" and n == 1:
                    return self._status(429)
                body = path.read_bytes()
                ctype = "audio/webm" if name.endswith(".webm") else "video/mp4"
                self.send_response(200)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                # the second GET of a name is yt-dlp's download proper (the first is its generic extractor's probe)
                if mode == "always_drop" or (mode == "drop_once" and n == 2):
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if mode == "slow":
                    for i in range(0, len(body), 2048):
                        self.wfile.write(body[i : i + 2048])
                        self.wfile.flush()
                        time.sleep(0.2)
                    return
                self.wfile.write(body)

            def _status(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.handle_error = lambda request, address: None  # clients hanging up early is expected here
        self.port = self.httpd.server_address[1]
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def template(self, ext: str = "mp4") -> str:
        return f"http://127.0.0.1:{self.port}/media/{{ytid}}.{ext}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


IDS = {"ok": "okOK_ok-OK1", "flaky": "flakyFLAKY", "gone": "goneGONE_gg", "drop": "dropDROP_d1", "dash": "-o_evilfile"}
IDS["flaky"] = "flakyFLAK01"


@pytest.fixture(scope="module")
def media(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("media")
    make_media(d / "master.mp4", "mp4")
    make_media(d / "master.webm", "webm")
    return d


@pytest.fixture
def server(media, tmp_path):
    served = tmp_path / "served"
    served.mkdir()
    srv = MediaServer(served)
    srv.master = media  # type: ignore[attr-defined]
    yield srv
    srv.close()


def publish(server: MediaServer, ytid: str, ext: str = "mp4", behaviour: str = "ok") -> None:
    (server.media_dir / f"{ytid}.{ext}").write_bytes((server.master / f"master.{ext}").read_bytes())  # type: ignore[attr-defined]
    server.behaviour[f"{ytid}.{ext}"] = behaviour


def write_labels(folder: Path, rows: list[tuple[str, float, float, str]], split: str = "balanced") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    nodes = [fmt.OntologyNode(id="/m/a", name="A", child_ids=["/m/b"]), fmt.OntologyNode(id="/m/b", name="B")]
    fmt.write_ontology(folder / "ontology.json", nodes)
    fmt.write_class_labels(folder / "class_labels_indices.csv", [("/m/a", "A"), ("/m/b", "B")])
    segs = [fmt.Segment(y, s, e, tuple(lab.split(","))) for y, s, e, lab in rows]
    fmt.write_segments_csv(folder / fmt.SPLIT_FILES[split], segs, "Sat Jun 14 00:00:00 2025")


def config(server: MediaServer, labels: Path, ext: str = "mp4", **kw) -> AudiosetConfig:
    base = dict(
        splits=["balanced"],
        metadata_dir=str(labels),
        url_template=server.template(ext),
        workers=3,
        retries=2,
        backoff_base_s=0.01,
        backoff_max_s=0.05,
        rate_limit_per_s=0.0,
        socket_timeout_s=10.0,
    )
    base.update(kw)
    return section("download.audioset", **base)


def dominant(x: np.ndarray) -> float:
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return float(np.fft.rfftfreq(len(x), 1 / SR)[np.argmax(spec)])


# ----------------------------------------------------------------------------- pure pieces


def test_id_validation_rejects_what_could_escape_or_be_an_option():
    ok = fmt.Segment("-o_evilfile", 0.0, 10.0, ("/m/a",))  # a real YouTube id may start with '-'
    assert validate_segment(ok) == ""
    for bad in ["../../etc/p", "short", "$(touch_xx)", "a b c d e f", "abcdefghijkl", "abc/def/ghi", ""]:
        assert validate_segment(fmt.Segment(bad, 0.0, 10.0, ("/m/a",))).startswith("invalid id"), bad
    assert "invalid times" in validate_segment(fmt.Segment("abcdefghijk", 5.0, 5.0, ("/m/a",)))
    assert "invalid times" in validate_segment(fmt.Segment("abcdefghijk", 0.0, 600.0, ("/m/a",)))


def test_error_classes():
    assert classify_error("ERROR: [youtube] x: Video unavailable") == ("unavailable", True)
    assert classify_error("ERROR: [youtube] x: Private video. Sign in") == ("private", True)
    assert classify_error("This video has been removed by the uploader") == ("removed", True)
    assert classify_error("Unable to download webpage: HTTP Error 404: Not Found") == ("not_found", True)
    assert classify_error("HTTP Error 429: Too Many Requests") == ("rate_limited", False)
    assert classify_error("Sign in to confirm you're not a bot") == ("bot_check", False)
    assert classify_error("HTTP Error 503: Service Unavailable") == ("server_error", False)
    assert classify_error("Got error: 1024 bytes read, 4096 more expected (IncompleteRead)") == ("network", False)
    assert classify_error("something new") == ("other", False)


def test_backoff_grows_exponentially_with_bounded_jitter():
    rng = random.Random(0)
    for attempt in range(8):
        d = [backoff_delay(attempt, 2.0, 60.0, rng) for _ in range(200)]
        nominal = min(60.0, 2.0 * 2**attempt)
        assert min(d) >= 0.5 * nominal and max(d) <= 1.5 * nominal
        assert np.std(d) > 0.1 * nominal  # jitter, so many workers do not retry in lockstep


def test_shards_partition_the_list():
    ids = [f"{i:011d}" for i in range(1000)]
    parts = [[y for y in ids if shard_of(y, 4) == k] for k in range(4)]
    assert sorted(sum(parts, [])) == ids and all(150 < len(p) < 350 for p in parts)
    assert parse_shard("3/4") == (3, 4)
    for bad in ["4/4", "1", "-1/2", "a/b"]:
        with pytest.raises(ValueError, match="--shard must be i/N"):
            parse_shard(bad)


def test_rate_limiter_spaces_requests():
    lim = RateLimiter(20.0)
    t0 = time.monotonic()
    for _ in range(6):
        lim.wait()
    assert time.monotonic() - t0 >= 5 / 20.0 * 0.95


def test_cookies_proxy_and_format_reach_yt_dlp(tmp_path):
    from sslam.data.audioset_download import SegmentDownloader

    cfg = section("download.audioset", cookies="/x/cookies.txt", proxy="socks5://127.0.0.1:1080")
    opts = SegmentDownloader(cfg, tmp_path, SR, RateLimiter(0)).ydl_options(tmp_path)
    assert opts["cookiefile"] == "/x/cookies.txt" and opts["proxy"] == "socks5://127.0.0.1:1080"
    assert opts["format"] == "bestaudio/best" and opts["retries"] == 0
    assert "cookiefile" not in SegmentDownloader(
        section("download.audioset"), tmp_path, SR, RateLimiter(0)
    ).ydl_options(tmp_path)


def test_ordered_pool_keeps_input_order_with_bounded_window():
    """Results come back in input order although they finish in another, with at most ``workers`` running
    and at most ``window`` submitted ahead of the oldest one not yet yielded."""
    from sslam.data.audioset_download import _run_ordered

    live, peak, started = [0], [0], []
    lock = threading.Lock()
    yielded = [0]

    def work(x):
        with lock:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
            started.append((x, yielded[0]))
        time.sleep(0.004 if x % 7 == 0 else 0.0005)  # every 7th is slow: later ones finish first
        with lock:
            live[0] -= 1
        return x * 2

    out = []
    for r in _run_ordered(work, range(300), 3, window=10):
        out.append(r)
        yielded[0] += 1
    assert out == [2 * x for x in range(300)]
    assert peak[0] <= 3
    assert all(x < done + 10 for x, done in started)  # never more than the window ahead


def test_url_template_is_validated():
    with pytest.raises(ValueError, match="url_template"):
        section("download.audioset", url_template="file:///etc/{ytid}")
    with pytest.raises(ValueError, match="url_template"):
        section("download.audioset", url_template="https://x/{id}")


# ----------------------------------------------------------------------------- against the server


@pytest.mark.parametrize("ext", ["mp4", "webm"])
def test_download_cuts_and_converts(server, tmp_path, ext):
    publish(server, IDS["ok"], ext)
    publish(server, IDS["dash"], ext)
    labels = tmp_path / "labels"
    write_labels(labels, [(IDS["ok"], 4.0, 8.0, "/m/a,/m/b"), (IDS["dash"], 10.0, 14.0, "/m/b")])
    out = tmp_path / "corpus"
    summary, failures = download_audioset(config(server, labels, ext), out, SR, CLIPS_PER_SHARD)
    assert failures == [] and summary["got"] == 2 and summary["failed"] == 0

    m = read_manifest(out / "manifests" / "balanced.csv").set_index("clip_id")
    row = m.loc[f"{IDS['ok']}_4000"]
    assert row.path == "audio/balanced/shard-000000.tar" and row.member == f"{IDS['ok']}_4000.flac"
    flac = read_clip(out, ClipLocation(row.path, row.member))
    info = sf.info(io.BytesIO(flac))
    x, sr = sf.read(io.BytesIO(flac))
    assert (sr, info.channels, info.subtype) == (SR, 1, "PCM_16")
    assert abs(len(x) - 4 * SR) <= SR // 100 and row.duration == pytest.approx(len(x) / SR)
    # the cut [4, 8) straddles the switch at 6 s: 440 Hz first, then 1000 Hz
    assert dominant(x[int(0.2 * SR) : int(1.8 * SR)]) == pytest.approx(440, abs=5)
    assert dominant(x[int(2.2 * SR) : int(3.8 * SR)]) == pytest.approx(1000, abs=5)
    assert row.labels == ["/m/a", "/m/b"]
    # the end of the media cuts a segment short: [10, 14) of a 12 s file holds 2 s
    dash = m.loc[f"{IDS['dash']}_10000"]
    assert dash.duration == pytest.approx(2.0, abs=0.05)
    assert not list(out.rglob(".tmp-*")) and not (out / ".tmp-download").exists()


def test_faults_retries_and_the_failures_table(server, tmp_path):
    publish(server, IDS["ok"])
    publish(server, IDS["flaky"], behaviour="flaky")
    publish(server, IDS["gone"], behaviour="gone")
    publish(server, IDS["drop"], behaviour="drop_once")
    publish(server, "alwaysDrop1", behaviour="always_drop")
    labels = tmp_path / "labels"
    rows = [
        (IDS["ok"], 0.0, 3.0, "/m/a"),
        (IDS["flaky"], 0.0, 3.0, "/m/a"),
        (IDS["gone"], 0.0, 3.0, "/m/a"),
        (IDS["drop"], 0.0, 3.0, "/m/a"),
        ("alwaysDrop1", 0.0, 3.0, "/m/a"),
        ("../../etc/p", 0.0, 3.0, "/m/a"),
        ("okOK_ok-OK1", 5.0, 8.0, "/m/zzz"),
    ]
    write_labels(labels, rows)
    out = tmp_path / "corpus"
    sleeps: list[float] = []
    summary, failures = download_audioset(config(server, labels), out, SR, CLIPS_PER_SHARD, sleep=sleeps.append)

    table = {cid: (reason, attempts) for cid, _, reason, attempts in failures}
    assert set(table) == {f"{IDS['gone']}_0", "alwaysDrop1_0", "../../etc/p_0"}
    assert table[f"{IDS['gone']}_0"][0].startswith("not_found:") and table[f"{IDS['gone']}_0"][1] == 1
    assert table["alwaysDrop1_0"][0].startswith("network:") and table["alwaysDrop1_0"][1] == 3  # 1 + 2 retries
    assert table["../../etc/p_0"][0].startswith("rejected: invalid id") and table["../../etc/p_0"][1] == 0
    assert summary["got"] == 4 and summary["failed"] == 3
    assert summary["failed_by_reason"] == {"network": 1, "not_found": 1, "rejected": 1}
    m = read_manifest(out / "manifests" / "balanced.csv").set_index("clip_id")
    assert m.loc[f"{IDS['flaky']}_0", "status"] == "ok" and m.loc[f"{IDS['drop']}_0", "status"] == "ok"
    assert m.loc["okOK_ok-OK1_5000", "status"] == "failed" and "unknown labels" in m.loc["okOK_ok-OK1_5000", "reason"]
    assert len(sleeps) == 1 + 1 + 2  # flaky once, drop once, always-drop twice: backoff between attempts
    # no partial files anywhere, only sealed shards of the good segments, in the list's order
    assert list(shard_clips(out)) == [f"{IDS['ok']}_0", f"{IDS['flaky']}_0", f"{IDS['drop']}_0", "okOK_ok-OK1_5000"]
    assert sorted(p.name for p in (out / "audio" / "balanced").iterdir()) == ["shard-000000.tar", "shard-000001.tar"]
    assert not list(out.rglob("*.part")) and not list(out.rglob(".tmp-*")) and not list(out.rglob("*.flac"))

    # a second run: done segments skipped, the permanent failure not asked again, the transient one retried
    before = Counter(server.requests)
    summary2, failures2 = download_audioset(config(server, labels), out, SR, CLIPS_PER_SHARD, sleep=sleeps.append)
    assert summary2["skipped_existing"] == 4 and summary2["got"] == 0
    assert server.requests[f"{IDS['gone']}.mp4"] == before[f"{IDS['gone']}.mp4"]
    assert server.requests[f"{IDS['ok']}.mp4"] == before[f"{IDS['ok']}.mp4"]
    assert server.requests["alwaysDrop1.mp4"] > before["alwaysDrop1.mp4"]
    assert {f[0] for f in failures2} == set(table)


def test_corrupted_label_file_is_named(server, tmp_path):
    labels = tmp_path / "labels"
    write_labels(labels, [(IDS["ok"], 0.0, 3.0, "/m/a")])
    text = (labels / "balanced_train_segments.csv").read_text().replace("# YTID, start_seconds", "YTID,start_seconds")
    (labels / "balanced_train_segments.csv").write_text(text)
    with pytest.raises(fmt.FormatError, match=r"balanced_train_segments.csv:3"):
        download_audioset(config(server, labels), tmp_path / "corpus", SR, CLIPS_PER_SHARD)


def download_command(tmp_path: Path, corpus: Path, cfg: AudiosetConfig, clips_per_shard: int) -> list[str]:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["data"]["corpus_dir"] = str(corpus)
    params["download"]["source"] = "audioset"
    params["download"]["clips_per_shard"] = clips_per_shard
    params["download"]["audioset"].update(cfg.model_dump())
    params_file = tmp_path / f"params-{corpus.name}.yaml"
    params_file.write_text(yaml.safe_dump(params))
    metrics = tmp_path / f"metrics-{corpus.name}" / "download.json"
    return [
        sys.executable,
        str(REPO / "stages" / "download.py"),
        "--params",
        str(params_file),
        "--metrics",
        str(metrics),
    ]


def test_kill_mid_download_then_resume(server, tmp_path):
    """SIGKILL while a segment streams: the open shard keeps the clips done before it, nothing looks sealed;
    the rerun fetches only the rest and ends with the same shards, byte for byte, as an uninterrupted run."""
    ids = [("doneAAAAAA1", 0.0), ("doneBBBBBB2", 1.0), ("doneCCCCCC3", 0.0), ("slowSLOWss3", 0.0), ("lastLASTll4", 0.0)]
    for y, _ in ids:
        publish(server, y)
    server.behaviour["slowSLOWss3.mp4"] = "slow"
    labels = tmp_path / "labels"
    write_labels(labels, [(y, start, start + 3.0, "/m/a") for y, start in ids])
    corpus = tmp_path / "corpus"
    cmd = download_command(tmp_path, corpus, config(server, labels, workers=1), clips_per_shard=2)
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    split_dir = corpus / "audio" / "balanced"
    deadline = time.time() + 60
    while time.time() < deadline and not (
        server.requests["slowSLOWss3.mp4"] >= 2 and list(split_dir.glob("*.part")) and list(split_dir.glob("*.tar"))
    ):
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()
    time.sleep(0.5)  # the slow segment is mid-stream now
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # two clips sealed in the first shard, the third in the open one; no shard of the slow clip's
    assert sorted(p.name for p in split_dir.iterdir()) == ["shard-000000.tar", "shard-000001.tar.part"]
    assert list(shard_clips(corpus)) == ["doneAAAAAA1_0", "doneBBBBBB2_1000"]
    sealed_bytes = (split_dir / "shard-000000.tar").read_bytes()
    with open(split_dir / "shard-000001.tar.part", "ab") as f:  # a kill mid-append: half a member's header
        f.write(b"slowSLOWss3_0.flac" + b"\0" * 100)
    before = Counter(server.requests)

    server.behaviour["slowSLOWss3.mp4"] = "ok"
    subprocess.run(cmd, cwd=tmp_path, check=True, capture_output=True)
    summary = json.loads((tmp_path / "metrics-corpus" / "download.json").read_text())
    assert (summary["skipped_existing"], summary["got"], summary["failed"]) == (3, 2, 0)
    for y, _ in ids[:3]:  # the done clips were not fetched again
        assert server.requests[f"{y}.mp4"] == before[f"{y}.mp4"]
    assert (split_dir / "shard-000000.tar").read_bytes() == sealed_bytes  # a sealed shard is never rewritten
    assert not list(corpus.rglob("*.part")) and not (corpus / ".tmp-download").exists()
    assert not list(corpus.rglob(".tmp-*"))

    # the same list downloaded without interruption: the same shards, byte for byte
    fresh = tmp_path / "fresh"
    subprocess.run(
        download_command(tmp_path, fresh, config(server, labels, workers=3), 2), check=True, capture_output=True
    )
    names = sorted(p.name for p in split_dir.iterdir())
    assert names == ["shard-000000.tar", "shard-000001.tar", "shard-000002.tar"]
    assert names == sorted(p.name for p in (fresh / "audio" / "balanced").iterdir())
    for name in names:
        assert (split_dir / name).read_bytes() == (fresh / "audio" / "balanced" / name).read_bytes(), name
    m = read_manifest(corpus / "manifests" / "balanced.csv")
    assert list(m["member"]) == [f"{y}_{int(start * 1000)}.flac" for y, start in ids]
    assert sf.info(io.BytesIO(read_clip(corpus, ClipLocation(m.path[3], m.member[3])))).frames == 3 * SR
    table = pd.read_csv(tmp_path / "metrics-corpus" / "download_failures.csv")
    assert list(table.columns) == ["clip_id", "source", "reason", "attempts"] and len(table) == 0


def test_corpus_of_per_file_flacs_is_packed_not_fetched_again(server, tmp_path):
    """A corpus downloaded before shards (audio/<split>/<clip>.flac): its clips go into shards, unfetched."""
    publish(server, IDS["ok"])
    publish(server, IDS["flaky"])
    labels = tmp_path / "labels"
    write_labels(labels, [(IDS["ok"], 0.0, 3.0, "/m/a"), (IDS["flaky"], 0.0, 3.0, "/m/b")])
    out = tmp_path / "corpus"
    old = out / "audio" / "balanced" / f"{IDS['ok']}_0.flac"
    old.parent.mkdir(parents=True)
    sf.write(old, (0.1 * np.sin(np.arange(2 * SR) / 7)).astype(np.float32), SR, subtype="PCM_16")
    legacy = old.read_bytes()
    summary, _ = download_audioset(config(server, labels), out, SR, CLIPS_PER_SHARD)
    assert (summary["skipped_existing"], summary["got"]) == (1, 1)
    assert server.requests[f"{IDS['ok']}.mp4"] == 0
    clips = shard_clips(out)
    assert list(clips) == [f"{IDS['ok']}_0", f"{IDS['flaky']}_0"] and clips[f"{IDS['ok']}_0"] == legacy
    assert not old.exists()
    m = read_manifest(out / "manifests" / "balanced.csv").set_index("clip_id")
    assert m.loc[f"{IDS['ok']}_0", "duration"] == pytest.approx(2.0)


def test_permanent_failures_are_folded_in_not_appended(server, tmp_path):
    """The permanent-failures log is rewritten by atomic rename (a new inode), never appended in place: a
    linked DVC cache holds the committed one."""
    publish(server, IDS["gone"], behaviour="gone")
    publish(server, IDS["ok"])
    labels = tmp_path / "labels"
    write_labels(labels, [(IDS["gone"], 0.0, 3.0, "/m/a")])
    out = tmp_path / "corpus"
    download_audioset(config(server, labels), out, SR, CLIPS_PER_SHARD)
    log = out / "state" / "permanent_failures.jsonl"
    first = log.read_text()
    inode = log.stat().st_ino
    assert [json.loads(x)["clip_id"] for x in first.splitlines()] == [f"{IDS['gone']}_0"]
    write_labels(labels, [(IDS["gone"], 0.0, 3.0, "/m/a"), ("goneGONE_g2", 0.0, 3.0, "/m/a")])
    publish(server, "goneGONE_g2", behaviour="gone")
    download_audioset(config(server, labels), out, SR, CLIPS_PER_SHARD)
    assert [json.loads(x)["clip_id"] for x in log.read_text().splitlines()] == [f"{IDS['gone']}_0", "goneGONE_g2_0"]
    assert first == log.read_text().splitlines(keepends=True)[0] and log.stat().st_ino != inode
    assert not (out / "state" / "permanent_failures.journal.jsonl").exists()
