from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from sslam.io import atomic_path, remove_stale_temporaries, write_flac_atomic, write_text_atomic


def test_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "a.txt"
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half of the new")
            raise RuntimeError("killed mid-write")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["a.txt"]


def test_flac_round_trip_is_16_bit_exact(tmp_path):
    x = np.linspace(-1, 1, 1001)
    write_flac_atomic(tmp_path / "x.flac", x, 16000)
    y, sr = sf.read(tmp_path / "x.flac", dtype="int16")
    assert sr == 16000 and np.array_equal(y, np.round(x * 32767).astype(np.int16))
    with pytest.raises(ValueError, match="expected mono"):
        write_flac_atomic(tmp_path / "s.flac", np.zeros((10, 2)), 16000)


def test_stale_temporaries_are_cleaned(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / ".tmp-x.flac.123").write_bytes(b"partial")
    (tmp_path / "keep.flac").write_bytes(b"done")
    assert remove_stale_temporaries(tmp_path) == 1
    assert [p.name for p in tmp_path.rglob("*") if p.is_file()] == ["keep.flac"]
