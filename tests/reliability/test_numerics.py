"""Numerical safety: degenerate inputs give defined results with a warning, or a one-line error;
no NaN or infinity reaches ``audit.json`` unannounced."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest

from medfair_audit import AuditConfig, run_audit
from medfair_audit._io import null_non_finite
from medfair_audit.audit.quality import quality_by_group
from medfair_audit.generation import GenerationConfig
from medfair_audit.metrics.accumulators import FeatureMoments
from medfair_audit.target import parse_target
from tests.cli.test_cli import assert_one_line_error, run


def _strict(path):
    """Parse JSON refusing NaN/Infinity, which ``json.loads`` would accept silently."""

    def refuse(token):
        raise AssertionError(f"{token} in {path}")

    return json.loads(path.read_text(), parse_constant=refuse)


def _finite_numbers(node):
    if isinstance(node, dict):
        return all(_finite_numbers(v) for v in node.values())
    if isinstance(node, list):
        return all(_finite_numbers(v) for v in node)
    return not isinstance(node, float) or math.isfinite(node)


def test_a_one_image_audit_is_complete_finite_and_says_what_it_cannot_measure(
    tiny_models, small_phantom, tmp_path
):
    result = run_audit(
        AuditConfig(
            checkpoint=tiny_models["t2medi"],
            classifier=tiny_models["classifier"],
            prompts=["Axial MRI."],
            target=parse_target("male=0.58,female=0.42"),
            out=tmp_path / "a",
            reference=small_phantom,
            generation=GenerationConfig(n_per_prompt=1, seed=2, steps=1, shard_size=1),
            n_boot=20,
        )
    )
    doc = _strict(tmp_path / "a" / "audit.json")
    assert doc["n_images"] == 1 and _finite_numbers(doc)
    assert sum(doc["counts"].values()) == 1
    empty = next(g for g, n in doc["counts"].items() if n == 0)
    assert any(f"no generated image was classified '{empty}'" in w for w in doc["warnings"])
    for g in result.groups:  # shares stay in [0, 1] with an interval that holds them
        for entry in doc["proportions"].values():
            lo, hi = entry[g]["ci"]
            assert 0 <= lo <= hi <= 1
    for entry in doc["quality"]["by_group"].values():  # one image: FID undefined, and said so
        assert entry["fid"] is None and "fewer than 2" in entry["reason"]


@pytest.mark.parametrize("kind", ["constant", "rank_deficient", "one_group"])
def test_fid_and_kid_on_degenerate_features_are_finite_or_explained(kind):
    rng = np.random.default_rng(0)
    d = 64
    if kind == "constant":  # zero variance on both sides
        gen = [np.ones((20, d)), np.ones((20, d))]
        ref = np.ones((40, d))
    elif kind == "rank_deficient":  # n < d: singular covariances
        gen = [rng.normal(size=(10, d)), rng.normal(size=(10, d))]
        ref = rng.normal(size=(12, d))
    else:  # every generated image in one group
        gen = [rng.normal(size=(30, d)), np.zeros((0, d))]
        ref = rng.normal(size=(40, d))
    labels = np.arange(len(ref)) % 2
    moments = [FeatureMoments(d).update(g) if len(g) else FeatureMoments(d) for g in gen]
    quality, warnings = quality_by_group(
        moments, gen, ref, labels, ["female", "male"], draws=3, min_group_n=15
    )
    assert _finite_numbers(quality)
    for name, entry in quality["by_group"].items():
        if entry["fid"] is None:
            assert "fewer than 2" in entry["reason"], name
        else:
            assert entry["fid"] >= 0
            for at in entry["at_n"].values():
                assert at["fid"]["mean"] >= 0 and at["fid"]["sd"] >= 0
    if kind == "constant":
        assert quality["by_group"]["overall"]["fid"] == pytest.approx(0, abs=1e-9)
    if kind == "rank_deficient":
        assert any("biased upward" in w for w in warnings)  # 10 < min_group_n


def test_non_finite_values_become_null_and_are_named():
    doc = {"a": 1.0, "b": [0.5, float("nan")], "c": {"d": float("inf"), "e": "x"}, "f": None}
    assert null_non_finite(doc) == ["b.1", "c.d"]
    assert doc == {"a": 1.0, "b": [0.5, None], "c": {"d": None, "e": "x"}, "f": None}


def test_audit_json_is_never_written_with_nan(tmp_path):
    from medfair_audit._io import atomic_write_json

    with pytest.raises(ValueError, match="not JSON compliant"):
        atomic_write_json(tmp_path / "x.json", {"v": float("nan")}, allow_nan=False)
    assert not (tmp_path / "x.json").exists()


def test_a_classifier_that_outputs_nan_is_a_one_line_error(capsys, tiny_models, tmp_path):
    from safetensors.torch import load_file, save_file

    clf = tmp_path / "clf"
    shutil.copytree(tiny_models["classifier"], clf)
    weights = load_file(clf / "model.safetensors")
    weights = {
        k: v.float().fill_(float("nan")) if v.is_floating_point() else v for k, v in weights.items()
    }
    save_file(weights, clf / "model.safetensors")
    code, _, err = run(
        capsys,
        "audit", tiny_models["t2medi"], "--classifier", clf, "--out", tmp_path / "o",
        "--steps", 1, "--n-per-prompt", 2, "--prompt", "Axial MRI.",
        "--target", "male=0.5,female=0.5", "--n-boot", 10,
    )  # fmt: skip
    assert_one_line_error(code, err, "--classifier", "NaN/inf outputs", "prompt 0")
    assert not (tmp_path / "o" / "audit.json").exists()


def test_hostile_group_names_cannot_leave_the_folder():
    from medfair_audit.audit.result import grid_name

    assert grid_name("female") == "grid_female.png"
    for g in ("../../etc/x", "a/b", "C:\\x", ".hidden", "m f"):
        name = grid_name(g)
        assert "/" not in name and "\\" not in name and ".." not in name and " " not in name
    assert grid_name("a/b") != grid_name("a_b")  # distinct groups keep distinct files
