"""The phantom as 3-D volumes in the BraTS layout (``medfair data phantom --volumes``)."""

from __future__ import annotations

import hashlib
import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medfair_audit.data import BratsDataset, PhantomConfig, build_phantom_volumes
from medfair_audit.data.phantom import SEQUENCES
from medfair_audit.data.volumes import BRATS_LABELS, INTENSITY_SCALE, volume_affine
from medfair_audit.exceptions import ConfigError
from tests.cli.test_cli import assert_one_line_error, run


def _digest(root):
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def volumes(tmp_path_factory):
    out = tmp_path_factory.mktemp("vol") / "v"
    cfg = PhantomConfig(n=12, seed=4, size=32, tumour_rate=0.75, workers=1,
                        splits="train=0.5,val=0.25,test=0.25")  # fmt: skip
    result = build_phantom_volumes(out, cfg)
    return out, cfg, result


def test_layout_nifti_and_segmentation(volumes):
    out, cfg, result = volumes
    meta = pd.read_csv(out / "metadata.csv")
    assert len(meta) == cfg.n * len(SEQUENCES)
    for seqs in meta.groupby("subject").sequence.apply(sorted):
        assert seqs == sorted(SEQUENCES)
    # splits are per subject, so any split of the rows is subject-disjoint
    assert (meta.groupby("subject").split.nunique() == 1).all()
    assert (meta.groupby("subject").sex.nunique() == 1).all()
    assert meta.drop_duplicates("subject").tumour.sum() == 9  # 75% of 12, exactly
    seen: set[int] = set()
    for row in meta.drop_duplicates("subject").itertuples():
        grade = "HGG" if row.tumour else "healthy"
        assert row.file.startswith(f"{grade}/{row.subject}/{row.subject}_")
        seg = nib.load(out / row.seg)
        labels = np.asarray(seg.dataobj)
        assert seg.shape == (32, 32, 32) and np.allclose(seg.affine, volume_affine(32))
        assert set(np.unique(labels)) <= {0, *BRATS_LABELS.values()}
        # a glioma has a necrotic core and oedema (the enhancing rim may be thinner than a
        # voxel); a healthy subject none
        assert {0, 1, 2} <= set(np.unique(labels)) if row.tumour else set(np.unique(labels)) == {0}
        assert (float(row.lesion_ml) > 0) == bool(row.tumour)
        seen |= set(np.unique(labels).tolist())
    assert seen == {0, 1, 2, 4}
    vol = nib.load(out / meta.file[0])
    data = np.asarray(vol.dataobj)
    assert vol.get_data_dtype() == np.int16 and 0 <= data.min() and data.max() <= INTENSITY_SCALE
    assert nib.aff2axcodes(vol.affine) == ("R", "A", "S")
    subjects = pd.read_csv(out / "subjects.csv")
    assert list(subjects.columns) == ["Subject", "Sex", "Age"] and len(subjects) == cfg.n
    doc = json.loads((out / "dataset.json").read_text())
    assert doc["n_subjects"] == cfg.n and doc["voxel_mm"] == pytest.approx(200 / 32)
    assert sum(c["male"] + c["female"] for c in result.counts.values()) == cfg.n


def test_same_seed_same_bytes_and_workers_do_not_matter(volumes, tmp_path):
    out, cfg, _ = volumes
    again = tmp_path / "again"
    build_phantom_volumes(again, PhantomConfig(**{**cfg.__dict__, "workers": 2}))
    assert _digest(again) == _digest(out)
    other = tmp_path / "other"
    build_phantom_volumes(other, PhantomConfig(**{**cfg.__dict__, "seed": 5, "n": 2}))
    assert set(_digest(other).values()).isdisjoint(_digest(out).values())


def test_the_rendered_brain_follows_the_drawn_head_size(volumes):
    out, _, _ = volumes
    meta = pd.read_csv(out / "metadata.csv")
    t1 = meta[meta.sequence == "t1"]
    brain = [(np.asarray(nib.load(out / f).dataobj) > 0).sum() for f in t1.file]
    r = np.corrcoef(np.asarray(brain, float), t1.head_scale.to_numpy() ** 3)[0, 1]
    assert r > 0.9


def test_import_brats_reads_the_phantom_volumes(volumes):
    out, _, _ = volumes
    ds = BratsDataset(out, out / "subjects.csv", sequence="flair", slices_per_subject=3, size=32)
    subjects = pd.read_csv(out / "subjects.csv").set_index("Subject")
    meta = ds.metadata
    tumour = pd.read_csv(out / "metadata.csv").drop_duplicates("subject").set_index("subject")
    # every subject (HGG/ and healthy/), three slices each, labelled with their sex and age
    assert sorted(meta.subject.unique()) == sorted(tumour.index)
    assert len(meta) == 3 * len(tumour)
    for row in meta.itertuples():
        assert row.sex == subjects.Sex[row.subject] and int(row.age) == subjects.Age[row.subject]
        assert row.grade == ("HGG" if tumour.tumour[row.subject] else "healthy")
        assert row.tumour <= tumour.tumour[row.subject]  # a slice of a healthy head: none
    x = ds[0]["image"]
    assert x.shape == (1, 32, 32) and -1 <= float(x.min()) and float(x.max()) <= 1


def test_bad_volume_settings(tmp_path, capsys):
    with pytest.raises(ConfigError) as info:
        build_phantom_volumes(tmp_path / "a", PhantomConfig(n=2, size=136))
    assert info.value.param == "size"
    with pytest.raises(ConfigError) as info:
        build_phantom_volumes(tmp_path / "b", PhantomConfig(n=2, size=32, sequences=("t1",)))
    assert info.value.param == "sequences"
    code, _, err = run(capsys, "data", "phantom", "--volumes", "--out", tmp_path / "c",
                       "--n", 2, "--caption-sex-rate", 0.5)  # fmt: skip
    assert_one_line_error(code, err, "--caption-sex-rate", "captions")
    assert not (tmp_path / "c").exists()


def test_cli_writes_volumes(tmp_path, capsys):
    code, out, _ = run(capsys, "data", "phantom", "--volumes", "--out", tmp_path / "v",
                       "--n", 2, "--size", 32, "--tumour-rate", 1)  # fmt: skip
    assert code == 0 and "volumes" in out
    assert len(list((tmp_path / "v" / "HGG").glob("*/*.nii.gz"))) == 2 * 5
    # the README's pair of commands: import-brats reads them, labelled from subjects.csv
    code, _, _ = run(capsys, "data", "import-brats", "--root", tmp_path / "v", "--sex-csv",
                     tmp_path / "v" / "subjects.csv", "--out", tmp_path / "s")  # fmt: skip
    slices = pd.read_csv(tmp_path / "s" / "metadata.csv")
    subjects = pd.read_csv(tmp_path / "v" / "subjects.csv").set_index("Subject")
    assert code == 0 and len(slices) == 2 * 10
    assert (slices.sex == subjects.Sex[slices.subject].to_numpy()).all()


# -- reading volumes ------------------------------------------------------------------------


def test_volume_dataset_reads_normalised_cubes(volumes):
    from medfair_audit.data import VolumeFolderDataset
    from medfair_audit.training import load_images

    out, cfg, _ = volumes
    ds = VolumeFolderDataset(out, sequence="flair", size=24)
    assert len(ds) == cfg.n and set(ds.metadata.sequence) == {"flair"}
    item = ds[0]
    x = item["image"]
    assert x.shape == (1, 24, 24, 24) and item["caption"] is None
    assert float(x.min()) == -1.0 and float(x.max()) <= 1.0
    assert float(x[0, 0, 0, 0]) == -1.0  # background stays background
    stack = load_images(ds)
    assert stack.shape == (cfg.n, 1, 24, 24, 24)
    train = VolumeFolderDataset(out, sequence="t1", split="train", size=24)
    meta = pd.read_csv(out / "metadata.csv")
    assert len(train) == ((meta.sequence == "t1") & (meta.split == "train")).sum()


def test_volume_normalisation_is_the_brats_importers(volumes):
    """At the source size, the volume's axial slices are import-brats' slices."""
    from medfair_audit.data import VolumeFolderDataset
    from medfair_audit.data.brats import _to_display

    out, _, _ = volumes
    ds = VolumeFolderDataset(out, sequence="flair", size=32, split="train")
    brats = BratsDataset(out, out / "subjects.csv", sequence="flair", slices_per_subject=4,
                         size=32)  # fmt: skip
    checked = 0
    for i, row in brats.metadata.iterrows():
        hits = np.flatnonzero(ds.metadata.subject == row.subject)
        if not len(hits):
            continue
        vol = ds.load_array(int(hits[0]))
        expected = _to_display(vol[:, :, int(row.slice_index)])
        assert np.allclose(brats.load_array(i), expected, atol=1e-5)
        checked += 1
    assert checked >= 4


def test_resample_cube_pads_centred_and_keeps_proportions():
    from medfair_audit.data.volumes import resample_cube

    vol = np.zeros((20, 30, 10), dtype=np.float32)
    vol[5:15, 10:20, 2:8] = 1.0  # a box in the middle
    cube = resample_cube(vol, 15)
    assert cube.shape == (15, 15, 15)
    centre = np.argwhere(cube > 0.5).mean(axis=0)
    assert np.allclose(centre, 7, atol=0.6)  # centred in every axis
    extent = (cube > 0.5).sum(axis=(1, 2)).nonzero()[0]
    assert 4 <= len(extent) <= 6  # 10 of 30 voxels → 5 of 15
    # at the cube's own side it only pads, centred
    assert np.array_equal(resample_cube(vol, 30)[5:25, :, 10:20], vol)


def test_volume_dataset_errors(volumes, tmp_path):
    from medfair_audit.data import VolumeFolderDataset
    from medfair_audit.exceptions import DataError

    out, _, _ = volumes
    with pytest.raises(ConfigError) as info:
        VolumeFolderDataset(out, sequence="dwi")
    assert info.value.param == "sequence"
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "v.nii.gz").write_bytes(b"not a nifti")
    (broken / "metadata.csv").write_text("file,sex\nv.nii.gz,male\n")
    with pytest.raises(DataError, match="cannot read NIfTI"):
        VolumeFolderDataset(broken, size=16)[0]


# -- import-brats --volumes -----------------------------------------------------------------


def test_import_brats_volumes_round_trip(volumes, tmp_path):
    from medfair_audit.data import VolumeFolderDataset, import_brats_volumes

    out, cfg, _ = volumes
    first = import_brats_volumes(out, out / "subjects.csv", tmp_path / "a", size=24)
    src = pd.read_csv(out / "metadata.csv").set_index(["subject", "sequence"]).sort_index()
    meta = pd.read_csv(tmp_path / "a" / "metadata.csv")
    assert first.n_subjects == cfg.n and not first.skipped
    assert len(meta) == cfg.n * len(SEQUENCES)
    for row in meta.itertuples():
        ref = src.loc[(row.subject, row.sequence)]
        assert (row.sex, row.grade, row.age, row.age_band) == (
            ref.sex, ref.grade, ref.age, ref.age_band
        )  # fmt: skip
        img = nib.load(tmp_path / "a" / row.file)
        assert img.shape == (24, 24, 24) and nib.aff2axcodes(img.affine) == ("R", "A", "S")
        # 200 mm of field of view over 24 voxels
        assert np.allclose(img.header.get_zooms(), 200 / 24, rtol=1e-3)
        seg = np.asarray(nib.load(tmp_path / "a" / row.seg).dataobj)
        assert set(np.unique(seg)) <= {0, *BRATS_LABELS.values()}  # nearest, no blends
        assert row.tumour == int((seg > 0).any())
    # the output is BraTS-shaped itself: importing it again at its own side changes nothing
    again = import_brats_volumes(tmp_path / "a", tmp_path / "a" / "subjects.csv", tmp_path / "b",
                                 size=24)  # fmt: skip
    assert again.n_volumes == first.n_volumes == cfg.n * (len(SEQUENCES) + 1)
    assert (tmp_path / "a" / "metadata.csv").read_text() == (
        tmp_path / "b" / "metadata.csv"
    ).read_text()
    for path in sorted((tmp_path / "a").rglob("*.nii.gz")):
        x, y = nib.load(path), nib.load(tmp_path / "b" / path.relative_to(tmp_path / "a"))
        assert np.array_equal(np.asarray(x.dataobj), np.asarray(y.dataobj))
        assert np.allclose(x.affine, y.affine, rtol=1e-6)  # the voxel size, to float32
    ds = VolumeFolderDataset(tmp_path / "a", sequence="t1", size=16)
    assert len(ds) == cfg.n and ds[0]["image"].shape == (1, 16, 16, 16)


def test_import_brats_volumes_makes_anisotropic_voxels_isotropic(tmp_path):
    from medfair_audit.data import import_brats_volumes

    folder = tmp_path / "root" / "LGG" / "s1"
    folder.mkdir(parents=True)
    vol = np.zeros((20, 20, 10), dtype=np.float32)
    vol[5:15, 5:15, 2:8] = 100.0  # a box 10 x 10 x 12 mm (2 mm slices)
    affine = np.diag([1.0, 1.0, 2.0, 1.0])
    for seq in SEQUENCES:
        nib.save(nib.Nifti1Image(vol, affine), folder / f"s1_{seq}.nii.gz")
    (tmp_path / "sex.csv").write_text("subject,sex\ns1,F\nother,M\n")
    result = import_brats_volumes(tmp_path / "root", tmp_path / "sex.csv", tmp_path / "out",
                                  size=20)  # fmt: skip
    img = nib.load(tmp_path / "out" / "LGG" / "s1" / "s1_t1.nii.gz")
    data = np.asarray(img.dataobj)
    assert np.allclose(img.header.get_zooms(), 1.0)  # 20 mm over 20 voxels
    extent = [int((data > 50).any(axis=tuple(a for a in range(3) if a != k)).sum())
              for k in range(3)]  # fmt: skip
    assert extent[0] == extent[1] == 10 and 11 <= extent[2] <= 13  # proportions in millimetres
    meta = pd.read_csv(tmp_path / "out" / "metadata.csv")
    assert set(meta.sex) == {"female"} and (meta.seg.isna()).all() and (meta.tumour == 0).all()
    assert result.n_volumes == len(SEQUENCES)


def test_import_brats_volumes_cli(volumes, tmp_path, capsys):
    out, cfg, _ = volumes
    code, text, _ = run(capsys, "data", "import-brats", "--root", out, "--sex-csv",
                        out / "subjects.csv", "--volumes", "--size", 16, "--out",
                        tmp_path / "v")  # fmt: skip
    assert code == 0 and f"of {cfg.n} subjects" in text
    assert len(pd.read_csv(tmp_path / "v" / "metadata.csv")) == cfg.n * len(SEQUENCES)
    # the slice options are not used, a missing sequence is a one-line error naming --root
    first = sorted((tmp_path / "v").glob("*/*/*_t2.nii.gz"))[0]
    first.unlink()
    code, _, err = run(capsys, "data", "import-brats", "--root", tmp_path / "v", "--sex-csv",
                       out / "subjects.csv", "--volumes", "--out", tmp_path / "w")  # fmt: skip
    assert_one_line_error(code, err, "--root", "_t2.nii.gz")
    assert not (tmp_path / "w").exists()


def test_report_grids_show_a_volume_by_its_middle_axial_slice_radiologically():
    import io

    from PIL import Image

    from medfair_audit.reporting import image_grid_png

    vol = np.zeros((2, 1, 6, 8, 5), dtype=np.uint8)  # (N, C, X, Y, Z), RAS+
    vol[0, 0, -1, -1, 2] = 255  # the patient's right, anterior, in the middle axial slice
    vol[1, 0, 0, 0, 0] = 255  # left, posterior, but not in the middle slice
    grid = np.asarray(Image.open(io.BytesIO(image_grid_png(vol, cols=2))))
    assert grid.shape == (8, 12)  # rows anterior to posterior (Y), columns right to left (X)
    assert grid[0, 0] == 255 and grid.sum() == 255
