"""The audit's statistics: estimators, intervals with known truth, censoring, tests, pairs."""

import itertools

import numpy as np
import pytest
from scipy import stats

from medfair_audit.exceptions import ConfigError
from medfair_audit.metrics.estimates import (
    HeldOut,
    distance_interval,
    estimate_shares,
    gof_test,
    region_from_intervals,
    sample_size,
    share_intervals,
)
from medfair_audit.metrics.frame import dispersion, over_prompts, summarise
from medfair_audit.metrics.functional import (
    MAX_CONDITION,
    adjusted_count,
    em_prior_shift,
    kl_divergence,
    stationary_prior,
    total_variation,
)
from medfair_audit.metrics.paired import paired_change
from medfair_audit.metrics.simulate import (
    SimulatedClassifier,
    coverage_study,
    dispersion_study,
    paired_study,
    wording_study,
)

GROUPS = ["female", "male"]
TARGET = np.array([0.42, 0.58])


def _held(seed=0, per_group=200):
    return SimulatedClassifier().heldout(np.random.default_rng(seed), per_group)


def _generated(q_male, n, seed=1):
    rng = np.random.default_rng(seed)
    return SimulatedClassifier().probs(rng, (rng.random(n) < q_male).astype(int))


def test_adjusted_count_inverts_the_confusion_matrix_for_k_groups():
    c = np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.05, 0.05, 0.9]])
    q = np.array([0.2, 0.5, 0.3])
    assert adjusted_count(q @ c, c) == pytest.approx(q, abs=1e-12)
    batch = adjusted_count(np.stack([q @ c, np.array([1.0, 0, 0])]), c)
    assert batch[0] == pytest.approx(q)
    assert batch[1].sum() == pytest.approx(1.0) and (batch[1] > 1).any()  # left the simplex
    assert np.isnan(adjusted_count(q, np.full((3, 3), 1 / 3))).all()  # singular: undefined


def test_em_equals_plain_em_iterations_and_the_stationary_prior_recovers_calibration():
    clf = SimulatedClassifier(calibration_prior=0.7)
    held = clf.heldout(np.random.default_rng(0), 20_000)
    assert stationary_prior(held.matrix(soft=True))[1] == pytest.approx(0.7, abs=0.01)
    p = _generated(0.3, 500)
    pi = np.array([0.42, 0.58])
    q = pi.copy()
    for _ in range(5000):  # the textbook EM of Saerens et al. (2002)
        a = p * q / pi
        a /= a.sum(1, keepdims=True)
        q = a.mean(0)
    assert em_prior_shift(p, pi) == pytest.approx(q, abs=1e-8)
    # Three groups go through the general iteration; weights act as repeated images.
    p3 = np.random.default_rng(2).dirichlet([2, 3, 4], 300)
    pi3 = np.array([0.3, 0.3, 0.4])
    w = np.random.default_rng(3).integers(0, 3, (1, 300)).astype(float)
    rep = np.repeat(p3, w[0].astype(int), axis=0)
    assert em_prior_shift(p3, pi3, w)[0] == pytest.approx(em_prior_shift(rep, pi3), abs=1e-6)


def test_three_group_em_reaches_the_likelihood_maximum_scipy_finds_in_every_replicate():
    """Accelerated EM (SQUAREM) against scipy's constrained optimiser, on bootstrap replicates
    of three groups with one group nearly absent (where plain EM crawls to the boundary)."""
    from scipy import optimize

    rng = np.random.default_rng(0)
    conf = np.array([[0.8, 0.15, 0.05], [0.1, 0.7, 0.2], [0.05, 0.1, 0.85]])
    labels = rng.choice(3, 512, p=[0.02, 0.48, 0.5])
    p = np.stack([rng.dirichlet(20 * conf[g]) for g in labels])
    prior = np.full(3, 1 / 3)
    w = rng.multinomial(512, np.full(512, 1 / 512), size=40).astype(float)
    q = em_prior_shift(p, prior, w)
    ratio = p / prior
    for b in range(len(w)):
        wb = w[b] / w[b].sum()

        def loglik(x, wb=wb):
            return float((wb * np.log(np.maximum(ratio @ x, 1e-300))).sum())

        best = optimize.minimize(
            lambda x, f=loglik: -f(x), q[b], method="SLSQP", bounds=[(0, 1)] * 3,
            constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1}],
            options={"ftol": 1e-15, "maxiter": 500},
        ).x  # fmt: skip
        assert q[b].sum() == pytest.approx(1) and (q[b] >= 0).all()
        assert loglik(q[b]) >= loglik(np.clip(best, 0, None) / np.clip(best, 0, None).sum()) - 1e-9
        assert q[b] == pytest.approx(best, abs=2e-3)


def test_raw_interval_is_wilson_as_statsmodels_computes_it():
    from statsmodels.stats.proportion import proportion_confint

    probs = _generated(0.8, 150)
    s = summarise(probs, GROUPS, TARGET, heldout=_held(), n_boot=50)
    k = s["counts"]["male"]
    lo, hi = proportion_confint(k, 150, alpha=0.05, method="wilson")
    assert s["proportions"]["raw"]["male"]["ci"] == pytest.approx([lo, hi], abs=1e-12)


@pytest.mark.parametrize("male", [0.58, 0.90, 0.98])
def test_corrected_share_intervals_cover_the_truth(male):
    """Fast version of benchmarks/bench_calibration.py (fixed seeds, 150 audits)."""
    r = coverage_study(male_share=male, n=256, reps=150, n_boot=300, seed=7)
    for reading in ("acc", "pacc", "em", "raw", "probabilistic"):
        assert 0.89 <= r["shares"][reading]["coverage"] <= 1.0, (reading, r["shares"])
    kl = r["distances"]["pacc"]["kl_target_to_generated"]
    if male == 0.58:
        assert kl["contains_zero"] >= 0.89  # intervals can contain 0
        assert r["chi_square_rejection"] <= 0.09  # the right null: target · C
    else:
        assert kl["coverage"] >= 0.89 and kl["contains_zero"] == 0.0
        assert r["chi_square_rejection"] == 1.0


def test_holding_the_confusion_matrix_fixed_would_under_cover():
    """Why the held-out images are resampled: the same study with C frozen covers less."""
    clf = SimulatedClassifier()
    rng = np.random.default_rng(11)
    hits = {"joint": [], "fixed": []}
    for rep in range(150):
        held = clf.heldout(rng, 200)
        probs = _generated(0.98, 256, seed=1000 + rep)
        joint = estimate_shares(probs, held, n_boot=300, seed=rep)
        frozen = {
            "hard": np.broadcast_to(held.matrix(soft=False), (300, 2, 2)),
            "soft": np.broadcast_to(held.matrix(soft=True), (300, 2, 2)),
        }
        fixed = estimate_shares(probs, held, n_boot=300, seed=rep, confusion_draws=frozen)
        for key, est in (("joint", joint), ("fixed", fixed)):
            lo, hi = share_intervals(est, "pacc", 0.95)[1]
            hits[key].append(lo <= 0.98 <= hi)
    assert np.mean(hits["joint"]) > np.mean(hits["fixed"]) + 0.03


def test_all_male_generator_is_censored_not_a_point_at_zero():
    # 7.8% of images look female: fewer than the classifier calls female among real men (~12%),
    # as in the demo's biased model.
    probs = np.tile([[0.02, 0.98]], (256, 1))
    probs[:20] = [0.9, 0.1]
    s = summarise(probs, GROUPS, TARGET, heldout=_held(), n_boot=300)
    female = s["proportions"]["acc"]["female"]
    assert female["value"] is None and female["censored"] == "below"
    assert female["bound"]["at_most"] == female["ci"][1] > 0
    male = s["proportions"]["acc"]["male"]
    assert male["censored"] == "above" and male["bound"]["at_least"] == male["ci"][0]
    kl = s["distances"]["acc"]["kl_target_to_generated"]
    assert kl["value"] is None and kl["censored"] and kl["bound"]["at_least"] == kl["ci"][0]
    # EM's likelihood peaks on the boundary: its bound comes from the likelihood ratio, so the
    # interval keeps a width although every bootstrap replicate sits on the boundary too.
    em = s["proportions"]["em"]["male"]
    assert em["censored"] == "above" and 0.5 < em["bound"]["at_least"] < 1.0
    assert em["ci"] == [em["bound"]["at_least"], 1.0] and "likelihood-ratio" in em["method"]
    # A raw share of exactly 0 puts KL at the ε ceiling: a bound, not a measurement.
    hard = np.tile([[0.0, 1.0]], (50, 1))
    raw_kl = summarise(hard, GROUPS, TARGET, heldout=_held(), n_boot=50)["distances"]["raw"]
    assert raw_kl["kl_target_to_generated"]["value"] is None
    assert raw_kl["tv"]["value"] == pytest.approx(0.42)


def test_every_draw_beyond_the_simplex_is_flagged_as_a_label_shift_failure():
    # No image looks female at all, far fewer than the ~12% the classifier calls female among
    # real men: no bootstrap draw can reach the simplex, and the entry says why.
    probs = np.tile([[0.02, 0.98]], (128, 1))
    s = summarise(probs, GROUPS, TARGET, heldout=_held(), n_boot=200)
    female = s["proportions"]["pacc"]["female"]
    assert female["value"] is None and female["ci"] == [0.0, 0.0]
    assert female["label_shift_fails"] and "label shift fails" in female["note"]


def test_unidentifiable_or_malformed_confusion_matrices():
    held = HeldOut.from_evaluation(
        {"groups": GROUPS, "confusion_matrix": [[50, 50], [50, 50]]}, GROUPS
    )
    s = summarise(_generated(0.7, 100), GROUPS, TARGET, heldout=held, n_boot=50)
    assert not s["identifiable"] and s["condition_number"]["hard"] > MAX_CONDITION
    e = s["proportions"]["acc"]["male"]
    assert e["value"] is None and e["ci"] == [0.0, 1.0] and "not identifiable" in e["note"]
    with pytest.raises(ConfigError, match="confusion_matrix"):
        HeldOut.from_evaluation(
            {"groups": GROUPS, "confusion_matrix": [[1, float("nan")], [0, 1]]}, GROUPS
        )
    with pytest.raises(ConfigError, match="finite"):
        HeldOut.from_evaluation(
            {"groups": GROUPS, "heldout": {"labels": [0, 1], "probs": [[0.5, np.nan], [0, 1]]}},
            GROUPS,
        )


def test_heldout_reorders_groups_of_the_evaluation():
    ev = {
        "groups": ["male", "female"],
        "heldout": {"labels": [0, 0, 1], "probs": [[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]},
    }
    held = HeldOut.from_evaluation(ev, ["female", "male"])
    assert held.labels.tolist() == [1, 1, 0]
    assert held.probs[0].tolist() == [0.1, 0.9]


def test_distance_intervals_are_the_range_over_the_share_region():
    # Two groups: the region is the share interval, so the range is at its ends (or 0 inside).
    verts = region_from_intervals([(0.30, 0.40), (0.60, 0.70)])
    fn = lambda q: kl_divergence(TARGET, q)  # noqa: E731
    lo, hi = distance_interval(fn, verts, TARGET)
    assert lo == pytest.approx(fn(np.array([0.40, 0.60])))
    assert hi == pytest.approx(fn(np.array([0.30, 0.70])))
    assert distance_interval(fn, region_from_intervals([(0.35, 0.5), (0.5, 0.65)]), TARGET)[0] == 0
    # Three groups: the range matches a brute-force grid over the box ∩ simplex.
    box = [(0.1, 0.3), (0.2, 0.5), (0.3, 0.6)]
    t3 = np.array([0.5, 0.2, 0.3])
    tv = lambda q: total_variation(q, t3)  # noqa: E731
    lo, hi = distance_interval(tv, region_from_intervals(box), t3)
    grid = [
        np.array([a, b, 1 - a - b])
        for a, b in itertools.product(np.linspace(0.1, 0.3, 81), np.linspace(0.2, 0.5, 121))
        if 0.3 - 1e-9 <= 1 - a - b <= 0.6 + 1e-9
    ]
    values = [tv(q) for q in grid]
    assert hi == pytest.approx(max(values), abs=1e-9)
    assert lo == pytest.approx(min(values), abs=3e-3)


def test_goodness_of_fit_reduces_to_pearson_with_a_perfect_classifier():
    counts = np.array([130, 126])
    held = HeldOut(labels=np.repeat([0, 1], 500), probs=None, predicted=np.repeat([0, 1], 500))
    r = gof_test(counts, TARGET, held, n_sim=20_000, seed=0)
    ref = stats.chisquare(counts, 256 * TARGET)
    assert r["statistic"] == pytest.approx(ref.statistic)
    assert r["p_value"] == pytest.approx(ref.pvalue, abs=0.02)


def test_sample_size_predicts_the_bootstrap_half_width_and_its_floor():
    held = _held(per_group=200)
    probs = _generated(0.7, 400)
    s = sample_size(probs, held, np.array([0.3, 0.7]), half_width=0.05, confidence=0.95, soft=True)
    assert s["floor_half_width"] > 0
    n = s["needed"]
    est = estimate_shares(_generated(0.7, n, seed=5), held, n_boot=600, seed=1)
    lo, hi = share_intervals(est, "pacc", 0.95)[1]
    assert (hi - lo) / 2 == pytest.approx(0.05, rel=0.25)
    unreachable = sample_size(
        probs,
        held,
        np.array([0.3, 0.7]),
        half_width=0.5 * s["floor_half_width"],
        confidence=0.95,
        soft=True,
    )
    assert unreachable["needed"] is None


def test_dispersion_matches_scipy_and_contains_zero_on_target():
    held = _held()
    ests, sums = [], []
    for i in range(3):
        probs = _generated(0.58, 300, seed=20 + i)
        est = estimate_shares(probs, held, n_boot=400, seed=i)
        ests.append(est)
        sums.append(summarise(probs, GROUPS, TARGET, heldout=held, estimates=est))
    d = dispersion(ests, sums, ["a", "b", "c"], GROUPS, TARGET, reading="pacc")
    table = np.array([[s["counts"][g] for g in GROUPS] for s in sums])
    assert d["homogeneity"]["p_value"] == pytest.approx(
        stats.chi2_contingency(table, correction=False).pvalue
    )
    q = np.clip(ests[0].point["pacc"], 0, 1)
    assert d["shen_bias"]["per_prompt"][0]["value"] == pytest.approx(abs(q[1] - q[0]))
    assert d["mean_abs_gap"]["ci"][0] == 0.0
    r = dispersion_study(male_share=0.9, n_per_prompt=64, prompts=3, reps=40, n_boot=300)
    assert r["mean_abs_gap_coverage"] >= 0.85 and r["worst_prompt_coverage"] >= 0.85


def test_over_prompts_is_the_prompts_mean_with_scipys_t_interval_when_the_matrix_is_exact():
    """With a held-out set so large that the matrix's error vanishes, the share over the
    wordings is the mean of the prompts' PACC shares and its interval scipy's t interval."""
    held = _held(per_group=100_000)
    ests = [
        estimate_shares(_generated(q, 200, seed=30 + i), held, n_boot=200, seed=i)
        for i, q in enumerate((0.4, 0.55, 0.7, 0.62, 0.5))
    ]
    out = over_prompts(ests, GROUPS, reading="pacc", heldout=held, n_boot=200)
    points = np.array([e.point["pacc"][1] for e in ests])
    male = out["shares"]["male"]
    assert male["value"] == pytest.approx(points.mean())
    lo, hi = stats.t.interval(0.95, len(points) - 1, loc=points.mean(), scale=stats.sem(points))
    assert male["ci"] == pytest.approx([lo, hi], abs=2e-3)
    assert out["shares"]["female"]["value"] == pytest.approx(1 - points.mean())
    # the prompts truly differ (0.4 to 0.7): their sd is seen through the images' noise
    assert 0.06 < out["between_prompt_sd"]["male"] < 0.2
    # one prompt, no held-out set, or a reading without a matrix: not estimated
    assert over_prompts(ests[:1], GROUPS, reading="pacc", heldout=held) is None
    assert over_prompts(ests, GROUPS, reading="pacc", heldout=None) is None
    assert over_prompts(ests, GROUPS, reading="raw", heldout=held) is None
    # without resampled matrices the shared error is unknown: no interval, never a NaN one
    assert over_prompts(ests, GROUPS, reading="pacc", heldout=held, n_boot=0) is None


def test_dispersion_carries_the_share_over_wordings_and_it_round_trips():
    from medfair_audit.metrics.results_json import dispersion_from_json

    held = _held()
    probs = [_generated(q, 120, seed=60 + i) for i, q in enumerate((0.5, 0.7, 0.6))]
    ests = [estimate_shares(p, held, n_boot=100, seed=i) for i, p in enumerate(probs)]
    sums = [
        summarise(p, GROUPS, TARGET, heldout=held, estimates=e)
        for p, e in zip(probs, ests, strict=True)
    ]
    d = dispersion(ests, sums, ["a", "b", "c"], GROUPS, TARGET, reading="pacc", heldout=held)
    assert d["over_prompts"] == over_prompts(ests, GROUPS, reading="pacc", heldout=held)
    assert (
        dispersion(ests, sums, ["a", "b", "c"], GROUPS, TARGET, reading="pacc")["over_prompts"]
        is None
    )  # without the held-out set
    loaded = dispersion_from_json(d, "pacc").over_prompts
    male = d["over_prompts"]["shares"]["male"]
    assert loaded.prompts == 3 and loaded.share("male").value == male["value"]
    assert list(loaded.share("male").ci) == male["ci"]
    assert loaded.between_prompt_sd == d["over_prompts"]["between_prompt_sd"]


def test_over_prompts_adds_the_matrix_error_every_prompt_shares_and_reports_a_bound():
    small, large = _held(per_group=40), _held(per_group=100_000)
    probs = [_generated(0.58, 300, seed=40 + i) for i in range(6)]
    widths = []
    for held in (small, large):
        ests = [estimate_shares(p, held, n_boot=100, seed=i) for i, p in enumerate(probs)]
        ci = over_prompts(ests, GROUPS, reading="pacc", heldout=held)["shares"]["male"]["ci"]
        widths.append(ci[1] - ci[0])
    assert widths[0] > widths[1]
    # every prompt drawn all male: the mean leaves the simplex and is a bound, not a value
    held = _held(per_group=60)
    ests = [estimate_shares(_generated(1.0, 200, seed=50 + i), held, n_boot=50) for i in range(4)]
    assert np.mean([e.point["pacc"][1] for e in ests]) > 1
    male = over_prompts(ests, GROUPS, reading="pacc", heldout=held)["shares"]["male"]
    assert male["value"] is None and male["censored"] == "above"
    assert male["bound"]["at_least"] == male["ci"][0] and male["ci"][1] == 1.0


@pytest.mark.parametrize("between_sd", [0.0, 0.15])
def test_the_share_over_wordings_covers_the_population_mean_where_the_pooled_share_does_not(
    between_sd,
):
    """Known truth: prompts' true shares drawn around 0.58. The t interval covers the mean over
    wordings at its level; the pooled interval (prompts fixed) falls short once prompts differ."""
    r = wording_study(
        male_share=0.58, between_sd=between_sd, prompts=6, n_per_prompt=48, reps=150, n_boot=60
    )
    assert r["coverage"] >= 0.9
    if between_sd:
        assert r["pooled_coverage"] < 0.85 < r["coverage"]
        assert r["mean_between_sd"] == pytest.approx(between_sd, abs=0.04)


def test_paired_change_matches_statsmodels_mcnemar_and_covers():
    from statsmodels.stats.contingency_tables import mcnemar

    a, b = _generated(0.9, 200, seed=3), _generated(0.6, 200, seed=4)
    held = _held()
    r = paired_change(
        a,
        b,
        GROUPS,
        heldout_before=held,
        heldout_after=held,
        same_classifier=True,
        reading="pacc",
        n_boot=300,
    )
    la, lb = a.argmax(1), b.argmax(1)
    table = np.array([[np.sum((la == i) & (lb == j)) for j in (0, 1)] for i in (0, 1)])
    assert r["mcnemar"]["female"]["p_value"] == pytest.approx(mcnemar(table, exact=True).pvalue)
    assert r["changed"] == pytest.approx(
        r["flips"]["female"]["male"] + r["flips"]["male"]["female"]
    )
    study = paired_study(before=0.9, after=0.6, n=256, reps=60, n_boot=300)
    assert study["change_coverage"] >= 0.88
    null = paired_study(before=0.7, after=0.7, n=256, reps=60, n_boot=200, seed=1)
    assert null["mcnemar_rejection"] <= 0.12


def test_a_truly_absent_group_under_label_shift_is_not_called_a_label_shift_failure():
    """Known truth: no generated image is female and the generated images are read exactly as
    the held-out images are (label shift holds). The corrected share then falls below 0 by
    chance, and its whole percentile interval does in about 4% of audits (the old rule raised
    the warning there); past 3.29 bootstrap sd it almost never does. The other side (images
    that look less female than any real man) is flagged in the test above."""
    fires = {"acc": 0, "pacc": 0}
    zero_width = 0
    reps = 300
    for r in range(reps):
        rng = np.random.default_rng(1000 + r)
        held = SimulatedClassifier().heldout(rng, 200)
        probs = SimulatedClassifier().probs(rng, np.ones(256, int))
        s = summarise(probs, GROUPS, TARGET, heldout=held, n_boot=200, seed=r)
        for reading in fires:
            female = s["proportions"][reading]["female"]
            fires[reading] += bool(female.get("label_shift_fails"))
            zero_width += female["ci"][1] - female["ci"][0] <= 0
    assert zero_width >= 5  # the situation the old rule misread does occur here
    assert fires["acc"] <= 1 and fires["pacc"] <= 1, fires


def test_unequal_separations_give_asymmetric_errors_and_stay_calibrated():
    from medfair_audit.metrics.simulate import SimulatedCategorical

    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=300_000)
    clf = SimulatedCategorical(k=3, separations=(1.0, 1.6, 2.4))
    p = clf.probs(np.random.default_rng(1), labels)
    recall = [(p[labels == j].argmax(1) == j).mean() for j in range(3)]
    assert recall[0] < recall[1] < recall[2]  # the weakly separated level is missed most
    for j in range(3):  # calibrated under the uniform prior: P(y = j | p_j ≈ b) ≈ b
        bins = np.digitize(p[:, j], np.linspace(0, 1, 11))
        for b in np.unique(bins):
            sel = bins == b
            if sel.sum() > 2000:
                assert abs((labels[sel] == j).mean() - p[sel, j].mean()) < 0.015
    # equal separations reproduce the single-separation classifier draw for draw
    same = SimulatedCategorical(k=3, separations=(1.6, 1.6, 1.6))
    a = same.probs(np.random.default_rng(2), labels[:500])
    b = SimulatedCategorical(k=3).probs(np.random.default_rng(2), labels[:500])
    np.testing.assert_allclose(a, b, atol=1e-12)


def test_a_truly_absent_group_is_censored_often_and_its_bound_always_holds():
    from medfair_audit.metrics.simulate import censored_study

    study = censored_study(truth=[0.0, 0.4, 0.6], n=200, reps=24, n_boot=100, seed=3)
    for reading in ("acc", "pacc"):
        e = study["shares"][reading]["g0"]
        assert e["n_censored"] >= 4 and e["censored"] == e["n_censored"] / 24
        # a share of exactly 0 is under every "at most" bound: the study must count it as held
        assert e["coverage_given_censored"] == 1.0
        assert e["coverage"] >= e["censored"]


def test_a_conditioned_models_readings_cover_the_truth():
    """Fast version of bench_calibration.py --only conditional (fixed seeds, 150 audits)."""
    from medfair_audit.metrics.simulate import conditional_study

    r = conditional_study(male_share_when_asked=[0.15, 0.9], weights=[0.3, 0.7],
                          n_per_condition=128, reps=150, n_boot=200, seed=5)  # fmt: skip
    assert r["true_marginal"] == pytest.approx(0.3 * 0.15 + 0.7 * 0.9)
    assert min(r["fidelity_coverage"]) >= 0.88
    for reading in ("acc", "pacc"):
        assert 0.89 <= r["marginal"][reading]["coverage"] <= 1.0, r["marginal"]


def test_mixture_estimates_are_the_adjusted_count_of_the_weighted_mean():
    from medfair_audit.metrics.estimates import mixture_estimates
    from medfair_audit.metrics.simulate import SimulatedClassifier

    clf = SimulatedClassifier()
    rng = np.random.default_rng(2)
    held = clf.heldout(rng, 300)
    parts = [clf.probs(rng, (rng.random(n) < q).astype(int)) for q, n in ((0.1, 90), (0.8, 60))]
    est = mixture_estimates(parts, [1, 3], held, n_boot=300, seed=1)
    mean = 0.25 * parts[0].mean(0) + 0.75 * parts[1].mean(0)
    soft = np.stack([held.probs[held.labels == k].mean(0) for k in range(2)])
    assert np.allclose(est.point["pacc"], np.linalg.solve(soft.T, mean))  # q S = mean
    assert est.samples["pacc"].shape == (300, 2) and est.n == 150
    # the same images as one prompt with equal weights: the pooled audit's point estimate
    pooled = estimate_shares(np.concatenate([parts[0][:60], parts[1]]), held, n_boot=0)
    equal = mixture_estimates([parts[0][:60], parts[1]], [1, 1], held, n_boot=0)
    assert np.allclose(equal.point["pacc"], pooled.point["pacc"])
    with pytest.raises(ConfigError):
        mixture_estimates(parts, [1], held)
