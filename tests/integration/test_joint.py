"""Several attributes end to end on tiny models: the joint audit, its report, joint and
per-attribute remediation, and the errors of mismatched classifiers and targets."""

from __future__ import annotations

import json

import jsonschema
import numpy as np
import pandas as pd
import pytest

from medfair_audit.audit.result import audit_schema
from medfair_audit.config import ClassifierJob
from medfair_audit.target import target_from_labels
from tests.cli.test_cli import assert_one_line_error, run
from tests.conftest import TINY_CLF

PROMPT = "Axial FLAIR MRI of the brain showing a glioma."
SMALL = ["--n-per-prompt", 8, "--steps", 2, "--batch-size", 4, "--n-boot", 40]


@pytest.fixture(scope="module")
def joint_setup(tiny_models, small_phantom, tmp_path_factory):
    from medfair_audit.models.classifier import train_classifier

    root = tmp_path_factory.mktemp("joint")
    train_classifier(
        ClassifierJob(data=small_phantom, out=root / "age", config=TINY_CLF, attribute="age_band")
    )
    target = target_from_labels(small_phantom / "metadata.csv", column=["sex", "age_band"])
    target.save(root / "target.json")
    classifiers = {"sex": tiny_models["classifier"], "age_band": root / "age"}
    return root, classifiers


@pytest.fixture(scope="module")
def joint_audit(joint_setup, tiny_models, small_phantom):
    from medfair_cli.main import main

    root, classifiers = joint_setup
    out = root / "audit"
    args = ["audit", tiny_models["t2medi"], "--target", root / "target.json", "--out", out]
    for attr, path in classifiers.items():
        args += ["--classifier", f"{attr}={path}"]
    args += ["--prompt", PROMPT, "--reference", small_phantom, *SMALL]
    assert main(list(map(str, args))) == 0
    return out


def test_joint_audit_reports_marginals_and_every_cell(joint_audit, joint_setup):
    doc = json.loads((joint_audit / "audit.json").read_text())
    jsonschema.validate(doc, audit_schema())
    cells = [f"{s}/{a}" for s in ("female", "male") for a in ("<40", "40-59", "60+")]
    assert doc["attribute"] == "sex,age_band" and doc["groups"] == cells
    joint = doc["joint"]
    assert [c["cell"] for c in joint["cells"]] == cells
    assert sum(c["n"] for c in joint["cells"]) == doc["n_images"] == 8
    assert all(0 <= c["ci"][0] <= c["ci"][1] <= 1 for c in joint["cells"])
    assert "independently" in joint["method"]  # the assumption is stated
    small = [c["cell"] for c in joint["cells"] if c["small"]]
    assert len(small) == 6  # 8 images: every cell is below the guard, and said so
    assert sum("joint cell" in w for w in doc["warnings"]) == 6
    assert set(doc["attributes"]) == {"sex", "age_band"}
    assert doc["attributes"]["age_band"]["levels"] == ["<40", "40-59", "60+"]
    assert all(a["n"] == 8 for a in doc["attributes"].values())
    target = json.loads((joint_setup[0] / "target.json").read_text())
    assert doc["attributes"]["sex"]["target"] == pytest.approx(target["marginals"]["sex"])
    assert joint["shen_bias"]["cells"]["k"] == 6 and joint["shen_bias"]["age_band"]["k"] == 3
    assert set(doc["classifier"]["by_attribute"]) == {"sex", "age_band"}
    assert set(doc["config"]["classifiers_sha256"]) == {"sex", "age_band"}


def test_joint_probabilities_are_the_product_of_each_classifiers(joint_audit):
    table = pd.read_csv(joint_audit / "images.csv")
    for s in ("female", "male"):
        for a in ("<40", "40-59", "60+"):
            np.testing.assert_allclose(
                table[f"p_{s}/{a}"], table[f"p_sex={s}"] * table[f"p_age_band={a}"], rtol=1e-5
            )
    joint = table[[c for c in table.columns if c.startswith("p_") and "/" in c]]
    np.testing.assert_allclose(joint.sum(axis=1), 1, rtol=1e-5)
    doc = json.loads((joint_audit / "audit.json").read_text())
    counts = table.predicted.value_counts()
    assert {c["cell"]: c["n"] for c in doc["joint"]["cells"]} == {
        g: int(counts.get(g, 0)) for g in doc["groups"]
    }


def test_joint_report_has_a_heatmap_and_cell_tables_in_every_format(capsys, joint_audit, tmp_path):
    html = (joint_audit / "audit.html").read_text()
    assert 'id="joint"' in html and "joint cells: target and shares" in html
    for name in ("r.md", "r.tex", "r.html"):
        code, _, err = run(
            capsys, "report", joint_audit, joint_audit, "--out", tmp_path / name,
            "--labels", "one,two",
        )  # fmt: skip
        assert code == 0, err
    md = (tmp_path / "r.md").read_text()
    lines = md.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("**Joint cells"))
    table = []
    for line in lines[start + 2 :]:
        if not line.startswith("|"):
            break
        table.append(line)
    rows = table[2:]  # after the header and the rule
    assert [r.split(" | ")[0] for r in rows] == [
        f"| {s}/{a}" for s in ("female", "male") for a in ("&lt;40", "40-59", "60+")
    ]
    assert all(r.count(" | ") == table[0].count(" | ") for r in rows)
    assert "**Marginals.**" in md
    tex = (tmp_path / "r.tex").read_text()
    assert "tab:medfair-joint" in tex and "tab:medfair-marginals" in tex


@pytest.mark.parametrize(
    ("classifiers", "target", "needles"),
    [
        ("one", "joint", ["--target", "differ"]),
        ("two", "single", ["--target", "attributes"]),
        ("swapped", "joint", ["--classifier", "predicts"]),
        ("mixed", "joint", ["--classifier", "ATTRIBUTE=PATH"]),
    ],
)
def test_mismatched_classifiers_and_targets_are_one_line_errors(
    capsys, joint_setup, tiny_models, tmp_path, classifiers, target, needles
):
    root, pair = joint_setup
    specs = {
        "one": [pair["sex"]],
        "two": [f"{a}={p}" for a, p in pair.items()],
        "swapped": [f"sex={pair['age_band']}", f"age_band={pair['sex']}"],
        "mixed": [f"sex={pair['sex']}", pair["age_band"]],
    }[classifiers]
    tgt = root / "target.json" if target == "joint" else "male=0.5,female=0.5"
    args = ["audit", tiny_models["t2medi"], "--target", tgt, "--out", tmp_path / "o"]
    for s in specs:
        args += ["--classifier", s]
    code, _, err = run(capsys, *args, "--prompt", PROMPT, *SMALL)
    assert_one_line_error(code, err, *needles)
    assert not (tmp_path / "o" / "audit.json").exists()


@pytest.mark.parametrize("align", ["joint", "marginals"])
def test_remediation_over_two_attributes(capsys, joint_setup, tiny_models, tmp_path, align):
    root, pair = joint_setup
    out = tmp_path / f"fair-{align}"
    args = ["remediate", tiny_models["t2medi"], "--target", root / "target.json", "--out", out]
    for a, p in pair.items():
        args += ["--classifier", f"{a}={p}"]
    args += ["--prompt", PROMPT, "--align", align, "--steps", 1, "--lora-rank", 2]
    args += ["--batch-per-prompt", 2, "--sampling-steps", 2, "--audit-images", 2]
    args += ["--audit-every", 0, "--lambda-clip", 0]
    code, _, err = run(capsys, *args)
    assert code == 0, err
    record = json.loads((out / "remediation.json").read_text())
    assert record["attributes"] == ["sex", "age_band"] and len(record["groups"]) == 6
    assert record["config"]["align"] == align
    assert len(record["audits"][-1]["share"]) == 6
    assert np.isfinite(record["curves"]["align"]).all()
    # an audit with the same two classifiers knows it is not independent of the tuning
    audit = tmp_path / "audit"
    args = ["audit", out, "--target", root / "target.json", "--out", audit, "--prompt", PROMPT]
    for a, p in pair.items():
        args += ["--classifier", f"{a}={p}"]
    code, _, err = run(capsys, *args, *SMALL)
    assert code == 0, err
    doc = json.loads((audit / "audit.json").read_text())
    assert doc["config"]["remediation"]["same_classifier"] is True


def test_align_marginals_needs_per_attribute_classifiers_and_kl(capsys, joint_setup, tmp_path):
    from medfair_audit.exceptions import ConfigError
    from medfair_audit.remediation import RemediationConfig

    with pytest.raises(ConfigError) as info:
        RemediationConfig(align="marginals", loss="ot")
    assert info.value.param == "align"
    with pytest.raises(ConfigError) as info:
        RemediationConfig(align="sideways")
    assert info.value.param == "align"
    with pytest.raises(ConfigError) as info:
        RemediationConfig(align_weights=(0, 0))
    assert info.value.param == "align_weights"


def test_fast_two_attribute_demo(tmp_path):
    from medfair_audit.demo import ATTRIBUTE_STAGES, DemoConfig, run_demo

    result = run_demo(DemoConfig(out=tmp_path / "demo", fast=True, attributes=("sex", "age_band")))
    root = tmp_path / "demo" / "attributes"
    assert set(ATTRIBUTE_STAGES) <= set(result.stages)
    corpus = pd.read_csv(root / "data" / "corpus" / "metadata.csv")
    assert (corpus.sex == "male").mean() == pytest.approx(0.85)
    assert (corpus.age_band == "60+").mean() == pytest.approx(0.57, abs=1 / 240)
    before = json.loads((root / "before" / "audit.json").read_text())
    after = json.loads((root / "after" / "audit.json").read_text())
    assert len(before["joint"]["cells"]) == len(after["joint"]["cells"]) == 6
    assert "Joint cells" in (root / "report.md").read_text()
    assert not (tmp_path / "demo" / "report.html").exists()  # the default demo's is not made


def test_a_precision_audit_of_joint_cells_waits_for_the_smallest_cell(joint_setup, tiny_models):
    """Every cell's interval within ± H is not enough: each cell needs min_cell_n images."""
    from medfair_audit import AuditConfig, GenerationConfig, run_audit
    from medfair_audit.metrics.sequential import SequentialShares, _box
    from medfair_audit.models.attributes import ClassifierSet
    from medfair_audit.target import Target

    root, classifiers = joint_setup

    def audit(out, min_cell_n):
        return run_audit(
            AuditConfig(
                checkpoint=tiny_models["t2medi"], classifier=classifiers,
                target=Target.load(root / "target.json"), prompts=[PROMPT], out=root / out,
                precision=0.5, min_cell_n=min_cell_n, n_boot=30,
                generation=GenerationConfig(n_per_prompt=12, seed=2, steps=2, shard_size=4),
            )
        ).data["sequential"]  # fmt: skip

    free = audit("prec-free", 0)
    assert free["stopped_by"] == "precision" and free["n_per_prompt"] == 4
    assert len(free["intervals"]) == 6  # every joint cell (2 sexes × 3 age bands)
    guarded = audit("prec-guard", 2)
    smallest = [look["smallest_group_n"] for look in guarded["looks"]]
    stops = [i for i, n in enumerate(smallest) if n >= 2]
    assert guarded["n_per_prompt"] == (4 * (stops[0] + 1) if stops else 12)
    assert guarded["stopped_by"] == ("precision" if stops else "max_n_per_prompt")
    # the joint box is the Kronecker product of the attributes' boxes (one α split over all)
    held = ClassifierSet.load(classifiers).heldout()
    seq = SequentialShares(heldout=held)
    alpha = 0.05 / 2 / (2 * 2 + 3 * 3)
    (lo1, hi1), (lo2, hi2) = (_box(p, range(p.probs.shape[1]), alpha) for p in held.parts)
    np.testing.assert_allclose(seq.s_lo, np.kron(lo1, lo2))
    np.testing.assert_allclose(seq.s_hi, np.kron(hi1, hi2))
