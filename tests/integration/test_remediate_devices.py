"""Remediation beyond medfair's own model: SD 2.x v-prediction, SDXL refused, mixed precision,
non-finite gradients skipped. All on the CPU; the same code runs on a GPU."""

from __future__ import annotations

import json

import pytest
import torch

from medfair_audit.config import Placement
from medfair_audit.exceptions import ModelError
from medfair_audit.models.pipelines import load_pipeline
from medfair_audit.models.sd_like import save_sd_like
from medfair_audit.remediation import RemediationConfig, RemediationJob, remediate
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


def _tune(models, checkpoint, out, config=None, **kw):
    """Remediate with the tiny classifier, target and prompts (``CFG`` unless ``config``)."""
    job = RemediationJob(
        checkpoint=checkpoint, classifier=models["classifier"], target=TARGET, prompts=PROMPTS,
        out=out, config=config or RemediationConfig(**CFG), **kw,
    )  # fmt: skip
    return remediate(job)


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
    result = _tune(tiny_models, sd_like["sd2-v"], tmp_path / "out")
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
    assert_one_line_error(code, err, "CKPT", "SDXL", "epsilon or v_prediction")
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
    result = _tune(tiny_models, tiny_models["t2medi"], tmp_path / "bf16", placement=bf16)
    data = json.loads((tmp_path / "bf16" / "remediation.json").read_text())
    assert data["placement"] == {"device": "cpu", "dtype": "bfloat16"}
    assert all(v is not None and v == v for v in data["curves"]["loss"])  # finite losses
    assert result.data["skipped_steps"] == 0
    # another precision is another run: resuming a bf16 checkpoint in float32 is refused
    with pytest.raises(Exception, match="other settings \\(dtype\\)"):
        _tune(
            tiny_models,
            tiny_models["t2medi"],
            tmp_path / "bf16b",
            placement=bf16,
            keep_checkpoints=True,
        )
        _tune(
            tiny_models,
            tiny_models["t2medi"],
            tmp_path / "bf16b",
            placement=Placement(device="cpu", dtype="float32"),
            resume=True,
            overwrite=True,
        )


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
    result = _tune(tiny_models, tiny_models["t2medi"], tmp_path / "nan", config=cfg)
    assert result.data["skipped_steps"] == 1 and result.data["curves"]["skipped"] == [True]
    assert result.data["curves"]["grad_norm"] == [None]
    base = load_pipeline(tiny_models["t2medi"]).unet.state_dict()
    tuned = load_pipeline(tmp_path / "nan").unet.state_dict()
    # no update was applied: the merged LoRA is its initialisation (B = 0), i.e. the original
    assert all(torch.allclose(tuned[n], base[n], atol=1e-6) for n in base)


@pytest.fixture(scope="module")
def half_saved(tmp_path_factory):
    """The tiny SD 1.5-like fixture saved in float16 and in bfloat16, and in float32 (same seed)."""
    root = tmp_path_factory.mktemp("half_saved")
    dtypes = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    return {k: save_sd_like(root / k, "sd15", "tiny", dtype=d) for k, d in dtypes.items()}


def _stored(folder, part="unet"):
    from safetensors.torch import load_file

    (path,) = (folder / part).glob("*.safetensors")
    return load_file(path)


@pytest.mark.parametrize("saved", ["float16", "bfloat16"])
@pytest.mark.parametrize("want", ["float32", "float16", "bfloat16"])
def test_a_half_saved_pipeline_loads_every_component_in_the_requested_dtype(
    half_saved, saved, want, tiny_models, tmp_path
):
    from medfair_audit import AuditConfig, GenerationConfig, run_audit

    assert next(iter(_stored(half_saved[saved]).values())).dtype == getattr(torch, saved)
    placement = Placement(device="cpu", dtype=want)
    pipe = load_pipeline(half_saved[saved], placement=placement)
    for name, part in pipe.components.items():
        if isinstance(part, torch.nn.Module):
            assert {p.dtype for p in part.parameters()} == {getattr(torch, want)}, name
    result = run_audit(
        AuditConfig(
            checkpoint=half_saved[saved], classifier=tiny_models["classifier"],
            prompts=PROMPTS, target=TARGET, out=tmp_path / "a", placement=placement,
            generation=GenerationConfig(n_per_prompt=2, seed=1, steps=2, shard_size=2),
            n_boot=20,
        )
    )  # fmt: skip
    assert result.data["n_images"] == 2
    assert result.data["config"]["placement"]["dtype"] == want


@pytest.mark.parametrize("saved", ["float16", "bfloat16"])
@pytest.mark.parametrize("want", ["float32", "float16", "bfloat16"])
def test_a_half_saved_pipeline_is_remediated_and_saved_in_float32(
    half_saved, saved, want, tiny_models, tmp_path
):
    out = tmp_path / "out"
    result = _tune(
        tiny_models, half_saved[saved], out, placement=Placement(device="cpu", dtype=want)
    )
    assert result.data["steps_done"] == 2 and result.data["skipped_steps"] < 2
    tuned, stored = _stored(out), _stored(half_saved[saved])
    assert {t.dtype for t in tuned.values()} == {torch.float32}
    changed = [n for n, t in tuned.items() if not torch.equal(t, stored[n].float())]
    assert changed and all("attn" in n for n in changed)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_a_half_precision_remediation_writes_the_stored_weights_plus_a_float32_update(
    half_saved, dtype, tiny_models, tmp_path
):
    from safetensors.torch import load_file

    out = tmp_path / "out"
    result = _tune(
        tiny_models, half_saved["float32"], out, placement=Placement(device="cpu", dtype=dtype)
    )
    assert result.data["placement"]["dtype"] == dtype and result.data["skipped_steps"] < 2
    stored = _stored(half_saved["float32"])
    for part in ("unet", "vae", "text_encoder"):
        assert {t.dtype for t in _stored(out, part).values()} == {torch.float32}, part
    assert all(torch.equal(t, s) for t, s in zip(
        _stored(out, "vae").values(), _stored(half_saved["float32"], "vae").values(), strict=True
    ))  # fmt: skip
    tuned = _stored(out)
    # weights LoRA does not touch are the stored float32 ones, bit for bit (not rounded) ...
    untouched = [n for n in stored if "to_q" not in n and "to_k" not in n and "to_v" not in n
                 and "to_out" not in n]  # fmt: skip
    assert untouched and all(torch.equal(tuned[n], stored[n]) for n in untouched)
    # ... and the tuned ones are stored + B·A·scale of the saved float32 adapters
    (path,) = (out / "adapters").glob("*.safetensors")
    layers = load_file(path)
    down = {k.removesuffix(".lora.down.weight").removeprefix("unet."): v
            for k, v in layers.items() if k.endswith(".lora.down.weight")}  # fmt: skip
    assert down and {v.dtype for v in layers.values()} == {torch.float32}
    scale = CFG.get("lora_alpha", CFG["lora_rank"]) / CFG["lora_rank"]
    for name, a in down.items():
        b = layers[f"unet.{name}.lora.up.weight"]
        delta = tuned[f"{name}.weight"] - stored[f"{name}.weight"]
        torch.testing.assert_close(delta, (b @ a) * scale, atol=1e-6, rtol=1e-5)
    assert any(float(layers[k].abs().max()) > 0 for k in layers if "lora.up" in k)  # it moved


def test_full_tuning_in_half_precision_starts_its_master_copy_from_the_stored_weights(
    half_saved, tiny_models
):
    m = load_models(
        half_saved["float32"], tiny_models["classifier"], TARGET, PROMPTS, [],
        RemediationConfig(**{**CFG, "full": True}), Placement(device="cpu", dtype="bfloat16"),
        False,
    )  # fmt: skip
    stored = _stored(half_saved["float32"])
    tuned = {n: p for n, p in m.unet.state_dict().items()}
    assert all(torch.equal(tuned[n], stored[n]) for n in stored)  # float32, not rounded
    assert next(m.original_unet.parameters()).dtype == torch.bfloat16
    assert m.pipe.vae.dtype == torch.bfloat16 and m.pipe.text_encoder.dtype == torch.bfloat16


def test_decode_checkpointing_changes_the_memory_not_the_run(tiny_models, tmp_path):
    runs = {}
    for on in (False, True):
        cfg = RemediationConfig(**{**CFG, "decode_checkpointing": on})
        runs[on] = _tune(tiny_models, tiny_models["t2medi"], tmp_path / str(on), config=cfg).data
    off, on = runs[False]["curves"]["loss"], runs[True]["curves"]["loss"]
    assert off[0] == on[0]  # the first step's images are the same
    assert off != [0.0] * len(off)
    assert on == pytest.approx(off, rel=1e-4, abs=1e-6)
    key = RemediationConfig(**CFG).resume_key(1)
    assert RemediationConfig(**{**CFG, "decode_checkpointing": True}).resume_key(1) == key
    m = load_models(
        tiny_models["t2medi"], tiny_models["classifier"], TARGET, PROMPTS, [],
        RemediationConfig(**CFG), Placement(device="cpu", dtype="float32"), False,
    )  # fmt: skip
    assert m.decode_checkpointing is False  # default on the CPU: off (bit-identical runs)
