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
