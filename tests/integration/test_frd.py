"""Fréchet Radiomics Distance per group (audit --frd) through frd-score, on phantom images."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from scipy import ndimage

from medfair_audit import AuditConfig, run_audit
from medfair_audit.exceptions import ConfigError
from medfair_audit.generation import GenerationConfig
from medfair_audit.target import parse_target
from tests.cli.test_cli import assert_one_line_error, run


def _frd_installed() -> bool:
    try:
        from medfair_audit.audit.frd import require_frd

        require_frd()
    except ConfigError:
        return False
    return True


needs_frd = pytest.mark.skipif(
    not _frd_installed(), reason="the frd extra is not installed (make test installs it)"
)


@pytest.fixture(scope="module")
def phantom_u8(small_phantom):
    from medfair_audit.data.datasets import ImageFolderDataset
    from medfair_audit.training import load_images

    ds = ImageFolderDataset(small_phantom)
    x = load_images(ds).numpy()
    labels = np.array([["female", "male"].index(v) for v in ds.metadata["sex"]])
    return np.round((x + 1) * 127.5).astype(np.uint8), labels


@needs_frd
def test_frd_is_zero_for_a_set_against_itself_and_grows_with_a_tissue_contrast_change(
    phantom_u8,
):
    from medfair_audit.audit.frd import frd_by_group

    images, labels = phantom_u8
    groups = ["female", "male"]
    same = frd_by_group([images], labels, images, labels, groups, workers=2)["by_group"]
    for name, e in same.items():
        assert e["frechet_d2"] == pytest.approx(0, abs=1e-6), name
        assert e["frd"] is None and "log of 0" in e["reason"]
    half = len(images) // 2
    a, b, la, lb = images[:half], images[half:], labels[:half], labels[half:]
    gamma = np.round(255 * (b / 255.0) ** 0.5).astype(np.uint8)  # grey/white contrast changes
    blur = ndimage.gaussian_filter(b, (0, 0, 1.0, 1.0))
    values = {
        name: frd_by_group([x], lb, a, la, groups, workers=2)["by_group"]["overall"]["frd"]
        for name, x in (("same distribution", b), ("gamma 0.5", gamma), ("blurred", blur))
    }
    assert values["same distribution"] < values["gamma 0.5"] < values["blurred"], values


@needs_frd
def test_an_audit_with_frd_reports_it_per_group_and_in_the_report(
    tiny_models, small_phantom, tmp_path
):
    import jsonschema

    from medfair_audit.audit import audit_schema
    from medfair_audit.reporting.compare import write_report

    cfg = AuditConfig(
        checkpoint=tiny_models["t2medi"], classifier=tiny_models["classifier"],
        prompts=["Axial FLAIR MRI of the brain showing a glioma."],
        target=parse_target("male=0.58,female=0.42"), out=tmp_path / "a",
        reference=small_phantom, frd=True, n_boot=20,
        generation=GenerationConfig(n_per_prompt=24, seed=1, steps=2, shard_size=12),
    )  # fmt: skip
    r = run_audit(cfg)
    jsonschema.validate(r.data, audit_schema())
    frd = r.data["quality"]["frd"]
    overall = frd["by_group"]["overall"]
    assert overall["n_generated"] == 24 and overall["n_reference"] == 60
    assert np.isfinite(overall["frd"]) and overall["frechet_d2"] > 0
    for g in r.groups:
        e = frd["by_group"][g]
        assert (e["frd"] is None) == (min(e["n_generated"], e["n_reference"]) < 10)
    md = write_report([tmp_path / "a"], tmp_path / "r.md").read_text()
    assert f"| overall | FRD (v1, log d²; all images) | {overall['frd']:.2f} |" in md


def test_frd_without_its_extra_or_a_reference_is_a_one_line_error(
    capsys, monkeypatch, tiny_models, tmp_path
):
    from medfair_audit.audit.frd import require_frd

    monkeypatch.setitem(sys.modules, "frd_score", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"frd extra .*medfair\[frd\]") as info:
        require_frd()
    assert info.value.param == "frd"
    code, _, err = run(
        capsys, "audit", tiny_models["t2medi"], "--classifier", tiny_models["classifier"],
        "--out", tmp_path / "o", "--prompt", "Axial MRI.", "--target", "male=0.5,female=0.5",
        "--frd",
    )  # fmt: skip
    assert_one_line_error(code, err, "--frd", "--reference")
    assert not (tmp_path / "o").exists()
