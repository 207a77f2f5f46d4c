"""Evaluation metrics as AudioSet and the SSLAM paper report them.

- ``average_precision``: the area under the precision-recall step curve, sum over positives of the
  precision at that positive's rank (ties broken as scikit-learn does: scores sorted descending, each
  distinct threshold once), i.e. scikit-learn's ``average_precision_score``.
- ``mean_average_precision``: per-class AP, macro mean over the classes that have at least one
  positive in the evaluated clips (AudioSet's convention; a class without positives has no AP).
- ``polyphony_breakdown``: mAP of the clips grouped by their number of distinct events {2,3}, {4,5},
  ..., {14+} (the paper's Table 3).
"""

from __future__ import annotations

import numpy as np


def average_precision(y_true: np.ndarray, scores: np.ndarray) -> float:
    """AP of one class; nan when it has no positive."""
    y_true = np.asarray(y_true).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    n_pos = int(y_true.sum())
    if n_pos == 0:
        return float("nan")
    order = np.argsort(-scores, kind="mergesort")
    s, t = scores[order], y_true[order]
    # one point per distinct threshold: the last index of each run of equal scores
    distinct = np.r_[np.nonzero(np.diff(s))[0], len(s) - 1]
    tp = np.cumsum(t)[distinct]
    fp = (distinct + 1) - tp
    precision = tp / (tp + fp)
    recall = tp / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def mean_average_precision(y_true: np.ndarray, scores: np.ndarray) -> tuple[float, np.ndarray]:
    """(macro mAP over classes with positives, per-class AP with nan for classes without)."""
    y_true, scores = np.asarray(y_true), np.asarray(scores)
    if y_true.shape != scores.shape or y_true.ndim != 2:
        raise ValueError(f"targets {y_true.shape} and scores {scores.shape} must both be (clips, classes)")
    ap = np.array([average_precision(y_true[:, k], scores[:, k]) for k in range(y_true.shape[1])])
    return (float(np.nanmean(ap)) if np.isfinite(ap).any() else float("nan")), ap


def accuracy(labels: np.ndarray, scores: np.ndarray) -> float:
    return float((np.argmax(scores, axis=1) == np.asarray(labels)).mean())


def polyphony_bins(max_events: int = 14) -> list[tuple[int, int]]:
    """[(2, 3), (4, 5), ..., (14, inf)]"""
    bins = [(lo, lo + 1) for lo in range(2, max_events, 2)]
    return bins + [(max_events, 10**9)]


def bin_name(lo: int, hi: int) -> str:
    return f"{{{lo}+}}" if hi >= 10**9 else f"{{{lo},{hi}}}"


def polyphony_breakdown(y_true: np.ndarray, scores: np.ndarray, events: np.ndarray) -> dict[str, dict]:
    """mAP per degree of polyphony; ``events``: distinct events per clip (from strong labels)."""
    out = {}
    for lo, hi in polyphony_bins():
        sel = (events >= lo) & (events <= hi)
        if sel.sum() == 0:
            continue
        m, _ = mean_average_precision(y_true[sel], scores[sel])
        out[bin_name(lo, hi)] = {"clips": int(sel.sum()), "map": round(m, 5)}
    return out


def sorted_conditions(values) -> list[str]:
    """Distinct per-clip conditions, numeric ones in numeric order (-20 before -10 before 0), then the
    others alphabetically."""

    def key(c: str) -> tuple:
        try:
            return (0, float(c), "")
        except ValueError:
            return (1, 0.0, c)

    return sorted({str(v) for v in values}, key=key)
