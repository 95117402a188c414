"""The trainers on a chosen device and precision (CPU here; the same code places on GPUs)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from medfair_audit.config import ClassifierJob, Placement, T2IJob
from medfair_audit.models.classifier import SubgroupClassifier, train_classifier
from medfair_audit.models.t2medi import train_t2i
from tests.cli.test_cli import assert_one_line_error, run
from tests.conftest import TINY_CLF, TINY_T2I


def test_classifier_trains_under_bfloat16_autocast_and_saves_float32(small_phantom, tmp_path):
    bf16 = Placement(device="cpu", dtype="bfloat16")
    result = train_classifier(
        ClassifierJob(data=small_phantom, out=tmp_path / "clf", config=TINY_CLF, placement=bf16)
    )
    weights = load_file(tmp_path / "clf" / "model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values() if w.is_floating_point())
    ref = train_classifier(ClassifierJob(data=small_phantom, out=tmp_path / "ref", config=TINY_CLF))
    # another precision is another optimisation path, but the same model kind and evaluation
    assert set(result.evaluation) == set(ref.evaluation)
    clf = SubgroupClassifier.from_pretrained(tmp_path / "clf")
    assert clf.predict_proba(torch.zeros(2, 1, 64, 64)).dtype == torch.float32


def test_t2i_trains_under_bfloat16_autocast_and_saves_float32(small_phantom, tiny_models, tmp_path):
    bf16 = Placement(device="cpu", dtype="bfloat16")
    train_t2i(
        T2IJob(
            data=small_phantom,
            out=tmp_path / "t2i",
            config=TINY_T2I,
            clip=tiny_models["clip"],
            placement=bf16,
        )
    )
    unet = load_file(tmp_path / "t2i" / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(w.dtype == torch.float32 for w in unet.values())
    assert all(torch.isfinite(w).all() for w in unet.values())


@pytest.mark.parametrize("command", ["clip", "t2i", "classifier"])
def test_train_commands_refuse_an_unavailable_device(command, capsys, small_phantom, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    extra = ["--clip", tmp_path] if command == "t2i" else []
    code, _, err = run(
        capsys, "train", command, "--data", small_phantom, "--out", tmp_path / "o", *extra,
        "--device", "cuda",
    )  # fmt: skip
    assert_one_line_error(code, err, "--device", "not available")
    assert not (tmp_path / "o").exists()
