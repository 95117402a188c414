# ruff: noqa: E501  (the matrix is a table: one case per line)
"""The bad-input matrix: every command, fed broken files and values, answers with one line naming
the argument, exits 2, prints no traceback and changes no file.

Files are broken the ways files break in practice: empty, cut short, the wrong kind, not UTF-8,
NaN/inf inside, labels outside the groups; values are NaN, infinite, negative or absurdly large;
``--out`` is an existing file or a folder holding someone's work. The same files with a UTF-8 BOM
and CRLF line ends are accepted.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from tests.cli.test_cli import assert_one_line_error, run
from tests.unit.test_brats import _write_subject


def _cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


@pytest.fixture(scope="module")
def bad(tiny_models, small_phantom, tmp_path_factory):
    """Broken inputs, next to copies of good ones (the matrix never touches the originals)."""
    b = tmp_path_factory.mktemp("bad")
    (b / "file.txt").write_text("someone's file\n")
    (b / "work").mkdir()
    (b / "work" / "thesis.tex").write_text("keep me\n")
    (b / "empty.json").write_text("")
    (b / "cut.json").write_text('{"proportions": {"male": 0.5,')
    (b / "list.json").write_text("[0.5, 0.5]")
    (b / "nan.json").write_text('{"proportions": {"male": NaN, "female": 0.5}}')
    (b / "huge.json").write_text('{"proportions": {"male": 1e308, "female": 1e308}}')
    (b / "empty.csv").write_text("")
    (b / "header.csv").write_text("subject,sex\n")
    (b / "binary.txt").write_bytes(b"\xff\xfe\x00\x81 not text")
    (b / "comments.txt").write_text("# nothing but a comment\n\n")
    # model folders: a cut and an empty safetensors file, a broken pipeline index
    for name, keep in (("clf-cut", 100), ("clf-empty", 0)):
        shutil.copytree(tiny_models["classifier"], b / name)
        _cut(b / name / "model.safetensors", keep)
    shutil.copytree(tiny_models["clip"], b / "clip-cut")
    _cut(b / "clip-cut" / "model.safetensors", 300)
    shutil.copytree(tiny_models["t2medi"], b / "ckpt-cut")
    _cut(b / "ckpt-cut" / "unet" / "diffusion_pytorch_model.safetensors", 200)
    shutil.copytree(tiny_models["t2medi"], b / "ckpt-index")
    (b / "ckpt-index" / "model_index.json").write_text("{")
    # image folders: a cut PNG, labels outside the classifier's groups, an empty table
    for name in ("data-cut", "data-groups", "data-empty"):
        shutil.copytree(small_phantom, b / name)
    meta = pd.read_csv(b / "data-cut" / "metadata.csv")
    _cut(b / "data-cut" / meta.file[0], 40)
    meta.assign(sex=["other"] * len(meta)).to_csv(b / "data-groups" / "metadata.csv", index=False)
    (b / "data-empty" / "metadata.csv").write_text("file,sex,caption,split\n")
    # BraTS trees: a cut volume, NaN voxels; ROCO: a cut image
    for name in ("brats-cut", "brats-nan"):
        _write_subject(b / name, "HGG", "S1", seed=1)
    _cut(b / "brats-cut" / "HGG" / "S1" / "S1_flair.nii.gz", 50)
    vol = np.full((16, 16, 8), np.nan, np.float32)
    nib.save(nib.Nifti1Image(vol, np.eye(4)), b / "brats-nan" / "HGG" / "S1" / "S1_flair.nii.gz")
    (b / "sex.csv").write_text("subject,sex\nS1,M\n")
    (b / "sex-unknown.csv").write_text("subject,sex\nS1,X\n")
    (b / "roco").mkdir()
    (b / "roco" / "R1.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00")
    (b / "captions.txt").write_text("R1\tChest radiograph.\n")
    return b


A = [
    "audit", "{M}/t2medi", "--classifier", "{M}/classifier", "--target", "male=0.5,female=0.5",
    "--prompt", "Axial MRI.", "--n-per-prompt", "2", "--batch-size", "2", "--steps", "1",
    "--n-boot", "10",
]  # fmt: skip
NO_PROMPT = [a for i, a in enumerate(A) if "--prompt" not in A[max(0, i - 1) : i + 1]]
R = [
    "remediate", "{M}/t2medi", "--classifier", "{M}/classifier", "--target", "male=0.5,female=0.5",
    "--prompt", "Axial MRI.", "--steps", "1",
]  # fmt: skip


def _with(base, **swap):
    """``base`` with option values replaced (``_with(A, classifier=X)``) or appended."""
    args = list(base)
    for key, value in swap.items():
        flag = "--" + key.replace("_", "-")
        if flag in args:
            args[args.index(flag) + 1] = value
        else:
            args += [flag, value]
    return args


CASES = {
    # audit
    "audit: checkpoint missing": (["audit", "{B}/nope", *A[2:], "--out", "{B}/o"], "CKPT"),
    "audit: checkpoint is a file": (["audit", "{B}/file.txt", *A[2:], "--out", "{B}/o"], "CKPT"),
    "audit: checkpoint weights cut": (["audit", "{B}/ckpt-cut", *A[2:], "--out", "{B}/o"], "CKPT"),
    "audit: checkpoint index broken": (["audit", "{B}/ckpt-index", *A[2:], "--out", "{B}/o"], "CKPT"),
    "audit: classifier weights cut": (_with(A, classifier="{B}/clf-cut", out="{B}/o"), "--classifier"),
    "audit: classifier weights empty": (_with(A, classifier="{B}/clf-empty", out="{B}/o"), "--classifier"),
    "audit: target JSON empty": (_with(A, target="{B}/empty.json", out="{B}/o"), "--target"),
    "audit: target JSON cut": (_with(A, target="{B}/cut.json", out="{B}/o"), "--target"),
    "audit: target JSON a list": (_with(A, target="{B}/list.json", out="{B}/o"), "--target"),
    "audit: target JSON NaN": (_with(A, target="{B}/nan.json", out="{B}/o"), "--target"),
    "audit: target JSON huge": (_with(A, target="{B}/huge.json", out="{B}/o"), "--target"),
    "audit: target inline inf": (_with(A, target="male=inf,female=0", out="{B}/o"), "--target"),
    "audit: target groups differ": (_with(A, target="a=0.5,b=0.5", out="{B}/o"), "--target"),
    "audit: prompts not UTF-8": (_with(NO_PROMPT, prompts="{B}/binary.txt", out="{B}/o"), ("--prompts", "as UTF-8 text")),
    "audit: prompts only comments": (_with(NO_PROMPT, prompts="{B}/comments.txt", out="{B}/o"), ("--prompts", "holds no prompts")),
    "audit: n per prompt huge": (_with(A, n_per_prompt="1000000000000", out="{B}/o"), "--n-per-prompt"),
    "audit: batch size huge": (_with(A, batch_size="99999999999", out="{B}/o"), "--batch-size"),
    "audit: steps negative": (_with(A, steps="-1", out="{B}/o"), "--steps"),
    "audit: guidance NaN": (_with(A, guidance="nan", out="{B}/o"), "--guidance"),
    "audit: half-width inf": (_with(A, half_width="inf", out="{B}/o"), "--half-width"),
    "audit: reference PNG cut": (_with(A, reference="{B}/data-cut", out="{B}/o"), "--reference"),
    "audit: reference groups differ": (_with(A, reference="{B}/data-groups", out="{B}/o"), "--reference"),
    "audit: out is a file": (_with(A, out="{B}/file.txt"), "--out"),
    "audit: out holds other work": (_with(A, out="{B}/work"), "--out"),
    # remediate
    "remediate: classifier cut": (_with(R, classifier="{B}/clf-cut", out="{B}/o"), "--classifier"),
    "remediate: out holds other work": (_with(R, out="{B}/work"), "--out"),
    "remediate: out is a file": (_with(R, out="{B}/file.txt"), "--out"),
    "remediate: steps huge": (_with(R, steps="100000000000", out="{B}/o"), "--steps"),
    "remediate: lr inf": (_with(R, lr="inf", out="{B}/o"), "--lr"),
    "remediate: lr NaN": (_with(R, lr="nan", out="{B}/o"), "--lr"),
    "remediate: target JSON cut": (_with(R, target="{B}/cut.json", out="{B}/o"), "--target"),
    "remediate: image encoder a file": (_with(R, image_encoder="{B}/file.txt", out="{B}/o"), "--image-encoder"),
    # train
    "train clip: data missing": (["train", "clip", "--data", "{B}/nope", "--out", "{B}/o"], "--data"),
    "train clip: data table empty": (["train", "clip", "--data", "{B}/data-empty", "--out", "{B}/o"], "--data"),
    "train clip: lr inf": (["train", "clip", "--data", "{P}", "--lr", "inf", "--out", "{B}/o"], "--lr"),
    "train clip: epochs huge": (["train", "clip", "--data", "{P}", "--epochs", "99999999999", "--out", "{B}/o"], "--epochs"),
    "train clip: out holds other work": (["train", "clip", "--data", "{P}", "--out", "{B}/work"], "--out"),
    "train t2i: clip weights cut": (["train", "t2i", "--data", "{P}", "--clip", "{B}/clip-cut", "--out", "{B}/o"], "--clip"),
    "train t2i: data PNG cut": (["train", "t2i", "--data", "{B}/data-cut", "--clip", "{M}/clip", "--out", "{B}/o"], "--data"),
    "train t2i: steps huge": (["train", "t2i", "--data", "{P}", "--clip", "{M}/clip", "--unet-steps", "99999999999", "--out", "{B}/o"], "--unet-steps"),
    "train t2i: out is a file": (["train", "t2i", "--data", "{P}", "--clip", "{M}/clip", "--out", "{B}/file.txt"], "--out"),
    "train classifier: one group only": (["train", "classifier", "--data", "{B}/data-groups", "--out", "{B}/o"], ("--attribute", "at least two groups")),
    "train classifier: groups differ": (["train", "classifier", "--data", "{P}", "--groups", "x,y", "--out", "{B}/o"], ("--data", "outside the known groups")),
    "train classifier: data PNG cut": (["train", "classifier", "--data", "{B}/data-cut", "--out", "{B}/o"], "--data"),
    "train classifier: lr NaN": (["train", "classifier", "--data", "{P}", "--lr", "nan", "--out", "{B}/o"], "--lr"),
    "train classifier: out holds other work": (["train", "classifier", "--data", "{P}", "--out", "{B}/work"], "--out"),
    # data
    "phantom: n huge": (["data", "phantom", "--n", "100000000000", "--out", "{B}/o"], "--n"),
    "phantom: male fraction NaN": (["data", "phantom", "--n", "4", "--male-fraction", "nan", "--out", "{B}/o"], "--male-fraction"),
    "phantom: out holds other work": (["data", "phantom", "--n", "4", "--out", "{B}/work"], "--out"),
    "target: labels CSV empty": (["data", "target", "--labels", "{B}/empty.csv", "--out", "{B}/t.json"], "--labels"),
    "target: labels CSV only a header": (["data", "target", "--labels", "{B}/header.csv", "--column", "sex", "--out", "{B}/t.json"], "--labels"),
    "target: inline NaN": (["data", "target", "--target", "male=nan,female=0.5", "--out", "{B}/t.json"], "--target"),
    "target: out is an existing file": (["data", "target", "--target", "male=0.5,female=0.5", "--out", "{B}/file.txt"], "--out"),
    "import-brats: volume cut": (["data", "import-brats", "--root", "{B}/brats-cut", "--sex-csv", "{B}/sex.csv", "--out", "{B}/o"], "--root"),
    "import-brats: NaN voxels": (["data", "import-brats", "--root", "{B}/brats-nan", "--sex-csv", "{B}/sex.csv", "--out", "{B}/o"], "--root"),
    "import-brats: unknown sex": (["data", "import-brats", "--root", "{B}/brats-nan", "--sex-csv", "{B}/sex-unknown.csv", "--out", "{B}/o"], "--sex-csv"),
    "import-brats: out holds other work": (["data", "import-brats", "--root", "{B}/brats-nan", "--sex-csv", "{B}/sex.csv", "--out", "{B}/work"], "--out"),
    "import-roco: image cut": (["data", "import-roco", "--images", "{B}/roco", "--captions", "{B}/captions.txt", "--out", "{B}/o"], "--images"),
    "import-roco: captions not UTF-8": (["data", "import-roco", "--images", "{B}/roco", "--captions", "{B}/binary.txt", "--out", "{B}/o"], "--captions"),
    # report, demo
    "report: audit JSON cut": (["report", "{B}/cut.json", "--out", "{B}/r.html"], "AUDIT_JSON"),
    "report: audit JSON empty": (["report", "{B}/empty.json", "--out", "{B}/r.html"], "AUDIT_JSON"),
    "report: out is an existing file": (["report", "{M}/../audit-x", "--out", "{B}/file.txt"], "--out"),
    "demo: out is a file": (["demo", "--out", "{B}/file.txt"], "--out"),
}  # fmt: skip


def _snapshot(*roots):
    """Every file under ``roots`` with its size and modification time."""
    return {
        p: (p.stat().st_size, p.stat().st_mtime_ns)
        for root in roots
        for p in sorted(Path(root).rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_matrix(capsys, bad, tiny_models, small_phantom, case):
    template, needle = CASES[case]
    models = tiny_models["t2medi"].parent
    args = [a.format(M=models, B=bad, P=small_phantom) for a in template]
    before = _snapshot(bad, models, small_phantom)
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, *([needle] if isinstance(needle, str) else needle))
    assert "Traceback" not in err
    assert _snapshot(bad, models, small_phantom) == before, "a refused run changed files"


def test_byte_order_marks_and_crlf_line_ends_are_read(capsys, tmp_path, tiny_models):
    """The same inputs saved by a Windows editor (UTF-8 BOM, CRLF) work."""
    bom = "\ufeff"
    labels = tmp_path / "labels.csv"
    labels.write_bytes((bom + "sex\r\nmale\r\nfemale\r\nmale\r\nmale\r\n").encode())
    code, _, err = run(capsys, "data", "target", "--labels", labels, "--column", "sex",
                       "--out", tmp_path / "t.json")  # fmt: skip
    assert code == 0, err
    target = json.loads((tmp_path / "t.json").read_text())
    assert target["proportions"] == {"female": 0.25, "male": 0.75}
    prompts = tmp_path / "prompts.txt"
    prompts.write_bytes((bom + "Axial MRI.\r\n# note\r\n\r\nCoronal MRI. # why\r\n").encode())
    from medfair_audit.audit.config import read_prompts

    assert read_prompts(prompts) == ["Axial MRI.", "Coronal MRI."]
    target_json = tmp_path / "bom.json"
    target_json.write_bytes((bom + json.dumps(target)).replace("\n", "\r\n").encode())
    code, _, err = run(capsys, *_with([a.format(M=tiny_models["t2medi"].parent) for a in NO_PROMPT],
                                      target=target_json, prompts=prompts, out=tmp_path / "a"))  # fmt: skip
    assert code == 0, err
    doc = json.loads((tmp_path / "a" / "audit.json").read_text())
    assert doc["config"]["prompts"] == ["Axial MRI.", "Coronal MRI."]
    assert doc["target"] == {"female": 0.25, "male": 0.75}
