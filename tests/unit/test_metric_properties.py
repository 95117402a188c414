"""Property tests (Hypothesis) of the metric functions: the laws every input must keep."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from medfair_audit.metrics.functional import (
    adjusted_count,
    fid_from_moments,
    jensen_shannon,
    kl_divergence,
    l2_fairness_discrepancy,
    total_variation,
    wilson_interval,
)

weights = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=2, max_size=8)


def _pair(draw_p: list[float], draw_q: list[float]) -> tuple[np.ndarray, np.ndarray]:
    k = min(len(draw_p), len(draw_q))
    p, q = np.array(draw_p[:k]) + 1e-3, np.array(draw_q[:k]) + 1e-3
    return p / p.sum(), q / q.sum()


@given(weights, weights, st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_divergences_are_non_negative_zero_on_equality_and_ignore_group_order(a, b, rnd):
    p, q = _pair(a, b)
    order = list(range(len(p)))
    rnd.shuffle(order)
    for f in (kl_divergence, jensen_shannon, total_variation, l2_fairness_discrepancy):
        d = f(p, q)
        assert d >= -1e-12 and np.isfinite(d)
        assert abs(f(p, p)) < 1e-12
        assert abs(f(p[order], q[order]) - d) < 1e-9  # naming the groups in another order
    assert total_variation(p, q) <= 1 + 1e-12
    assert jensen_shannon(p, q) <= np.log(2) + 1e-9


@given(weights)
@settings(max_examples=200, deadline=None)
def test_smoothed_kl_to_a_point_mass_stays_finite(a):
    p, _ = _pair(a, a)
    point = np.zeros_like(p)
    point[0] = 1.0
    assert np.isfinite(kl_divergence(p, point)) and np.isfinite(kl_divergence(point, p))


@given(
    st.integers(2, 6),
    st.integers(0, 10_000),
    st.floats(0.0, 5.0, allow_nan=False),
)
@settings(max_examples=60, deadline=None)
def test_fid_is_non_negative_symmetric_and_zero_on_equal_moments(d, seed, shift):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(3 * d, d)), rng.normal(size=(3 * d, d)) + shift
    m1, s1 = a.mean(0), np.cov(a, rowvar=False)
    m2, s2 = b.mean(0), np.cov(b, rowvar=False)
    fid = fid_from_moments(m1, s1, m2, s2)
    assert fid >= -1e-9
    assert abs(fid - fid_from_moments(m2, s2, m1, s1)) < 1e-6 * max(1.0, fid)
    assert abs(fid_from_moments(m1, s1, m1, s1)) < 1e-6


@given(st.integers(0, 500), st.integers(1, 500), st.floats(0.5, 0.999))
@settings(max_examples=200, deadline=None)
def test_wilson_intervals_lie_in_the_unit_interval_and_hold_the_estimate(count, n, level):
    count = min(count, n)
    lo, hi = wilson_interval(count, n, confidence=level)
    assert 0 <= lo <= count / n <= hi <= 1


@given(weights, st.floats(0.6, 0.95))
@settings(max_examples=200, deadline=None)
def test_adjusted_count_inverts_a_known_confusion_matrix(a, accuracy):
    true, _ = _pair(a, a)
    k = len(true)
    confusion = np.full((k, k), (1 - accuracy) / (k - 1))
    np.fill_diagonal(confusion, accuracy)
    observed = true @ confusion  # what a classifier with these rates reports
    np.testing.assert_allclose(adjusted_count(observed, confusion), true, atol=1e-8)
