"""``--precision``: an audit that draws images round by round and stops when it knows enough.

A round is one shard of every prompt (``batch_size`` images each), drawn round robin so that
every prompt has the same number of images at every look. After each round every process reads
the round's shards in plan order (prompt, then image) and feeds their probabilities to the
anytime-valid PACC share (:class:`~medfair_audit.metrics.sequential.SequentialShares`); the
audit stops at the first look, from ``min_n_per_prompt`` on, where every group's interval is
within ``± precision``, or at ``generation.n_per_prompt`` (the maximum). The decision is a
function of the shards on disk alone, so every process reaches the same one, and an audit killed
and resumed repeats the same looks and stops at the same n.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from ..config import AuditConfig
from ..exceptions import ConfigError
from ..generation.engine import Shard, iter_shards, plan_shards
from ..progress import report
from .load import Loaded

__all__ = ["RULE", "draw_until_precise", "sequential_text"]

RULE = (
    "stop at the first round (one shard of every prompt) where every group's anytime-valid "
    "PACC interval is within ± precision: a hedged betting confidence sequence for the mean "
    "probabilities (Waudby-Smith & Ramdas 2023) at α/2, with a fixed-sample betting box for the "
    "held-out confusion matrix at α/2 (union bound), so the interval holds at every look and "
    "at the data-dependent stop"
)


def draw_until_precise(
    cfg: AuditConfig,
    loaded: Loaded,
    state: Any,
    progress: Any,
    draw: Callable[[Callable[[Shard], bool]], Any],
) -> tuple[list[Shard], dict[str, Any]]:
    """Draw round after round until precise enough; returns the plan drawn and the record.

    Args:
        cfg: The audit's settings (``precision``, ``min_n_per_prompt``; the maximum is
            ``generation.n_per_prompt``).
        loaded: The load stage's models and held-out data.
        state: The processes (``wait_for_everyone``).
        progress: Progress callback (a ``precision`` event per look).
        draw: Draws this process's unfinished shards among those a predicate accepts.
    """
    from ..metrics.sequential import SequentialShares

    try:
        seq = SequentialShares(heldout=loaded.heldout, confidence=cfg.confidence)
    except ValueError as exc:  # no held-out probabilities
        raise ConfigError(
            f"--precision: {exc} (retrain the classifier with this version of medfair)",
            param="precision",
        ) from exc
    gen, size = cfg.generation, cfg.generation.shard_size
    plan = plan_shards(len(cfg.prompts), gen)
    rounds = math.ceil(gen.n_per_prompt / size)
    first = max(1, math.ceil(cfg.min_n_per_prompt / size))
    looks: list[dict[str, Any]] = []
    stopped_by = "max_n_per_prompt"
    counts = np.zeros(len(loaded.groups), dtype=np.int64)
    # several attributes: no stop while a joint cell holds fewer than min_cell_n images
    guard = cfg.min_cell_n if loaded.cset.multi else 0
    for r in range(rounds):

        def in_round(shard: Shard, r: int = r) -> bool:
            return shard.start // size == r

        draw(in_round)
        state.wait_for_everyone()
        shards = [s for s in plan if in_round(s)]
        stored = np.concatenate(
            [d["probs"].numpy() for d in iter_shards(cfg.out / "shards", shards)]
        )
        probs = loaded.cset.joint(stored) if loaded.cset.multi else stored
        seq.update(probs)
        counts += np.bincount(probs.argmax(1), minlength=len(counts))
        region = seq.intervals()
        half = None if region is None else max(hi - lo for lo, hi in region) / 2
        n_per_prompt = min((r + 1) * size, gen.n_per_prompt)
        looks.append(
            {
                "n_per_prompt": n_per_prompt,
                "n_images": seq.n,
                "half_width": half,
                "intervals": None if region is None else [list(iv) for iv in region],
                "smallest_group_n": int(counts.min()),
            }
        )
        report(
            progress, "precision", r + 1, rounds,
            half_width="none" if half is None else round(half, 4),
        )  # fmt: skip
        if r + 1 >= first and half is not None and half <= cfg.precision and counts.min() >= guard:
            stopped_by = "precision"
            break
    last = looks[-1]
    record = _record(cfg, loaded.groups, guard, stopped_by, looks)
    drawn = [s for s in plan if s.start < last["n_per_prompt"]]
    return drawn, record


def _record(
    cfg: AuditConfig, groups: list[str], guard: int, stopped_by: str, looks: list[dict[str, Any]]
) -> dict[str, Any]:
    """``audit.json``'s ``sequential`` block: the rule, every look, where and why it stopped."""
    last = looks[-1]
    gen = cfg.generation
    return {
        "rule": RULE,
        "reading": "pacc",
        "precision": cfg.precision,
        "confidence": cfg.confidence,
        "min_n_per_prompt": cfg.min_n_per_prompt,
        "min_cell_n": guard,
        "max_n_per_prompt": gen.n_per_prompt,
        "n_per_prompt": last["n_per_prompt"],
        "stopped_by": stopped_by,
        "intervals": (
            None if last["intervals"] is None else dict(zip(groups, last["intervals"], strict=True))
        ),
        "looks": looks,
    }


def sequential_text(seq: Any) -> str:
    """One line on a ``--precision`` audit: where it stopped, why, and the intervals it proves.

    Args:
        seq: The audit's :class:`~medfair_audit.metrics.results.Sequential`.
    """
    why = (
        f"every group within ±{seq.precision:g}"
        if seq.stopped_by == "precision"
        else f"the maximum; ±{seq.precision:g} not reached"
    )
    level = round(100 * seq.confidence)
    if seq.intervals is None:
        shares = "no share explains the images (label shift fails)"
    else:
        shares = ", ".join(f"{g} [{lo:.1%}, {hi:.1%}]" for g, (lo, hi) in seq.intervals.items())
    return (
        f"stopped at {seq.n_per_prompt} images per prompt after {seq.looks} looks "
        f"({why}); anytime-valid {level}% PACC: {shares}"
    )
