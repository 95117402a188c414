"""Shard packs: a plan of many shards leaves a bounded number of files, read like loose shards.

The generation engine is driven by a fake pipeline (each image a function of its seed alone), so
these tests see the files and the resume logic without a model.
"""

from __future__ import annotations

import zipfile

import pytest
import torch

from medfair_audit.device import initial_latents
from medfair_audit.exceptions import DataError
from medfair_audit.generation import GenerationConfig, engine
from medfair_audit.generation.engine import (
    Shard,
    ShardStore,
    iter_shards,
    plan_shards,
    run_shards,
    stored_shards,
)

CFG = GenerationConfig(n_per_prompt=4, shard_size=2)
PROMPTS = [f"prompt {i}" for i in range(10)]  # 20 shards


class Stop(Exception):
    pass


def _fake(stop_after: int | None = None):
    calls: list[list[int]] = []

    def generate(prompt, seeds):
        if stop_after is not None and len(calls) >= stop_after:
            raise Stop
        calls.append(list(seeds))
        return initial_latents(seeds, (1, 4, 4)).tanh()

    return generate, calls


def _analyse(images):
    return images.flatten(1)[:, :2].softmax(1), images.flatten(1)[:, :3]


def _run(folder, generate, *, settings=None, overlap=True, world=1):
    for rank in range(world):
        plan = run_shards(
            generate, PROMPTS, CFG, folder, analyse=_analyse, settings=settings or {},
            rank=rank, world=world, overlap=overlap,
        )  # fmt: skip
    return plan


def _files(folder):
    return sorted(p.name for p in folder.iterdir())


def _same(a, b):
    assert a["meta"] == b["meta"]
    assert all(torch.equal(a[k], b[k]) for k in ("images", "probs", "features", "seeds"))


@pytest.fixture()
def loose(tmp_path_factory):
    """The plan written without packs (the reference)."""
    folder = tmp_path_factory.mktemp("loose")
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(engine, "MAX_PACKS", 1000)
        _run(folder, _fake()[0])
    assert not [f for f in _files(folder) if f.startswith("pack-")]
    return folder


@pytest.fixture()
def small_packs(monkeypatch):
    monkeypatch.setattr(engine, "MAX_PACKS", 4)  # 20 shards: packs of 5


@pytest.mark.parametrize(("overlap", "world"), [(True, 1), (False, 1), (True, 2)])
def test_packs_hold_the_same_shards_in_a_bounded_number_of_files(
    small_packs, loose, tmp_path, overlap, world
):
    plan = _run(tmp_path, _fake()[0], overlap=overlap, world=world)
    files = _files(tmp_path)
    assert all(f.startswith("pack-") and f.endswith(".zip") for f in files), files
    assert len(files) <= engine.MAX_PACKS + world
    for a, b in zip(iter_shards(tmp_path, plan), iter_shards(loose, plan), strict=True):
        _same(a, b)
    # read back without a plan (as reports do), in plan order, one prompt or all
    for p in (None, 3):
        got, want = list(stored_shards(tmp_path, p)), list(stored_shards(loose, p))
        assert len(got) == len(want) == (20 if p is None else 2)
        for a, b in zip(got, want, strict=True):
            _same(a, b)


def test_a_run_stopped_midway_resumes_from_loose_and_packed_shards(small_packs, loose, tmp_path):
    generate, _ = _fake(stop_after=13)
    with pytest.raises(Stop):
        _run(tmp_path, generate, overlap=False)
    files = _files(tmp_path)
    assert [f for f in files if f.startswith("pack-")] == [
        "pack-p0000-i0000000.zip",
        "pack-p0002-i0000002.zip",
    ]
    assert sum(f.endswith(".safetensors") for f in files) == 3  # shards 10-12, not packed yet
    generate, calls = _fake()
    plan = _run(tmp_path, generate)
    assert calls == [
        [s.item() for s in ShardStore(loose).load(shard.name)["seeds"]] for shard in plan[13:]
    ]  # only the 7 missing shards were drawn
    assert len(_files(tmp_path)) == 4
    for a, b in zip(iter_shards(tmp_path, plan), iter_shards(loose, plan), strict=True):
        _same(a, b)


def test_a_kill_while_packing_loses_nothing(small_packs, loose, tmp_path, monkeypatch):
    # killed inside the second pack's write: its shards stay loose, no pack appears
    write = zipfile.ZipFile.write
    n = {"writes": 0}

    def failing_write(self, *args, **kw):
        n["writes"] += 1
        if n["writes"] == 14:  # the 2nd pack (10 files per pack), 4th file
            raise Stop
        return write(self, *args, **kw)

    monkeypatch.setattr(zipfile.ZipFile, "write", failing_write)
    with pytest.raises(Stop):
        _run(tmp_path, _fake()[0], overlap=False)
    monkeypatch.setattr(zipfile.ZipFile, "write", write)
    files = _files(tmp_path)
    assert [f for f in files if f.endswith(".zip")] == ["pack-p0000-i0000000.zip"]
    assert not [f for f in files if f.endswith(".tmp")]  # the temporary pack was removed
    assert sum(f.endswith(".safetensors") for f in files) == 5
    generate, calls = _fake()
    plan = _run(tmp_path, generate)
    assert len(calls) == 10  # the 5 loose shards were gathered, not drawn again
    for a, b in zip(iter_shards(tmp_path, plan), iter_shards(loose, plan), strict=True):
        _same(a, b)


def test_a_kill_between_writing_a_pack_and_removing_its_shards_is_tidied(
    small_packs, loose, tmp_path
):
    plan = _run(tmp_path, _fake()[0])
    with zipfile.ZipFile(tmp_path / "pack-p0000-i0000000.zip") as zf:
        zf.extractall(tmp_path)  # the gathered shards are back beside their pack
    assert len(_files(tmp_path)) == 4 + 10
    generate, calls = _fake()
    _run(tmp_path, generate)
    assert calls == [] and len(_files(tmp_path)) == 4
    for a, b in zip(iter_shards(tmp_path, plan), iter_shards(loose, plan), strict=True):
        _same(a, b)


def test_packs_from_other_settings_are_redrawn_and_removed(small_packs, tmp_path):
    plan = _run(tmp_path, _fake()[0], settings={"checkpoint": "a"})
    old = {shard["meta"]["settings"] for shard in iter_shards(tmp_path, plan)}
    before = {f: (tmp_path / f).read_bytes() for f in _files(tmp_path)}
    generate, calls = _fake()
    _run(tmp_path, generate, settings={"checkpoint": "b"})
    assert len(calls) == 20  # nothing from the other checkpoint was reused
    files = _files(tmp_path)  # the new packs took the old names; no old pack is left
    assert len(files) == 4 and all((tmp_path / f).read_bytes() != before.get(f) for f in files)
    new = {shard["meta"]["settings"] for shard in iter_shards(tmp_path, plan)}
    assert len(old) == len(new) == 1 and old != new


def test_a_broken_pack_is_a_one_line_error_naming_out(tmp_path):
    (tmp_path / "pack-p0000-i0000000.zip").write_bytes(b"not a zip")
    with pytest.raises(DataError, match=r"not a readable shard pack.*delete it") as err:
        _run(tmp_path, _fake()[0])
    assert err.value.param == "out" and "\n" not in str(err.value)


def test_a_small_plan_keeps_one_file_pair_per_shard(tmp_path):
    assert engine.pack_size(engine.MAX_PACKS) == 1 and engine.pack_size(engine.MAX_PACKS + 1) == 2
    plan = _run(tmp_path, _fake()[0])
    assert _files(tmp_path) == sorted(
        f"{s.name}.{ext}" for s in plan for ext in ("json", "safetensors")
    )


def test_shard_names_sort_in_plan_order_past_9999_prompts():
    names = [Shard(p, i, i + 1).name for p in (10000, 9999, 2) for i in (10, 2)]
    assert sorted(names, key=Shard.key) == [
        Shard(p, i, i + 1).name for p in (2, 9999, 10000) for i in (2, 10)
    ]
    assert plan_shards(10001, GenerationConfig(n_per_prompt=1, shard_size=1))[-1].name == (
        "p10000-i0000000"
    )


def test_processes_redrawing_under_new_settings_keep_each_others_packs(small_packs, tmp_path):
    """Two processes resume a folder packed under other settings. Process 1 finishes (its new
    packs take the old packs' names) while process 0 is still at its first shard, holding the
    list of old packs it read at its start: process 0 must not remove process 1's new packs."""
    import threading

    _run(tmp_path, _fake()[0], settings={"checkpoint": "a"}, world=2)
    one_done = threading.Event()
    errors = []

    def rank(r):
        first = {"wait": r == 0}

        def generate(prompt, seeds):
            if first["wait"]:
                first["wait"] = False
                one_done.wait(60)
            return initial_latents(seeds, (1, 4, 4)).tanh()

        try:
            run_shards(
                generate, PROMPTS, CFG, tmp_path, analyse=_analyse,
                settings={"checkpoint": "b"}, rank=r, world=2,
            )  # fmt: skip
        except Exception as exc:
            errors.append(exc)
        if r == 1:
            one_done.set()

    threads = [threading.Thread(target=rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    plan = plan_shards(len(PROMPTS), CFG)
    stamps = {shard["meta"]["settings"] for shard in iter_shards(tmp_path, plan)}
    assert len(stamps) == 1  # every shard is there, all drawn under the new settings


def test_one_store_reads_every_prompt_without_listing_the_folder_again(small_packs, tmp_path):
    _run(tmp_path, _fake()[0])
    store = ShardStore(tmp_path)
    every = store.names()
    (tmp_path / "p0009-i0000000.json").write_text("{}")  # listed once: a later file is not seen
    (tmp_path / "p0009-i0000000.safetensors").write_bytes(b"")
    by_prompt = [store.names(p) for p in range(len(PROMPTS))]
    assert [n for names in by_prompt for n in names] == every and len(every) == 20
    for p in (0, 7):
        got = list(stored_shards(tmp_path, p, store=store))
        assert [int(s["meta"]["prompt_index"]) for s in got] == [p, p]
        assert [int(s["meta"]["start"]) for s in got] == [0, 2]
    store.close()
