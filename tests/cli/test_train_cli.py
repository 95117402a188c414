from __future__ import annotations

import json
import shutil

import pytest

from tests.cli.test_cli import assert_one_line_error, run


@pytest.fixture(scope="module")
def captionless(tmp_path_factory, small_phantom):
    out = tmp_path_factory.mktemp("nocap") / "data"
    shutil.copytree(small_phantom, out)
    meta = (out / "metadata.csv").read_text().splitlines()
    header = meta[0].split(",")
    i = header.index("caption")
    import csv
    import io

    rows = list(csv.reader(io.StringIO("\n".join(meta))))
    for row in rows:
        del row[i]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    (out / "metadata.csv").write_text(buf.getvalue())
    return out


def test_train_clip_and_classifier_from_the_cli(capsys, small_phantom, tmp_path):
    code, out, _ = run(
        capsys,
        "train",
        "clip",
        "--data",
        small_phantom,
        "--out",
        tmp_path / "clip",
        "--epochs",
        1,
        "--width",
        32,
        "--layers",
        1,
        "--batch-size",
        16,
    )
    assert code == 0 and "recall@1" in out
    code, out, _ = run(
        capsys,
        "train",
        "classifier",
        "--data",
        small_phantom,
        "--out",
        tmp_path / "clf",
        "--epochs",
        1,
        "--batch-size",
        16,
    )
    assert code == 0 and "balanced accuracy" in " ".join(out.split())
    assert "sex=female" in out and "sex=male" in out and "tumour=1" in out
    ev = json.loads((tmp_path / "clf" / "evaluation.json").read_text())
    assert ev["attribute"] == "sex"
    code, out, _ = run(
        capsys,
        "train",
        "t2i",
        "--data",
        small_phantom,
        "--clip",
        tmp_path / "clip",
        "--out",
        tmp_path / "t2i",
        "--unet-steps",
        2,
        "--vae-steps",
        1,
        "--batch-size",
        4,
        "--unet-channels",
        "16,16,32",
        "--checkpoint-every",
        0,
    )
    assert code == 0 and (tmp_path / "t2i" / "model_index.json").is_file()
    code, _, err = run(
        capsys,
        "train",
        "t2i",
        "--data",
        small_phantom,
        "--clip",
        tmp_path / "clip",
        "--out",
        tmp_path / "t2i",
        "--unet-steps",
        2,
    )
    assert_one_line_error(code, err, "--out", "--overwrite")


@pytest.mark.parametrize(
    "args,needles",
    [
        (["train", "clip", "--data", "{tmp}/none", "--out", "{tmp}/c"], ["--data", "exist"]),
        (["train", "clip", "--data", "{nocap}", "--out", "{tmp}/c"], ["--data", "caption"]),
        (["train", "t2i", "--data", "{nocap}", "--clip", "{tmp}", "--out", "{tmp}/t"], ["caption"]),
        (["train", "t2i", "--data", "{data}", "--out", "{tmp}/t"], ["--clip"]),
        (
            ["train", "t2i", "--data", "{data}", "--init", "{tmp}", "--out", "{tmp}/t"],
            ["--init", "not a diffusers pipeline"],
        ),
        (
            ["train", "classifier", "--data", "{data}", "--attribute", "race", "--out", "{tmp}/c"],
            ["--data", "no column 'race'"],
        ),
        (
            ["train", "classifier", "--data", "{empty}", "--out", "{tmp}/c"],
            ["--data", "no images found"],
        ),
        (["train", "clip", "--data", "{data}", "--out", "{tmp}/c", "--lr", "-1"], ["--lr"]),
    ],
)
def test_train_bad_input(capsys, tmp_path, small_phantom, captionless, args, needles):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.csv").write_text("file,sex,caption\n")
    subs = {
        "{tmp}": str(tmp_path),
        "{data}": str(small_phantom),
        "{nocap}": str(captionless),
        "{empty}": str(empty),
    }
    for k, v in subs.items():
        args = [a.replace(k, v) for a in args]
    code, _, err = run(capsys, *args)
    assert_one_line_error(code, err, *needles)


def test_pickle_weights_are_refused_without_trust(capsys, tmp_path, small_phantom):
    fake = tmp_path / "fake"
    (fake / "unet").mkdir(parents=True)
    (fake / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline"}')
    (fake / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    code, _, err = run(
        capsys, "train", "t2i", "--data", small_phantom, "--init", fake, "--out", tmp_path / "t"
    )
    assert_one_line_error(code, err, "--init", "pickle", "--trust-pickle")
