"""Several subgroup classifiers read together: marginals per attribute and joint cells.

An audit or a remediation over several attributes takes either

* **one classifier per attribute** (``sex=PATH``, ``age_band=PATH``): the joint cell
  probabilities of an image are the product of its per-attribute probabilities, and the joint
  confusion matrix the Kronecker product of the per-attribute ones. Both assume that, given an
  image's true cell, each classifier's output depends only on its own attribute and that the
  classifiers err independently (:class:`~medfair_audit.metrics.estimates.ProductHeldOut`);
* or **one joint classifier** (``medfair train classifier --attribute sex --attribute
  age_band``), whose groups are the cells themselves; marginals sum its probabilities.

A single classifier is the one-attribute case and behaves exactly as before.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..attributes import cell_name, cells, split_cell
from ..exceptions import ConfigError
from ..metrics.estimates import HeldOut, ProductHeldOut
from .classifier import SubgroupClassifier

__all__ = ["INDEPENDENCE_NOTE", "ClassifierSet", "classifier_sha256"]

INDEPENDENCE_NOTE = (
    "joint cells from one classifier per attribute: an image's cell probabilities are the product "
    "of its per-attribute probabilities and the joint confusion matrix is the Kronecker product "
    "of the per-attribute ones, which assumes that, given the true cell, each classifier reads "
    "only its own attribute and the classifiers err independently"
)
JOINT_NOTE = "joint cells read by one joint classifier; marginals sum its cell probabilities"


def classifier_sha256(
    spec: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
) -> tuple[str, dict[str, str] | None]:
    """The classifier folder's hash; for several, a hash of their hashes (and each one).

    The audit and remediation record the same value, so an audit can tell that it uses the
    classifiers a remediation was tuned against.
    """
    import hashlib
    import json

    from .._io import folder_sha256

    if not isinstance(spec, Mapping):
        return folder_sha256(spec), None
    each = {str(a): folder_sha256(p) for a, p in spec.items()}
    return hashlib.sha256(json.dumps(each, sort_keys=True).encode()).hexdigest(), each


class ClassifierSet:
    """One classifier, one per attribute, or one joint classifier, read as marginals and cells.

    Args:
        members: The classifiers, in attribute order. Several must each predict one attribute;
            a single one may be a joint classifier.
        paths: Their folders (for records and hashes).
    """

    def __init__(self, members: Sequence[SubgroupClassifier], paths: Sequence[Path]) -> None:
        self.members = list(members)
        self.paths = [Path(p) for p in paths]
        attrs = [a for m in self.members for a in m.attributes]
        if len(set(attrs)) != len(attrs):
            raise ConfigError(f"attributes repeat across classifiers: {attrs}", param="classifier")
        if len(self.members) > 1 and any(len(m.attributes) > 1 for m in self.members):
            raise ConfigError(
                "combine per-attribute classifiers, or give one joint classifier alone",
                param="classifier",
            )
        self.attributes: tuple[str, ...] = tuple(attrs)

    @classmethod
    def load(
        cls,
        spec: str | os.PathLike[str] | Mapping[str, str | os.PathLike[str]],
        *,
        trust_pickle: bool = False,
        param: str = "classifier",
    ) -> ClassifierSet:
        """Load one folder, or attribute → folder (each classifier must predict its attribute)."""
        if isinstance(spec, Mapping):
            members, paths = [], []
            for attr, path in spec.items():
                clf = SubgroupClassifier.from_pretrained(
                    path, trust_pickle=trust_pickle, param=param
                )
                if clf.attribute != attr:
                    raise ConfigError(
                        f"'{path}' predicts '{clf.attribute}', not '{attr}'", param=param
                    )
                members.append(clf)
                paths.append(Path(path))
            return cls(members, paths)
        clf = SubgroupClassifier.from_pretrained(spec, trust_pickle=trust_pickle, param=param)
        return cls([clf], [Path(spec)])

    # -- structure ---------------------------------------------------------------------------

    @property
    def primary(self) -> SubgroupClassifier:
        """The first classifier (it also gives the ``classifier`` features)."""
        return self.members[0]

    @property
    def multi(self) -> bool:
        """Whether more than one attribute is read."""
        return len(self.attributes) > 1

    @property
    def joint_classifier(self) -> bool:
        """Whether one classifier predicts the joint cells itself."""
        return len(self.members) == 1 and self.multi

    @property
    def attribute(self) -> str:
        """The attributes' comma-joined name (``"sex,age_band"``; ``"sex"`` for one)."""
        return ",".join(self.attributes)

    @property
    def levels(self) -> dict[str, tuple[str, ...]]:
        """Attribute → its groups, in the classifiers' order."""
        if not self.joint_classifier:
            return {m.attribute: tuple(m.groups) for m in self.members}
        out: dict[str, list[str]] = {a: [] for a in self.attributes}
        for name in self.primary.groups:
            for a, level in zip(self.attributes, split_cell(name), strict=True):
                out[a].append(level)
        return {a: tuple(dict.fromkeys(v)) for a, v in out.items()}

    @property
    def groups(self) -> list[str]:
        """Joint cells (the groups, for one attribute), in the order of the joint probabilities."""
        if len(self.members) == 1:
            return list(self.primary.groups)
        return [cell_name(c) for c in cells(list(self.levels.values()))]

    @property
    def width(self) -> int:
        """Columns of :meth:`predict_proba`: the classifiers' outputs side by side."""
        return sum(len(m.groups) for m in self.members)

    @property
    def note(self) -> str | None:
        """How the joint cells are read (``None`` for one attribute)."""
        if not self.multi:
            return None
        return JOINT_NOTE if self.joint_classifier else INDEPENDENCE_NOTE

    def _level_index(self, attribute: str) -> np.ndarray:
        """For a joint classifier: cell index → level index of ``attribute``."""
        i = self.attributes.index(attribute)
        levels = self.levels[attribute]
        return np.array([levels.index(split_cell(g)[i]) for g in self.primary.groups])

    # -- probabilities -----------------------------------------------------------------------

    def to(self, device: torch.device | str) -> ClassifierSet:
        """Move every classifier."""
        for m in self.members:
            m.to(device)
        return self

    def member_probs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each classifier's calibrated probabilities, differentiable in the images."""
        import torch.nn.functional as F

        return [F.softmax(m.logits(images) / m.temperature, dim=-1) for m in self.members]

    def predict_proba(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, width)``: each classifier's calibrated probabilities, side by side."""
        return torch.cat([m.predict_proba(images) for m in self.members], dim=1)

    def split(self, probs: Any) -> list[Any]:
        """Cut :meth:`predict_proba` output into one block per classifier."""
        out, start = [], 0
        for m in self.members:
            out.append(probs[:, start : start + len(m.groups)])
            start += len(m.groups)
        return out

    def joint(self, probs: Any) -> Any:
        """``(N, cells)`` joint probabilities (numpy or torch, differentiable)."""
        parts = self.split(probs)
        out = parts[0]
        for p in parts[1:]:
            out = (out[:, :, None] * p[:, None, :]).reshape(len(out), -1)
        return out

    def marginal(self, probs: Any, attribute: str) -> Any:
        """``(N, levels)`` probabilities of one attribute (numpy or torch)."""
        if not self.joint_classifier:
            return self.split(probs)[self.attributes.index(attribute)]
        index = self._level_index(attribute)
        onehot = np.eye(len(self.levels[attribute]))[index]
        if isinstance(probs, torch.Tensor):
            return probs @ torch.as_tensor(onehot, dtype=probs.dtype, device=probs.device)
        return np.asarray(probs) @ onehot

    # -- held-out errors ---------------------------------------------------------------------

    def evaluations(self) -> list[dict[str, Any]]:
        """Each classifier's ``evaluation.json``.

        Raises:
            ConfigError: One has none.
        """
        out = []
        for m, path in zip(self.members, self.paths, strict=True):
            if m.evaluation is None:
                raise ConfigError(
                    f"'{path}' has no evaluation.json (held-out outputs or confusion matrix)",
                    param="classifier",
                )
            out.append(m.evaluation)
        return out

    def heldout(self) -> HeldOut | ProductHeldOut:
        """Held-out errors over the joint cells (the groups, for one attribute)."""
        evs = self.evaluations()
        parts = [
            HeldOut.from_evaluation(ev, m.groups) for ev, m in zip(evs, self.members, strict=True)
        ]
        return parts[0] if len(parts) == 1 else ProductHeldOut(parts)

    def heldout_marginal(self, attribute: str) -> HeldOut:
        """Held-out errors of one attribute."""
        evs = self.evaluations()
        if not self.joint_classifier:
            i = self.attributes.index(attribute)
            return HeldOut.from_evaluation(evs[i], self.members[i].groups)
        joint = HeldOut.from_evaluation(evs[0], self.primary.groups)
        return joint.marginal(self._level_index(attribute), len(self.levels[attribute]))

    def check_target(self, target: Any, *, param: str = "target") -> None:
        """The target must cover the same attributes and groups (cells) as the classifiers.

        Raises:
            ConfigError: It does not.
        """
        attrs = tuple(target.attributes or (target.attribute,))
        if self.multi and attrs != self.attributes:
            raise ConfigError(
                f"the target's attributes ({', '.join(attrs)}) differ from the classifiers' "
                f"({', '.join(self.attributes)}); write the target with --column for each, "
                "in the same order",
                param=param,
            )
        if set(target.groups) != set(self.groups):
            raise ConfigError(
                f"the target's groups {list(target.groups)} differ from the classifier's "
                f"{self.groups}",
                param=param,
            )
