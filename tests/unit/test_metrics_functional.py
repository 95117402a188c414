from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import linalg, stats
from scipy.spatial.distance import jensenshannon

from medfair_audit.metrics.functional import (
    corrected_proportions,
    fid_from_moments,
    jensen_shannon,
    kernel_inception_distance,
    kl_divergence,
    l2_fairness_discrepancy,
    total_variation,
    wilson_interval,
)

dists = st.lists(st.floats(0.01, 1.0), min_size=2, max_size=5).map(
    lambda v: np.array(v) / np.sum(v)
)


@given(dists, dists)
def test_kl_and_js_match_scipy(p, q):
    if len(p) != len(q):
        q = np.resize(q, len(p))
        q = q / q.sum()
    assert kl_divergence(p, q, eps=0) == pytest.approx(stats.entropy(p, q), rel=1e-9, abs=1e-12)
    # scipy takes the square root of the divergence, which is NaN when rounding makes it < 0
    reference = np.nan_to_num(jensenshannon(p, q)) ** 2
    assert jensen_shannon(p, q) == pytest.approx(reference, rel=1e-6, abs=1e-12)
    assert jensen_shannon(p, q) >= 0


def test_zero_proportions_give_finite_stated_smoothing():
    target = np.array([0.42, 0.58])
    empty = np.array([0.0, 1.0])
    assert np.isinf(kl_divergence(target, empty, eps=0))
    value = kl_divergence(target, empty)  # default smoothing 1e-3
    eps = 1e-3
    ps, qs = (1 - eps) * target + eps / 2, (1 - eps) * empty + eps / 2
    assert np.isfinite(value) and value == pytest.approx(stats.entropy(ps, qs))
    assert kl_divergence(target, target) == 0.0
    assert np.isfinite(jensen_shannon(target, empty))


def test_tv_and_l2_discrepancy_by_hand():
    p, q = np.array([0.85, 0.15]), np.array([0.58, 0.42])
    assert total_variation(p, q) == pytest.approx(0.27)
    assert l2_fairness_discrepancy(p, q) == pytest.approx(np.sqrt(2 * 0.27**2))


@pytest.mark.parametrize("count,n", [(0, 10), (3, 10), (10, 10), (58, 100), (850, 1000)])
def test_wilson_interval_matches_statsmodels(count, n):
    from statsmodels.stats.proportion import proportion_confint

    ref = proportion_confint(count, n, alpha=0.05, method="wilson")
    assert wilson_interval(count, n) == pytest.approx(ref, abs=1e-12)


def test_wilson_textbook_value():
    # Newcombe (1998), Table I: 81/263 -> 0.2553 to 0.3662
    lo, hi = wilson_interval(81, 263)
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)


def test_corrected_proportions_recover_a_known_mixture():
    rng = np.random.default_rng(0)
    c = np.array([[0.85, 0.15], [0.10, 0.90]])  # P(pred j | true i)
    raw_err, cor_err = [], []
    for _ in range(200):
        true = rng.uniform(0.1, 0.9)
        n = 2000
        labels = rng.random(n) < true  # True = group 1
        pred = np.where(labels, rng.random(n) < c[1, 1], rng.random(n) < c[0, 1])
        observed = np.array([1 - pred.mean(), pred.mean()])
        q = corrected_proportions(observed, c)
        assert q.sum() == pytest.approx(1) and (q >= 0).all()
        raw_err.append(abs(observed[1] - true))
        cor_err.append(abs(q[1] - true))
    assert np.mean(cor_err) < 0.5 * np.mean(raw_err)
    # exact inversion without noise, and clipping to the simplex when noise overshoots
    q = np.array([0.3, 0.7])
    assert corrected_proportions(c.T @ q, c) == pytest.approx(q, abs=1e-6)
    assert corrected_proportions(np.array([0.0, 1.0]), c) == pytest.approx([0, 1], abs=1e-6)


def _moments(x):
    return x.mean(0), np.cov(x, rowvar=False)


def test_fid_matches_scipy_sqrtm_and_torchmetrics():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(500, 16))
    b = rng.normal(0.3, 1.2, size=(400, 16)) @ rng.normal(size=(16, 16)) * 0.3
    m1, s1 = _moments(a)
    m2, s2 = _moments(b)
    ours = fid_from_moments(m1, s1, m2, s2)
    covmean = linalg.sqrtm(s1 @ s2).real
    ref = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
    assert ours == pytest.approx(ref, rel=1e-6)
    import torch
    from torchmetrics.image.fid import _compute_fid

    tm = _compute_fid(*(torch.from_numpy(v) for v in (m1, s1, m2, s2)))
    assert ours == pytest.approx(float(tm), rel=1e-6)


def test_fid_of_a_set_with_itself_is_zero_even_when_singular():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(10, 32))  # fewer samples than dimensions: singular covariance
    m, s = _moments(x)
    assert fid_from_moments(m, s, m, s) == pytest.approx(0.0, abs=1e-8)


@settings(max_examples=20, deadline=None)
@given(st.integers(0, 10_000))
def test_fid_is_symmetric_and_non_negative(seed):
    rng = np.random.default_rng(seed)
    a, b = rng.normal(size=(40, 6)), rng.normal(0.5, 2.0, size=(30, 6))
    f1 = fid_from_moments(*_moments(a), *_moments(b))
    f2 = fid_from_moments(*_moments(b), *_moments(a))
    assert f1 >= 0 and f1 == pytest.approx(f2, rel=1e-6, abs=1e-9)


def test_kid_matches_torchmetrics_estimator_on_one_subset():
    import torch
    from torchmetrics.image.kid import poly_mmd

    rng = np.random.default_rng(3)
    a, b = rng.normal(size=(50, 8)), rng.normal(0.4, 1.0, size=(50, 8))
    ours, _ = kernel_inception_distance(a, b, subsets=1, subset_size=50)
    ref = float(poly_mmd(torch.from_numpy(a), torch.from_numpy(b), degree=3, gamma=None, coef=1.0))
    assert ours == pytest.approx(ref, rel=1e-9)
    same, _ = kernel_inception_distance(a, a, subsets=5, subset_size=50)
    assert abs(same) < 1e-9 + abs(ours) * 1e-6 or same < ours


def test_feature_moments_are_chunking_invariant():
    from medfair_audit.metrics.accumulators import FeatureMoments

    x = np.random.default_rng(5).normal(size=(257, 7))
    whole = FeatureMoments(7).update(x)
    parts = [FeatureMoments(7).update(c) for c in np.array_split(x, [3, 100, 101])]
    merged = FeatureMoments(7)
    for p in parts:
        merged.merge(p)
    for m in (whole, merged):
        assert m.n == 257
        assert np.allclose(m.mean, x.mean(0), atol=1e-12)
        assert np.allclose(m.cov, np.cov(x, rowvar=False), atol=1e-12)
