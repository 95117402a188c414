"""Anytime-valid corrected shares, for an audit that stops when it knows enough.

The corrected share as a confidence sequence: intervals that stay valid however long an audit
looks (``medfair audit --precision``).

Re-computing a fixed-n interval after every batch and stopping once it looks narrow enough
("peeking") breaks its coverage. Here the corrected (PACC) share is bounded by two regions that
hold together with probability at least ``1 − α``:

* **The generated images' mean probabilities** ``μ = Sᵀ q``, one coordinate at a time, by the
  hedged betting confidence sequence of Waudby-Smith and Ramdas (2023, "Estimating means of
  bounded random variables by betting", JRSS-B; Theorem 3 with the predictable-mixture
  empirical-Bernstein bets, as in their ``confseq`` package). It holds at *every* n at once, so
  any stopping rule, the data-dependent one included, keeps it valid (level ``α/2``, split over
  the coordinates).
* **The held-out confusion matrix** ``S[y, k] = E[p_k | true y]``: a fixed-sample betting
  interval per entry from the classifier's held-out images (level ``α/2``, split over the
  entries). The held-out set does not grow, so one region serves every look.

The share region is then every ``q`` on the simplex with ``S_loᵀ q ≤ μ_hi`` and
``S_hiᵀ q ≥ μ_lo`` for some ``S`` in the box (an outer bound, exact per coordinate for ``q ≥ 0``);
each group's interval is its minimum and maximum over that polytope (a linear programme). An
empty region means the images sit where no share explains them (label shift fails) at level α.

The price is width: at the n where a fixed-n bootstrap interval reaches ±H, this one is wider,
so a precision target takes more images than a fixed audit that happens to reach it; the
guarantee is that the interval printed at stopping covers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .estimates import HeldOut, ProductHeldOut

__all__ = ["BettingCS", "SequentialShares", "betting_interval"]

#: Candidate means of each confidence sequence: the midpoints of ``GRID`` equal cells of [0, 1].
GRID = 2000


def _predmix_lambdas(
    x: np.ndarray, alpha: float, t0: int, s: float, ss: float, fixed_n: int | None
) -> tuple[np.ndarray, float, float]:
    """Predictable-mixture empirical-Bernstein bets for observations ``x``.

    As ``confseq``'s ``lambda_predmix_eb`` with one fake observation at mean 1/2, variance 1/4,
    continuing a stream of ``t0`` earlier ones with running sum ``s`` and running squared
    deviations ``ss``.

    Returns the bets and the updated ``(s, ss)``.
    """
    t = t0 + np.arange(1, len(x) + 1)
    mu = np.minimum((0.5 + s + np.cumsum(x)) / (t + 1), 1.0)
    dev = ss + np.cumsum((x - mu) ** 2)
    sigma2 = (0.25 + dev) / (t + 1)
    prev = np.concatenate([[(0.25 + ss) / (t0 + 1)], sigma2[:-1]])
    if fixed_n is None:
        lam = np.sqrt(2 * math.log(1 / alpha) / (t * np.log1p(t) * prev))
    else:
        lam = np.sqrt(2 * math.log(1 / alpha) / (fixed_n * prev))
    return lam, s + float(x.sum()), float(dev[-1]) if len(x) else ss


@dataclass
class BettingCS:
    """Hedged betting confidence sequence for the mean of ``[0, 1]`` observations.

    The capital of a bet against each candidate mean ``m`` grows when the data disagree with
    it; ``m`` leaves the sequence once ``max(K⁺, K⁻) / 2 ≥ 1/α``. Feed observations in order with
    :meth:`update`; :meth:`interval` is the running intersection (valid at every n at once).

    Args:
        alpha: Error level of the whole sequence.
        fixed_n: Tune the bets for this many observations (a fixed-sample interval, still valid);
            ``None`` for a sequence tuned to every n.
        grid: Number of candidate means.
    """

    alpha: float
    fixed_n: int | None = None
    grid: int = GRID
    n: int = 0
    _s: float = 0.0
    _ss: float = 0.0
    _log_pos: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    _log_neg: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]
    _alive: np.ndarray = field(default=None, repr=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if not 0 < self.alpha < 1:
            raise ValueError(f"expected alpha in (0, 1), got {self.alpha}")
        self.m = (np.arange(self.grid) + 0.5) / self.grid
        if self._log_pos is None:
            self._log_pos = np.zeros(self.grid)
            self._log_neg = np.zeros(self.grid)
            self._alive = np.ones(self.grid, dtype=bool)

    def update(self, x: Sequence[float] | np.ndarray, *, chunk: int = 256) -> None:
        """Add observations (in the order they arrived)."""
        x = np.clip(np.asarray(x, dtype=np.float64).ravel(), 0.0, 1.0)
        for a in range(0, len(x), chunk):
            part = x[a : a + chunk]
            lam, self._s, self._ss = _predmix_lambdas(
                part, self.alpha / 2, self.n, self._s, self._ss, self.fixed_n
            )
            self.n += len(part)
            m = self.m[None, :]
            dx = part[:, None] - m
            pos = np.minimum(lam[:, None], 0.5 / m)  # confseq's truncation at 1/2 · 1/m
            neg = np.minimum(lam[:, None], 0.5 / (1 - m))
            with np.errstate(divide="ignore"):
                self._log_pos += np.log1p(pos * dx).sum(0)
                self._log_neg += np.log1p(-neg * dx).sum(0)
            threshold = math.log(2 / self.alpha)  # max(K⁺, K⁻)/2 ≥ 1/α
            self._alive &= np.maximum(self._log_pos, self._log_neg) < threshold

    def log_capital(self) -> np.ndarray:
        """Log of ``max(K⁺, K⁻) / 2`` at every candidate mean (``confseq``'s ``betting_mart``)."""
        return np.maximum(self._log_pos, self._log_neg) - math.log(2)

    def interval(self) -> tuple[float, float] | None:
        """``(lo, hi)`` of the candidates never rejected, widened by half a cell.

        ``None`` if every candidate was rejected (not a bounded stream with a fixed mean).
        """
        alive = np.flatnonzero(self._alive)
        if not len(alive):
            return None
        half = 0.5 / self.grid
        return max(0.0, self.m[alive[0]] - half), min(1.0, self.m[alive[-1]] + half)

    def state(self) -> dict[str, Any]:
        """JSON-able state (resume a sequence with :meth:`from_state`)."""
        return {
            "alpha": self.alpha,
            "fixed_n": self.fixed_n,
            "grid": self.grid,
            "n": self.n,
            "s": self._s,
            "ss": self._ss,
            "log_pos": self._log_pos.tolist(),
            "log_neg": self._log_neg.tolist(),
            "alive": self._alive.tolist(),
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> BettingCS:
        """The sequence :meth:`state` recorded."""
        return cls(
            alpha=state["alpha"],
            fixed_n=state["fixed_n"],
            grid=state["grid"],
            n=state["n"],
            _s=state["s"],
            _ss=state["ss"],
            _log_pos=np.asarray(state["log_pos"], dtype=np.float64),
            _log_neg=np.asarray(state["log_neg"], dtype=np.float64),
            _alive=np.asarray(state["alive"], dtype=bool),
        )


def betting_interval(x: Sequence[float] | np.ndarray, alpha: float) -> tuple[float, float]:
    """Fixed-sample betting interval for the mean of ``x`` in [0, 1] (bets tuned to ``len(x)``).

    Raises:
        ValueError: Empty ``x``.
    """
    x = np.asarray(x, dtype=np.float64)
    if not len(x):
        raise ValueError("expected at least one observation")
    cs = BettingCS(alpha=alpha, fixed_n=len(x))
    cs.update(x)
    out = cs.interval()
    return out if out is not None else (0.0, 1.0)


def _box(held: HeldOut, columns: Sequence[int], alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Fixed-sample betting box for ``S[y, c] = E[p_c | true y]`` (other entries: [0, 1])."""
    probs, labels = held.probs, held.labels
    k = probs.shape[1]
    lo, hi = np.zeros((k, k)), np.ones((k, k))
    for y in range(k):
        rows = probs[labels == y]
        for c in columns if len(rows) else ():  # no held-out image of y: [0, 1], no information
            lo[y, c], hi[y, c] = betting_interval(rows[:, c], alpha)
    return lo, hi


@dataclass
class SequentialShares:
    """Anytime-valid corrected (PACC) shares of a stream of generated images.

    Args:
        heldout: The classifier's held-out images (true groups and calibrated probabilities), or
            one classifier's per attribute (:class:`~medfair_audit.metrics.estimates.
            ProductHeldOut`): the joint cells' box is then the Kronecker product of the
            attributes' boxes (every entry is non-negative, so products of the bounds bound the
            products), under the same independence assumption as the joint estimates.
        confidence: Joint level of every group's interval at every look.
    """

    heldout: HeldOut | ProductHeldOut
    confidence: float = 0.95

    def __post_init__(self) -> None:
        parts = getattr(self.heldout, "parts", (self.heldout,))
        if any(p.probs is None for p in parts):
            raise ValueError(
                "a sequential audit needs the classifier's held-out probabilities in its "
                "evaluation.json"
            )
        alpha = 1 - self.confidence
        k = int(np.prod([p.probs.shape[1] for p in parts]))
        self.columns = [1] if k == 2 else list(range(k))  # two groups: one share decides both
        own = [self.columns if len(parts) == 1 else range(p.probs.shape[1]) for p in parts]
        entries = sum(p.probs.shape[1] * len(c) for p, c in zip(parts, own, strict=True))
        boxes = [_box(p, c, alpha / 2 / entries) for p, c in zip(parts, own, strict=True)]
        self.s_lo, self.s_hi = boxes[0]
        for lo, hi in boxes[1:]:
            self.s_lo, self.s_hi = np.kron(self.s_lo, lo), np.kron(self.s_hi, hi)
        a = alpha / 2 / len(self.columns)
        self._cs = [BettingCS(alpha=a) for _ in self.columns]

    @property
    def n(self) -> int:
        """Images seen."""
        return self._cs[0].n

    def update(self, probs: np.ndarray) -> None:
        """Add the probabilities ``(n, K)`` of newly generated images, in a fixed order."""
        probs = np.asarray(probs, dtype=np.float64)
        for cs, c in zip(self._cs, self.columns, strict=True):
            cs.update(probs[:, c])

    def intervals(self) -> list[tuple[float, float]] | None:
        """Each group's share interval now, or ``None`` when no share explains the images."""
        boxes = [cs.interval() for cs in self._cs]
        if any(b is None for b in boxes):
            return None
        if len(self.columns) == 1 and self.s_lo[1, 1] > self.s_hi[0, 1]:  # separated rows
            return self._two_groups(boxes[0])
        return self._linear_programme(boxes)

    def _linear_programme(
        self, boxes: list[tuple[float, float]]
    ) -> list[tuple[float, float]] | None:
        """Min and max of each share over ``{q: S_loᵀ q ≤ μ_hi, S_hiᵀ q ≥ μ_lo}`` ∩ simplex."""
        from scipy.optimize import linprog

        k = self.s_lo.shape[0]
        a_ub, b_ub = [], []
        for (lo, hi), c in zip(boxes, self.columns, strict=True):
            a_ub.append(self.s_lo[:, c])  # S_loᵀ q ≤ μ_hi
            b_ub.append(hi)
            a_ub.append(-self.s_hi[:, c])  # S_hiᵀ q ≥ μ_lo
            b_ub.append(-lo)
        out = []
        for j in range(k):
            ends = []
            for sign in (1.0, -1.0):
                cost = np.zeros(k)
                cost[j] = sign
                res = linprog(
                    cost,
                    A_ub=np.array(a_ub),
                    b_ub=np.array(b_ub),
                    A_eq=np.ones((1, k)),
                    b_eq=[1.0],
                    bounds=[(0, 1)] * k,
                    method="highs",
                )
                if res.status == 2:  # infeasible: no share explains the images
                    return None
                ends.append(sign * res.fun)
            out.append((max(0.0, ends[0]), min(1.0, ends[1])))
        return out

    def _two_groups(self, box: tuple[float, float]) -> list[tuple[float, float]] | None:
        """The linear programme's answer for two groups with ``S_lo[1,1] > S_hi[0,1]``.

        Its constraints read ``q₁ ≤ (μ_hi − S_lo[0,1]) / (S_lo[1,1] − S_lo[0,1])`` and
        ``q₁ ≥ (μ_lo − S_hi[0,1]) / (S_hi[1,1] − S_hi[0,1])``, with ``q₁`` in [0, 1].
        """
        (a0, a1), (b0, b1) = (self.s_lo[0, 1], self.s_hi[0, 1]), (self.s_lo[1, 1], self.s_hi[1, 1])
        lower, upper = (box[0] - a1) / (b1 - a1), (box[1] - a0) / (b0 - a0)
        lo, hi = max(0.0, lower), min(1.0, upper)
        if lo > hi:  # no share explains the images
            return None
        return [(1 - hi, 1 - lo), (lo, hi)]
