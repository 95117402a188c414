"""Losses of remediation: alignment KL (plain and PACC-consistent), expected OT, consistency."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import stats
from scipy.optimize import linear_sum_assignment, minimize_scalar

from medfair_audit.remediation.losses import (
    alignment_kl,
    consistency,
    ot_cross_entropy,
    ot_plan,
    ot_targets,
)


def test_alignment_kl_of_a_known_batch():
    probs = torch.tensor([[0.1, 0.9], [0.3, 0.7], [0.2, 0.8], [0.2, 0.8]])  # mean (0.2, 0.8)
    target = torch.tensor([0.42, 0.58])
    expected = 0.42 * math.log(0.42 / 0.2) + 0.58 * math.log(0.58 / 0.8)
    assert alignment_kl(probs, target).item() == pytest.approx(expected, rel=1e-6)
    assert alignment_kl(torch.tensor([[0.42, 0.58]]), target).item() == pytest.approx(0, abs=1e-7)
    t3 = torch.tensor([0.5, 0.5, 0.0])  # a zero-weight group contributes nothing
    p3 = torch.tensor([[0.4, 0.4, 0.2]])
    assert alignment_kl(p3, t3).item() == pytest.approx(2 * 0.5 * math.log(0.5 / 0.4), rel=1e-6)


def test_alignment_kl_gradient_moves_the_mean_toward_the_target():
    logits = torch.tensor([[0.0, 2.0], [0.0, 1.5], [0.0, 2.5]], requires_grad=True)
    alignment_kl(torch.softmax(logits, -1), torch.tensor([0.5, 0.5])).backward()
    assert (logits.grad[:, 1] > 0).all()  # descending lowers the over-represented group


def _gaussian_classifier(sep: float):
    """A classifier calibrated for a 50/50 training prior: x | y ~ N(±sep/2, 1)."""

    def p_male(x):
        return 1 / (1 + np.exp(-sep * x))  # log-likelihood ratio of the two Gaussians

    grid = np.linspace(-12, 12, 20001)
    w = np.gradient(grid)

    def soft_row(mean):  # E[p | y] by quadrature
        pm = float(np.sum(p_male(grid) * stats.norm.pdf(grid, mean, 1) * w))
        return [1 - pm, pm]

    s = np.array([soft_row(-sep / 2), soft_row(sep / 2)])  # rows: true female, male
    return s


@pytest.mark.parametrize("sep", [1.5, 2.5, 3.5])
def test_corrected_alignment_is_optimal_at_the_target_under_label_shift(sep):
    """A generator whose true male share is π gives E[p̄] = π S (label shift). The corrected loss
    is minimised at π = target; the plain loss (the paper's) is not, for a calibrated classifier
    trained at another prior."""
    s = torch.tensor(_gaussian_classifier(sep))
    target = torch.tensor([0.42, 0.58], dtype=torch.float64)

    def loss(pi, **kw):
        mean = torch.tensor([1 - pi, pi], dtype=torch.float64) @ s
        return alignment_kl(mean[None], target, **kw).item()

    corrected = minimize_scalar(
        lambda x: loss(x, soft_confusion=s), bounds=(0, 1), method="bounded"
    )
    plain = minimize_scalar(loss, bounds=(0, 1), method="bounded")
    assert corrected.x == pytest.approx(0.58, abs=1e-3)
    assert abs(plain.x - 0.58) > 0.003  # the bias the correction removes (largest at low sep)
    if sep == 1.5:
        assert plain.x > 0.63


def _brute_expected_plan(p, t):
    """Exact E over all label vectors of the optimal assignment (cost −p), by enumeration."""
    b, k = p.shape
    q = np.zeros((b, k))
    for labels in itertools.product(range(k), repeat=b):
        weight = np.prod([t[g] for g in labels])
        labels = np.array(labels)
        rows, cols = linear_sum_assignment(-p[:, labels])
        q[rows, labels[cols]] += weight
    return q


def test_expected_ot_two_groups_is_exact_and_matches_enumeration():
    rng = np.random.default_rng(0)
    p1 = rng.uniform(size=6)
    probs = torch.tensor(np.stack([1 - p1, p1], 1))
    t = torch.tensor([0.42, 0.58], dtype=torch.float64)
    q = ot_plan(probs, t)
    np.testing.assert_allclose(q, _brute_expected_plan(probs.numpy(), t.numpy()), atol=1e-12)
    np.testing.assert_allclose(q.sum(0), 6 * t.numpy(), atol=1e-12)  # expected counts = target
    # The more male-looking, the more often sent to male.
    order = np.argsort(p1)
    assert np.all(np.diff(q[order, 1]) > 0)


def test_expected_ot_three_groups_by_monte_carlo_matches_enumeration():
    rng = np.random.default_rng(1)
    probs = torch.tensor(rng.dirichlet([1, 1, 1], 4))
    t = torch.tensor([0.2, 0.3, 0.5], dtype=torch.float64)
    q = ot_plan(probs, t, draws=4000, seed=3)
    np.testing.assert_allclose(q, _brute_expected_plan(probs.numpy(), t.numpy()), atol=0.03)
    np.testing.assert_allclose(q.sum(1), 1)


def test_ot_targets_and_confidence_by_hand():
    # Batch of 4 at target 50/50: the most male-looking image is sent to male unless all four
    # draws are female: P = 1 − 0.5⁴.
    p1 = torch.tensor([0.9, 0.7, 0.3, 0.1], dtype=torch.float64)
    assigned, conf = ot_targets(torch.stack([1 - p1, p1], 1), torch.tensor([0.5, 0.5]))
    assert assigned.tolist() == [1, 1, 0, 0]
    assert conf[0].item() == pytest.approx(1 - 0.5**4, rel=1e-6)
    assert conf[1].item() == pytest.approx(stats.binom.sf(1, 4, 0.5), rel=1e-6)  # n₁ ≥ 2


def test_ot_cross_entropy_keeps_confident_assignments_by_hand():
    p1 = torch.tensor([0.9, 0.7, 0.3, 0.1], dtype=torch.float64)
    probs = torch.stack([1 - p1, p1], 1)
    # Confidences 0.9375, 0.6875, 0.6875, 0.9375: at 0.2 only images 0 and 3 remain.
    loss, _, keep = ot_cross_entropy(probs, torch.tensor([0.5, 0.5]), max_uncertainty=0.2)
    assert keep.tolist() == [True, False, False, True]
    assert loss.item() == pytest.approx(-(math.log(0.9) + math.log(0.9)) / 2, rel=1e-6)
    every, _, _ = ot_cross_entropy(probs, torch.tensor([0.5, 0.5]), max_uncertainty=1.0)
    assert every.item() == pytest.approx(-(2 * math.log(0.9) + 2 * math.log(0.7)) / 4, rel=1e-6)


@pytest.mark.parametrize(("target", "at_least_crossed"), [([0.42, 0.58], 2), ([0.2, 0.3, 0.5], 1)])
def test_ot_moves_a_batch_across_the_decision_boundary(target, at_least_crossed):
    """Eight free logits start at 95% for the last group. Thresholding the classifier's own
    confidence (the old rule) dropped an image once it became unsure, so none ever crossed;
    thresholding the assignment's confidence pushes the confidently reassigned ones across."""
    k = len(target)
    t = torch.tensor(target)
    init = torch.zeros(8, k)
    init[:, -1] = math.log(0.95 / 0.05 * (k - 1))
    logits = init + 0.1 * torch.randn(8, k, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_(True)
    assert (torch.softmax(logits, -1).argmax(1) == k - 1).all()
    opt = torch.optim.Adam([logits], lr=0.05)
    for s in range(400):
        loss, _, _ = ot_cross_entropy(torch.softmax(logits, -1), t, max_uncertainty=0.2, seed=s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    labels = torch.softmax(logits, -1).argmax(1)
    assert int((labels != k - 1).sum()) >= at_least_crossed


@pytest.mark.parametrize("target", [[0.42, 0.58], [0.2, 0.3, 0.5]])
def test_ot_on_a_toy_generator_brings_the_mean_probability_to_the_target(target):
    """A generator logits = θ + z (fresh z each step) trained with OT cross-entropy: its
    stationary point has the mean probability at the target (Σ p − Σ assignment = 0)."""
    k = len(target)
    t = torch.tensor(target)
    theta = torch.zeros(k)
    theta[-1] = 3.0
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=0.02)
    gen = torch.Generator().manual_seed(1)
    for s in range(800):
        p = torch.softmax(theta + torch.randn(16, k, generator=gen), -1)
        loss, _, _ = ot_cross_entropy(p, t, max_uncertainty=1.0, seed=s)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        mean = torch.softmax(theta + torch.randn(20000, k, generator=gen), -1).mean(0)
    np.testing.assert_allclose(mean.numpy(), target, atol=0.04)


def test_consistency_weights_encoders_and_images():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    b = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # orthogonal (1 − cos = 1), opposite (2)
    assert consistency([a], [a], encoder_weights=[1.0]).item() == pytest.approx(0.0, abs=1e-7)
    assert consistency([a], [b], encoder_weights=[1.0]).item() == pytest.approx(1.5)
    w = torch.tensor([1.0, 0.2])
    assert consistency([a], [b], encoder_weights=[1.0], image_weights=w).item() == pytest.approx(
        (1 * 1 + 0.2 * 2) / 1.2
    )
    two = consistency([a, a], [b, a], encoder_weights=[0.5, 2.0]).item()
    assert two == pytest.approx(0.5 * 1.5 + 2.0 * 0.0)
    x = a.clone().requires_grad_(True)
    y = b.clone().requires_grad_(True)
    consistency([x], [y], encoder_weights=[1.0]).backward()
    assert x.grad is not None and y.grad is None  # the frozen original gets no gradient
