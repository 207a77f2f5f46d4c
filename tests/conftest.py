from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_AUDIOSET = REPO.parent / "shared" / "audioset"


@pytest.fixture
def shared_audioset() -> Path:
    """The real AudioSet label files, when the shared folder is beside the repository."""
    if not (SHARED_AUDIOSET / "ontology.json").is_file():
        pytest.skip("../shared/audioset is not present")
    return SHARED_AUDIOSET
