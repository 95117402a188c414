from __future__ import annotations

import numpy as np
import pytest

from medfair_audit.metrics.frame import summarise
from medfair_audit.metrics.functional import kl_divergence, wilson_interval


def test_summary_numbers_match_their_definitions():
    rng = np.random.default_rng(0)
    p_male = rng.beta(5, 1, 200)
    probs = np.stack([1 - p_male, p_male], 1)
    target = np.array([0.42, 0.58])
    confusion = np.array([[0.9, 0.1], [0.15, 0.85]])
    s = summarise(probs, ["female", "male"], target, confusion=confusion, n_boot=200)
    n_male = int((p_male > 0.5).sum())
    assert s["counts"] == {"female": 200 - n_male, "male": n_male}
    raw = s["proportions"]["raw"]["male"]
    assert raw["value"] == n_male / 200 and raw["ci"] == list(wilson_interval(n_male, 200))
    assert s["proportions"]["probabilistic"]["male"]["value"] == pytest.approx(p_male.mean())
    corrected = s["proportions"]["corrected"]["male"]["value"]
    assert corrected == pytest.approx(min(1.0, (n_male / 200 - 0.1) / 0.75), abs=1e-6)
    d = s["distances"]["raw"]
    assert d["kl_target_to_generated"]["value"] == pytest.approx(
        kl_divergence(target, np.array([1 - n_male / 200, n_male / 200]))
    )
    assert d["gaps"]["male"]["value"] == pytest.approx(n_male / 200 - 0.58)
    lo, hi = d["kl_target_to_generated"]["ci"]
    assert lo <= d["kl_target_to_generated"]["value"] <= hi
    assert s["chi_square"]["df"] == 1 and s["sample_size"]["needed"] > 0


def test_empty_group_is_present_and_finite():
    probs = np.tile([0.1, 0.9], (50, 1))
    s = summarise(probs, ["female", "male"], np.array([0.42, 0.58]), n_boot=20)
    assert s["counts"]["female"] == 0
    assert s["proportions"]["raw"]["female"]["value"] == 0.0
    assert s["proportions"]["raw"]["female"]["ci"][0] == 0.0
    kl = s["distances"]["raw"]["kl_target_to_generated"]
    assert np.isfinite(kl["value"]) and all(np.isfinite(kl["ci"]))


def test_bootstrap_is_seeded():
    probs = np.random.default_rng(1).dirichlet([1, 1, 1], 80)
    t = np.array([0.2, 0.3, 0.5])
    assert summarise(probs, list("abc"), t, seed=4) == summarise(probs, list("abc"), t, seed=4)
