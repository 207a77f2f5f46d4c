"""Metrics against scikit-learn on random inputs, classes without positives and ties included."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, average_precision_score

from sslam.downstream.metrics import accuracy, average_precision, mean_average_precision, polyphony_breakdown


@pytest.mark.parametrize("seed", range(5))
def test_map_matches_scikit_learn(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random((60, 12)) < 0.2).astype(int)
    y[:, 3] = 0  # a class with no positive: left out of the mean, as AudioSet does
    scores = rng.random((60, 12))
    scores[:, 5] = np.round(scores[:, 5], 1)  # ties
    m, ap = mean_average_precision(y, scores)
    for k in range(12):
        if y[:, k].any():
            assert ap[k] == pytest.approx(average_precision_score(y[:, k], scores[:, k]), abs=1e-12)
        else:
            assert np.isnan(ap[k])
    expected = np.mean([average_precision_score(y[:, k], scores[:, k]) for k in range(12) if y[:, k].any()])
    assert m == pytest.approx(expected, abs=1e-12)


def test_accuracy_and_edge_cases():
    rng = np.random.default_rng(0)
    scores = rng.random((50, 4))
    labels = rng.integers(0, 4, 50)
    assert accuracy(labels, scores) == pytest.approx(accuracy_score(labels, scores.argmax(1)))
    assert average_precision([1, 0, 0], [0.9, 0.1, 0.2]) == 1.0
    assert np.isnan(average_precision([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError, match="must both be"):
        mean_average_precision(np.zeros((3, 2)), np.zeros((3, 3)))


def test_polyphony_breakdown_groups_by_event_count():
    rng = np.random.default_rng(1)
    y = (rng.random((40, 5)) < 0.4).astype(int)
    s = rng.random((40, 5))
    events = np.array([2, 3, 4, 5, 15] * 8)
    out = polyphony_breakdown(y, s, events)
    assert list(out) == ["{2,3}", "{4,5}", "{14+}"]
    sel = np.isin(events, [4, 5])
    assert out["{4,5}"]["clips"] == 16
    assert out["{4,5}"]["map"] == pytest.approx(round(mean_average_precision(y[sel], s[sel])[0], 5))
