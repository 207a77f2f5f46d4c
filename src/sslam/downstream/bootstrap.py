"""Bootstrap confidence intervals for a task's score, and for the difference between two encoders.

A score measured once on a few hundred clips moves by several points with the clips drawn, and a
fine-tuned or linear model moves again with its training seed. Both are resampled here:

- clips, with replacement, the same clips for every seed (the seeds were scored on the same clips, so
  resampling them separately would invent clip noise between seeds);
- seeds, with replacement, when there are several: a replicate is the mean over the drawn seeds, the
  quantity reported as the point.

Clips are resampled with replacement (``multinomial``) or reweighted with Dirichlet(1, ..., 1) weights
(``bayesian``, :func:`resample_weights`: no clip, so no class, ever drops out of a replicate). The
interval is the percentile interval of the replicates, or its bias-corrected form (``bc``).
:func:`paired_difference` scores both encoders on the same resampled clips in each replicate, so the
clips' difficulty, which both share, cancels in the difference; the seeds of each encoder are resampled
independently, as seed ``i`` of one encoder has nothing to do with seed ``i`` of the other.

The metrics are those of :mod:`sslam.downstream.metrics`: accuracy (single label, argmax) and mAP (macro
mean of per-class AP over the classes with a positive among the evaluated clips). A multinomial mAP
replicate drops the classes its resample has no positive for, and one with no positive at all is skipped.

Draw order, so a replicate can be reproduced from ``seed``: the clip weights (:func:`resample_weights`)
first, then for each score group with several seeds an (n_boot, seeds) matrix of seed indices.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.special import ndtr, ndtri

from sslam.downstream.metrics import accuracy, mean_average_precision

METRICS = ("accuracy", "map")
_MAP_CHUNK_ELEMENTS = 2_000_000  # clips x classes x replicates scored in one batch


@dataclass(frozen=True)
class Interval:
    """A point estimate and its bootstrap interval."""

    point: float
    low: float
    high: float

    def to_json(self) -> dict[str, float]:
        """Rounded to 5 decimals, as the other metrics files are."""
        return {"point": round(self.point, 5), "low": round(self.low, 5), "high": round(self.high, 5)}


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; allowed {METRICS}")


def metric_score(metric: str, targets: np.ndarray, scores: np.ndarray) -> float:
    """The task's metric on all clips: ``accuracy`` (targets: class ids (n,)) or ``map`` (targets:
    multi-hot (n, C)); one entry point so intervals of either kind of task share one code path."""
    _check_metric(metric)
    if metric == "accuracy":
        return accuracy(targets, scores)
    return mean_average_precision(targets, scores)[0]


def resample_indices(n: int, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) clip indices drawn with replacement: row b is replicate b's resample of the clips."""
    if n < 1 or n_boot < 1:
        raise ValueError(f"need at least one clip and one replicate, got n={n}, n_boot={n_boot}")
    return rng.integers(0, n, size=(n_boot, n))


def clip_counts(idx: np.ndarray, n: int) -> np.ndarray:
    """(n_boot, n) how many times each clip is drawn in each replicate: a resample as weights."""
    n_boot = len(idx)
    flat = (np.asarray(idx) + n * np.arange(n_boot)[:, None]).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n)


def weighted_average_precision(y: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Per-class AP of (n, C) targets and scores with each clip counted ``weights`` times, for every row
    of (..., n) weights at once: (..., C), nan for a class without a weighted positive.

    A resample holding clip i k times is these clips with weight k: each copy ties with the others, so
    the sort and the runs of tied scores are those of the original clips, done once instead of once per
    replicate. The value is scikit-learn's AP of the resampled clips (one precision per distinct
    score, tied clips sharing it), as :func:`sslam.downstream.metrics.average_precision` computes."""
    y = np.asarray(y).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    weights = np.asarray(weights, dtype=np.float64)
    if y.shape != scores.shape or y.ndim != 2:
        raise ValueError(f"targets {y.shape} and scores {scores.shape} must both be (clips, classes)")
    if weights.shape[-1] != y.shape[0]:
        raise ValueError(f"weights {weights.shape} must end with the {y.shape[0]} clips")
    n = y.shape[0]
    order = np.argsort(-scores, axis=0, kind="stable")
    s = np.take_along_axis(scores, order, axis=0)
    t = np.take_along_axis(y, order, axis=0)
    # for every sorted row, the last row of its run of tied scores: the threshold the run is counted at
    rows = np.arange(n)[:, None]
    is_end = np.ones_like(t)
    is_end[:-1] = s[:-1] != s[1:]
    end = np.minimum.accumulate(np.where(is_end, rows, n)[::-1], axis=0)[::-1]
    w = weights[..., order]  # (..., n, C): each class's clips in its score order
    positives = w * t
    tp = np.cumsum(positives, axis=-2)
    drawn = np.cumsum(w, axis=-2)
    end = np.broadcast_to(end, w.shape)
    at_end = np.take_along_axis(drawn, end, axis=-2)  # > 0 wherever a positive is counted
    precision = np.take_along_axis(tp, end, axis=-2) / np.where(at_end > 0, at_end, 1.0)
    n_pos = tp[..., -1, :]
    hits = (positives * precision).sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos > 0, hits / n_pos, np.nan)


RESAMPLINGS = ("multinomial", "bayesian")


def resample_weights(n: int, n_boot: int, rng: np.random.Generator, resampling: str = "multinomial") -> np.ndarray:
    """(n_boot, n) clip weights of each replicate, averaging 1. ``multinomial``: how often each clip is
    drawn with replacement (the classic bootstrap; :func:`resample_indices` then :func:`clip_counts`).
    ``bayesian``: Dirichlet(1, ..., 1) weights times n (Rubin's Bayesian bootstrap): every clip keeps a
    positive weight, so a class with one or two positives is never dropped from a replicate's mAP, the
    drop that pushes multinomial mAP replicates above the point on a few dozen clips."""
    if resampling == "multinomial":
        return clip_counts(resample_indices(n, n_boot, rng), n).astype(np.float64)
    if resampling == "bayesian":
        if n < 1 or n_boot < 1:
            raise ValueError(f"need at least one clip and one replicate, got n={n}, n_boot={n_boot}")
        return rng.dirichlet(np.ones(n), size=n_boot) * n
    raise ValueError(f"resampling must be one of {RESAMPLINGS}, got {resampling!r}")


def _clip_replicates(metric: str, targets: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The metric of one seed's scores under each row of clip weights; nan for a skipped mAP replicate."""
    if metric == "accuracy":
        correct = (np.argmax(scores, axis=1) == targets).astype(np.float64)
        return (weights * correct).sum(axis=1) / weights.sum(axis=1)
    out = np.full(len(weights), np.nan)
    chunk = max(1, _MAP_CHUNK_ELEMENTS // targets.size)  # replicates per batch, bounding the memory
    for b0 in range(0, len(weights), chunk):
        ap = weighted_average_precision(targets, scores, weights[b0 : b0 + chunk])
        scored = np.isfinite(ap).any(axis=1)
        out[b0 : b0 + chunk][scored] = np.nanmean(ap[scored], axis=1)
    return out


def _checked(metric: str, targets: np.ndarray, scores_by_seed: Sequence[np.ndarray]) -> tuple[np.ndarray, list]:
    _check_metric(metric)
    targets = np.asarray(targets)
    if not len(scores_by_seed):
        raise ValueError("need the scores of at least one seed")
    scores = [np.asarray(s) for s in scores_by_seed]
    for s in scores:
        if s.ndim != 2 or len(s) != len(targets):
            raise ValueError(f"scores {s.shape} must be (clips, classes) with {len(targets)} clips")
        if metric == "map" and s.shape != targets.shape:
            raise ValueError(f"map: targets {targets.shape} and scores {s.shape} must have one shape")
    if metric == "accuracy" and targets.ndim != 1:
        raise ValueError(f"accuracy: targets must be class ids (clips,), got {targets.shape}")
    return targets, scores


def _seed_mean(per_seed: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(seeds, n_boot) replicates -> (n_boot,): each replicate's mean over seeds drawn with replacement."""
    k, n_boot = per_seed.shape
    if k == 1:
        return per_seed[0]
    drawn = rng.integers(0, k, size=(n_boot, k))
    return per_seed[drawn, np.arange(n_boot)[:, None]].mean(axis=1)


def _point(metric: str, targets: np.ndarray, scores: list[np.ndarray]) -> float:
    point = float(np.mean([metric_score(metric, targets, s) for s in scores]))
    if not np.isfinite(point):
        raise ValueError("map: no class has a positive among the clips")
    return point


def bootstrap_replicates(
    metric: str,
    targets: np.ndarray,
    scores_by_seed: Sequence[np.ndarray],
    n_boot: int = 1000,
    seed: int = 0,
    resampling: str = "multinomial",
) -> np.ndarray:
    """The (n_boot,) replicates :func:`score_interval` takes quantiles of (nan: a skipped mAP replicate);
    public so the resampling itself can be checked."""
    targets, scores = _checked(metric, targets, scores_by_seed)
    rng = np.random.default_rng(seed)
    w = resample_weights(len(targets), n_boot, rng, resampling)
    return _seed_mean(np.stack([_clip_replicates(metric, targets, s, w) for s in scores]), rng)


METHODS = ("bc", "percentile")


def _percentile(point: float, replicates: np.ndarray, level: float, method: str = "percentile") -> Interval:
    """The interval from the replicates: ``percentile`` takes their quantiles; ``bc`` (bias-corrected
    percentile) first shifts the quantile levels by how far the replicates sit off the point, z0 =
    Phi^-1(share of replicates below the point, ties counted half), levels Phi(2 z0 + z_alpha). A mAP on
    a few dozen clips needs it: duplicated positives raise a resample's AP, so the replicates sit above
    the point and a plain percentile interval can leave the point at its lower edge."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    kept = replicates[np.isfinite(replicates)]
    if not len(kept):
        raise ValueError("every bootstrap replicate was skipped (no class with a positive in any resample)")
    q = np.array([(1.0 - level) / 2.0, (1.0 + level) / 2.0])
    if method == "bc":
        below = np.mean(kept < point) + 0.5 * np.mean(kept == point)
        z0 = ndtri(np.clip(below, 0.5 / len(kept), 1.0 - 0.5 / len(kept)))
        q = ndtr(2.0 * z0 + ndtri(q))
    low, high = np.quantile(kept, q)
    return Interval(point, float(low), float(high))


def score_interval(
    metric: str,
    targets: np.ndarray,
    scores_by_seed: Sequence[np.ndarray],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    resampling: str = "multinomial",
) -> Interval:
    """Mean over seeds of the metric on all clips, with an interval over clips and seeds (``method``:
    ``percentile`` | ``bc``, see :func:`_percentile`; ``resampling``: :func:`resample_weights`)."""
    targets, scores = _checked(metric, targets, scores_by_seed)
    point = _point(metric, targets, scores)
    reps = bootstrap_replicates(metric, targets, scores, n_boot, seed, resampling)
    return _percentile(point, reps, level, method)


def paired_difference(
    metric: str,
    targets: np.ndarray,
    scores_a: Sequence[np.ndarray],
    scores_b: Sequence[np.ndarray],
    n_boot: int = 1000,
    level: float = 0.95,
    seed: int = 0,
    method: str = "percentile",
    resampling: str = "multinomial",
) -> Interval:
    """mean_over_seeds(A) - mean_over_seeds(B), each replicate scoring both on the same resampled clips:
    far tighter than two separate intervals when A and B find the same clips hard."""
    targets, a = _checked(metric, targets, scores_a)
    _, b = _checked(metric, targets, scores_b)
    point = _point(metric, targets, a) - _point(metric, targets, b)
    rng = np.random.default_rng(seed)
    w = resample_weights(len(targets), n_boot, rng, resampling)
    rep_a = _seed_mean(np.stack([_clip_replicates(metric, targets, s, w) for s in a]), rng)
    rep_b = _seed_mean(np.stack([_clip_replicates(metric, targets, s, w) for s in b]), rng)
    return _percentile(point, rep_a - rep_b, level, method)


def verdict(diff: Interval, a: str, b: str) -> str:
    """What an A - B interval supports: a winner only when the interval excludes 0."""
    if diff.low > 0:
        return f"{a} higher"
    if diff.high < 0:
        return f"{b} higher"
    return "no difference resolved (the interval includes 0)"
