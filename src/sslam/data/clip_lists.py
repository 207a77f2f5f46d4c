"""The identity of a clip list: a SHA-256 anyone can recompute from the ids alone.

AudioSet is downloaded, not distributed, so two downloads of the same lists hold different clips
(videos disappear). Every metrics file records, per split, the clip count and this hash, so two
results can be told apart by the data they used, not only by their code and params.

Definition: the SHA-256 (hex) of the UTF-8 bytes of the sorted, de-duplicated clip ids, each
followed by ``"\\n"`` (one per line, a final newline included; the empty list hashes the empty
string). Sorting is by Python's ``sorted`` on ``str`` (code point order), which is the byte order of
UTF-8 and the order of ``LC_ALL=C sort -u``, so a file of ids recomputes it with::

    LC_ALL=C sort -u ids.txt | sha256sum
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

__all__ = ["clip_list_sha256", "clip_list_summary", "clip_list_text"]


def clip_list_text(clip_ids: Iterable[str]) -> str:
    """The canonical text the hash is taken of: sorted unique ids, each followed by a newline."""
    ids = sorted({str(c) for c in clip_ids})
    for c in ids:
        if not c or "\n" in c or "\r" in c:  # one id per line must be unambiguous
            raise ValueError(f"clip id {c!r}: empty or holding a line break")
    return "".join(f"{c}\n" for c in ids)


def clip_list_sha256(clip_ids: Iterable[str]) -> str:
    """SHA-256 hex of the sorted, de-duplicated ids (see the module docstring for the exact bytes)."""
    return hashlib.sha256(clip_list_text(clip_ids).encode("utf-8")).hexdigest()


def clip_list_summary(clip_ids: Iterable[str]) -> dict[str, int | str]:
    """``{"clips": n, "sha256": hex}`` of the unique ids: what metrics files record per split."""
    text = clip_list_text(clip_ids)
    return {"clips": text.count("\n"), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}
