from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from medfair_audit.remediation.losses import (
    alignment_kl,
    clip_consistency,
    ot_assign,
    ot_cross_entropy,
    target_counts,
)


def test_alignment_kl_of_a_known_batch():
    probs = torch.tensor([[0.1, 0.9], [0.3, 0.7], [0.2, 0.8], [0.2, 0.8]])  # mean (0.2, 0.8)
    target = torch.tensor([0.42, 0.58])
    expected = 0.42 * math.log(0.42 / 0.2) + 0.58 * math.log(0.58 / 0.8)
    assert alignment_kl(probs, target).item() == pytest.approx(expected, rel=1e-6)
    assert alignment_kl(torch.tensor([[0.42, 0.58]]), target).item() == pytest.approx(0, abs=1e-7)
    # a zero-weight group contributes nothing
    t3 = torch.tensor([0.5, 0.5, 0.0])
    p3 = torch.tensor([[0.4, 0.4, 0.2]])
    assert alignment_kl(p3, t3).item() == pytest.approx(2 * 0.5 * math.log(0.5 / 0.4), rel=1e-6)


def test_alignment_kl_gradient_moves_the_mean_toward_the_target():
    logits = torch.tensor([[0.0, 2.0], [0.0, 1.5], [0.0, 2.5]], requires_grad=True)
    loss = alignment_kl(torch.softmax(logits, -1), torch.tensor([0.5, 0.5]))
    loss.backward()
    assert (logits.grad[:, 1] > 0).all()  # descending lowers the over-represented group


def test_target_counts_use_largest_remainders():
    assert target_counts(np.array([0.42, 0.58]), 8).tolist() == [3, 5]  # 3.36, 4.64
    assert target_counts(np.array([0.5, 0.5]), 7).sum() == 7
    assert target_counts(np.array([0.2, 0.3, 0.5]), 10).tolist() == [2, 3, 5]


def test_ot_assignment_on_a_small_example_is_the_sort_and_the_brute_force_optimum():
    p_male = torch.tensor([0.9, 0.2, 0.6, 0.95, 0.4, 0.7])
    probs = torch.stack([1 - p_male, p_male], 1)
    target = torch.tensor([0.5, 0.5])  # 3 and 3
    assigned = ot_assign(probs, target)
    assert assigned.tolist() == [1, 0, 0, 1, 0, 1]  # the three most male-looking stay male
    # brute force over all assignments with the right counts
    logp = torch.log(probs).numpy()
    best = min(
        (c for c in itertools.product([0, 1], repeat=6) if sum(c) == 3),
        key=lambda c: -sum(logp[i, g] for i, g in enumerate(c)),
    )
    assert tuple(assigned.tolist()) == best


def test_ot_assignment_matches_brute_force_with_three_groups():
    rng = np.random.default_rng(0)
    probs = torch.from_numpy(rng.dirichlet([1, 1, 1], 6))
    target = torch.tensor([0.5, 1 / 3, 1 / 6])  # counts 3, 2, 1
    assigned = ot_assign(probs, target)
    assert np.bincount(assigned.numpy(), minlength=3).tolist() == [3, 2, 1]
    logp = np.log(probs.numpy())
    best = min(
        (
            c
            for c in itertools.product(range(3), repeat=6)
            if np.bincount(c, minlength=3).tolist() == [3, 2, 1]
        ),
        key=lambda c: -sum(logp[i, g] for i, g in enumerate(c)),
    )
    assert sum(logp[i, g] for i, g in enumerate(assigned.tolist())) == pytest.approx(
        sum(logp[i, g] for i, g in enumerate(best))
    )


def test_ot_cross_entropy_by_hand():
    probs = torch.tensor([[0.2, 0.8], [0.6, 0.4]])
    loss = ot_cross_entropy(probs, torch.tensor([0.5, 0.5]))
    assert loss.item() == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2, rel=1e-6)


def test_clip_consistency():
    a = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    assert clip_consistency(a, a).item() == pytest.approx(0.0, abs=1e-7)
    b = torch.tensor([[0.0, 1.0], [0.0, -1.0]])  # orthogonal, opposite
    assert clip_consistency(a, b).item() == pytest.approx((1 + 2) / 2)
    x = a.clone().requires_grad_(True)
    y = b.clone().requires_grad_(True)
    clip_consistency(x, y).backward()
    assert x.grad is not None and y.grad is None  # the frozen original gets no gradient


def test_ot_cross_entropy_drops_uncertain_images_by_hand():
    # Target 50/50 over 4 images: the two most "male" (index 1) images are assigned male.
    probs = torch.tensor([[0.05, 0.95], [0.3, 0.7], [0.55, 0.45], [0.9, 0.1]])
    target = torch.tensor([0.5, 0.5])
    assert ot_assign(probs, target).tolist() == [1, 1, 0, 0]
    # 1 - max p = 0.05, 0.3, 0.45, 0.1: at 0.2 only images 0 and 3 remain.
    kept = ot_cross_entropy(probs, target, max_uncertainty=0.2)
    assert kept.item() == pytest.approx(-(math.log(0.95) + math.log(0.9)) / 2, rel=1e-6)
    every = ot_cross_entropy(probs, target, max_uncertainty=1.0)
    expected = -(math.log(0.95) + math.log(0.7) + math.log(0.55) + math.log(0.9)) / 4
    assert every.item() == pytest.approx(expected, rel=1e-6)
    # Nothing confident enough: zero loss, still differentiable.
    p = torch.full((2, 2), 0.5, requires_grad=True)
    loss = ot_cross_entropy(p, target, max_uncertainty=0.1)
    loss.backward()
    assert loss.item() == 0 and torch.equal(p.grad, torch.zeros_like(p))


def test_confusion_correction_inverts_the_classifier_by_hand():
    from medfair_audit.metrics.functional import corrected_proportions
    from medfair_audit.remediation import correct_for_confusion

    rates = torch.tensor([[0.93, 0.07], [0.15, 0.85]])  # rows: true female, male
    true = torch.tensor([0.42, 0.58])
    seen = true @ rates  # what the classifier reports for such a batch
    torch.testing.assert_close(correct_for_confusion(seen, rates), true)
    # agrees with the audit's (constrained least-squares) correction inside the simplex
    q = torch.tensor([0.45, 0.55])
    np.testing.assert_allclose(
        correct_for_confusion(q, rates).numpy(),
        corrected_proportions(q.numpy(), rates.numpy()),
        atol=1e-6,
    )
    # male share 0.55 seen → (0.55 - 0.07) / (0.85 - 0.07) truly male
    assert correct_for_confusion(q, rates)[1].item() == pytest.approx(0.48 / 0.78, rel=1e-6)
    # The corrected KL compares the batch with the target as the classifier would see it:
    # zero exactly when the corrected shares meet the target.
    probs = seen.repeat(4, 1)
    assert alignment_kl(probs, true, confusion_rates=rates).item() == pytest.approx(0, abs=1e-6)
    assert alignment_kl(probs, true).item() > 1e-3
    t_seen = true @ rates
    biased = torch.tensor([[0.1, 0.9], [0.2, 0.8]], requires_grad=True)
    loss = alignment_kl(biased, true, confusion_rates=rates)
    expected = sum(t_seen[i] * math.log(t_seen[i] / [0.15, 0.85][i]) for i in range(2))
    assert loss.item() == pytest.approx(float(expected), rel=1e-5)
    # It keeps pushing where correcting the mean would leave the simplex: 95% seen male is
    # more than 100% truly male with these rates (0.88 / 0.78), yet descending lowers it.
    logits = torch.log(torch.tensor([[0.05, 0.95], [0.05, 0.95]])).requires_grad_(True)
    alignment_kl(torch.softmax(logits, -1), true, confusion_rates=rates).backward()
    assert (logits.grad[:, 1] > 0.1).all()
