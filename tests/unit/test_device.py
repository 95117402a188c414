"""Device and dtype resolution, starting noise, and the generation engine's failure modes."""

from __future__ import annotations

import time

import pytest
import torch

from medfair_audit.config import Placement
from medfair_audit.device import (
    initial_latents,
    is_out_of_memory,
    resolve_device,
    resolve_dtype,
)
from medfair_audit.exceptions import ConfigError, DataError, ResourceError
from medfair_audit.generation import GenerationConfig
from medfair_audit.generation.engine import load_shard, plan_shards, run_shards

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


def test_auto_picks_the_cpu_here_and_float32_there():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    p = Placement()
    assert p.device.type == "cpu" and p.dtype == torch.float32 and not p.half
    assert p.describe() == {"device": "cpu", "dtype": "float32"}
    assert Placement(device="cpu", dtype="bfloat16").describe()["dtype"] == "bfloat16"


@no_cuda
@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "cuda:1", "CUDA"])
def test_an_unavailable_gpu_is_a_clear_error(spec):
    with pytest.raises(ConfigError, match="not available") as err:
        resolve_device(spec)
    assert err.value.param == "device"


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "cuda:-1"])
def test_unknown_device_spellings_are_refused(spec):
    with pytest.raises(ConfigError, match="expected auto, cpu, cuda") as err:
        resolve_device(spec)
    assert err.value.param == "device"


def test_mps_without_the_backend_is_refused():
    if torch.backends.mps.is_available():
        pytest.skip("this machine has MPS")
    with pytest.raises(ConfigError, match="MPS"):
        resolve_device("mps")


@pytest.mark.parametrize("spec", ["int8", "half", "fp16", ""])
def test_unknown_dtypes_are_refused(spec):
    if spec == "":  # empty means auto
        assert resolve_dtype(spec, torch.device("cpu")) == torch.float32
        return
    with pytest.raises(ConfigError, match="expected auto, float32") as err:
        Placement(device="cpu", dtype=spec)
    assert err.value.param == "dtype"


def test_starting_noise_depends_on_the_seed_alone():
    shape = (4, 8, 8)
    together = initial_latents([11, 12, 13], shape)
    apart = torch.cat([initial_latents([s], shape) for s in (13, 12, 11)]).flip(0)
    assert torch.equal(together, apart)  # bit-identical whatever the batch
    assert torch.equal(together[1], torch.randn(shape, generator=torch.Generator().manual_seed(12)))
    # drawn in float32 first, then cast: the half-precision start is the rounded float32 one
    half = initial_latents([11, 12, 13], shape, dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16 and torch.equal(half, together.to(torch.bfloat16))


def test_out_of_memory_is_recognised():
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"))
    assert is_out_of_memory(
        RuntimeError("[enforce fail] DefaultCPUAllocator: can't allocate memory")
    )
    assert not is_out_of_memory(RuntimeError("shape mismatch"))


def _fake_generate(fail_at: int | None = None, exc: Exception | None = None):
    calls = []

    def generate(prompt, seeds):
        calls.append(list(seeds))
        if fail_at is not None and len(calls) > fail_at:
            raise exc
        rows = initial_latents(seeds, (1, 4, 4))
        return rows.tanh()

    return generate, calls


def _analyse(images):
    return torch.full((len(images), 2), 0.5), images.flatten(1)[:, :3]


def _slow_analyse(images):
    time.sleep(0.2)  # the next batch's generation fails while this shard is still in flight
    return _analyse(images)


@pytest.mark.parametrize("overlap", [True, False])
def test_out_of_memory_names_the_batch_size_and_keeps_finished_shards(tmp_path, overlap):
    cfg = GenerationConfig(n_per_prompt=6, shard_size=2)
    generate, _ = _fake_generate(fail_at=2, exc=torch.OutOfMemoryError("CUDA out of memory"))
    with pytest.raises(ResourceError, match=r"lower --batch-size \(e.g. 1\)") as err:
        run_shards(
            generate, ["p"], cfg, tmp_path, analyse=_slow_analyse, settings={}, overlap=overlap
        )
    assert err.value.param == "batch_size"
    plan = plan_shards(1, cfg)
    assert [load_shard(tmp_path, s) is not None for s in plan] == [True, True, False]
    # a re-run with the same settings draws only the missing shard
    generate, calls = _fake_generate()
    run_shards(generate, ["p"], cfg, tmp_path, analyse=_analyse, settings={}, overlap=overlap)
    assert calls == [[s for s in load_shard(tmp_path, plan[2])["seeds"].tolist()]]


def test_overlapped_and_sequential_shards_are_identical(tmp_path):
    cfg = GenerationConfig(n_per_prompt=5, shard_size=2)
    for overlap in (True, False):
        generate, _ = _fake_generate()
        run_shards(
            generate, ["a", "b"], cfg, tmp_path / str(overlap), analyse=_analyse,
            settings={}, overlap=overlap,
        )  # fmt: skip
    for shard in plan_shards(2, cfg):
        a, b = (load_shard(tmp_path / str(o), shard) for o in (True, False))
        assert a["meta"] == b["meta"]
        assert all(torch.equal(a[k], b[k]) for k in ("images", "probs", "features", "seeds"))


def test_a_worker_error_surfaces_with_its_message(tmp_path):
    cfg = GenerationConfig(n_per_prompt=4, shard_size=2)

    def nan_images(prompt, seeds):
        return torch.full((len(seeds), 1, 4, 4), float("nan"))

    with pytest.raises(DataError, match=r"NaN/inf pixels .* image 0, seed"):
        run_shards(nan_images, ["p"], cfg, tmp_path, analyse=_analyse, settings={}, overlap=True)
    assert not list(tmp_path.glob("*.safetensors"))


@no_cuda
def test_the_demo_checks_its_device_up_front(tmp_path):
    from medfair_audit.demo import DemoConfig

    with pytest.raises(ConfigError, match="not available"):
        DemoConfig(out=tmp_path, device="cuda")
    assert DemoConfig(out=tmp_path, dtype="bfloat16").placement.dtype == torch.bfloat16


@pytest.fixture
def two_fake_gpus(monkeypatch):
    """GPU 0 without bfloat16, GPU 1 with it; the current device starts at 0."""
    import contextlib

    state = {"current": 0, "set": []}

    @contextlib.contextmanager
    def device(d):
        before, state["current"] = state["current"], torch.device(d).index
        try:
            yield
        finally:
            state["current"] = before

    def set_device(d):
        state["set"].append(torch.device(d))
        state["current"] = torch.device(d).index

    monkeypatch.setattr(torch.cuda, "device", device)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: state["current"] == 1)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: state["current"])
    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    return state


def test_bfloat16_support_is_read_on_the_chosen_gpu_not_the_current_one(two_fake_gpus):
    from medfair_audit.device import resolve_dtype

    assert resolve_dtype("auto", torch.device("cuda", 1)) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda", 0)) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cuda", 1)) == torch.bfloat16
    with pytest.raises(ConfigError, match="does not support bfloat16"):
        resolve_dtype("bfloat16", torch.device("cuda", 0))
    assert two_fake_gpus["current"] == 0  # asking changed nothing


def test_a_chosen_gpu_becomes_the_current_one_before_accelerate_starts(two_fake_gpus):
    from medfair_audit._dist import _pin

    _pin(torch.device("cpu"))
    _pin(torch.device("cuda"))  # plain cuda: the current GPU (or the local rank's) stays
    assert two_fake_gpus["set"] == []
    _pin(torch.device("cuda", 1))
    assert two_fake_gpus["set"] == [torch.device("cuda", 1)] and two_fake_gpus["current"] == 1
    _pin(torch.device("cuda", 1))  # already current: nothing more
    assert len(two_fake_gpus["set"]) == 1


def test_the_process_group_waits_longer_than_nccls_default(monkeypatch):
    import accelerate

    from medfair_audit import _dist

    seen = []
    monkeypatch.setattr(accelerate, "PartialState", lambda **kw: seen.append(kw))
    _dist.partial_state(torch.device("cpu"))
    assert seen == [{"cpu": True, "timeout": _dist.PROCESS_GROUP_TIMEOUT}]
    assert _dist.PROCESS_GROUP_TIMEOUT.total_seconds() > 600  # NCCL's default: 10 minutes
