"""The 3-D subgroup classifier (``medfair train classifier --volumes``, MONAI's ResNet)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import balanced_accuracy_score

from medfair_audit.config import ClassifierConfig, ClassifierJob
from medfair_audit.data import PhantomConfig, VolumeFolderDataset, build_phantom_volumes
from medfair_audit.exceptions import ConfigError, DataError
from medfair_audit.models.classifier import SubgroupClassifier, random_affine, train_classifier
from medfair_audit.training import load_images
from tests.cli.test_cli import assert_one_line_error, run

TINY3D = ClassifierConfig.volumes(image_size=16, widths=(4, 4, 8, 8), epochs=2, batch_size=4)


@pytest.fixture(scope="module")
def heads(tmp_path_factory):
    out = tmp_path_factory.mktemp("heads") / "v"
    cfg = PhantomConfig(n=16, seed=7, size=32, tumour_rate=0.5, workers=1,
                        splits="train=0.5,val=0.25,test=0.25")  # fmt: skip
    build_phantom_volumes(out, cfg)
    return out


def test_volume_classifier_trains_calibrates_and_round_trips(heads, tmp_path):
    result = train_classifier(
        ClassifierJob(data=heads, out=tmp_path / "c", config=TINY3D, sequence="t1")
    )
    ev = result.evaluation
    meta = pd.read_csv(heads / "metadata.csv")
    test = meta[(meta.sequence == "t1") & (meta.split == "test")].reset_index(drop=True)
    assert ev["n"] == len(test) == test.subject.nunique()  # one volume per subject
    assert ev["split_unit"].startswith("predefined split column")
    saved = json.loads((tmp_path / "c" / "classifier.json").read_text())
    assert saved["architecture"] == "resnet3d" and saved["sequence"] == "t1"
    assert saved["image_size"] == 16 and "(N, 1, D, H, W)" in saved["input"]
    assert {p.suffix for p in (tmp_path / "c").iterdir()} == {".json", ".safetensors"}
    clf = SubgroupClassifier.from_pretrained(tmp_path / "c")
    assert clf.volumetric and type(clf.model).__name__ == "ResNet3DForVolumeClassification"
    # the loaded classifier reproduces the held-out outputs written at training time
    x = load_images(VolumeFolderDataset(heads, sequence="t1", split="test", size=32))
    probs = clf.predict_proba(x)  # 32³ in, resampled to its 16³
    assert np.allclose(probs.numpy(), ev["heldout"]["probs"], atol=1e-4)
    y = (test.sex == "male").to_numpy().astype(int)
    assert ev["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, probs.argmax(1)))
    assert clf.features(x).shape == (len(x), TINY3D.widths[-1])
    # gradients reach the input, as remediation needs of any classifier
    v = x[:2].clone().requires_grad_(True)
    clf.logits(v).sum().backward()
    assert v.grad is not None and v.grad.abs().sum() > 0
    with pytest.raises(DataError, match=r"\(N, C, D, H, W\)") as info:
        clf.predict_proba(torch.zeros(2, 1, 16, 16))
    assert info.value.param == "images"


def test_volume_classifier_needs_one_sequence_and_the_3d_architecture(heads, tmp_path):
    with pytest.raises(ConfigError, match="several sequences") as info:
        train_classifier(ClassifierJob(data=heads, out=tmp_path / "c", config=TINY3D))
    assert info.value.param == "sequence"
    with pytest.raises(ConfigError) as info:
        ClassifierJob(data=heads, out=tmp_path / "c", sequence="t1")  # a 2-D classifier
    assert info.value.param == "sequence"
    with pytest.raises(ConfigError) as info:
        ClassifierConfig.volumes(robust="pgd", architecture="radiomics")
    assert info.value.param == "robust"
    assert not (tmp_path / "c").exists()


def test_random_affine_without_motion_is_identity_or_a_left_right_flip():
    g = torch.Generator().manual_seed(0)
    vol = torch.rand(6, 1, 8, 9, 10) * 2 - 1
    out = random_affine(vol, max_rotation=0, max_shift=0, max_gain=0, generator=g)
    flipped = vol.flip(2)  # X, the first spatial axis of a RAS+ volume
    for a, b, c in zip(out, vol, flipped, strict=True):
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(a, c, atol=1e-5)
    assert any(not torch.allclose(a, b, atol=1e-5) for a, b in zip(out, vol, strict=True))
    img = torch.rand(6, 1, 8, 10) * 2 - 1
    out = random_affine(img, max_rotation=0, max_shift=0, max_gain=0, generator=g)
    for a, b, c in zip(out, img, img.flip(3), strict=True):  # images flip along their width
        assert torch.allclose(a, b, atol=1e-5) or torch.allclose(a, c, atol=1e-5)
    # a turn in the axial plane keeps every axial slice's brain in that slice
    vol = -torch.ones(1, 1, 12, 12, 12)
    vol[..., 6] = 1.0  # one axial slice (Z = 6)
    out = random_affine(vol, max_rotation=10, max_shift=0, max_gain=0, generator=g)
    assert out[..., 6].mean() > 0.5 and out[..., [0, 11]].max() == -1


def test_cli_trains_a_volume_classifier(heads, tmp_path, capsys):
    code, out, _ = run(capsys, "train", "classifier", "--data", heads, "--volumes",
                       "--image-size", 16, "--widths", "4,4,8,8", "--epochs", 1, "--batch-size",
                       4, "--out", tmp_path / "c")  # fmt: skip
    assert code == 0 and "balanced accuracy" in out
    saved = json.loads((tmp_path / "c" / "classifier.json").read_text())
    assert saved["config"]["architecture"] == "resnet3d" and saved["sequence"] == "t1"
    assert saved["config"]["patience"] == ClassifierConfig.volumes().patience
    code, _, err = run(capsys, "train", "classifier", "--data", heads, "--volumes",
                       "--architecture", "radiomics", "--out", tmp_path / "d")  # fmt: skip
    assert_one_line_error(code, err, "--architecture", "resnet3d")
    code, _, err = run(capsys, "train", "classifier", "--data", heads, "--volumes",
                       "--sequence", "dwi", "--out", tmp_path / "d")  # fmt: skip
    assert_one_line_error(code, err, "--sequence", "dwi")
    assert not (tmp_path / "d").exists()
