"""Precision/recall/density/coverage, CMMD and the Vendi score: against independent references,
the interval's coverage by simulation, and a generator that collapses one group."""

from __future__ import annotations

import numpy as np
import pytest

from medfair_audit.audit.quality import (
    COLLAPSE_COVERAGE,
    VENDI_N,
    quality_by_group,
    vendi_interval,
)
from medfair_audit.metrics.accumulators import FeatureMoments
from medfair_audit.metrics.functional import cmmd, prdc, vendi_score


@pytest.mark.parametrize(("n_real", "n_fake", "dim", "k", "shift"), [
    (60, 45, 8, 5, 0.0), (80, 80, 32, 3, 0.7), (30, 50, 4, 1, 2.0), (25, 25, 64, 5, 0.2),
])  # fmt: skip
def test_prdc_equals_the_prdc_package(n_real, n_fake, dim, k, shift):
    reference = pytest.importorskip("prdc", reason="prdc is a test extra (pip install prdc)")
    rng = np.random.default_rng(n_real + dim)
    real = rng.normal(size=(n_real, dim))
    fake = rng.normal(loc=shift, scale=1.3, size=(n_fake, dim))
    want = reference.compute_prdc(real, fake, k)
    got = prdc(real, fake, k=k)
    for key in ("precision", "recall", "density", "coverage"):
        assert got[key] == pytest.approx(float(want[key]), abs=1e-6), key


def _cmmd_numpy(x, y, sigma=10.0, scale=1000.0):
    """The CMMD formula written out term by term (unit-norm rows, diagonal left out)."""
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    y = y / np.linalg.norm(y, axis=1, keepdims=True)

    def k(a, b):
        return np.exp(-np.sum((a - b) ** 2) / (2 * sigma**2))

    m, n = len(x), len(y)
    sxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    syy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    sxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return scale * (sxx + syy - 2 * sxy)


@pytest.mark.parametrize(("m", "n", "dim", "shift"), [(20, 25, 16, 0.0), (30, 12, 8, 1.5)])
def test_cmmd_equals_the_formula_and_is_unbiased(m, n, dim, shift):
    rng = np.random.default_rng(m * n)
    x, y = rng.normal(size=(m, dim)), rng.normal(loc=shift, size=(n, dim))
    assert cmmd(x, y) == pytest.approx(_cmmd_numpy(x, y), abs=1e-6)
    # unbiased: two samples of one distribution average to 0 (the biased V-statistic does not)
    values = [cmmd(rng.normal(size=(10, 4)), rng.normal(size=(10, 4))) for _ in range(400)]
    assert abs(np.mean(values)) < 3 * np.std(values) / np.sqrt(len(values))


def test_vendi_score_equals_the_vendi_package_and_counts_distinct_images():
    vendi = pytest.importorskip("vendi_score.vendi", reason="vendi-score is a test extra")
    rng = np.random.default_rng(3)
    x = rng.normal(size=(40, 12))
    assert vendi_score(x) == pytest.approx(vendi.score_X(x), abs=1e-6)
    assert vendi_score(np.repeat(x[:1], 10, axis=0)) == pytest.approx(1.0, abs=1e-9)
    assert vendi_score(np.eye(7)) == pytest.approx(7.0, abs=1e-9)
    assert vendi_score(np.zeros((5, 3))) == 1.0


def test_the_vendi_interval_covers_the_expected_score_at_its_nominal_rate():
    """Known truth: E[Vendi of 32 images] from 4,000 independent draws of 32 features."""
    rng = np.random.default_rng(0)
    scales = np.linspace(2.0, 0.2, 12)

    def draw(n):
        return rng.normal(size=(n, 12)) * scales + 0.5

    truth = np.mean([vendi_score(draw(VENDI_N)) for _ in range(4000)])
    reps = 600
    hits = 0
    for r in range(reps):
        ci = vendi_interval(draw(5 * VENDI_N), seed=r)["ci"]
        hits += ci[0] <= truth <= ci[1]
    rate = hits / reps
    # 95% nominal; 600 replicates give a binomial sd of 0.9 points
    assert 0.92 <= rate <= 0.98, rate


def test_too_few_images_for_two_blocks_give_no_vendi_interval():
    out = vendi_interval(np.ones((2 * VENDI_N - 1, 3)))
    assert out["value"] is None and out["ci"] is None and "fewer than" in out["reason"]


def test_a_group_drawn_from_one_prototype_is_caught_and_named():
    """One group's images are one prototype plus small noise; the other's follow the real
    images: recall and coverage fall to ≤ 0.1 for the first and stay ≥ 0.8 for the second,
    its Vendi score is near 1, and the warning names it."""
    rng = np.random.default_rng(1)
    dim, n = 16, 160
    centres = np.stack([np.full(dim, 3.0), np.full(dim, -3.0)])
    ref = np.concatenate([c + rng.normal(size=(n, dim)) for c in centres])
    ref_labels = np.repeat([0, 1], n)
    collapsed = centres[0] + rng.normal(size=dim) + 0.02 * rng.normal(size=(n, dim))
    intact = centres[1] + rng.normal(size=(n, dim))
    gen = [collapsed, intact]
    moments = [FeatureMoments(dim).update(g) for g in gen]
    quality, warnings = quality_by_group(
        moments, gen, ref, ref_labels, ["female", "male"], draws=5, seed=0
    )
    at = str(quality["equal_n"])
    female = quality["by_group"]["female"]
    male = quality["by_group"]["male"]
    f_prdc, m_prdc = female["at_n"][at]["prdc"], male["at_n"][at]["prdc"]
    assert f_prdc["recall"]["mean"] <= 0.1 and f_prdc["coverage"]["mean"] <= 0.1
    assert m_prdc["recall"]["mean"] >= 0.8 and m_prdc["coverage"]["mean"] >= 0.8
    assert female["vendi"]["value"] < 1.2 < male["vendi"]["value"]
    assert female["vendi"]["ci"][0] <= female["vendi"]["value"] <= female["vendi"]["ci"][1]
    assert female.get("collapsed") is True and "collapsed" not in male
    assert (
        [w for w in warnings if "prototypes" in w]
        == [w for w in warnings if "'female'" in w and "prototypes" in w]
        != []
    )
    assert f_prdc["coverage"]["mean"] < COLLAPSE_COVERAGE


def test_embedding_features_add_cmmd_on_the_same_draws_as_fid():
    rng = np.random.default_rng(2)
    dim = 8
    ref = rng.normal(size=(80, dim))
    gen = [rng.normal(size=(40, dim)), rng.normal(loc=1.0, size=(40, dim))]
    moments = [FeatureMoments(dim).update(g) for g in gen]
    labels = np.arange(80) % 2
    kw = {"draws": 4, "seed": 5}
    plain, _ = quality_by_group(moments, gen, ref, labels, ["a", "b"], **kw)
    emb, _ = quality_by_group(moments, gen, ref, labels, ["a", "b"], embedding=True, **kw)
    for g in ("a", "b", "overall"):
        for n, at in emb["by_group"][g]["at_n"].items():
            assert at["fid"] == plain["by_group"][g]["at_n"][n]["fid"]  # same draws
            assert "cmmd" in at and "cmmd" not in plain["by_group"][g]["at_n"][n]
    assert emb["version"] == 2 and "CMMD" in emb["method"]
