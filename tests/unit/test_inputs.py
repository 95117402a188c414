"""Input files read the way their documentation says: comments, byte-order marks, paths."""

from __future__ import annotations

import json

import pytest

from medfair_audit import AuditConfig, GenerationConfig, read_prompts
from medfair_audit.exceptions import ConfigError, DataError
from medfair_audit.target import Target, parse_target


def test_prompt_files_strip_comments_but_keep_hashes_inside_text(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text(
        "\ufeff# header comment\n"
        "Axial FLAIR MRI of the brain showing a glioma.  # held out\n"
        "   \n"
        "  #indented comment\n"
        "Lesion #3 on an axial T1 MRI.\n"
        "Axial T2 MRI. #\n",
        encoding="utf-8",
    )
    assert read_prompts(path) == [
        "Axial FLAIR MRI of the brain showing a glioma.",
        "Lesion #3 on an axial T1 MRI.",
        "Axial T2 MRI.",
    ]


def test_a_target_json_with_a_byte_order_mark_is_read(tmp_path):
    path = tmp_path / "target.json"
    doc = {"name": "x", "proportions": {"female": 0.42, "male": 0.58}}
    path.write_text(json.dumps(doc), encoding="utf-8-sig")
    assert Target.load(path).proportions == parse_target("female=0.42,male=0.58").proportions


def test_an_existing_file_as_out_is_refused_up_front(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(DataError, match="is a file") as err:
        AuditConfig(
            checkpoint=tmp_path, classifier=tmp_path, prompts=["p"],
            target=parse_target("male=0.5,female=0.5"), out=tmp_path / "file",
            generation=GenerationConfig(n_per_prompt=1),
        )  # fmt: skip
    assert err.value.param == "out"


def test_cli_audit_out_that_is_a_file_is_one_line_and_leaves_it_alone(capsys, tmp_path):
    from tests.cli.test_cli import assert_one_line_error, run

    target = tmp_path / "report.pdf"
    target.write_bytes(b"%PDF")
    code, _, err = run(
        capsys, "audit", tmp_path, "--classifier", tmp_path, "--target", "male=0.5,female=0.5",
        "--prompt", "brain MRI", "--out", target,
    )  # fmt: skip
    assert_one_line_error(code, err, "--out", "is a file")
    assert target.read_bytes() == b"%PDF"


def test_a_remediation_job_checks_itself_on_construction(tmp_path):
    from medfair_audit.config import RemediationConfig, RemediationJob
    from medfair_audit.target import parse_target

    base = dict(
        checkpoint=str(tmp_path / "t2medi"),
        classifier={"sex": str(tmp_path / "clf")},
        target=parse_target("male=0.58,female=0.42"),
        prompts=["a brain MRI", "  "],
        out=str(tmp_path / "fair"),
    )
    job = RemediationJob(**base)
    assert job.checkpoint == tmp_path / "t2medi" and job.out == tmp_path / "fair"
    assert job.classifier == {"sex": tmp_path / "clf"}
    assert job.prompts == ("a brain MRI",)  # blank prompts dropped
    assert job.config == RemediationConfig()
    for bad, param in [
        ({"out": str(tmp_path / "t2medi")}, "out"),
        ({"prompts": [" "]}, "prompts"),
        ({"classifier": {}}, "classifier"),
        ({"config": {"steps": 3}}, "config"),
    ]:
        with pytest.raises(ConfigError) as err:
            RemediationJob(**{**base, **bad})
        assert err.value.param == param


def test_train_jobs_check_themselves_on_construction(tmp_path):
    from medfair_audit.config import (
        ClassifierConfig,
        ClassifierJob,
        CLIPJob,
        CLIPTrainConfig,
        T2IConfig,
        T2IJob,
    )

    data, out = str(tmp_path / "data"), str(tmp_path / "out")
    job = T2IJob(data=data, out=out, clip=str(tmp_path / "clip"))
    assert job.data == tmp_path / "data" and job.clip == tmp_path / "clip"
    assert job.config == T2IConfig() and job.init is None
    assert CLIPJob(data=data, out=out, config=None).config == CLIPTrainConfig()
    clf = ClassifierJob(data=data, out=out, splits=["a", "b", "c"], groups=["x", "y"])
    assert clf.splits == ("a", "b", "c") and clf.groups == ("x", "y")
    assert clf.config == ClassifierConfig()
    for make, param in [
        (lambda: T2IJob(data=data, out=out), "clip"),  # neither a CLIP nor a pipeline
        (lambda: CLIPJob(data=data, out=data), "out"),  # would write over its own data
        (lambda: ClassifierJob(data=data, out=out, config=T2IConfig()), "config"),
        (lambda: T2IJob(data=data, out=out, init=out, config=CLIPTrainConfig()), "config"),
    ]:
        with pytest.raises(ConfigError) as err:
            make()
        assert err.value.param == param
