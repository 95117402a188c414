from __future__ import annotations

import hashlib

import pytest

from medfair_audit._io import atomic_write_json, atomic_write_text, building_dir, file_sha256
from medfair_audit.exceptions import DataError


def test_atomic_write_replaces_and_leaves_no_temporary_files(tmp_path):
    path = tmp_path / "sub" / "f.txt"
    atomic_write_text(path, "one")
    atomic_write_text(path, "two")
    assert path.read_text() == "two"
    assert [p.name for p in path.parent.iterdir()] == ["f.txt"]
    assert file_sha256(path) == hashlib.sha256(b"two").hexdigest()


def test_json_is_stable_for_equal_content(tmp_path):
    a = atomic_write_json(tmp_path / "a.json", {"b": 1, "a": [1, 2]}).read_bytes()
    b = atomic_write_json(tmp_path / "b.json", {"a": [1, 2], "b": 1}).read_bytes()
    assert a == b


def test_failed_build_keeps_the_earlier_folder(tmp_path):
    out = tmp_path / "out"
    with building_dir(out) as tmp:
        (tmp / "x").write_text("first")
    with pytest.raises(RuntimeError), building_dir(out, overwrite=True) as tmp:
        (tmp / "x").write_text("second")
        raise RuntimeError("boom")
    assert (out / "x").read_text() == "first"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]


def test_non_empty_folder_needs_overwrite(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("k")
    with pytest.raises(DataError, match="--overwrite"), building_dir(out):
        pass
    assert (out / "keep").read_text() == "k"
    with building_dir(out, overwrite=True) as tmp:
        (tmp / "new").write_text("n")
    assert sorted(p.name for p in out.iterdir()) == ["new"]


@pytest.fixture
def umask():
    """Set the process umask for one test, then restore it."""
    import os

    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


@pytest.mark.parametrize(
    ("mask", "file_mode", "dir_mode"),
    [(0o022, 0o644, 0o755), (0o077, 0o600, 0o700), (0o002, 0o664, 0o775)],
)
def test_outputs_get_the_modes_the_umask_gives(tmp_path, umask, mask, file_mode, dir_mode):
    umask(mask)
    path = atomic_write_json(tmp_path / "audit.json", {"a": 1})
    assert path.stat().st_mode & 0o777 == file_mode
    with building_dir(tmp_path / "model") as tmp:
        atomic_write_text(tmp / "config.json", "{}")
        (tmp / "weights.bin").write_bytes(b"x")  # a plain write inside, for comparison
    assert (tmp_path / "model").stat().st_mode & 0o777 == dir_mode
    assert (tmp_path / "model" / "config.json").stat().st_mode & 0o777 == file_mode
    assert (tmp_path / "model" / "weights.bin").stat().st_mode & 0o777 == file_mode


def test_a_cli_run_writes_files_others_can_read(tmp_path, umask, capsys):
    from tests.cli.test_cli import run

    umask(0o022)
    code, _, err = run(capsys, "data", "target", "--target", "male=0.58,female=0.42",
                       "--out", str(tmp_path / "target.json"))  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "target.json").stat().st_mode & 0o777 == 0o644
