"""The same code on a CUDA GPU: placement, agreement with the CPU, and remediation that does work.

Skipped on machines without CUDA (CI); run by ``scripts/gpu_check.sh`` where a GPU is at hand.
``MEDFAIR_TEST_DEVICE=cpu`` runs the device-independent ones on the CPU (a dry run of the
assertions; float16 and bfloat16 both run on CPUs, slowly).

Every remediation option is checked for real work, not only for finishing: the weights it
should change changed, at most one of three steps was skipped for non-finite gradients, the
output is float32 and reloads and audits. TF32 is switched off where a test compares float32
numbers (recent GPUs use it for float32 convolutions by default).
"""

from __future__ import annotations

import os

import pytest
import torch
from safetensors.torch import load_file

from medfair_audit import AuditConfig, run_audit
from medfair_audit.config import Placement, Speed
from medfair_audit.device import initial_latents
from medfair_audit.generation import GenerationConfig
from medfair_audit.models.pipelines import apply_speed, generate, load_pipeline
from medfair_audit.models.sd_like import save_sd_like
from medfair_audit.remediation import RemediationConfig, RemediationJob, remediate
from medfair_audit.target import parse_target

DEVICE = os.environ.get("MEDFAIR_TEST_DEVICE", "cuda")
CUDA = DEVICE.startswith("cuda")
pytestmark = pytest.mark.skipif(CUDA and not torch.cuda.is_available(), reason="needs a CUDA GPU")
needs_cuda = pytest.mark.skipif(not CUDA, reason="about the GPU itself")
TARGET = parse_target("male=0.58,female=0.42")
PROMPT = "Axial FLAIR MRI of the brain showing a glioma."
#: Of three steps, at most this many may be skipped for non-finite gradients (float16's
#: GradScaler may skip its first step while it finds its scale).
MAX_SKIPPED = 1
#: Resume on a GPU is not bit-identical (non-deterministic kernels): the resumed weights must
#: agree with the uninterrupted run's within this fraction of the largest weight change.
RESUME_TOLERANCE = 0.02


@pytest.fixture
def no_tf32():
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return save_sd_like(tmp_path_factory.mktemp("sd") / "sd15", "sd15", "tiny")


def _weights(folder, part):
    (path,) = (folder / part).glob("*.safetensors")
    return load_file(path)


def _audit(checkpoint, classifier, out, dtype):
    return run_audit(
        AuditConfig(
            checkpoint=checkpoint, classifier=classifier, prompts=[PROMPT], target=TARGET,
            out=out, n_boot=20, placement=Placement(device=DEVICE, dtype=dtype),
            generation=GenerationConfig(n_per_prompt=4, steps=3, shard_size=4),
        )
    )  # fmt: skip


def test_starting_noise_is_the_same_on_the_device():
    cpu = initial_latents([1, 2, 3], (4, 8, 8))
    dev = initial_latents([1, 2, 3], (4, 8, 8), device=DEVICE)
    assert dev.device.type == torch.device(DEVICE).type and torch.equal(dev.cpu(), cpu)


@needs_cuda
def test_auto_placement_picks_the_gpu_in_half_precision():
    p = Placement()
    assert p.device.type == "cuda" and p.dtype in (torch.bfloat16, torch.float16)


def test_float32_images_agree_with_the_cpu_within_kernel_tolerance(sd15, no_tf32):
    cpu = generate(load_pipeline(sd15), PROMPT, [5, 6], steps=3, guidance=2.0)
    where = Placement(device=DEVICE, dtype="float32")
    dev = generate(load_pipeline(sd15, placement=where), PROMPT, [5, 6], steps=3, guidance=2.0)
    assert dev.device.type == torch.device(DEVICE).type
    assert (dev.cpu() - cpu).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_half_precision_images_stay_close_to_float32(sd15, dtype):
    ref = generate(load_pipeline(sd15), PROMPT, [5, 6], steps=3, guidance=2.0)
    where = Placement(device=DEVICE, dtype=dtype)
    half = generate(load_pipeline(sd15, placement=where), PROMPT, [5, 6], steps=3, guidance=2.0)
    assert half.dtype == torch.float32 and torch.isfinite(half).all()
    assert (half.cpu() - ref).abs().mean() < 0.05  # rounding, not another image


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_audit_runs_on_the_device(dtype, sd15, tiny_models, tmp_path):
    result = _audit(sd15, tiny_models["classifier"], tmp_path / "a", dtype)
    placed = result.data["config"]["placement"]
    assert placed["device"].startswith(torch.device(DEVICE).type) and placed["dtype"] == dtype
    assert result.data["n_images"] == 4
    p = result.images[["p_female", "p_male"]].to_numpy()
    assert ((p >= 0) & (p <= 1)).all() and abs(p.sum(1) - 1).max() < 1e-5


def test_compiled_generation_agrees_with_eager(sd15, no_tf32):
    where = Placement(device=DEVICE, dtype="float32")
    eager = generate(load_pipeline(sd15, placement=where), PROMPT, [3, 4], steps=3, guidance=2.0)
    pipe = load_pipeline(sd15, placement=where)
    apply_speed(pipe, Speed(compile=True))
    compiled = generate(pipe, PROMPT, [3, 4], steps=3, guidance=2.0)
    assert (compiled - eager).abs().max() < 1e-3


#: Remediation options → (settings, the part whose weights must change).
OPTIONS = {
    "lora": ({}, "unet"),
    "ot-loss": ({"loss": "ot"}, "unet"),
    "text-lora": ({"lora_on": "text"}, "text_encoder"),
    "full": ({"full": True}, "unet"),
    "adjusted": ({"gradient": "adjusted", "sampling_steps": 3}, "unet"),
    "decode-checkpointing-off": ({"decode_checkpointing": False}, "unet"),
}


def _config(**kw):
    base = dict(
        steps=3, batch_per_prompt=2, sampling_steps=3, grad_steps=2, lora_rank=2,
        audit_images=2, audit_steps=2, warmup=1, lr=5e-2, lambda_clip=1.0,
        unet_checkpointing=True, checkpoint_every=2,
    )  # fmt: skip
    return RemediationConfig(**{**base, **kw})


def _remediate(models, out, cfg, dtype, progress=None, **kw):
    job = RemediationJob(
        checkpoint=models["t2medi"], classifier=models["classifier"], target=TARGET,
        prompts=[PROMPT], out=out, config=cfg, image_encoders=[(models["clip"], 1.0)],
        placement=Placement(device=DEVICE, dtype=dtype), **kw,
    )  # fmt: skip
    return remediate(job, progress=progress)


@pytest.mark.parametrize("option", list(OPTIONS))
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_each_remediation_option_does_real_work(option, dtype, tiny_models, tmp_path):
    settings, part = OPTIONS[option]
    out = tmp_path / "r"
    result = _remediate(tiny_models, out, _config(**settings), dtype)
    data = result.data
    assert data["placement"]["device"].startswith(torch.device(DEVICE).type)
    assert data["steps_done"] == 3 and data["skipped_steps"] <= MAX_SKIPPED
    assert all(v == v for v in data["curves"]["loss"][data["skipped_steps"] :])  # finite
    before, after = _weights(tiny_models["t2medi"], part), _weights(out, part)
    assert {t.dtype for t in after.values()} == {torch.float32}
    changed = [n for n, t in after.items() if not torch.equal(t, before[n])]
    assert changed, f"{option} in {dtype} changed no {part} weight"
    audit = _audit(out, tiny_models["classifier"], tmp_path / "a", dtype)
    assert audit.data["n_images"] == 4


def test_resume_on_the_device_agrees_within_the_stated_tolerance(tiny_models, tmp_path):
    cfg = _config(steps=4, ema_decay=0.0)
    _remediate(tiny_models, tmp_path / "a", cfg, "bfloat16")

    class Stop(Exception):
        pass

    def die_at_2(event):
        if event.completed == 2:
            raise Stop

    with pytest.raises(Stop):
        _remediate(tiny_models, tmp_path / "b", cfg, "bfloat16", progress=die_at_2)
    _remediate(tiny_models, tmp_path / "b", cfg, "bfloat16", resume=True)
    base = _weights(tiny_models["t2medi"], "unet")
    a, b = _weights(tmp_path / "a", "unet"), _weights(tmp_path / "b", "unet")
    moved = max(float((a[n] - base[n]).abs().max()) for n in a)
    assert moved > 0
    worst = max(float((a[n] - b[n]).abs().max()) for n in a)
    assert worst <= RESUME_TOLERANCE * moved, (worst, moved)


@needs_cuda
@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="two processes need two GPUs")
def test_two_processes_on_two_gpus(tiny_models, tmp_path):
    import subprocess
    import sys

    cmd = [
        sys.executable, "-m", "accelerate.commands.launch", "--num_processes", "2",
        "-m", "medfair_cli.main", "remediate", str(tiny_models["t2medi"]),
        "--classifier", str(tiny_models["classifier"]), "--target", "male=0.58,female=0.42",
        "--prompt", PROMPT, "--steps", "2", "--batch-per-prompt", "2", "--sampling-steps", "3",
        "--lambda-clip", "0", "--out", str(tmp_path / "r"),
    ]  # fmt: skip
    subprocess.run(cmd, check=True, timeout=300)
    doc = __import__("json").loads((tmp_path / "r" / "remediation.json").read_text())
    assert doc["processes"] == 2 and doc["steps_done"] == 2
