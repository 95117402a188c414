"""The same code on a CUDA GPU: placement, agreement with the CPU, mixed-precision remediation.

Skipped on machines without CUDA (CI); run by ``scripts/gpu_check.sh`` where a GPU is at hand.
"""

from __future__ import annotations

import pytest
import torch

from medfair_audit import AuditConfig, run_audit
from medfair_audit.device import Placement, initial_latents
from medfair_audit.generation import GenerationConfig
from medfair_audit.models.pipelines import generate, load_pipeline
from medfair_audit.models.sd_like import save_sd_like
from medfair_audit.remediation import RemediationConfig, remediate
from medfair_audit.target import parse_target

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
TARGET = parse_target("male=0.58,female=0.42")
PROMPT = "Axial FLAIR MRI of the brain showing a glioma."


@pytest.fixture(scope="module")
def sd15(tmp_path_factory):
    return save_sd_like(tmp_path_factory.mktemp("sd") / "sd15", "sd15", "tiny")


def test_starting_noise_is_the_same_on_the_gpu():
    cpu = initial_latents([1, 2, 3], (4, 8, 8))
    gpu = initial_latents([1, 2, 3], (4, 8, 8), device="cuda")
    assert gpu.device.type == "cuda" and torch.equal(gpu.cpu(), cpu)


def test_auto_placement_picks_the_gpu_in_half_precision():
    p = Placement()
    assert p.device.type == "cuda" and p.dtype in (torch.bfloat16, torch.float16)


def test_gpu_float32_images_agree_with_the_cpu_within_kernel_tolerance(sd15):
    cpu = generate(load_pipeline(sd15), PROMPT, [5, 6], steps=3, guidance=2.0)
    where = Placement(device="cuda", dtype="float32")
    gpu = generate(load_pipeline(sd15, placement=where), PROMPT, [5, 6], steps=3, guidance=2.0)
    assert gpu.device.type == "cuda"
    assert (gpu.cpu() - cpu).abs().max() < 1e-3


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_audit_runs_on_the_gpu(dtype, sd15, tiny_models, tmp_path):
    result = run_audit(
        AuditConfig(
            checkpoint=sd15, classifier=tiny_models["classifier"], prompts=[PROMPT],
            target=TARGET, out=tmp_path / "a", n_boot=20,
            generation=GenerationConfig(n_per_prompt=8, steps=3, shard_size=4),
            placement=Placement(device="cuda", dtype=dtype),
        )
    )  # fmt: skip
    assert result.data["config"]["placement"]["device"].startswith("cuda")
    assert result.data["n_images"] == 8


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_remediation_runs_on_the_gpu(dtype, tiny_models, tmp_path):
    cfg = RemediationConfig(
        steps=3, batch_per_prompt=2, sampling_steps=3, grad_steps=2, lora_rank=2,
        audit_images=2, audit_steps=2, warmup=1, lambda_clip=1.0, unet_checkpointing=True,
    )  # fmt: skip
    result = remediate(
        tiny_models["t2medi"], classifier=tiny_models["classifier"], target=TARGET,
        prompts=[PROMPT], out=tmp_path / "r", config=cfg,
        image_encoders=[(tiny_models["clip"], 1.0)],
        placement=Placement(device="cuda", dtype=dtype),
    )  # fmt: skip
    assert result.data["placement"]["device"].startswith("cuda")
    assert result.data["steps_done"] == 3
