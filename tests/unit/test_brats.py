from __future__ import annotations

import gzip

import nibabel as nib
import numpy as np
import pytest

from medfair_audit.data import BratsDataset, normalise_sex
from medfair_audit.exceptions import ConfigError, DataError

SHAPE = (40, 48, 30)


def _volume(seed: int, *, tumour_z: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """An ellipsoid 'brain' (RAS voxel grid) with a bright marker and a tumour label blob."""
    rng = np.random.default_rng(seed)
    x, y, z = np.meshgrid(*(np.arange(s) for s in SHAPE), indexing="ij")
    brain = ((x - 20) / 17) ** 2 + ((y - 24) / 21) ** 2 + ((z - 15) / 13) ** 2 < 1
    vol = np.where(brain, 100 + 20 * rng.standard_normal(SHAPE), 0).astype(np.float32)
    vol = np.clip(vol, 0, None)
    vol[brain] = np.maximum(vol[brain], 1)
    # marker in the patient's right (high x) anterior (high y) quadrant, all slices
    vol[24:28, 28:32, :] = np.where(brain[24:28, 28:32, :], 400, 0)
    seg = np.zeros(SHAPE, np.int16)
    seg[12:18, 14:20, tumour_z - 2 : tumour_z + 3] = 2
    return vol, seg


def _write_subject(root, grade, sid, *, lps=False, seed=0, seg=True, suffix=".nii.gz"):
    folder = root / grade / sid
    folder.mkdir(parents=True)
    vol, lab = _volume(seed)
    affine = np.eye(4)
    if lps:  # store the same anatomy in LPS voxel order
        vol, lab = vol[::-1, ::-1, :].copy(), lab[::-1, ::-1, :].copy()
        affine = np.diag([-1.0, -1.0, 1.0, 1.0])
        affine[:3, 3] = [SHAPE[0] - 1, SHAPE[1] - 1, 0]
    for seq in ("flair", "t1", "t1ce", "t2"):
        nib.save(nib.Nifti1Image(vol, affine), folder / f"{sid}_{seq}{suffix}")
    if seg:
        nib.save(nib.Nifti1Image(lab, affine), folder / f"{sid}_seg{suffix}")
    return folder


@pytest.fixture()
def brats(tmp_path):
    root = tmp_path / "BraTS18"
    _write_subject(root, "HGG", "Brats18_A_1", seed=1)
    _write_subject(root, "HGG", "Brats18_A_2", seed=2, lps=True)
    _write_subject(root, "LGG", "Brats18_B_1", seed=3, suffix=".nii")
    _write_subject(root, "LGG", "Brats18_B_2", seed=4)  # not in the sex table
    sex = tmp_path / "sex.csv"
    sex.write_text("subject,sex\nBrats18_A_1,M\nBrats18_A_2,female\nBrats18_B_1, f \n")
    return root, sex


def test_slices_sex_labels_and_grades(brats):
    root, sex = brats
    ds = BratsDataset(root, sex, slices_per_subject=4, size=32)
    assert ds.skipped == ["Brats18_B_2"]
    assert len(ds) == 12
    by_subject = ds.metadata.groupby("subject").sex.first().to_dict()
    assert by_subject == {"Brats18_A_1": "male", "Brats18_A_2": "female", "Brats18_B_1": "female"}
    assert set(ds.metadata.grade) == {"HGG", "LGG"}
    x = ds[0]["image"]
    assert x.shape == (1, 32, 32) and -1 <= x.min() and x.max() <= 1


def test_percentile_normalisation_and_radiological_orientation(brats):
    root, sex = brats
    ds = BratsDataset(root, sex, slices_per_subject=3, size=None)
    for i in range(len(ds)):
        img = ds.load_array(i)
        assert img.shape == (SHAPE[1], SHAPE[0])  # rows = anterior-posterior, cols = left-right
        assert img.min() == 0.0 and img.max() == 1.0
        # marker (patient's right, anterior) lands top-left in radiological display
        top_left = img[: SHAPE[1] // 2, : SHAPE[0] // 2]
        assert top_left.max() == 1.0 and img[SHAPE[1] // 2 :, :].max() < 1.0
    # the LPS-stored subject looks the same as the RAS ones after reorientation
    a = ds.metadata.index[ds.metadata.subject == "Brats18_A_1"][0]
    b = ds.metadata.index[ds.metadata.subject == "Brats18_A_2"][0]
    assert np.array_equal(ds.load_array(a) == 1.0, ds.load_array(b) == 1.0)


def test_tumour_band_mode(brats):
    root, sex = brats
    ds = BratsDataset(root, sex, slices="tumour", band=2)
    assert set(ds.metadata.slice_index) == {13, 14, 15, 16, 17}
    assert ds.metadata.tumour.all()
    assert ds.metadata.caption.str.contains("glioma").all()


def test_sex_normalisation():
    assert [normalise_sex(v) for v in ("M", " male ", "F", "Female", "x")] == [
        "male",
        "male",
        "female",
        "female",
        None,
    ]


def test_corrupt_and_non_3d_volumes(brats):
    root, sex = brats
    path = root / "HGG" / "Brats18_A_1" / "Brats18_A_1_flair.nii.gz"
    path.write_bytes(gzip.compress(b"definitely not a nifti header"))
    with pytest.raises(DataError, match="cannot read NIfTI") as info:
        BratsDataset(root, sex)
    assert info.value.param == "root"
    nib.save(nib.Nifti1Image(np.ones((5, 5, 5, 2), np.float32), np.eye(4)), path)
    with pytest.raises(DataError, match=r"shape \(5, 5, 5, 2\), expected a 3-D volume"):
        BratsDataset(root, sex)


def test_layout_and_label_errors(brats, tmp_path):
    root, sex = brats
    with pytest.raises(DataError, match="HGG"):
        BratsDataset(tmp_path, sex)
    bad = tmp_path / "bad.csv"
    bad.write_text("subject,sex\nBrats18_A_1,unknown\n")
    with pytest.raises(DataError, match="outside the known groups") as info:
        BratsDataset(root, bad)
    assert info.value.param == "sex_csv"
    bad.write_text("id,sex\nBrats18_A_1,M\n")
    with pytest.raises(DataError, match="no column 'subject'"):
        BratsDataset(root, bad)
    bad.write_text("subject,sex\nSomeoneElse,M\n")
    with pytest.raises(DataError, match="none of the 4 subjects"):
        BratsDataset(root, bad)
    with pytest.raises(ConfigError):
        BratsDataset(root, sex, sequence="dwi")
    (root / "HGG" / "Brats18_A_1" / "Brats18_A_1_seg.nii.gz").unlink()
    with pytest.raises(DataError, match=r"needs a non-empty 'Brats18_A_1_seg.nii.gz'"):
        BratsDataset(root, sex, slices="tumour")


@pytest.mark.parametrize("link", ["subject", "volume"])
def test_symlinks_leading_out_of_the_root_are_refused_unless_allowed(tmp_path, link):
    root, elsewhere = tmp_path / "BraTS18", tmp_path / "elsewhere"
    _write_subject(root, "HGG", "Brats18_A_1", seed=1)
    real = _write_subject(elsewhere, "HGG", "Brats18_X_9", seed=2)
    if link == "subject":  # a whole subject folder that lives elsewhere
        (root / "HGG" / "Brats18_X_9").symlink_to(real, target_is_directory=True)
    else:  # one volume inside an ordinary subject folder
        folder = root / "LGG" / "Brats18_X_9"
        folder.mkdir(parents=True)
        (folder / "Brats18_X_9_flair.nii.gz").symlink_to(real / "Brats18_X_9_flair.nii.gz")
    sex = tmp_path / "sex.csv"
    sex.write_text("subject,sex\nBrats18_A_1,M\nBrats18_X_9,F\n")
    with pytest.raises(DataError, match=r"found in the subject folders lie outside") as err:
        BratsDataset(root, sex, slices_per_subject=2, size=16)
    assert err.value.param == "root" and "--allow-outside-root" in str(err.value)
    ds = BratsDataset(root, sex, slices_per_subject=2, size=16, allow_outside_root=True)
    assert sorted(set(ds.metadata.subject)) == ["Brats18_A_1", "Brats18_X_9"]


def test_a_clinical_table_with_f_m_and_age_gives_a_joint_target_without_renaming(brats, tmp_path):
    """`Subject`/`Sex` in any case, sex as F/M/Male/Female, an `Age` column and another column:
    the import keeps every column, adds age bands, and a sex × age band target follows."""
    from medfair_audit.data import export_image_folder
    from medfair_audit.target import target_from_labels

    root, _ = brats
    table = tmp_path / "clinical.csv"
    table.write_text(
        "Subject,Sex,Age,Survival,tumour,Grade\n"
        "Brats18_A_1,M,35,289,x,HGG\nBrats18_A_2,Female,61.5,,y,HGG\nBrats18_B_1,f,47,400,z,LGG\n"
    )
    ds = BratsDataset(root, table, slices_per_subject=2, size=32)
    by_subject = ds.metadata.groupby("subject").first()
    assert by_subject.sex.to_dict() == {
        "Brats18_A_1": "male", "Brats18_A_2": "female", "Brats18_B_1": "female",
    }  # fmt: skip
    assert by_subject.age_band.to_dict() == {
        "Brats18_A_1": "<40", "Brats18_A_2": "60+", "Brats18_B_1": "40-59",
    }  # fmt: skip
    assert by_subject.grade.to_dict() == {
        "Brats18_A_1": "HGG", "Brats18_A_2": "HGG", "Brats18_B_1": "LGG",
    }  # fmt: skip
    assert by_subject.Survival.to_dict()["Brats18_A_1"] == "289"
    assert by_subject.table_tumour.to_dict()["Brats18_A_1"] == "x"  # clashes get a prefix
    assert by_subject.table_Grade.to_dict()["Brats18_B_1"] == "LGG"  # in any case
    names = [c.lower() for c in ds.metadata.columns]
    assert len(names) == len(set(names)), list(ds.metadata.columns)  # no grade beside Grade
    out = tmp_path / "imported"
    export_image_folder(ds, out)
    target = target_from_labels(out / "metadata.csv", column=["sex", "age_band"])
    assert target.name == "BraTS18" and target.attributes == ("sex", "age_band")
    assert target.marginal("sex").proportions == {"female": 4 / 6, "male": 2 / 6}
    assert target.proportions["male/<40"] == pytest.approx(2 / 6)
    assert set(target.zero_cells) == {"female/<40", "male/40-59", "male/60+"}


def test_unknown_sex_values_and_bad_ages_are_one_line_errors(brats, tmp_path):
    root, _ = brats
    bad_sex = tmp_path / "bad_sex.csv"
    bad_sex.write_text("subject,sex\nBrats18_A_1,X\n")
    with pytest.raises(DataError, match="X") as info:
        BratsDataset(root, bad_sex)
    assert info.value.param == "sex_csv"
    bad_age = tmp_path / "bad_age.csv"
    bad_age.write_text("subject,sex,age\nBrats18_A_1,M,old\n")
    with pytest.raises(DataError, match="age must be a number") as info:
        BratsDataset(root, bad_age)
    assert info.value.param == "sex_csv"
    with pytest.raises(DataError, match="'gender'"):
        BratsDataset(root, bad_age, sex_column="gender")
