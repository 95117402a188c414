"""Remediation beyond medfair's own model: SD 2.x v-prediction, SDXL refused, mixed precision,
non-finite gradients skipped. All on the CPU; the same code runs on a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from medfair_audit.device import Placement
from medfair_audit.exceptions import ModelError
from medfair_audit.models.pipelines import load_pipeline
from medfair_audit.models.sd_like import save_sd_like
from medfair_audit.remediation import RemediationConfig, remediate
from medfair_audit.remediation import step as step_module
from medfair_audit.remediation.sampling import ddim_sample, decode
from medfair_audit.remediation.wiring import load_models
from medfair_audit.target import parse_target
from tests.cli.test_cli import assert_one_line_error, run

PROMPTS = ["Axial FLAIR MRI of the brain showing a glioma."]
TARGET = parse_target("male=0.58,female=0.42")
CFG = dict(
    steps=2, batch_per_prompt=2, sampling_steps=3, grad_steps=2, lora_rank=2, audit_images=2,
    audit_steps=2, checkpoint_every=1, warmup=1, lr=1e-2, lambda_clip=0.0,
)  # fmt: skip


@pytest.fixture(scope="module")
def sd_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_like")
    return {k: save_sd_like(root / k, k, "tiny") for k in ("sd2-v", "sdxl")}


def test_the_sampler_follows_a_v_prediction_pipeline_exactly(sd_like):
    pipe = load_pipeline(sd_like["sd2-v"])
    sched = __import__("diffusers").DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(3)
    assert sched.config.prediction_type == "v_prediction"
    tokens = pipe.tokenizer(
        ["", PROMPTS[0]], padding="max_length", max_length=77, return_tensors="pt"
    ).input_ids
    with torch.no_grad():
        states = pipe.text_encoder(tokens)[0]
        cond = torch.cat([states[:1].expand(2, -1, -1), states[1:].expand(2, -1, -1)])
        noise = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(3))
        ours = decode(pipe.vae, ddim_sample(pipe.unet, sched, noise, cond, guidance=2.0))
    ref = pipe(
        prompt=PROMPTS[0], num_images_per_prompt=2, latents=noise.clone(),
        num_inference_steps=3, guidance_scale=2.0, output_type="pt",
    ).images  # fmt: skip
    torch.testing.assert_close(ours, ref * 2 - 1, atol=2e-5, rtol=0)


def test_v_prediction_pipeline_is_remediated(sd_like, tiny_models, tmp_path):
    result = remediate(
        sd_like["sd2-v"], classifier=tiny_models["classifier"], target=TARGET, prompts=PROMPTS,
        out=tmp_path / "out", config=RemediationConfig(**CFG),
    )  # fmt: skip
    assert result.data["steps_done"] == 2 and result.data["skipped_steps"] == 0
    tuned = load_pipeline(tmp_path / "out")
    assert tuned.scheduler.config.prediction_type == "v_prediction"
    base = load_pipeline(sd_like["sd2-v"])
    changed = [
        n
        for n, p in tuned.unet.state_dict().items()
        if not torch.equal(p, base.unet.state_dict()[n])
    ]
    assert changed and all("attn" in n for n in changed)  # the LoRA-merged attention weights


def test_sdxl_is_refused_naming_what_is_supported(sd_like, tiny_models, tmp_path, capsys):
    with pytest.raises(ModelError, match=r"SDXL.*supported: UNet pipelines with one text encoder"):
        load_models(
            sd_like["sdxl"], tiny_models["classifier"], TARGET, PROMPTS, [],
            RemediationConfig(**CFG), Placement(device="cpu", dtype="float32"), False,
        )  # fmt: skip
    capsys.readouterr()  # the direct load's progress bars
    code, _, err = run(
        capsys, "remediate", sd_like["sdxl"], "--classifier", tiny_models["classifier"],
        "--target", "male=0.58,female=0.42", "--prompt", PROMPTS[0], "--out", tmp_path / "o",
        "--lambda-clip", "0",
    )  # fmt: skip
    assert_one_line_error(code, err, "--checkpoint", "SDXL", "epsilon or v_prediction")
    assert not (tmp_path / "o").exists()


def test_mixed_precision_keeps_a_float32_master_copy(tiny_models, tmp_path):
    bf16 = Placement(device="cpu", dtype="bfloat16")
    m = load_models(
        tiny_models["t2medi"], tiny_models["classifier"], TARGET, PROMPTS, [],
        RemediationConfig(**CFG), bf16, False,
    )  # fmt: skip
    assert m.trainable and all(p.dtype == torch.float32 for p in m.trainable.values())
    frozen = [p for n, p in m.unet.named_parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    assert next(m.classifier.primary.model.parameters()).dtype == torch.float32
    result = remediate(
        tiny_models["t2medi"], classifier=tiny_models["classifier"], target=TARGET,
        prompts=PROMPTS, out=tmp_path / "bf16", config=RemediationConfig(**CFG), placement=bf16,
    )  # fmt: skip
    data = json.loads((tmp_path / "bf16" / "remediation.json").read_text())
    assert data["placement"] == {"device": "cpu", "dtype": "bfloat16"}
    assert all(v is not None and v == v for v in data["curves"]["loss"])  # finite losses
    assert result.data["skipped_steps"] == 0
    # another precision is another run: resuming a bf16 checkpoint in float32 is refused
    with pytest.raises(Exception, match="other settings \\(dtype\\)"):
        remediate(
            tiny_models["t2medi"], classifier=tiny_models["classifier"], target=TARGET,
            prompts=PROMPTS, out=tmp_path / "bf16b", config=RemediationConfig(**CFG),
            placement=bf16, keep_checkpoints=True,
        )  # fmt: skip
        remediate(
            tiny_models["t2medi"], classifier=tiny_models["classifier"], target=TARGET,
            prompts=PROMPTS, out=tmp_path / "bf16b", config=RemediationConfig(**CFG),
            placement=Placement(device="cpu", dtype="float32"), resume=True, overwrite=True,
        )  # fmt: skip


def test_a_step_with_non_finite_gradients_is_skipped_and_logged(tiny_models, tmp_path, monkeypatch):
    real = step_module.batch_losses
    calls = {"n": 0}

    def poisoned(*args, **kw):
        terms = real(*args, **kw)
        calls["n"] += 1
        if calls["n"] == 1:  # the first step's loss (and so its gradients) is NaN
            terms["loss"] = terms["loss"] * float("nan")
        return terms

    monkeypatch.setattr(step_module, "batch_losses", poisoned)
    cfg = RemediationConfig(**{**CFG, "steps": 1, "ema_decay": 0.9})
    result = remediate(
        tiny_models["t2medi"], classifier=tiny_models["classifier"], target=TARGET,
        prompts=PROMPTS, out=tmp_path / "nan", config=cfg,
    )  # fmt: skip
    assert result.data["skipped_steps"] == 1 and result.data["curves"]["skipped"] == [True]
    assert result.data["curves"]["grad_norm"] == [None]
    base = load_pipeline(tiny_models["t2medi"]).unet.state_dict()
    tuned = load_pipeline(tmp_path / "nan").unet.state_dict()
    # no update was applied: the merged LoRA is its initialisation (B = 0), i.e. the original
    assert all(torch.allclose(tuned[n], base[n], atol=1e-6) for n in base)
