"""Typed results: an estimate with its interval or its bound, and the frames an audit reports.

Reporting, the CLI and the benchmarks read these attributes; only
:mod:`medfair_audit.audit.result` and :mod:`.results_json` read the ``audit.json`` keys behind
them. Like
torchmetrics' and fairlearn's result objects they are plain, frozen values: an :class:`Estimate`
says whether it is a measurement (``value``), a one-sided bound (``bound``, when censored) or
neither (not identifiable), so a caller cannot print a bound as a measurement by accident.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "AttributeSummary",
    "AuditSettings",
    "ChiSquare",
    "ClassifierInfo",
    "Conditional",
    "Conditioning",
    "Dispersion",
    "Distances",
    "Estimate",
    "Evaluation",
    "Fidelity",
    "Homogeneity",
    "IndependenceCheck",
    "IndependenceTest",
    "Joint",
    "JointCell",
    "OverPrompts",
    "PromptSummary",
    "Quality",
    "QualityAtN",
    "QualityEntry",
    "Reader",
    "Readers",
    "RemediationInfo",
    "SampleSize",
    "Sequential",
    "Smoothing",
    "Spread",
    "Summary",
    "Support",
    "SupportShare",
    "Vendi",
    "WorstPrompt",
    "common_size",
    "prdc_size",
]

Interval = tuple[float | None, float | None]


@dataclass(frozen=True, kw_only=True)
class Estimate:
    """A value with its interval, or the one-sided bound that replaces a censored value.

    Attributes:
        value: The point estimate; ``None`` when censored (see :attr:`bound`) or not
            identifiable.
        ci: The interval, if any.
        censored: ``"above"``/``"below"`` for a share beyond what the classifier's errors
            explain, ``True`` for a distance at its ceiling, ``None`` otherwise.
        at_most: The upper bound of a censored value.
        at_least: The lower bound of a censored value.
        method: How it was estimated.
        note: Why it is censored or not identifiable, in words.
    """

    value: float | None
    ci: Interval | None = None
    censored: str | bool | None = None
    at_most: float | None = None
    at_least: float | None = None
    method: str | None = None
    note: str | None = None

    @property
    def bound(self) -> tuple[str, float] | None:
        """``("≤", x)`` or ``("≥", x)`` when the value is censored to a bound, else ``None``."""
        if self.value is not None:
            return None
        if self.at_most is not None:
            return ("≤", self.at_most)
        if self.at_least is not None:
            return ("≥", self.at_least)
        return None

    @property
    def constrained(self) -> bool:
        """Projected onto the simplex because another group is censored.

        Another estimator than the interval's, so the value need not lie inside it.
        """
        return "simplex-constrained" in (self.method or "")

    def to_json(self) -> dict[str, Any]:
        """The estimate as ``audit.json`` writes one (``{value, ci[, censored, bound, …]}``)."""
        out: dict[str, Any] = {"value": self.value, "ci": list(self.ci) if self.ci else None}
        if self.censored is not None:
            out["censored"] = self.censored
        if self.at_most is not None or self.at_least is not None:
            key = "at_most" if self.at_most is not None else "at_least"
            out["bound"] = {key: self.at_most if self.at_most is not None else self.at_least}
        for key in ("method", "note"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        return out

    def text(self, fmt: str) -> str:
        """``value [lo, hi]``, or its bound when censored (``≥ x (censored) [lo, hi]``)."""
        lo, hi = self.ci if self.ci is not None else (None, None)
        interval = f" [{lo:{fmt}}, {hi:{fmt}}]" if lo is not None else ""
        if self.value is None:
            if self.bound is not None:
                sign, x = self.bound
                return f"{sign} {x:{fmt}} (censored){interval}"
            return f"not identifiable{interval}"
        return f"{self.value:{fmt}}{interval}"


@dataclass(frozen=True, kw_only=True)
class Spread:
    """Mean and standard deviation over repeated subsample draws (FID, KID, PRDC, CMMD)."""

    mean: float
    sd: float | None

    def to_json(self) -> dict[str, float | None]:
        """``{mean, sd}``, as ``audit.json`` writes it."""
        return {"mean": self.mean, "sd": self.sd}


@dataclass(frozen=True, kw_only=True)
class ChiSquare:
    """The on-target test: labels against target·C (``p_value_is_bound``: simulated, ≤)."""

    statistic: float | None
    p_value: float | None
    df: int | None
    p_value_is_bound: bool = False
    method: str | None = None
    note: str | None = None


@dataclass(frozen=True, kw_only=True)
class Distances:
    """Distances of one reading's shares to the target (KL in nats), and each group's gap."""

    kl_target_to_generated: Estimate
    kl_generated_to_target: Estimate
    js: Estimate
    tv: Estimate
    l2_fairness_discrepancy: Estimate
    max_abs_gap: Estimate
    gaps: Mapping[str, Estimate] = field(default_factory=dict)


@dataclass(frozen=True, kw_only=True)
class Summary:
    """Shares and distances of a set of images (all of them, one prompt's, one attribute's).

    Attributes:
        n: Images.
        counts: Images per predicted group.
        proportions: Reading (``raw``, ``probabilistic``, ``acc``, ``pacc``, ``em``) → group →
            share.
        distances: Reading → distances to the target.
        chi_square: The on-target test, if computed.
    """

    n: int
    counts: Mapping[str, int]
    proportions: Mapping[str, Mapping[str, Estimate]]
    distances: Mapping[str, Distances]
    chi_square: ChiSquare | None = None

    def share(self, group: str, reading: str) -> Estimate | None:
        """One group's share in one reading (``None`` if that reading was not computed)."""
        return self.proportions.get(reading, {}).get(group)


@dataclass(frozen=True, kw_only=True)
class Conditional:
    """Conditional mode: the share of one prompt's images showing the group it names."""

    named_group: str
    share: float
    ci: Interval
    corrected: Estimate | None = None


@dataclass(frozen=True, kw_only=True)
class Fidelity:
    """How often a conditioned model shows the group a request named (its prompts pooled).

    Attributes:
        prompts: Indices of the prompts that name the group.
        n: Their images.
        labels: The share classified as the group (Wilson interval).
        corrected: The same share corrected for the classifier's errors (the headline reading).
    """

    prompts: tuple[int, ...]
    n: int
    labels: Estimate
    corrected: Estimate


@dataclass(frozen=True, kw_only=True)
class Conditioning:
    """Conditional mode: fidelity per named group, and the output's marginal shares.

    Attributes:
        distribution: Share of requests per group.
        distribution_source: Given, declared by the model, or equal shares.
        fidelity: Named group → :class:`Fidelity`.
        marginal: Reading (``acc``, ``pacc``) → group → share among the images of a use that
            requests the groups in ``distribution``'s shares.
    """

    distribution: dict[str, float]
    distribution_source: str
    fidelity: dict[str, Fidelity]
    marginal: dict[str, dict[str, Estimate]]


@dataclass(frozen=True, kw_only=True)
class PromptSummary(Summary):
    """One prompt's :class:`Summary` (``index`` in the audit's prompt list)."""

    index: int
    prompt: str
    conditional: Conditional | None = None


@dataclass(frozen=True, kw_only=True)
class AttributeSummary(Summary):
    """One attribute's marginal :class:`Summary` when an audit reads several attributes."""

    levels: tuple[str, ...]
    target: Mapping[str, float]
    shen_bias: Estimate | None = None


@dataclass(frozen=True, kw_only=True)
class WorstPrompt:
    """The prompt farthest from the target."""

    index: int
    prompt: str
    abs_gap: Estimate


@dataclass(frozen=True, kw_only=True)
class Homogeneity:
    """Whether every prompt has the same label distribution (a chi-square test)."""

    statistic: float | None
    p_value: float | None
    test: str


@dataclass(frozen=True, kw_only=True)
class OverPrompts:
    """The share over the wordings the prompts were drawn from (prompts as a random sample).

    Attributes:
        shares: Group → mean of the prompts' corrected shares, with a Student-t interval that
            carries the spread between prompts and the held-out matrix's shared error.
        between_prompt_sd: Group → the sd of the prompts' true shares (estimated: their shares'
            variance less the mean variance of one prompt's images, the bootstrap's less the
            held-out matrix's part, which the prompts' points share).
        prompts: How many prompts the mean is over.
    """

    reading: str
    prompts: int
    shares: dict[str, Estimate]
    between_prompt_sd: dict[str, float | None]
    method: str = ""
    note: str = ""

    def share(self, group: str) -> Estimate:
        """One group's share over the wordings."""
        return self.shares[group]


@dataclass(frozen=True, kw_only=True)
class Dispersion:
    """How the prompts spread around the target (in one reading).

    Attributes:
        shen_bias: Shen et al.'s bias (mean pairwise share difference), mean over prompts.
        shen_bias_definition: Its definition in words.
    """

    reading: str
    mean_abs_gap: Estimate
    worst_prompt: WorstPrompt | None
    shen_bias: Estimate | None = None
    shen_bias_definition: str = ""
    homogeneity: Homogeneity | None = None
    over_prompts: OverPrompts | None = None
    note: str = ""


@dataclass(frozen=True, kw_only=True)
class SampleSize:
    """Images needed for a ± ``half_width`` interval on the corrected share (``None``: never)."""

    reading: str
    half_width: float
    needed_total: int | None
    needed_per_prompt: int | None
    floor_half_width: float | None


@dataclass(frozen=True, kw_only=True)
class QualityAtN:
    """Quality measures at one subsample size (each side), over repeated draws."""

    fid: Spread | None
    kid: Spread | None
    prdc: Mapping[str, Spread] | None = None
    cmmd: Spread | None = None


@dataclass(frozen=True, kw_only=True)
class Vendi:
    """A Vendi score (effective number of distinct images) with a t interval over blocks."""

    n: int
    blocks: int
    value: float | None
    ci: Interval | None
    reason: str | None = None

    def asestimate_from_json(self) -> Estimate:
        """The score as an :class:`Estimate` (for the shared formatting)."""
        return Estimate(value=self.value, ci=self.ci)


@dataclass(frozen=True, kw_only=True)
class QualityEntry:
    """One predicted group's (or ``overall``) quality against the real images."""

    n_generated: int | None
    n_reference: int | None
    fid: float | None
    at_n: Mapping[str, QualityAtN]
    vendi: Vendi | None = None
    vendi_reference: Vendi | None = None
    collapsed: bool = False
    reason: str | None = None

    def at(self, n: str | None) -> QualityAtN | None:
        """The measures at subsample size ``n`` (a key of :attr:`at_n`), if computed."""
        return self.at_n.get(n) if n is not None else None


@dataclass(frozen=True, kw_only=True)
class Quality:
    """Per-group quality (FID/KID, PRDC, CMMD, Vendi) and, with ``--frd``, FRD per group."""

    version: int
    by_group: Mapping[str, QualityEntry]
    frd: Mapping[str, float | None] = field(default_factory=dict)
    method: str = ""
    draws: int = 0
    equal_n: int | None = None

    def entry(self, group: str) -> QualityEntry | None:
        """One group's entry (or ``overall``), if measured."""
        return self.by_group.get(group)


@dataclass(frozen=True, kw_only=True)
class SupportShare:
    """Share of images outside the real images' support, with a Wilson interval."""

    share: float | None
    ci: Interval
    n: int


@dataclass(frozen=True, kw_only=True)
class Support:
    """The support test in one classifier's feature space."""

    space: str
    overall: SupportShare
    by_group: Mapping[str, SupportShare]


@dataclass(frozen=True, kw_only=True)
class Reader:
    """Another classifier's corrected shares of the same images, and its paired differences."""

    name: str
    architecture: str
    proportions: Mapping[str, Estimate]
    disagreement: Mapping[str, Estimate]


@dataclass(frozen=True, kw_only=True)
class Readers:
    """The readers section: other readers and the support shares."""

    readers: tuple[Reader, ...]
    support: tuple[Support, ...]


@dataclass(frozen=True, kw_only=True)
class JointCell:
    """One joint cell (e.g. ``female/40-59``): its share, target and Holm-adjusted test."""

    cell: str
    levels: Mapping[str, str]
    target: float
    n: int
    share: Estimate
    small: bool
    p_holm: float | None
    reject: bool | None


@dataclass(frozen=True, kw_only=True)
class IndependenceTest:
    """Whether one classifier's held-out accuracy on one level depends on the other attributes."""

    classifier: str
    level: str
    accuracy_by_cell: Mapping[str, float]
    p_holm: float


@dataclass(frozen=True, kw_only=True)
class IndependenceCheck:
    """The joint cells' independence assumption, tested on the held-out images."""

    method: str
    doubtful: bool
    tests: tuple[IndependenceTest, ...]


@dataclass(frozen=True, kw_only=True)
class Joint:
    """The joint cells of several attributes."""

    attributes: tuple[str, ...]
    levels: Mapping[str, tuple[str, ...]]
    reading: str
    cells: tuple[JointCell, ...]
    holm_alpha: float
    rejected: tuple[str, ...]
    shen_bias: Mapping[str, Estimate]
    shen_bias_definition: str = ""
    method: str = ""
    holm_method: str = ""
    min_cell_n: int = 0
    zero_target_cells: tuple[str, ...] = ()
    independence_check: IndependenceCheck | None = None


@dataclass(frozen=True, kw_only=True)
class Sequential:
    """An audit drawn until precise (``--precision``): where it stopped and its intervals."""

    precision: float
    confidence: float
    n_per_prompt: int
    max_n_per_prompt: int
    stopped_by: str
    intervals: Mapping[str, tuple[float, float]] | None
    half_widths: tuple[float | None, ...]

    @property
    def looks(self) -> int:
        """How many times the rule looked at the data."""
        return len(self.half_widths)


@dataclass(frozen=True, kw_only=True)
class RemediationInfo:
    """What remediation an audited checkpoint went through (from its ``remediation.json``)."""

    classifier: str | None
    classifier_sha256: str | None
    prompts: tuple[str, ...]
    steps: int | None


@dataclass(frozen=True, kw_only=True)
class AuditSettings:
    """How an audit ran: model, classifier(s), prompts and generation settings.

    Attributes:
        shown: The settings a report's methods table lists, by name, in order.
        features: The feature extractor (``name`` and its details).
        versions: Software versions.
        device: Where it ran (e.g. ``cuda:0``).
        dtype: The generation's floating-point type.
        pipeline: What the checkpoint folder holds (see ``models.pipelines.describe``).
    """

    checkpoint: str
    checkpoint_sha256: str
    classifier: str | Mapping[str, str]
    classifier_sha256: str
    prompts: tuple[str, ...]
    n_per_prompt: int
    seed: int
    steps: int
    remediation: RemediationInfo | None
    shown: Mapping[str, Any] = field(default_factory=dict)
    features: Mapping[str, Any] = field(default_factory=dict)
    feature_name: str = ""
    versions: Mapping[str, str] = field(default_factory=dict)
    device: str = ""
    dtype: str = ""
    pipeline: Mapping[str, Any] = field(default_factory=dict)

    @property
    def classifier_name(self) -> str:
        """The classifier's folder name (``attribute=name, …`` for several)."""
        from pathlib import Path

        if isinstance(self.classifier, Mapping):
            return ", ".join(f"{a}={Path(v).name}" for a, v in self.classifier.items())
        return Path(self.classifier).name


@dataclass(frozen=True, kw_only=True)
class Evaluation:
    """A classifier's held-out evaluation (its ``evaluation.json``), as a report shows it."""

    balanced_accuracy: float | None
    roc_auc: float | None
    ece: float | None
    n: int | None
    split: str | None
    split_unit: str | None
    groups: tuple[str, ...]
    confusion_matrix: tuple[tuple[int, ...], ...]
    by_group: Mapping[str, Mapping[str, Mapping[str, float]]]


@dataclass(frozen=True, kw_only=True)
class ClassifierInfo:
    """The measuring instrument: its folder and held-out evaluation (``None``: not recorded)."""

    path: str
    evaluation: Evaluation | None
    condition_number: Mapping[str, float | None]


@dataclass(frozen=True, kw_only=True)
class Smoothing:
    """The ε-smoothing applied before a KL divergence."""

    epsilon: float
    method: str


def common_size(entries: Sequence[QualityEntry | None]) -> str | None:
    """The largest subsample size every entry has measures at (``None`` if none)."""
    keys: set[str] | None = None
    for e in entries:
        have = set(e.at_n) if e else set()
        keys = have if keys is None else keys & have
    return max(keys, key=int) if keys else None


def prdc_size(entries: Sequence[QualityEntry | None]) -> str | None:
    """The largest size at which every entry that has PRDC has it (``None``: none has)."""
    sizes: set[str] | None = None
    for e in entries:
        have = {n for n, at in (e.at_n if e else {}).items() if at.prdc}
        if have:
            sizes = have if sizes is None else sizes & have
    return max(sizes, key=int) if sizes else None
