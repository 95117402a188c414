"""Anytime-valid shares: the betting confidence sequence against its reference, its time-uniform
coverage, and the share region against the two-group closed form."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medfair_audit.metrics.estimates import HeldOut
from medfair_audit.metrics.sequential import BettingCS, SequentialShares, betting_interval


def _reference_log_capital(x: np.ndarray, m: float, alpha: float) -> float:
    """Waudby-Smith & Ramdas (2023), hedged capital with predictable-mixture EB bets, written
    out observation by observation with the defaults of their ``confseq`` package
    (``betting_mart``: θ = 1/2, bets truncated at 1/(2m); ``lambda_predmix_eb``: one fake
    observation at mean 1/2, variance 1/4)."""
    log_pos = log_neg = 0.0
    total, dev, var_prev = 0.0, 0.0, 0.25
    a = alpha / 2
    for t, xt in enumerate(x, start=1):
        lam = math.sqrt(2 * math.log(1 / a) / (t * math.log(1 + t) * var_prev))
        log_pos += math.log(1 + min(lam, 0.5 / m) * (xt - m))
        log_neg += math.log(1 - min(lam, 0.5 / (1 - m)) * (xt - m))
        total += xt
        mean = min((0.5 + total) / (t + 1), 1.0)
        dev += (xt - mean) ** 2
        var_prev = (0.25 + dev) / (t + 1)
    return max(log_pos, log_neg) - math.log(2)


def test_the_capital_equals_the_papers_process_written_out():
    rng = np.random.default_rng(0)
    x = rng.beta(2, 5, size=300)
    cs = BettingCS(alpha=0.05, grid=20)
    cs.update(x[:7])
    cs.update(x[7:], chunk=64)  # chunking and resuming change nothing
    for j in (1, 5, 9, 14, 18):
        assert cs.log_capital()[j] == pytest.approx(
            _reference_log_capital(x, cs.m[j], 0.05), abs=1e-9
        )


def test_state_round_trips_and_continues_the_same_sequence():
    rng = np.random.default_rng(2)
    x = rng.uniform(size=500)
    whole = BettingCS(alpha=0.05, grid=200)
    whole.update(x)
    first = BettingCS(alpha=0.05, grid=200)
    first.update(x[:123])
    again = BettingCS.from_state(first.state())
    again.update(x[123:])
    np.testing.assert_allclose(again.log_capital(), whole.log_capital(), atol=1e-10)
    assert again.interval() == whole.interval()


def test_the_sequence_covers_at_every_n_at_once():
    """Over 400 streams, the truth leaves the sequence at *any* of 1,500 looks in at most α."""
    rng = np.random.default_rng(3)
    alpha, misses, widths = 0.1, 0, []
    for _ in range(400):
        x = rng.beta(1, 3, size=1500)  # mean 1/4
        cs = BettingCS(alpha=alpha, grid=400)
        left = False
        for a in range(0, 1500, 50):
            cs.update(x[a : a + 50])
            lo, hi = cs.interval()
            left |= not lo <= 0.25 <= hi
        misses += left
        widths.append(hi - lo)
    assert misses / 400 <= alpha  # typically far below: the bound is conservative
    assert np.mean(widths) < 0.1  # and it shrinks: ±0.05 after 1,500 observations


def test_a_fixed_sample_interval_covers_and_is_narrower_than_hoeffding():
    rng = np.random.default_rng(4)
    n, hits, width = 400, 0, []
    for _ in range(150):
        x = rng.beta(2, 2, size=n)
        lo, hi = betting_interval(x, 0.05)
        hits += lo <= 0.5 <= hi
        width.append(hi - lo)
    assert hits / 150 >= 0.95
    assert np.mean(width) < 2 * math.sqrt(math.log(2 / 0.05) / (2 * n))


def _heldout(rng, k, per, sep=2.0):
    labels = np.repeat(np.arange(k), per)
    score = rng.normal(size=(len(labels), k))
    score[np.arange(len(labels)), labels] += sep
    z = sep * score
    p = np.exp(z - z.max(1, keepdims=True))
    return HeldOut(labels=labels, probs=p / p.sum(1, keepdims=True), predicted=None), sep


def test_two_groups_give_the_closed_form_over_the_box():
    rng = np.random.default_rng(5)
    held, _ = _heldout(rng, 2, 200)
    seq = SequentialShares(heldout=held)
    seq.update(held.probs[rng.choice(400, size=300)])
    (lo0, hi0), (lo1, hi1) = seq.intervals()
    mu_lo, mu_hi = seq._cs[0].interval()
    corners = [
        (mu - s01) / (s11 - s01)
        for mu in (mu_lo, mu_hi)
        for s01 in (seq.s_lo[0, 1], seq.s_hi[0, 1])
        for s11 in (seq.s_lo[1, 1], seq.s_hi[1, 1])
    ]
    assert lo1 == pytest.approx(max(0.0, min(corners)), abs=1e-7)
    assert hi1 == pytest.approx(min(1.0, max(corners)), abs=1e-7)
    assert (lo0, hi0) == pytest.approx((1 - hi1, 1 - lo1), abs=1e-7)
    # the closed form is the linear programme's answer
    lp = seq._linear_programme([(mu_lo, mu_hi)])
    assert np.allclose(lp, [(lo0, hi0), (lo1, hi1)], atol=1e-7)


def test_three_group_region_covers_the_truth_and_flags_images_no_share_explains():
    rng = np.random.default_rng(6)
    held, sep = _heldout(rng, 3, 300)
    truth = np.array([0.1, 0.3, 0.6])
    seq = SequentialShares(heldout=held)
    labels = rng.choice(3, size=2000, p=truth)
    score = rng.normal(size=(2000, 3))
    score[np.arange(2000), labels] += sep
    z = sep * score
    p = np.exp(z - z.max(1, keepdims=True))
    seq.update(p / p.sum(1, keepdims=True))
    region = seq.intervals()
    assert all(lo <= t <= hi for (lo, hi), t in zip(region, truth, strict=True))
    assert max(hi - lo for lo, hi in region) < 0.35
    # images that every held-out class would call "group 0" with certainty: no share explains them
    odd = SequentialShares(heldout=held)
    odd.update(np.tile([[1.0, 0.0, 0.0]], (3000, 1)))
    assert odd.intervals() is None


def test_the_sequential_study_stops_each_rule_at_its_own_precision():
    from medfair_audit.metrics.simulate import sequential_study

    r = sequential_study(male_share=0.9, precision=0.1, reps=3, max_n=2048, per_group=1000)
    for rule in ("sequential", "naive"):
        assert r[rule]["capped"] == 0.0 and r[rule]["mean_width"] <= 0.2 + 1e-12
        assert r[rule]["median_n"] % r["look_every"] == 0  # stops only at looks
    # the anytime-valid interval is the wider at any n, so it never stops first
    assert r["sequential"]["mean_n"] >= r["naive"]["mean_n"]
