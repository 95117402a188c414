from __future__ import annotations

import json
from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from medfair_audit.exceptions import (
    MSG_TARGET_SUM,
    MSG_TARGET_TWO_GROUPS,
    ConfigError,
    DataError,
)
from medfair_audit.target import Target, parse_target, target_from_labels


def test_inline_and_json_round_trip(tmp_path):
    t = parse_target("male=0.58, female=0.42")
    assert t.groups == ("female", "male")
    assert t.vector() == [0.42, 0.58]
    path = t.save(tmp_path / "t.json")
    again = parse_target(str(path))
    assert again.proportions == t.proportions and again.attribute == "sex"
    assert json.loads(path.read_text())["schema_version"] == 1


@given(st.lists(st.floats(0.0, 10.0), min_size=2, max_size=6).filter(lambda v: sum(v) > 1e-3))
def test_any_normalised_vector_is_accepted_and_round_trips(tmp_path_factory, values):
    total = sum(values)
    props = {f"g{i}": v / total for i, v in enumerate(values)}
    t = Target(attribute="a", proportions=props)
    path = tmp_path_factory.mktemp("t") / "t.json"
    assert Target.load(t.save(path)).proportions == pytest.approx(t.proportions, abs=1e-15)


@pytest.mark.parametrize(
    "spec,needle",
    [
        ("male=0.5,female=0.6", MSG_TARGET_SUM.format(total=1.1)),
        ("male=1.0", MSG_TARGET_TWO_GROUPS.format(n=1)),
        ("male=1.2,female=-0.2", "expected a finite proportion ≥ 0 for 'female', got -0.2"),
        ("male=0.5,female=abc", "must be a number"),
        ("male=0.5,male=0.5", "twice"),
        ("male:0.5,female=0.5", "GROUP=PROPORTION"),
        ("male=nan,female=0.5", "expected a finite proportion ≥ 0 for 'male', got nan"),
    ],
)
def test_invalid_inline_targets_name_the_problem(spec, needle):
    with pytest.raises(ConfigError) as info:
        parse_target(spec)
    assert needle in str(info.value) and info.value.param == "target"


def test_sum_tolerance_is_one_in_a_million():
    Target(attribute="s", proportions={"a": 0.5, "b": 0.5 + 9e-7})
    with pytest.raises(ConfigError):
        Target(attribute="s", proportions={"a": 0.5, "b": 0.5 + 2e-6})


def test_from_labels_matches_an_independent_count(tmp_path):
    labels = ["male"] * 7 + ["female"] * 3 + ["male"] * 2
    splits = ["train"] * 6 + ["test"] * 6
    csv = tmp_path / "l.csv"
    csv.write_text(
        "id,sex,split\n"
        + "".join(f"{i},{s},{p}\n" for i, (s, p) in enumerate(zip(labels, splits, strict=True)))
    )
    t = target_from_labels(csv, column="sex")
    counts = Counter(labels)
    assert t.proportions == {g: counts[g] / len(labels) for g in ("female", "male")}
    assert t.n == 12
    test_only = target_from_labels(csv, column="sex", where={"split": "test"})
    sub = Counter(labels[6:])
    assert test_only.proportions["male"] == sub["male"] / 6


def test_known_groups_fill_absent_ones_with_zero_and_reject_others(tmp_path):
    csv = tmp_path / "l.csv"
    csv.write_text("sex\nmale\nmale\nfemale\n")
    t = target_from_labels(csv, groups=["female", "male", "other"])
    assert t.proportions["other"] == 0.0 and t.groups == ("female", "male", "other")
    with pytest.raises(DataError, match="outside the known groups"):
        target_from_labels(csv, groups=["female"])


@pytest.mark.parametrize(
    "content,needle",
    [
        ("gender\nmale\nfemale\n", "has no column 'sex' (found: gender)"),
        ("sex\nmale\n\nfemale\n", None),  # blank line is skipped by pandas, fine
        ("sex\n", "no rows"),
        ("sex,x\nmale,1\n ,2\n", "empty labels"),
    ],
)
def test_label_table_errors(tmp_path, content, needle):
    csv = tmp_path / "l.csv"
    csv.write_text(content)
    if needle is None:
        assert target_from_labels(csv).n == 2
        return
    with pytest.raises(DataError) as info:
        target_from_labels(csv)
    assert needle in str(info.value) and info.value.param == "labels"


def test_missing_or_corrupt_target_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        Target.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DataError, match="cannot read target JSON"):
        parse_target(str(bad))
    bad.write_text('{"proportions": {"a": 1}, "schema_version": 99}')
    with pytest.raises(DataError, match="schema_version 99"):
        parse_target(str(bad))


def test_target_name_round_trips_and_defaults_to_the_imported_data_set(tmp_path):
    import json

    from medfair_audit.target import Target, target_from_labels

    folder = tmp_path / "brats"
    folder.mkdir()
    (folder / "metadata.csv").write_text("file,sex\na.png,male\nb.png,female\nc.png,male\n")
    (folder / "dataset.json").write_text(json.dumps({"kind": "BratsDataset", "n": 3}))
    target = target_from_labels(folder / "metadata.csv", column="sex")
    assert target.name == "BraTS18"
    target.save(tmp_path / "t.json")
    assert Target.load(tmp_path / "t.json").name == "BraTS18"
    named = target_from_labels(folder / "metadata.csv", column="sex", name="my cohort")
    assert named.name == "my cohort"
    (folder / "dataset.json").write_text(json.dumps({"kind": "ImageFolderDataset"}))
    assert target_from_labels(folder / "metadata.csv", column="sex").name is None
