"""Bootstrap intervals against exact enumeration, scipy.stats.bootstrap and scikit-learn."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from scipy.stats import bootstrap
from sklearn.metrics import average_precision_score

from sslam.downstream.bootstrap import (
    Interval,
    bootstrap_replicates,
    clip_counts,
    metric_score,
    paired_difference,
    resample_indices,
    score_interval,
    verdict,
    weighted_average_precision,
)
from sslam.downstream.metrics import accuracy, mean_average_precision

NO_DIFFERENCE = "no difference resolved (the interval includes 0)"


def single_label(correct: np.ndarray, classes: int = 4, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels and scores whose argmax is right exactly on the clips where ``correct`` is true."""
    rng = np.random.default_rng(seed)
    n = len(correct)
    labels = rng.integers(0, classes, n)
    predicted = np.where(correct, labels, (labels + 1 + rng.integers(0, classes - 1, n)) % classes)
    scores = rng.random((n, classes))
    scores[np.arange(n), predicted] += 1.0
    return labels, scores


def with_labels(labels: np.ndarray, correct: np.ndarray, classes: int = 4, seed: int = 0) -> np.ndarray:
    """Scores right on ``correct`` for the given labels (several seeds or encoders on one task)."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    predicted = np.where(correct, labels, (labels + 1) % classes)
    scores = rng.random((n, classes))
    scores[np.arange(n), predicted] += 1.0
    return scores


def exact_quantile(support: list[Fraction], probs: list[Fraction], q: float) -> Fraction:
    """The smallest support value whose cumulative probability reaches q."""
    cum = Fraction(0)
    for v, p in zip(support, probs):
        cum += p
        if cum >= Fraction(q):
            return v
    return support[-1]


def test_three_clips_against_exact_enumeration():
    """Correctness [1, 0, 1]: the 27 equally likely resamples give the exact law of the bootstrap mean."""
    correct = np.array([True, False, True])
    labels, scores = single_label(correct)
    law: dict[Fraction, Fraction] = {}
    for draw in itertools.product(range(3), repeat=3):
        mean = Fraction(int(sum(correct[list(draw)])), 3)
        law[mean] = law.get(mean, Fraction(0)) + Fraction(1, 27)
    support = sorted(law)
    probs = [law[v] for v in support]
    assert support == [0, Fraction(1, 3), Fraction(2, 3), 1]
    assert probs == [Fraction(1, 27), Fraction(6, 27), Fraction(12, 27), Fraction(8, 27)]

    reps = bootstrap_replicates("accuracy", labels, [scores], n_boot=40000, seed=3)
    assert set(np.round(reps * 3).astype(int)) == {0, 1, 2, 3}
    for v, p in zip(support, probs):
        assert np.mean(np.isclose(reps, float(v))) == pytest.approx(float(p), abs=0.01)
    assert reps.mean() == pytest.approx(float(sum(v * p for v, p in zip(support, probs))), abs=0.005)
    for level in (0.95, 0.90, 0.50):
        iv = score_interval("accuracy", labels, [scores], n_boot=40000, level=level, seed=3)
        assert iv.point == pytest.approx(2 / 3)
        assert iv.low == float(exact_quantile(support, probs, (1 - level) / 2))
        assert iv.high == float(exact_quantile(support, probs, (1 + level) / 2))
    # the 90% interval is not just the range of the support
    assert score_interval("accuracy", labels, [scores], n_boot=40000, level=0.9, seed=3).low == 1 / 3


def test_resample_indices_and_counts():
    idx = resample_indices(5, 7, np.random.default_rng(0))
    assert idx.shape == (7, 5) and idx.min() >= 0 and idx.max() < 5
    counts = clip_counts(idx, 5)
    assert counts.shape == (7, 5) and (counts.sum(axis=1) == 5).all()
    for b in range(7):
        assert list(counts[b]) == [list(idx[b]).count(i) for i in range(5)]
    with pytest.raises(ValueError, match="at least one clip"):
        resample_indices(0, 3, np.random.default_rng(0))


def test_accuracy_replicates_are_the_metric_on_the_resampled_clips():
    rng = np.random.default_rng(1)
    labels, scores = single_label(rng.random(40) < 0.6)
    reps = bootstrap_replicates("accuracy", labels, [scores], n_boot=30, seed=5)
    idx = resample_indices(40, 30, np.random.default_rng(5))  # drawn first, as documented
    assert reps == pytest.approx([accuracy(labels[r], scores[r]) for r in idx], abs=1e-12)


def test_accuracy_interval_matches_scipy():
    rng = np.random.default_rng(2)
    correct = rng.random(150) < 0.7
    labels, scores = single_label(correct)
    ours = score_interval("accuracy", labels, [scores], n_boot=20000, seed=0)
    ref = bootstrap((correct.astype(float),), np.mean, method="percentile", n_resamples=20000, rng=1)
    assert ours.point == pytest.approx(correct.mean())
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.015)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.015)
    assert 0.05 < ours.high - ours.low < 0.2


def test_paired_difference_matches_scipy():
    rng = np.random.default_rng(3)
    hard = rng.random(150) < 0.3  # clips both find hard: the pairing should cancel them
    ca = ~hard & (rng.random(150) < 0.9)
    cb = ~hard & (rng.random(150) < 0.75)
    labels, a = single_label(ca)
    b = with_labels(labels, cb, seed=1)
    ours = paired_difference("accuracy", labels, [a], [b], n_boot=20000, seed=0)
    ref = bootstrap(
        (ca.astype(float), cb.astype(float)),
        lambda x, y, axis=-1: np.mean(x, axis=axis) - np.mean(y, axis=axis),
        paired=True,
        method="percentile",
        n_resamples=20000,
        rng=1,
    )
    assert ours.point == pytest.approx(ca.mean() - cb.mean())
    assert ours.low == pytest.approx(ref.confidence_interval.low, abs=0.015)
    assert ours.high == pytest.approx(ref.confidence_interval.high, abs=0.015)
    # the unpaired intervals of A and B overlap far more than the paired difference is wide
    ia = score_interval("accuracy", labels, [a], n_boot=2000)
    ib = score_interval("accuracy", labels, [b], n_boot=2000)
    assert ours.high - ours.low < (ia.high - ia.low) + (ib.high - ib.low)


def test_identical_encoders_resolve_no_difference():
    rng = np.random.default_rng(4)
    labels, s = single_label(rng.random(100) < 0.5)
    for group in ([s], [s, s.copy()]):
        diff = paired_difference("accuracy", labels, group, [x.copy() for x in group], n_boot=500)
        assert (diff.point, diff.low, diff.high) == (0.0, 0.0, 0.0)
        assert verdict(diff, "A", "B") == NO_DIFFERENCE
    y = (rng.random((100, 6)) < 0.2).astype(int)
    m = rng.random((100, 6))
    diff = paired_difference("map", y, [m], [m.copy()], n_boot=300)
    assert (diff.low, diff.high) == (0.0, 0.0)


def test_clearly_better_encoder_wins():
    rng = np.random.default_rng(5)
    ca = np.zeros(200, bool)
    ca[rng.permutation(200)[:180]] = True  # 90% right
    cb = np.zeros(200, bool)
    cb[rng.permutation(200)[:60]] = True  # 30% right
    labels, a = single_label(ca)
    b = with_labels(labels, cb, seed=2)
    diff = paired_difference("accuracy", labels, [a], [b])
    assert diff.point == pytest.approx(0.6)
    assert diff.low < 0.6 < diff.high and diff.low > 0.4
    assert verdict(diff, "A", "B") == "A higher"
    assert verdict(paired_difference("accuracy", labels, [b], [a]), "B", "A") == "A higher"


def test_verdict_and_json():
    assert verdict(Interval(0.1, 0.01, 0.2), "sslam", "eat") == "sslam higher"
    assert verdict(Interval(-0.1, -0.2, -0.01), "sslam", "eat") == "eat higher"
    assert verdict(Interval(0.1, 0.0, 0.2), "sslam", "eat") == NO_DIFFERENCE
    assert Interval(0.1234567, 0.1, 0.2).to_json() == {"point": 0.12346, "low": 0.1, "high": 0.2}


def test_weighted_average_precision_matches_scikit_learn_on_resamples():
    """The AP of a resample from clip weights equals scikit-learn's on the explicitly repeated clips."""
    rng = np.random.default_rng(6)
    y = (rng.random((50, 8)) < 0.2).astype(int)
    y[:, 2] = 0
    y[:, 5] = 0
    y[7, 5] = 1  # a class with a single positive: absent from some resamples
    scores = rng.random((50, 8))
    scores[:, 4] = np.round(scores[:, 4], 1)  # ties
    idx = resample_indices(50, 40, rng)
    ap = weighted_average_precision(y, scores, clip_counts(idx, 50))
    assert ap.shape == (40, 8)
    for b, rows in enumerate(idx):
        for k in range(8):
            if y[rows, k].any():
                assert ap[b, k] == pytest.approx(average_precision_score(y[rows, k], scores[rows, k]), abs=1e-12)
            else:
                assert np.isnan(ap[b, k])
    assert np.isnan(ap[:, 2]).all() and np.isnan(ap[:, 5]).any() and np.isfinite(ap[:, 5]).any()
    # unit weights: the metric on the clips themselves
    assert weighted_average_precision(y, scores, np.ones(50)) == pytest.approx(
        mean_average_precision(y, scores)[1], abs=1e-12, nan_ok=True
    )


def test_map_point_and_replicates():
    rng = np.random.default_rng(7)
    y = (rng.random((120, 10)) < 0.15).astype(int)
    y[:, 3] = 0  # no positive: left out, as AudioSet does
    s1 = y * 0.4 + rng.random((120, 10))
    s2 = y * 0.2 + rng.random((120, 10))
    has = y.any(axis=0)
    iv = score_interval("map", y, [s1], n_boot=200)
    assert iv.point == pytest.approx(mean_average_precision(y, s1)[0], abs=1e-12)
    assert iv.point == pytest.approx(average_precision_score(y[:, has], s1[:, has], average="macro"), abs=1e-12)
    assert metric_score("map", y, s1) == iv.point
    assert iv.low < iv.point < iv.high
    two = score_interval("map", y, [s1, s2], n_boot=200)
    assert two.point == pytest.approx((mean_average_precision(y, s1)[0] + mean_average_precision(y, s2)[0]) / 2)
    reps = bootstrap_replicates("map", y, [s1], n_boot=20, seed=9)
    idx = resample_indices(120, 20, np.random.default_rng(9))
    assert reps == pytest.approx([mean_average_precision(y[r], s1[r])[0] for r in idx], abs=1e-12)


def test_map_replicate_without_positive_is_skipped():
    """Two clips, one positive: a resample drawing only the negative (1 in 4) has no AP at all."""
    y = np.array([[1, 0], [0, 0]])
    s = np.array([[0.9, 0.3], [0.1, 0.7]])
    reps = bootstrap_replicates("map", y, [s], n_boot=4000, seed=0)
    assert np.isnan(reps).mean() == pytest.approx(0.25, abs=0.03)
    assert (reps[np.isfinite(reps)] == 1.0).all()
    iv = score_interval("map", y, [s], n_boot=4000)
    assert (iv.point, iv.low, iv.high) == (1.0, 1.0, 1.0)
    with pytest.raises(ValueError, match="no class has a positive"):
        score_interval("map", np.zeros((2, 2), int), [s])


def test_seeds_are_resampled_with_replacement():
    """One seed always right, one always wrong: clip resampling changes nothing, and a replicate's mean
    over two seeds drawn with replacement is 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4."""
    labels = np.arange(60) % 3
    right = with_labels(labels, np.ones(60, bool), classes=3)
    wrong = with_labels(labels, np.zeros(60, bool), classes=3)
    reps = bootstrap_replicates("accuracy", labels, [right, wrong], n_boot=8000)
    for v, p in ((0.0, 0.25), (0.5, 0.5), (1.0, 0.25)):
        assert np.mean(reps == v) == pytest.approx(p, abs=0.02)
    assert score_interval("accuracy", labels, [right, wrong], n_boot=8000, level=0.4).low == 0.5
    assert score_interval("accuracy", labels, [right, wrong], n_boot=8000).low == 0.0
    # A and B each resample their own seeds: two identical two-seed groups still differ in a replicate
    # with probability 1 - (1/16 + 1/4 + 1/16) = 5/8
    diff = paired_difference("accuracy", labels, [right, wrong], [right, wrong], n_boot=8000, level=0.5)
    assert (diff.low, diff.high) == (-0.5, 0.5)


def test_seed_spread_widens_the_interval():
    rng = np.random.default_rng(8)
    labels = rng.integers(0, 4, 200)
    good = with_labels(labels, rng.random(200) < 0.8, seed=1)
    poor = with_labels(labels, rng.random(200) < 0.4, seed=2)
    one = score_interval("accuracy", labels, [good], seed=11)
    assert score_interval("accuracy", labels, [good, good.copy()], seed=11) == one
    both = score_interval("accuracy", labels, [good, poor], seed=11)
    single = [score_interval("accuracy", labels, [s], seed=11) for s in (good, poor)]
    assert both.high - both.low > 1.5 * max(iv.high - iv.low for iv in single)
    assert both.low < single[1].point and both.high > single[0].point
    y = (rng.random((200, 5)) < 0.3).astype(int)
    m = y + rng.random((200, 5))
    assert score_interval("map", y, [m, m.copy()], n_boot=200, seed=4) == score_interval(
        "map", y, [m], n_boot=200, seed=4
    )


def test_inputs_are_checked():
    labels, scores = single_label(np.array([True, False, True]))
    with pytest.raises(ValueError, match="unknown metric"):
        score_interval("f1", labels, [scores])
    with pytest.raises(ValueError, match="at least one seed"):
        score_interval("accuracy", labels, [])
    with pytest.raises(ValueError, match="3 clips"):
        score_interval("accuracy", labels, [scores[:2]])
    with pytest.raises(ValueError, match="level"):
        score_interval("accuracy", labels, [scores], level=1.0)


def test_bias_corrected_interval_by_hand():
    """bc: z0 = Phi^-1(share below the point, ties half), levels Phi(2 z0 + z), by hand with scipy.stats.norm;
    replicates symmetric about the point give the percentile interval; replicates sitting above the point
    (a small-sample mAP's) move the interval down so it holds the point."""
    from scipy.stats import norm

    from sslam.downstream.bootstrap import _percentile

    reps = np.arange(1000, dtype=np.float64) / 1000.0  # uniform on [0, 1)
    sym = _percentile(0.4995, reps, 0.95, "bc")
    per = _percentile(0.4995, reps, 0.95, "percentile")
    assert (sym.low, sym.high) == pytest.approx((per.low, per.high), abs=1e-9)
    point = 0.2005  # no replicate equals it (ties count half)
    z0 = norm.ppf(np.mean(reps < point))
    q = norm.cdf(2 * z0 + norm.ppf([0.025, 0.975]))
    bc = _percentile(point, reps, 0.95, "bc")
    assert (bc.low, bc.high) == pytest.approx(tuple(np.quantile(reps, q)), abs=1e-12)
    assert bc.low < point < bc.high and per.low < point  # the percentile interval hardly reaches below
    assert bc.high < per.high
    with pytest.raises(ValueError, match="method"):
        _percentile(point, reps, 0.95, "bca")


def test_bayesian_weights_and_weighted_ap_against_scikit_learn():
    """Dirichlet weights: positive, each row summing to n; the weighted AP equals scikit-learn's AP with
    sample_weight on every class and replicate; weighted accuracy is the weighted mean of correctness."""
    from sklearn.metrics import average_precision_score

    from sslam.downstream.bootstrap import _clip_replicates, resample_weights

    rng = np.random.default_rng(4)
    w = resample_weights(30, 6, rng, "bayesian")
    assert w.shape == (6, 30) and (w > 0).all() and np.allclose(w.sum(1), 30)
    y = (rng.random((30, 4)) < 0.3).astype(int)
    y[0, :] = 1
    scores = np.round(rng.random((30, 4)), 1)  # ties
    ap = weighted_average_precision(y, scores, w)
    for b in range(6):
        for c in range(4):
            ref = average_precision_score(y[:, c], scores[:, c], sample_weight=w[b])
            assert ap[b, c] == pytest.approx(ref, abs=1e-12)
    labels = rng.integers(0, 3, 30)
    probs = rng.random((30, 3))
    correct = (probs.argmax(1) == labels).astype(float)
    np.testing.assert_allclose(_clip_replicates("accuracy", labels, probs, w), (w * correct).sum(1) / 30)
    with pytest.raises(ValueError, match="resampling"):
        resample_weights(30, 6, rng, "jackknife")


def test_bayesian_map_replicates_centre_on_the_point_where_multinomial_ones_do_not():
    """40 clips, 16 classes of one or two positives scored at random (a small soundscape task's tail):
    a multinomial resample drops a class whenever its positives go undrawn, lifting the replicates above
    the point; Dirichlet weights keep every class, and the point sits inside their bulk."""
    rng = np.random.default_rng(0)
    y = np.zeros((40, 16), dtype=int)
    for c in range(16):
        y[rng.choice(40, size=1 + c % 2, replace=False), c] = 1
    scores = rng.random((40, 16))
    point = metric_score("map", y, scores)
    multi = bootstrap_replicates("map", y, [scores], n_boot=2000, seed=0)
    bayes = bootstrap_replicates("map", y, [scores], n_boot=2000, seed=0, resampling="bayesian")
    assert np.mean(multi < point) < 0.15
    assert 0.25 < np.mean(bayes < point) < 0.75
    iv = score_interval("map", y, [scores], 2000, 0.95, 0, "percentile", "bayesian")
    assert iv.low < point < iv.high
