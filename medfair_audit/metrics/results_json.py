"""Reading the typed results of :mod:`.results` from ``audit.json`` blocks.

With :mod:`medfair_audit.audit.result` (which composes them into an
:class:`~medfair_audit.audit.result.AuditResult`), the only reader of ``audit.json``'s keys.
"""

from __future__ import annotations

from typing import Any

from .estimates import DISTANCES
from .results import (
    AttributeSummary,
    AuditSettings,
    ChiSquare,
    ClassifierInfo,
    Conditional,
    Conditioning,
    Dispersion,
    Distances,
    Estimate,
    Evaluation,
    Fidelity,
    Homogeneity,
    IndependenceCheck,
    IndependenceTest,
    Joint,
    JointCell,
    OverPrompts,
    PromptSummary,
    Quality,
    QualityAtN,
    QualityEntry,
    Reader,
    Readers,
    RemediationInfo,
    SampleSize,
    Sequential,
    Smoothing,
    Spread,
    Summary,
    Support,
    SupportShare,
    Vendi,
    WorstPrompt,
)

__all__ = [
    "SHOWN_SETTINGS",
    "attribute_summary_from_json",
    "classifier_from_json",
    "conditioning_from_json",
    "dispersion_from_json",
    "estimate_from_json",
    "joint_from_json",
    "prompt_summary_from_json",
    "quality_from_json",
    "readers_from_json",
    "sample_size_from_json",
    "sequential_from_json",
    "settings_from_json",
    "smoothing_from_json",
    "summary_from_json",
]


def estimate_from_json(d: dict[str, Any] | None) -> Estimate | None:
    """An :class:`Estimate` from ``{value, ci[, censored, bound, method, note]}``."""
    if not d:
        return None
    bound, ci = d.get("bound") or {}, d.get("ci")
    return Estimate(
        value=d.get("value"),
        ci=tuple(ci) if ci else None,
        censored=d.get("censored"),
        at_most=bound.get("at_most"),
        at_least=bound.get("at_least"),
        method=d.get("method"),
        note=d.get("note"),
    )


def _distances(d: dict[str, Any]) -> Distances:
    keys = DISTANCES
    return Distances(
        **{k: estimate_from_json(d.get(k)) for k in keys},
        gaps={g: estimate_from_json(e) for g, e in (d.get("gaps") or {}).items()},
    )


def summary_from_json(d: dict[str, Any], kind: type = Summary, **extra: Any) -> Any:
    """A :class:`Summary` (or ``kind``, with ``extra`` fields) from its JSON block."""
    chi = d.get("chi_square")
    return kind(
        n=d.get("n", 0),
        counts=dict(d.get("counts") or {}),
        proportions={
            reading: {g: estimate_from_json(e) for g, e in per.items()}
            for reading, per in d["proportions"].items()
        },
        distances={reading: _distances(x) for reading, x in (d.get("distances") or {}).items()},
        chi_square=ChiSquare(
            statistic=chi.get("statistic"),
            p_value=chi.get("p_value"),
            df=chi.get("df"),
            p_value_is_bound=bool(chi.get("p_value_is_bound")),
            method=chi.get("method"),
            note=chi.get("note"),
        )
        if chi
        else None,
        **extra,
    )


def _spread(d: dict[str, Any] | None) -> Spread | None:
    return Spread(mean=d["mean"], sd=d.get("sd")) if d else None


def _vendi(d: dict[str, Any] | None) -> Vendi | None:
    if not d:
        return None
    ci = d.get("ci")
    return Vendi(
        n=d["n"],
        blocks=d.get("blocks", 0),
        value=d.get("value"),
        ci=tuple(ci) if ci else None,
        reason=d.get("reason"),
    )


def quality_from_json(q: dict[str, Any] | None) -> Quality | None:
    """The ``quality`` block (``None`` when the audit measured none)."""
    if not q:
        return None

    def at(a: dict[str, Any]) -> QualityAtN:
        prdc = a.get("prdc")
        return QualityAtN(
            fid=_spread(a.get("fid")),
            kid=_spread(a.get("kid")),
            cmmd=_spread(a.get("cmmd")),
            prdc={k: _spread(v) for k, v in prdc.items()} if prdc else None,
        )

    by_group = {
        g: QualityEntry(
            n_generated=e.get("n_generated"),
            n_reference=e.get("n_reference"),
            fid=e.get("fid"),
            at_n={n: at(a) for n, a in (e.get("at_n") or {}).items()},
            vendi=_vendi(e.get("vendi")),
            vendi_reference=_vendi(e.get("vendi_reference")),
            collapsed=bool(e.get("collapsed")),
            reason=e.get("reason"),
        )
        for g, e in (q.get("by_group") or {}).items()
    }
    frd = {g: f.get("frd") for g, f in ((q.get("frd") or {}).get("by_group") or {}).items()}
    return Quality(
        version=q.get("version", 1),
        by_group=by_group,
        frd=frd,
        method=q.get("method", ""),
        draws=q.get("draws", 0),
        equal_n=q.get("equal_n"),
    )


def _support_share(d: dict[str, Any]) -> SupportShare:
    return SupportShare(share=d.get("share"), ci=tuple(d["ci"]), n=d["n"])


def conditioning_from_json(d: dict[str, Any] | None) -> Conditioning | None:
    """A :class:`Conditioning` from ``audit.json``'s ``conditioning`` section."""
    if not d:
        return None
    return Conditioning(
        distribution=dict(d["distribution"]),
        distribution_source=d["distribution_source"],
        fidelity={
            g: Fidelity(
                prompts=tuple(f["prompts"]),
                n=f["n"],
                labels=estimate_from_json(f["labels"]),
                corrected=estimate_from_json(f["corrected"]),
            )
            for g, f in d["fidelity"].items()
        },
        marginal={
            r: {g: estimate_from_json(e) for g, e in per.items()}
            for r, per in d["marginal"].items()
        },
    )


def readers_from_json(d: dict[str, Any] | None) -> Readers | None:
    """The ``readers`` block, if any."""
    if not d:
        return None
    readers = tuple(
        Reader(
            name=x["name"],
            architecture=x["architecture"],
            proportions={g: estimate_from_json(e) for g, e in x["proportions"].items()},
            disagreement={g: estimate_from_json(e) for g, e in x["disagreement"].items()},
        )
        for x in d.get("readers") or []
    )
    support = tuple(
        Support(
            space=s["space"],
            overall=_support_share(s["overall"]),
            by_group={g: _support_share(e) for g, e in s["by_group"].items()},
        )
        for s in d.get("support") or []
    )
    return Readers(readers=readers, support=support)


def joint_from_json(d: dict[str, Any] | None) -> Joint | None:
    """The ``joint`` block (several attributes only)."""
    if not d:
        return None
    cells = tuple(
        JointCell(
            cell=c["cell"],
            levels=dict(c.get("levels") or {}),
            target=c["target"],
            n=c["n"],
            share=estimate_from_json(c),
            small=bool(c.get("small")),
            p_holm=c.get("p_holm"),
            reject=c.get("reject"),
        )
        for c in d["cells"]
    )
    return Joint(
        attributes=tuple(d["attributes"]),
        levels={a: tuple(v) for a, v in d["levels"].items()},
        reading=d["reading"],
        cells=cells,
        holm_alpha=d["holm"]["alpha"],
        rejected=tuple(d["holm"]["rejected"]),
        shen_bias={
            k: estimate_from_json(v) for k, v in d["shen_bias"].items() if k != "definition"
        },
        shen_bias_definition=d["shen_bias"].get("definition", ""),
        method=d.get("method") or "",
        holm_method=d["holm"].get("method", ""),
        min_cell_n=d.get("min_cell_n", 0),
        zero_target_cells=tuple(d.get("zero_target_cells") or []),
        independence_check=_independence(d.get("independence_check")),
    )


def _independence(d: dict[str, Any] | None) -> IndependenceCheck | None:
    if not d:
        return None
    tests = tuple(
        IndependenceTest(
            classifier=x["classifier"],
            level=x["level"],
            accuracy_by_cell=dict(x["accuracy_by_cell"]),
            p_holm=x["p_holm"],
        )
        for x in d.get("tests") or []
    )
    return IndependenceCheck(method=d["method"], doubtful=bool(d.get("doubtful")), tests=tests)


def sequential_from_json(d: dict[str, Any] | None) -> Sequential | None:
    """The ``sequential`` block (``--precision`` only)."""
    if not d:
        return None
    intervals = d.get("intervals")
    return Sequential(
        precision=d["precision"],
        confidence=d["confidence"],
        n_per_prompt=d["n_per_prompt"],
        max_n_per_prompt=d["max_n_per_prompt"],
        stopped_by=d["stopped_by"],
        intervals=None if intervals is None else {g: tuple(v) for g, v in intervals.items()},
        half_widths=tuple(look.get("half_width") for look in d.get("looks") or []),
    )


def settings_from_json(cfg: dict[str, Any]) -> AuditSettings:
    """The ``config`` block: how the audit ran."""
    rem = cfg.get("remediation")
    return AuditSettings(
        checkpoint=cfg["checkpoint"],
        checkpoint_sha256=cfg.get("checkpoint_sha256") or "",
        classifier=cfg["classifier"],
        classifier_sha256=cfg["classifier_sha256"],
        prompts=tuple(cfg.get("prompts") or []),
        n_per_prompt=cfg["n_per_prompt"],
        seed=int(cfg.get("seed", 0)),
        steps=cfg["steps"],
        remediation=RemediationInfo(
            classifier=rem.get("classifier"),
            classifier_sha256=rem.get("classifier_sha256"),
            prompts=tuple(rem.get("prompts") or []),
            steps=rem.get("steps"),
        )
        if rem
        else None,
        shown={k: cfg.get(k) for k in SHOWN_SETTINGS},
        features=dict(cfg.get("features") or {}),
        feature_name=str((cfg.get("features") or {}).get("name", "")),
        versions=dict(cfg.get("versions") or {}),
        device=str((cfg.get("placement") or {}).get("device", "")),
        dtype=str((cfg.get("placement") or {}).get("dtype", "")),
        pipeline=dict(cfg.get("pipeline") or {}),
    )


#: The settings a report's methods table lists (keys of ``config``).
SHOWN_SETTINGS = (
    "checkpoint",
    "checkpoint_sha256",
    "classifier",
    "classifier_sha256",
    "n_per_prompt",
    "seed",
    "seeding",
    "steps",
    "guidance",
    "batch_size",
    "reference",
    "reference_split",
    "target_source",
)


def classifier_from_json(d: dict[str, Any], condition_number: dict[str, Any]) -> ClassifierInfo:
    """The ``classifier`` block (with the top level's ``condition_number``)."""
    ev = d.get("evaluation")
    evaluation = (
        Evaluation(
            balanced_accuracy=ev.get("balanced_accuracy"),
            roc_auc=ev.get("roc_auc"),
            ece=ev.get("ece"),
            n=ev.get("n"),
            split=ev.get("split"),
            split_unit=ev.get("split_unit"),
            groups=tuple(ev.get("groups") or ()),
            confusion_matrix=tuple(tuple(row) for row in ev.get("confusion_matrix") or ()),
            by_group=ev.get("by_group") or {},
        )
        if ev
        else None
    )
    return ClassifierInfo(
        path=d["path"], evaluation=evaluation, condition_number=dict(condition_number or {})
    )


def sample_size_from_json(d: dict[str, Any]) -> SampleSize:
    """The ``sample_size`` block."""
    return SampleSize(
        reading=d["reading"],
        half_width=d["half_width"],
        needed_total=d.get("needed_total"),
        needed_per_prompt=d.get("needed_per_prompt"),
        floor_half_width=d.get("floor_half_width"),
    )


def smoothing_from_json(d: dict[str, Any]) -> Smoothing:
    """The ``smoothing`` block."""
    return Smoothing(epsilon=d["epsilon"], method=d["method"])


def prompt_summary_from_json(d: dict[str, Any]) -> PromptSummary:
    """One entry of ``by_prompt``."""
    cond = d.get("conditional")
    return summary_from_json(
        d,
        PromptSummary,
        index=d["index"],
        prompt=d["prompt"],
        conditional=Conditional(
            named_group=cond["named_group"],
            share=cond["share"],
            ci=tuple(cond["ci"]),
            corrected=estimate_from_json(cond.get("corrected")),
        )
        if cond
        else None,
    )


def dispersion_from_json(d: dict[str, Any], reading: str) -> Dispersion:
    """The ``dispersion`` block (``reading``: the default if the block names none)."""
    worst, shen, hom = d.get("worst_prompt"), d.get("shen_bias") or {}, d.get("homogeneity")
    return Dispersion(
        reading=d.get("reading", reading),
        mean_abs_gap=estimate_from_json(d.get("mean_abs_gap")),
        worst_prompt=WorstPrompt(
            index=worst["index"],
            prompt=worst["prompt"],
            abs_gap=estimate_from_json(worst["abs_gap"]),
        )
        if worst
        else None,
        shen_bias=estimate_from_json(shen.get("mean")),
        shen_bias_definition=shen.get("definition", ""),
        homogeneity=Homogeneity(
            statistic=hom.get("statistic"), p_value=hom.get("p_value"), test=hom.get("test", "")
        )
        if hom
        else None,
        over_prompts=_over_prompts(d.get("over_prompts")),
        note=d.get("note", ""),
    )


def _over_prompts(d: dict[str, Any] | None) -> OverPrompts | None:
    if not d:
        return None
    return OverPrompts(
        reading=d["reading"],
        prompts=d["prompts"],
        shares={g: estimate_from_json(e) for g, e in d["shares"].items()},
        between_prompt_sd=dict(d.get("between_prompt_sd") or {}),
        method=d.get("method", ""),
        note=d.get("note", ""),
    )


def attribute_summary_from_json(d: dict[str, Any]) -> AttributeSummary:
    """One attribute's block of ``attributes`` (several attributes only)."""
    return summary_from_json(
        d,
        AttributeSummary,
        levels=tuple(d["levels"]),
        target=dict(d["target"]),
        shen_bias=estimate_from_json(d.get("shen_bias")),
    )
