"""The quick audit's interval (what ``keep="first-within"`` stops on): references and coverage."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from statsmodels.stats.proportion import proportion_confint

from medfair_audit.remediation.evaluate import reading_interval


def _sums(vectors: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-prompt ``Σ v``, ``Σ v vᵀ`` and counts of per-image vectors, as the quick audit adds."""
    return (
        np.stack([v.sum(0) for v in vectors]),
        np.stack([v.T @ v for v in vectors]),
        np.array([len(v) for v in vectors]),
    )


def test_labels_of_one_prompt_give_wald_s_interval():
    labels = np.array([1] * 37 + [0] * 27)
    onehot = np.eye(2)[labels]
    q, lo, hi = reading_interval(*_sums([onehot]))
    ref = proportion_confint(37, 64, alpha=0.05, method="normal")
    assert q[1] == pytest.approx(37 / 64)
    assert (lo[1], hi[1]) == pytest.approx(ref, abs=1e-12)
    # the other group's interval is the mirror image
    assert (lo[0], hi[0]) == pytest.approx((1 - ref[1], 1 - ref[0]), abs=1e-12)


def test_prompts_are_strata_and_the_matrix_maps_the_mean():
    rng = np.random.default_rng(3)
    vecs = [rng.dirichlet([2, 3, 1], size=n) for n in (20, 50, 31)]
    m = np.array([[0.7, 0.2, 0.1], [0.15, 0.75, 0.1], [0.1, 0.2, 0.7]])
    q, lo, hi = reading_interval(*_sums(vecs), m, level=0.9)
    # independently: the stratified variance of the pooled mean, through M⁻ᵀ
    total = sum(len(v) for v in vecs)
    cov = sum((len(v) / total) ** 2 * np.cov(v.T, ddof=0) / len(v) for v in vecs)
    a = np.linalg.inv(m.T)
    expect = a @ np.concatenate(vecs).mean(0)
    se = np.sqrt(np.diag(a @ cov @ a.T))
    z = stats.norm.ppf(0.95)
    assert q == pytest.approx(expect)
    assert lo == pytest.approx(np.clip(expect - z * se, 0, 1))
    assert hi == pytest.approx(np.clip(expect + z * se, 0, 1))


def test_pacc_interval_covers_the_pooled_share_of_prompts_that_differ():
    """Known truth: 4 prompts of different true shares, probabilities drawn from Dirichlet
    distributions whose means give the soft confusion matrix exactly."""
    rng = np.random.default_rng(11)
    alphas = np.array([[6.0, 2.0, 2.0], [2.0, 5.0, 3.0], [1.5, 2.5, 6.0]])
    m = alphas / alphas.sum(1, keepdims=True)  # E[p | true group]
    shares = np.array([[0.5, 0.3, 0.2], [0.7, 0.2, 0.1], [0.3, 0.3, 0.4], [0.4, 0.5, 0.1]])
    n, sims = 64, 1500
    truth = shares.mean(0)  # equal images a prompt: the pooled share is the prompts' mean
    hits = np.zeros(3)
    for _ in range(sims):
        vecs = []
        for s in shares:
            y = rng.choice(3, size=n, p=s)
            vecs.append(np.stack([rng.dirichlet(alphas[g]) for g in y]))
        _, lo, hi = reading_interval(*_sums(vecs), m)
        hits += (lo <= truth) & (truth <= hi)
    cover = hits / sims
    # binomial sd of a 0.95 coverage over 1500 runs is 0.0056
    assert np.all(np.abs(cover - 0.95) < 0.02), cover


def test_label_interval_covers_the_expected_label_share():
    rng = np.random.default_rng(5)
    shares = np.array([0.45, 0.6, 0.75, 0.8])
    n, sims = 64, 3000
    hits = 0
    for _ in range(sims):
        vecs = [np.eye(2)[(rng.random(n) < s).astype(int)] for s in shares]
        _, lo, hi = reading_interval(*_sums(vecs))
        hits += lo[1] <= shares.mean() <= hi[1]
    assert abs(hits / sims - 0.95) < 0.015, hits / sims
