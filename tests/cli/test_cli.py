from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from medfair_cli.main import main

from tests.unit.test_brats import _write_subject


def run(capsys, *args):
    code = main(list(map(str, args)))
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_help_lists_commands_and_every_command_has_an_example(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == 0 and "data" in out and "demo" in out
    assert "train" in out and "audit" in out and "remediate" in out and "report" in out
    commands = [
        ["data", "phantom"],
        ["data", "target"],
        ["data", "import-brats"],
        ["data", "import-roco"],
        ["demo"],
        ["audit"],
        ["remediate"],
        ["report"],
        ["train", "clip"],
        ["train", "t2i"],
        ["train", "classifier"],
    ]
    for cmd in commands:
        code, out, _ = run(capsys, *cmd, "--help")
        assert code == 0 and "For example" in out and "medfair " in out, cmd
        # the first example is a line of its own, not run into the "For example:" paragraph
        lines = [ln.strip(" │") for ln in out.splitlines()]
        at = next(i for i, ln in enumerate(lines) if ln.startswith("For example"))
        assert lines[at] == "For example:" and lines[at + 1] == "", (cmd, lines[at : at + 2])


def test_no_arguments_shows_help(capsys):
    code, out, _ = run(capsys)
    assert code == 0 and "Usage" in out


def test_phantom_then_target_from_its_labels(capsys, tmp_path):
    code, out, _ = run(
        capsys,
        "data",
        "phantom",
        "--out",
        tmp_path / "d",
        "--n",
        40,
        "--male-fraction",
        0.75,
        "--seed",
        1,
    )
    assert code == 0 and "wrote 40 images" in out
    meta = pd.read_csv(tmp_path / "d" / "metadata.csv")
    assert (meta.sex == "male").sum() == 30
    code, out, _ = run(
        capsys,
        "data",
        "target",
        "--labels",
        tmp_path / "d" / "metadata.csv",
        "--column",
        "sex",
        "--out",
        tmp_path / "t.json",
    )
    assert code == 0
    doc = json.loads((tmp_path / "t.json").read_text())
    assert doc["proportions"] == {"female": 0.25, "male": 0.75} and doc["n"] == 40
    code, _, _ = run(
        capsys,
        "data",
        "target",
        "--labels",
        tmp_path / "d" / "metadata.csv",
        "--split",
        "train",
        "--out",
        tmp_path / "t2.json",
    )
    assert code == 0
    train = meta[meta.split == "train"]
    doc = json.loads((tmp_path / "t2.json").read_text())
    assert doc["proportions"]["male"] == pytest.approx((train.sex == "male").mean())


def test_inline_target(capsys, tmp_path):
    code, _, _ = run(
        capsys, "data", "target", "--target", "male=0.58,female=0.42", "--out", tmp_path / "t.json"
    )
    assert code == 0
    assert json.loads((tmp_path / "t.json").read_text())["proportions"]["male"] == 0.58


@pytest.mark.parametrize(
    "args,needles",
    [
        (["data", "phantom", "--out", "{tmp}/x", "--n", "0"], ["--n"]),
        (["data", "phantom", "--out", "{tmp}/x", "--size", "30"], ["--size", "multiple of 8"]),
        (["data", "phantom", "--out", "{tmp}/x", "--male-fraction", "2"], ["--male-fraction"]),
        (["data", "phantom", "--out", "{tmp}/x", "--splits", "train=1,test=1"], ["--splits"]),
        (["data", "phantom", "--out", "{tmp}/x", "--sequences", "dwi"], ["--sequences"]),
        (["data", "phantom"], ["--out"]),
        (
            ["data", "target", "--target", "male=0.5,female=0.6", "--out", "{tmp}/t.json"],
            ["--target", "sum to 1"],
        ),
        (["data", "target", "--out", "{tmp}/t.json"], ["--labels", "exactly one"]),
        (
            ["data", "target", "--labels", "{tmp}/none.csv", "--out", "{tmp}/t.json"],
            ["--labels", "does not exist"],
        ),
        (
            [
                "data",
                "import-roco",
                "--images",
                "{tmp}",
                "--captions",
                "{tmp}/c.txt",
                "--out",
                "{tmp}/r",
            ],
            ["--captions", "does not exist"],
        ),
        (
            [
                "data",
                "import-brats",
                "--root",
                "{tmp}",
                "--sex-csv",
                "{tmp}/s.csv",
                "--out",
                "{tmp}/b",
            ],
            ["--root", "HGG"],
        ),
        (["nonsense"], ["No such command"]),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, tmp_path, args, needles):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, *needles)


def test_label_errors_name_the_column_and_the_groups(capsys, tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text("file,gender\na,male\n")
    code, _, err = run(capsys, "data", "target", "--labels", csv, "--out", tmp_path / "t.json")
    assert_one_line_error(code, err, "--labels", "no column 'sex'", "gender")
    code, _, err = run(
        capsys,
        "data",
        "target",
        "--labels",
        csv,
        "--column",
        "gender",
        "--groups",
        "female",
        "--out",
        tmp_path / "t.json",
    )
    assert_one_line_error(code, err, "outside the known groups", "male")
    assert not (tmp_path / "t.json").exists()


def test_failed_run_keeps_earlier_outputs(capsys, tmp_path):
    assert run(capsys, "data", "phantom", "--out", tmp_path / "d", "--n", 5)[0] == 0
    before = sorted((tmp_path / "d").rglob("*"))
    code, _, err = run(capsys, "data", "phantom", "--out", tmp_path / "d", "--n", 7)
    assert_one_line_error(code, err, "--out", "--overwrite")
    assert sorted((tmp_path / "d").rglob("*")) == before
    assert (
        run(capsys, "data", "target", "--target", "a=0.5,b=0.5", "--out", tmp_path / "t.json")[0]
        == 0
    )
    original = (tmp_path / "t.json").read_text()
    code, _, _ = run(
        capsys, "data", "target", "--target", "a=0.5,b=0.7", "--out", tmp_path / "t.json"
    )
    assert code == 2 and (tmp_path / "t.json").read_text() == original


def test_import_brats_and_roco(capsys, tmp_path):
    root = tmp_path / "brats"
    _write_subject(root, "HGG", "S1", seed=1)
    _write_subject(root, "LGG", "S2", seed=2)
    (tmp_path / "sex.csv").write_text("subject,sex\nS1,M\nS2,F\n")
    code, out, _ = run(
        capsys,
        "data",
        "import-brats",
        "--root",
        root,
        "--sex-csv",
        tmp_path / "sex.csv",
        "--out",
        tmp_path / "b",
        "--slices-per-subject",
        3,
        "--size",
        32,
    )
    assert code == 0 and "wrote 6 slices" in out
    meta = pd.read_csv(tmp_path / "b" / "metadata.csv")
    assert meta.sex.tolist() == ["male"] * 3 + ["female"] * 3
    from PIL import Image

    with Image.open(tmp_path / "b" / meta.file[0]) as im:
        assert im.size == (32, 32) and im.mode == "I;16"

    images = tmp_path / "roco"
    images.mkdir()
    Image.new("L", (20, 10), 128).save(images / "R1.png")
    (tmp_path / "c.txt").write_text("R1\tChest radiograph.\n")
    code, out, _ = run(
        capsys,
        "data",
        "import-roco",
        "--images",
        images,
        "--captions",
        tmp_path / "c.txt",
        "--out",
        tmp_path / "r",
        "--size",
        16,
    )
    assert code == 0
    assert pd.read_csv(tmp_path / "r" / "metadata.csv").caption.tolist() == ["Chest radiograph."]


def test_debug_variable_shows_the_traceback(tmp_path):
    env = {**os.environ, "MEDFAIR_DEBUG": "1"}
    cmd = [
        sys.executable,
        "-m",
        "medfair_cli.main",
        "data",
        "target",
        "--target",
        "a=1",
        "--out",
        str(tmp_path / "t.json"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode != 0 and "Traceback" in proc.stderr and "ConfigError" in proc.stderr
    env.pop("MEDFAIR_DEBUG")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr


def test_installed_console_script():
    exe = Path(sys.executable).with_name("medfair")
    if not exe.exists():
        pytest.skip("the medfair console script is not installed in this environment")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.startswith("medfair ")


def test_click_path_checks_read_like_medfairs_own_errors(capsys, tmp_path):
    (tmp_path / "file").write_text("x")
    code, _, err = run(capsys, "demo", "--out", tmp_path / "file")
    assert_one_line_error(code, err, f"--out: expected a folder, got the file '{tmp_path}/file'")
    code, _, err = run(
        capsys, "data", "target", "--target", "male=0.5,female=0.5", "--out", tmp_path
    )
    assert_one_line_error(code, err, f"--out: expected a file, got the folder '{tmp_path}'")
    assert (tmp_path / "file").read_text() == "x"


def test_the_positional_checkpoint_is_named_as_typed(capsys, tmp_path, tiny_models):
    code, _, err = run(
        capsys, "audit", tmp_path / "nope", "--classifier", tiny_models["classifier"], "--target",
        "male=0.5,female=0.5", "--prompt", "brain MRI", "--out", tmp_path / "o",
    )  # fmt: skip
    assert_one_line_error(code, err, "CKPT")
    assert "--checkpoint" not in err


def test_overwrite_help_says_what_it_replaces(capsys):
    def text(out):
        return " ".join(out.replace("│", " ").split())

    code, out, _ = run(capsys, "data", "target", "--help")
    assert code == 0 and "Replace an existing file" in text(out)
    code, out, _ = run(capsys, "data", "phantom", "--help")
    assert code == 0 and "Replace an existing output folder" in text(out)
