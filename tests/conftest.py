from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AUDIOSET_LABELS = REPO / "tests" / "data" / "audioset"


def section(dotted: str, **update):
    """The repository params.yaml's section ``dotted`` (e.g. ``model``, ``pretrain.stage1``) with ``update``
    applied and validated: the schema has no defaults, so a test states only what it changes. A mapping
    given for a nested section is merged into it key by key (``tasks={"mono": {"num_classes": 2}}``)."""
    from sslam.config.base import merged
    from sslam.config.params import load_config

    node = load_config(REPO / "params.yaml")
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return merged(node, update)


@pytest.fixture
def audioset_labels() -> Path:
    """The published AudioSet label files (ontology, class index, balanced and eval segment lists),
    kept in the repository (tests/data/audioset/README.md says where they come from)."""
    return AUDIOSET_LABELS


def dvc_project(root: Path, files: dict[str, str]):
    """A git + DVC project in ``root`` holding ``files``, reproduced and committed (the baseline of `dvc
    exp` runs); returns ``sh(*cmd) -> stdout``, run there with this interpreter's tools first on PATH."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}")

    def sh(*cmd: str) -> str:
        return subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True, text=True).stdout

    sh("git", "init", "-q")
    sh("dvc", "init", "-q")
    (root / "metrics" / "eval").mkdir(parents=True)
    for name, text in files.items():
        (root / name).write_text(text)
    sh("dvc", "repro", "-q")
    sh("git", "add", "-A")
    sh("git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline")
    return sh


def reference_kaldi_fbank(wave, sample_rate: int = 16000, num_mel_bins: int = 128):
    """The reference's Kaldi fbank, called on torchaudio directly (not through the project's front end):
    the independent check of every path that computes a log-mel from a waveform."""
    import torchaudio

    return torchaudio.compliance.kaldi.fbank(
        (wave - wave.mean())[None],
        htk_compat=True,
        sample_frequency=sample_rate,
        use_energy=False,
        window_type="hanning",
        num_mel_bins=num_mel_bins,
        dither=0.0,
        frame_shift=10.0,
        frame_length=25.0,
    )


def clip_audio(corpus: Path, path: str, member: str = "", dtype: str = "float64"):
    """A corpus clip's (samples, rate), read with the standard library's tarfile (independently of the
    project's shard reader) when ``member`` names it inside the tar shard at ``path``."""
    import io
    import tarfile

    import soundfile as sf

    if not member:
        return sf.read(Path(corpus) / path, dtype=dtype)
    with tarfile.open(Path(corpus) / path) as tar:
        data = tar.extractfile(member).read()
    return sf.read(io.BytesIO(data), dtype=dtype)
