"""Reproducibility: the same inputs and seed give the same audit.

Byte-identical ``audit.json`` and ``images.csv`` across runs (here) and across process counts
(``tests/integration/test_audit.py::test_two_processes_equal_one``). Across batch sizes the
images are the same draws (same seeds, same starting noise), but batched matrix products sum in
a shape-dependent order: by default probabilities agree to float32 rounding, and the labels,
counts and every reported number to a stated tolerance; with ``batch_invariant`` (each image
computed on its own) they agree bit for bit.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from medfair_audit import AuditConfig, run_audit
from medfair_audit.audit import AuditResult
from medfair_audit.audit.result import VOLATILE_FIELDS
from medfair_audit.generation import GenerationConfig
from medfair_audit.target import parse_target

PROMPTS = ["Axial FLAIR MRI of the brain showing a glioma.", "Axial T1-weighted MRI."]


def _audit(models, out, batch, **kw):
    return run_audit(
        AuditConfig(
            **kw,
            checkpoint=models["t2medi"],
            classifier=models["classifier"],
            prompts=PROMPTS,
            target=parse_target("male=0.58,female=0.42"),
            out=out,
            generation=GenerationConfig(n_per_prompt=6, seed=9, steps=2, shard_size=batch),
            n_boot=100,
        )
    )


def _numbers(node, path=""):
    """Every number in a JSON tree, by path."""
    if isinstance(node, dict):
        return {
            k: v for key, val in node.items() for k, v in _numbers(val, f"{path}/{key}").items()
        }
    if isinstance(node, list):
        return {k: v for i, val in enumerate(node) for k, v in _numbers(val, f"{path}/{i}").items()}
    return {path: node} if isinstance(node, (int, float)) and not isinstance(node, bool) else {}


def test_two_runs_are_byte_identical_and_only_volatile_fields_may_differ(tiny_models, tmp_path):
    a = _audit(tiny_models, tmp_path / "a", 3)
    b = _audit(tiny_models, tmp_path / "b", 3)
    for name in ("audit.json", "images.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    # another software version changes only the volatile fields, which comparisons drop
    b.data["config"]["versions"] = {**b.data["config"]["versions"], "torch": "99.0"}
    assert a.data != b.data and a.comparable() == b.comparable()
    assert all(path[-1] not in _comparable_keys(a) for path in VOLATILE_FIELDS)
    loaded = AuditResult.load(tmp_path / "a")
    assert loaded.comparable() == a.comparable()


def _comparable_keys(result):
    return set(result.comparable()["config"])


def test_batch_size_changes_only_the_last_bits(tiny_models, tmp_path):
    one = _audit(tiny_models, tmp_path / "b1", 1)
    six = _audit(tiny_models, tmp_path / "b6", 6)
    a, b = one.images, six.images
    assert a.seed.tolist() == b.seed.tolist() and a.predicted.tolist() == b.predicted.tolist()
    np.testing.assert_allclose(a.p_male, b.p_male, rtol=0, atol=1e-5)
    x, y = one.comparable(), six.comparable()
    assert x["counts"] == y["counts"]
    nx, ny = _numbers(x), _numbers(y)
    assert nx.keys() == ny.keys()
    far = {
        k: (nx[k], ny[k]) for k in nx if not math.isclose(nx[k], ny[k], rel_tol=1e-4, abs_tol=1e-4)
    }
    assert not far, far
    pd.testing.assert_frame_equal(
        a.drop(columns=["p_male", "p_female"]), b.drop(columns=["p_male", "p_female"])
    )


def test_batch_invariant_audits_are_identical_at_every_batch_size(tiny_models, tmp_path):
    runs = [_audit(tiny_models, tmp_path / f"b{b}", b, batch_invariant=True) for b in (1, 4, 6)]
    for other, b in zip(runs[1:], (4, 6), strict=True):
        assert other.comparable() == runs[0].comparable()
        for name in ("images.csv", "grid_female.png", "grid_male.png"):
            first, again = tmp_path / "b1" / name, tmp_path / f"b{b}" / name
            assert first.exists() == again.exists()
            if first.exists():
                assert again.read_bytes() == first.read_bytes()
    # and they equal an ordinary audit at batch size 1
    plain = _audit(tiny_models, tmp_path / "plain", 1)
    assert plain.comparable()["proportions"] == runs[0].comparable()["proportions"]
    assert plain.images.equals(runs[0].images)
    assert runs[0].data["config"]["batch_invariant"] is True
