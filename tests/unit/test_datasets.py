from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from medfair_audit.data import ImageFolderDataset, RocoDataset, export_image_folder
from medfair_audit.data._imageio import read_image, to_model_tensor, write_png
from medfair_audit.exceptions import DataError


def test_image_folder_items_are_tensors_in_range_with_metadata(small_phantom):
    ds = ImageFolderDataset(small_phantom, require=("caption", "sex"))
    assert len(ds) == 60
    item = ds[0]
    assert item["image"].shape == (1, 64, 64) and item["image"].dtype == torch.float32
    assert item["image"].min() >= -1 and item["image"].max() <= 1
    assert item["image"].min() == -1  # background
    assert item["caption"] == ds.metadata.caption[0]
    assert item["metadata"]["sex"] in ("male", "female")
    assert ds.labels("sex") == ds.metadata.sex.tolist()
    loader = torch.utils.data.DataLoader(ds, batch_size=8)
    batch = next(iter(loader))
    assert batch["image"].shape == (8, 1, 64, 64)


def test_pixels_match_the_png_exactly(small_phantom):
    ds = ImageFolderDataset(small_phantom, size=None)
    raw = np.asarray(Image.open(small_phantom / ds.metadata.file[3]), dtype=np.float64) / 255
    assert np.allclose(ds[3]["image"][0].numpy(), raw * 2 - 1, atol=1e-6)


def test_split_size_and_channels(small_phantom):
    meta = pd.read_csv(small_phantom / "metadata.csv")
    ds = ImageFolderDataset(small_phantom, split="test", size=32, channels=3)
    assert len(ds) == (meta.split == "test").sum()
    x = ds[0]["image"]
    assert x.shape == (3, 32, 32) and torch.equal(x[0], x[2])


def test_listing_without_csv(small_phantom):
    ds = ImageFolderDataset(small_phantom, metadata=None)
    assert len(ds) == 60 and list(ds.metadata.columns) == ["file"]


def test_folder_errors(tmp_path, small_phantom):
    with pytest.raises(DataError, match="does not exist"):
        ImageFolderDataset(tmp_path / "missing")
    with pytest.raises(DataError, match=r"metadata.csv' does not exist"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(DataError, match="has no column 'ethnicity'"):
        ImageFolderDataset(small_phantom, require=("ethnicity",))
    with pytest.raises(DataError, match="no images found"):
        ImageFolderDataset(small_phantom, split="nosuchsplit")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "metadata.csv").write_text("file,caption\na.png,x\nb.png,y\n")
    (broken / "a.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"1 images listed .* are missing"):
        ImageFolderDataset(broken)
    (broken / "b.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="cannot read image"):
        ImageFolderDataset(broken)[0]
    (broken / "metadata.csv").write_text("file,caption\na.png,\n")
    with pytest.raises(DataError, match="empty caption"):
        ImageFolderDataset(broken, require=("caption",))


def test_sixteen_bit_round_trip_keeps_precision(tmp_path):
    ramp = np.linspace(0, 1, 64 * 64).reshape(64, 64)
    write_png(tmp_path / "r.png", ramp, bit_depth=16)
    back = read_image(tmp_path / "r.png")
    assert np.abs(back - ramp).max() < 1 / 65535
    write_png(tmp_path / "r8.png", ramp, bit_depth=8)
    assert np.abs(read_image(tmp_path / "r8.png") - ramp).max() <= 0.5 / 255 + 1e-6


def test_non_square_colour_image_is_padded_and_converted_to_luma():
    arr = np.zeros((20, 40, 3), dtype=np.float32)
    arr[..., 0] = 1.0  # pure red
    t = to_model_tensor(arr, size=None, channels=1)
    assert t.shape == (1, 40, 40)
    assert torch.allclose(t[0, 20, 20], torch.tensor(0.299 * 2 - 1))
    assert t[0, 0, 0] == -1 and t[0, -1, 0] == -1  # zero padding above and below


def test_export_then_reload_is_lossless_at_16_bits(tmp_path, small_phantom):
    ds = ImageFolderDataset(small_phantom, split="val")
    out = export_image_folder(ds, tmp_path / "exp", bit_depth=16)
    again = ImageFolderDataset(out)
    assert len(again) == len(ds)
    assert again.metadata.sex.tolist() == ds.metadata.sex.tolist()
    for i in range(len(ds)):
        assert torch.allclose(again[i]["image"], ds[i]["image"], atol=2 / 65535)


def _roco(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    Image.fromarray(np.full((30, 50, 3), 200, np.uint8)).save(images / "ROCO_00001.jpg")
    Image.fromarray(np.full((40, 40), 90, np.uint8)).save(images / "ROCO_00002.png")
    captions = tmp_path / "captions.txt"
    captions.write_text(
        "ROCO_00001\tAxial CT of the chest.\nROCO_00002.png\t Brain MRI, FLAIR. \n"
        "\nROCO_00003\tA caption without an image.\n"
    )
    return images, captions


def test_roco_layout(tmp_path):
    images, captions = _roco(tmp_path)
    ds = RocoDataset(images, captions, size=32)
    assert len(ds) == 2 and ds.missing == ["ROCO_00003"]
    assert ds.captions == ["Axial CT of the chest.", "Brain MRI, FLAIR."]
    x = ds[0]["image"]
    assert x.shape == (1, 32, 32)
    assert x[0, 0, 16] == -1  # letterbox padding of the 30x50 image
    assert x[0, 16, 16] == pytest.approx(200 / 255 * 2 - 1, abs=0.02)


def test_roco_errors(tmp_path):
    images, _captions = _roco(tmp_path)
    bad = tmp_path / "bad.txt"
    bad.write_text("ROCO_00001 no tab here\n")
    with pytest.raises(DataError, match=r"line 1 .* is not"):
        RocoDataset(images, bad)
    bad.write_text("ROCO_09999\tnothing matches\n")
    with pytest.raises(DataError, match="no image"):
        RocoDataset(images, bad)
    with pytest.raises(DataError) as info:
        RocoDataset(images, tmp_path / "nope.txt")
    assert info.value.param == "captions"


def _png(path, value=100):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8), value, dtype=np.uint8)).save(path)


@pytest.mark.parametrize("layout", ["dotdot", "absolute", "file_link", "folder_link"])
def test_images_outside_the_root_are_refused_unless_allowed(tmp_path, layout):
    root, outside = tmp_path / "data", tmp_path / "outside"
    _png(outside / "secret.png", 7)
    _png(root / "inside.png")
    row = {
        "dotdot": "../outside/secret.png",
        "absolute": str(outside / "secret.png"),
        "file_link": "link.png",
        "folder_link": "images/secret.png",
    }[layout]
    if layout == "file_link":
        (root / "link.png").symlink_to(outside / "secret.png")
    if layout == "folder_link":
        (root / "images").symlink_to(outside, target_is_directory=True)
    pd.DataFrame({"file": ["inside.png", row], "sex": ["male", "female"]}).to_csv(
        root / "metadata.csv", index=False
    )
    with pytest.raises(DataError, match=r"lie outside .*--allow-outside-root") as err:
        ImageFolderDataset(root, param="reference")
    assert err.value.param == "reference" and "secret.png" in err.value.message
    allowed = ImageFolderDataset(root, size=None, allow_outside_root=True)
    assert round(float(allowed.load_array(1).max()) * 255) == 7  # read only when asked


def test_links_that_stay_inside_the_root_are_fine(tmp_path):
    root = tmp_path / "data"
    _png(root / "a" / "x.png")
    (root / "b").mkdir()
    (root / "b" / "y.png").symlink_to(root / "a" / "x.png")
    pd.DataFrame({"file": ["a/x.png", "b/y.png"]}).to_csv(root / "metadata.csv", index=False)
    assert len(ImageFolderDataset(root)) == 2
    assert len(ImageFolderDataset(root, metadata=None)) == 2


def test_cli_training_on_a_table_that_points_outside_is_one_line(capsys, tmp_path):
    from tests.cli.test_cli import assert_one_line_error, run

    root = tmp_path / "data"
    _png(tmp_path / "secret.png")
    _png(root / "x.png")
    pd.DataFrame({"file": ["x.png", "../secret.png"], "sex": ["male", "female"]}).to_csv(
        root / "metadata.csv", index=False
    )
    code, _, err = run(capsys, "train", "classifier", "--data", root, "--out", tmp_path / "c")
    assert_one_line_error(code, err, "--data", "lie outside", "--allow-outside-root")
    assert not (tmp_path / "c").exists()


def test_roco_images_symlinked_out_of_the_folder_are_refused_unless_allowed(tmp_path):
    images, outside = tmp_path / "roco", tmp_path / "outside"
    _png(images / "R1.png", 1)
    _png(outside / "secret.png", 7)
    (images / "R2.png").symlink_to(outside / "secret.png")
    captions = tmp_path / "c.txt"
    captions.write_text("R1\tChest radiograph.\nR2\tHead CT.\n")
    with pytest.raises(DataError, match=r"in the folder \(symlinks\) lie outside") as err:
        RocoDataset(images, captions, size=None)
    assert err.value.param == "images"
    assert len(RocoDataset(images, captions, size=None, allow_outside_root=True)) == 2
