"""Several attributes: age bands, joint targets, joint phantoms, product held-out errors, Holm,
joint cells recovered from a simulated mixture with known truth."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from medfair_audit.attributes import (
    age_band,
    age_band_labels,
    cell_name,
    parse_age_bands,
    parse_classifier_specs,
    sort_levels,
    split_cell,
)
from medfair_audit.data.phantom import PhantomConfig, _assignments, build_phantom
from medfair_audit.exceptions import ConfigError
from medfair_audit.metrics.estimates import HeldOut, ProductHeldOut, estimate_shares
from medfair_audit.metrics.frame import cell_tests, holm_adjust
from medfair_audit.metrics.simulate import SimulatedCategorical, joint_coverage_study
from medfair_audit.models.attributes import ClassifierSet
from medfair_audit.models.classifier import SubgroupClassifier
from medfair_audit.target import Target, parse_target, target_from_labels

JOINT = "female/<40=0.1,female/40-59=0.2,female/60+=0.05,male/<40=0.15,male/40-59=0.2,male/60+=0.3"


# -- names and bands ------------------------------------------------------------------------


def test_age_bands_cover_every_age_once():
    assert age_band_labels() == ("<40", "40-59", "60+")
    assert age_band_labels((18, 65)) == ("<18", "18-64", "65+")
    assert [age_band(a) for a in (0, 39, 39.9, 40, 59, 59.99, 60, 120)] == [
        "<40", "<40", "<40", "40-59", "40-59", "40-59", "60+", "60+",
    ]  # fmt: skip
    assert parse_age_bands("30, 50,70") == (30, 50, 70)
    for bad in ("60,40", "40,40", "abc", "", "40.5", "0,40", "40,200"):
        with pytest.raises(ConfigError) as info:
            parse_age_bands(bad)
        assert info.value.param == "age_bands"


def test_levels_sort_naturally_and_cells_round_trip():
    assert sort_levels(["60+", "<40", "40-59"]) == ["<40", "40-59", "60+"]
    assert sort_levels(["male", "female"]) == ["female", "male"]
    assert split_cell(cell_name(("female", "<40"))) == ("female", "<40")


def test_classifier_specs():
    assert str(parse_classifier_specs(["models/sex"])) == "models/sex"
    spec = parse_classifier_specs(["sex=models/s", "age_band=models/a"])
    assert {k: str(v) for k, v in spec.items()} == {"sex": "models/s", "age_band": "models/a"}
    for bad in (["a", "b"], ["sex=a", "b"], ["sex=a", "sex=b"], ["=a"], []):
        with pytest.raises(ConfigError) as info:
            parse_classifier_specs(bad)
        assert info.value.param == "classifier"


# -- joint targets --------------------------------------------------------------------------


def test_joint_target_from_labels_equals_a_crosstab_and_round_trips(tmp_path):
    rng = np.random.default_rng(0)
    table = pd.DataFrame(
        {
            "sex": rng.choice(["female", "male"], 500),
            "age_band": rng.choice(["<40", "40-59", "60+"], 500, p=[0.2, 0.5, 0.3]),
            "split": rng.choice(["train", "test"], 500),
        }
    )
    table.loc[(table.sex == "female") & (table.age_band == "<40"), "age_band"] = "40-59"
    path = tmp_path / "labels.csv"
    table.to_csv(path, index=False)
    t = target_from_labels(path, column=["sex", "age_band"])
    expected = pd.crosstab(table.sex, table.age_band, normalize="all")
    assert t.attributes == ("sex", "age_band") and t.attribute == "sex,age_band"
    assert t.groups == tuple(
        f"{s}/{a}" for s in ("female", "male") for a in ("<40", "40-59", "60+")
    )
    for g, p in t.proportions.items():
        s, a = split_cell(g)
        assert p == pytest.approx(expected.loc[s, a] if a in expected.columns else 0.0)
    assert t.zero_cells == ("female/<40",)  # no rows: kept with 0 and stated
    assert t.marginal("sex").proportions["male"] == pytest.approx((table.sex == "male").mean())
    assert t.marginal("age_band").groups == ("<40", "40-59", "60+")
    t.save(tmp_path / "t.json")
    back = Target.load(tmp_path / "t.json")
    assert back == t and back.is_joint
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["zero_cells"] == ["female/<40"] and set(doc["marginals"]) == {"sex", "age_band"}
    sub = target_from_labels(path, column=["sex", "age_band"], where={"split": "test"})
    assert sub.n == int((table.split == "test").sum())


def test_inline_joint_targets_and_their_errors():
    t = parse_target(JOINT, attribute=["sex", "age_band"])
    assert t.proportions["male/60+"] == 0.3 and t.levels["age_band"] == ("<40", "40-59", "60+")
    partial = parse_target("female/<40=0.5,male/60+=0.5", attribute=["sex", "age_band"])
    assert partial.proportions["female/60+"] == 0 and len(partial.zero_cells) == 2
    with pytest.raises(ConfigError, match="attributes"):
        parse_target(JOINT)  # cells without attribute names
    with pytest.raises(ConfigError, match="joint cells"):
        parse_target("male=0.5,female=0.5", attribute=["sex", "age_band"])
    with pytest.raises(ConfigError, match="one level per attribute"):
        parse_target("female=0.5,male/60+=0.5", attribute=["sex", "age_band"])
    with pytest.raises(ConfigError, match="sum"):
        parse_target("female/<40=0.5,male/60+=0.6", attribute=["sex", "age_band"])
    with pytest.raises(ConfigError, match="not one of them"):
        t.marginal("grade")
    single = parse_target("male=0.58,female=0.42")
    assert single.groups == ("female", "male") and not single.is_joint
    assert single.marginal("sex") is single


# -- the phantom ----------------------------------------------------------------------------


def test_joint_phantom_has_exact_cells_and_ages_inside_their_bands(tmp_path):
    cfg = PhantomConfig(n=40, seed=2, joint=JOINT, workers=1)
    sexes, _, _, _, bands = _assignments(cfg)
    counts = pd.Series([cell_name(c) for c in zip(sexes, bands, strict=True)]).value_counts()
    assert counts.to_dict() == {
        "female/<40": 4, "female/40-59": 8, "female/60+": 2,
        "male/<40": 6, "male/40-59": 8, "male/60+": 12,
    }  # fmt: skip
    meta = pd.read_csv(build_phantom(tmp_path / "p", cfg).metadata_csv)
    assert (meta.age_band == [age_band(a) for a in meta.age]).all()
    assert (meta.age.between(18, 90)).all()
    assert pd.crosstab(meta.sex, meta.age_band).loc["male", "60+"] == 12
    with pytest.raises(ConfigError) as info:
        PhantomConfig(n=10, joint=JOINT, male_fraction=0.8)
    assert info.value.param == "joint"
    with pytest.raises(ConfigError, match="expected sex/age band cells"):
        PhantomConfig(n=10, joint="female/old=1")


def test_an_age_band_uses_the_same_random_draws_as_a_free_age():
    """Restricting the age maps the same normal draw into the band: the rest of the image's
    draws are unchanged, and without a band the age is the plain clipped normal draw."""
    from medfair_audit.data.phantom import AnatomyModel

    model = AnatomyModel()
    for seed in range(20):
        free_rng, band_rng, ref = (np.random.default_rng(seed) for _ in range(3))
        free = model.draw(free_rng, "female")
        banded = model.draw(band_rng, "female", (60.0, float("inf")))
        assert free_rng.random() == band_rng.random()  # same stream position after the draw
        assert free["age"] == round(float(np.clip(ref.normal(55.0, 14.0), 18, 90)))
        assert 60 <= banded["age"] <= 90
        assert free["head_scale"] == banded["head_scale"]  # sex-only parameters are equal


# -- product held-out errors ----------------------------------------------------------------


def _heldouts(seed: int = 0) -> tuple[HeldOut, HeldOut]:
    rng = np.random.default_rng(seed)
    return (
        SimulatedCategorical(k=2, separation=1.8).heldout(rng, 150),
        SimulatedCategorical(k=3, separation=1.5).heldout(rng, 120),
    )


def test_product_matrices_are_kronecker_products_and_resample_like_their_parts():
    a, b = _heldouts()
    prod = ProductHeldOut([a, b])
    assert prod.k == 6 and prod.has_soft
    for soft in (False, True):
        np.testing.assert_allclose(prod.matrix(soft), np.kron(a.matrix(soft), b.matrix(soft)))
        rngs = [np.random.default_rng(i) for i in range(6)]
        draws = prod.resample(rngs, 4000, soft)
        assert draws.shape == (4000, 6, 6)
        np.testing.assert_allclose(draws.mean(0), prod.matrix(soft), atol=0.01)
        # the covariance of each row's estimate, from the delta-free formula, matches the
        # Monte Carlo spread of the resampled rows
        cov = prod.mean_covariances(soft)
        for y in range(6):
            mc = np.cov(draws[:, y].T)
            np.testing.assert_allclose(np.diag(cov[y]), np.diag(mc), rtol=0.15, atol=2e-5)
    sims = prod.simulate_hard(np.random.default_rng(1), 3000)
    np.testing.assert_allclose(sims.mean(0), prod.matrix(False), atol=0.01)


def test_a_joint_classifiers_marginal_sums_its_cells():
    rng = np.random.default_rng(3)
    labels = rng.integers(0, 6, 200)
    probs = rng.dirichlet(np.ones(6), 200)
    joint = HeldOut(labels=labels, probs=probs, predicted=None)
    sex_of = np.array([0, 0, 0, 1, 1, 1])
    marg = joint.marginal(sex_of, 2)
    np.testing.assert_array_equal(marg.labels, sex_of[labels])
    np.testing.assert_allclose(marg.probs, np.stack([probs[:, :3].sum(1), probs[:, 3:].sum(1)], 1))


def test_classifier_set_joint_and_marginal_probabilities():
    identity = torch.nn.Identity()
    sex = SubgroupClassifier(identity, attribute="sex", groups=("female", "male"))
    age = SubgroupClassifier(identity, attribute="age_band", groups=("<40", "40-59", "60+"))
    cset = ClassifierSet([sex, age], ["s", "a"])
    assert cset.groups[:2] == ["female/<40", "female/40-59"] and cset.width == 5
    rng = np.random.default_rng(0)
    stored = np.concatenate([rng.dirichlet(np.ones(2), 7), rng.dirichlet(np.ones(3), 7)], 1)
    joint = cset.joint(stored)
    np.testing.assert_allclose(joint.sum(1), 1)
    np.testing.assert_allclose(joint.reshape(7, 2, 3).sum(2), stored[:, :2])
    np.testing.assert_allclose(cset.marginal(stored, "age_band"), stored[:, 2:])
    as_torch = cset.joint(torch.tensor(stored))
    np.testing.assert_allclose(as_torch.numpy(), joint)
    one = SubgroupClassifier(identity, attribute="sex,age_band", groups=cset.groups)
    jc = ClassifierSet([one], ["j"])
    assert jc.joint_classifier and jc.levels == cset.levels
    np.testing.assert_allclose(jc.marginal(joint, "sex"), stored[:, :2])
    with pytest.raises(ConfigError):
        ClassifierSet([sex, sex], ["a", "b"])
    target = parse_target("male=0.5,female=0.5")
    with pytest.raises(ConfigError, match="attributes"):
        cset.check_target(target)


# -- tests across cells ---------------------------------------------------------------------


def test_holm_equals_statsmodels():
    from statsmodels.stats.multitest import multipletests

    rng = np.random.default_rng(5)
    for m in (1, 2, 6, 12):
        p = rng.uniform(size=m) ** 2
        p[:2] = p[0]  # ties
        np.testing.assert_allclose(holm_adjust(p), multipletests(p, method="holm")[1])


def test_cell_tests_reject_a_cell_far_off_target_and_not_a_true_one():
    a, b = _heldouts(1)
    clfs = [SimulatedCategorical(k=2, separation=1.8), SimulatedCategorical(k=3, separation=1.5)]
    rng = np.random.default_rng(2)
    truth = np.array([0.1, 0.2, 0.1, 0.2, 0.2, 0.2])
    cells = rng.choice(6, size=3000, p=truth)
    s, g = np.unravel_index(cells, (2, 3))
    probs = (clfs[0].probs(rng, s)[:, :, None] * clfs[1].probs(rng, g)[:, None, :]).reshape(3000, 6)
    est = estimate_shares(probs, ProductHeldOut([a, b]), n_boot=400, seed=0)
    off = truth.copy()
    off[0], off[5] = 0.25, 0.05  # cells 0 and 5 are far off; the others are on target
    tests = cell_tests(est, "pacc", off, 0.95)
    assert tests[0]["reject"] and tests[5]["reject"]
    assert not any(t["reject"] for t in tests[1:5])
    assert all(0 < t["p_value"] <= t["p_holm"] <= 1 for t in tests)


def test_joint_cells_of_a_simulated_mixture_are_recovered_within_their_intervals():
    """Known joint truth, one simulated classifier per attribute: the per-cell intervals cover
    near their level, all cells at once at the simultaneous level, and Holm keeps the
    family-wise error of the cell tests under a true null."""
    truth = np.array([[0.05, 0.15, 0.12], [0.18, 0.30, 0.20]])
    r = joint_coverage_study(truth=truth, n=1500, reps=40, n_boot=200, seed=3)
    for reading in ("acc", "pacc", "em"):
        cov = r["shares"][reading]["coverage_per_cell"]
        assert min(cov) >= 0.8 and np.mean(cov) >= 0.88, (reading, cov)
        assert r["shares"][reading]["simultaneous_coverage"] >= 0.85
    assert r["holm_familywise_rejection"] <= 0.15


def test_independence_check_flags_a_classifier_whose_accuracy_depends_on_the_other_attribute():
    from medfair_audit.audit.joint import independence_check

    identity = torch.nn.Identity()

    def member(attr, groups, acc):
        table = {
            cell_name((s, a)): {"accuracy": acc(s, a), "count": 100.0}
            for s in ("female", "male")
            for a in ("<40", "60+")
        }
        ev = {"by_group": {"sex × age_band": table}}
        return SubgroupClassifier(identity, attribute=attr, groups=groups, evaluation=ev)

    sex = member("sex", ("female", "male"), lambda s, a: 0.9)
    fair_age = member("age_band", ("<40", "60+"), lambda s, a: 0.8)
    biased_age = member("age_band", ("<40", "60+"), lambda s, a: 0.95 if s == "male" else 0.6)
    ok = independence_check(ClassifierSet([sex, fair_age], ["s", "a"]))
    assert ok is not None and not ok["doubtful"] and len(ok["tests"]) == 4
    bad = independence_check(ClassifierSet([sex, biased_age], ["s", "a"]))
    assert bad["doubtful"]
    flagged = {(t["classifier"], t["level"]) for t in bad["tests"] if t["p_holm"] <= 0.05}
    assert flagged == {("age_band", "<40"), ("age_band", "60+")}
