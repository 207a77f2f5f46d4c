"""The shared warm-up + cosine schedule against values worked out by hand."""

import math

import pytest

from sslam.schedule import warmup_cosine_lr


def test_warmup_is_linear_and_reaches_the_peak():
    assert [warmup_cosine_lr(s, 110, 10, 1.0) for s in (0, 4, 9)] == pytest.approx([0.1, 0.5, 1.0])


def test_cosine_halves_at_the_midpoint_and_ends_at_the_floor():
    assert warmup_cosine_lr(60, 110, 10, 1.0) == pytest.approx(0.5)  # (60 - 10) / 100 = 1/2: cos(pi/2) = 0
    assert warmup_cosine_lr(35, 110, 10, 2.0) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert warmup_cosine_lr(110, 110, 10, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert warmup_cosine_lr(500, 110, 10, 1.0, floor=0.1) == pytest.approx(0.1)  # flat after the end


def test_floor_is_reached_exactly_and_midpoint_is_halfway():
    assert warmup_cosine_lr(10, 10, 2, 1.0, 0.1) == pytest.approx(0.1)
    assert warmup_cosine_lr(6, 10, 2, 1.0, 0.2) == pytest.approx(0.6)  # halfway: (1 + 0.2) / 2


def test_no_warmup_starts_at_the_peak():
    assert warmup_cosine_lr(0, 10, 0, 1.0) == pytest.approx(1.0)
