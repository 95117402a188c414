"""Audits of Stable-Diffusion-architecture pipelines (SD 1.x, SD 2.x v-prediction, SDXL).

The pipelines are the tiny random-weight builds of the scale fixture (:mod:`...models.sd_like`):
the same classes and folder layout as a user's SD fine-tune, in seconds on a CPU.
"""

from __future__ import annotations

import json

import pytest
import torch

from medfair_audit import AuditConfig, run_audit
from medfair_audit.config import Placement, Speed
from medfair_audit.generation import GenerationConfig, image_seed
from medfair_audit.models.pipelines import (
    apply_speed,
    fuse_qkv,
    generate,
    load_pipeline,
    pipeline_info,
)
from medfair_audit.models.sd_like import save_sd_like
from medfair_audit.target import parse_target
from tests.cli.test_cli import assert_one_line_error, run

KINDS = {
    "sd15": ("StableDiffusionPipeline", "stable-diffusion", "epsilon", 1),
    "sd2-v": ("StableDiffusionPipeline", "stable-diffusion", "v_prediction", 1),
    "sdxl": ("StableDiffusionXLPipeline", "stable-diffusion-xl", "epsilon", 2),
}


@pytest.fixture(scope="module")
def sd_like(tmp_path_factory):
    root = tmp_path_factory.mktemp("sd_like")
    return {kind: save_sd_like(root / kind, kind, "tiny") for kind in KINDS}


def _config(checkpoint, classifier, out, **kw):
    return AuditConfig(
        checkpoint=checkpoint,
        classifier=classifier,
        prompts=["Axial FLAIR MRI of the brain showing a glioma."],
        target=parse_target("male=0.58,female=0.42"),
        out=out,
        generation=GenerationConfig(n_per_prompt=4, seed=2, steps=2, shard_size=2),
        n_boot=20,
        **kw,
    )


@pytest.mark.parametrize("kind", list(KINDS))
def test_audit_runs_on_every_pipeline_family_and_says_which(kind, sd_like, tiny_models, tmp_path):
    result = run_audit(_config(sd_like[kind], tiny_models["classifier"], tmp_path / "a"))
    info = json.loads((tmp_path / "a" / "audit.json").read_text())["config"]["pipeline"]
    cls, family, prediction, encoders = KINDS[kind]
    assert (info["class"], info["family"]) == (cls, family)
    assert (info["prediction_type"], info["text_encoders"]) == (prediction, encoders)
    assert info["resolution"] == [32, 32] and info["latent_shape"] == [4, 16, 16]
    assert result.data["n_images"] == 4
    # the classifier (1 channel, 64 px) read the 3-channel 32 px images: probabilities valid
    p = result.images[["p_female", "p_male"]].to_numpy()
    assert ((p >= 0) & (p <= 1)).all() and abs(p.sum(1) - 1).max() < 1e-6


@pytest.mark.parametrize("kind", list(KINDS))
def test_generate_starts_from_the_noise_diffusers_draws_from_cpu_generators(kind, sd_like):
    """Passing our latents equals diffusers' own per-image CPU generators, bit for bit."""
    pipe = load_pipeline(sd_like[kind])
    seeds = [image_seed(3, 0, i) for i in range(3)]
    ours = generate(pipe, "brain MRI", seeds, steps=2, guidance=2.0)
    with torch.inference_mode():
        ref = pipe(
            prompt="brain MRI",
            num_images_per_prompt=3,
            generator=[torch.Generator().manual_seed(s) for s in seeds],
            num_inference_steps=2,
            guidance_scale=2.0,
            output_type="pt",
        ).images
    assert torch.equal(ours, ref.float() * 2 - 1)


def test_v_prediction_pipeline_is_recognised_from_its_scheduler(sd_like):
    assert pipeline_info(load_pipeline(sd_like["sd2-v"]))["prediction_type"] == "v_prediction"


def test_half_precision_places_the_pipeline_but_keeps_the_classifier_float32(
    sd_like, tiny_models, tmp_path
):
    bf16 = Placement(device="cpu", dtype="bfloat16")
    pipe = load_pipeline(sd_like["sd15"], placement=bf16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.vae.dtype == torch.bfloat16
    images = generate(pipe, "brain MRI", [1, 2], steps=2, guidance=2.0)
    assert images.dtype == torch.float32  # handed on in float32
    ref = generate(load_pipeline(sd_like["sd15"]), "brain MRI", [1, 2], steps=2, guidance=2.0)
    assert (images - ref).abs().max() < 0.1  # same noise, bf16 kernels: close, not equal
    out = tmp_path / "bf16"
    result = run_audit(_config(sd_like["sd15"], tiny_models["classifier"], out, placement=bf16))
    assert result.data["config"]["placement"] == {"device": "cpu", "dtype": "bfloat16"}
    from medfair_audit.models.classifier import SubgroupClassifier

    clf = SubgroupClassifier.from_pretrained(tiny_models["classifier"])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert clf.logits(images).dtype == torch.float32  # autocast does not reach it
    # a float32 audit into the same folder redraws: shards record their dtype (the placement is
    # named: the default would pick a GPU in half precision where there is one)
    f32 = Placement(device="cpu", dtype="float32")
    again = run_audit(
        _config(sd_like["sd15"], tiny_models["classifier"], out, overwrite=True, placement=f32)
    )
    assert again.data["config"]["placement"]["dtype"] == "float32"
    assert not torch.equal(
        torch.tensor(again.images["p_male"].to_numpy()),
        torch.tensor(result.images["p_male"].to_numpy()),
    )


def test_channels_last_and_vae_slicing_change_nothing_beyond_kernel_tolerance(sd_like):
    ref = generate(load_pipeline(sd_like["sd15"]), "brain MRI", [4, 5], steps=2, guidance=2.0)
    pipe = load_pipeline(sd_like["sd15"])
    apply_speed(pipe, Speed(channels_last=True, vae_slicing=True, vae_tiling=True))
    assert pipe.vae.use_slicing and pipe.vae.use_tiling
    got = generate(pipe, "brain MRI", [4, 5], steps=2, guidance=2.0)
    assert torch.allclose(got, ref, atol=1e-4)


def test_fused_attention_projections_change_nothing_beyond_kernel_tolerance(sd_like):
    ref = generate(load_pipeline(sd_like["sd15"]), "brain MRI", [4, 5], steps=2, guidance=2.0)
    pipe = load_pipeline(sd_like["sd15"])
    assert fuse_qkv(pipe)
    attention = [m for m in pipe.unet.modules() if hasattr(m, "fused_projections")]
    assert attention and all(m.fused_projections for m in attention)
    got = generate(pipe, "brain MRI", [4, 5], steps=2, guidance=2.0)
    assert torch.allclose(got, ref, atol=1e-4)


def test_a_pipeline_that_refuses_fused_projections_is_left_as_it_was():
    class Refuses:  # diffusers' answer for a UNet with added key/value projections
        unet = torch.nn.Identity()

        def fuse_qkv_projections(self, **_):
            raise ValueError("`fuse_qkv_projections()` is not supported for models having added KV")

    assert fuse_qkv(Refuses()) is False
    assert fuse_qkv(object()) is False  # no such method at all


@pytest.mark.slow
def test_compiled_pipeline_agrees_with_the_eager_one_and_a_smaller_batch_does_not_recompile(
    sd_like,
):
    from torch._dynamo.utils import counters

    eager = load_pipeline(sd_like["sd15"])
    ref = generate(eager, "brain MRI", [4, 5, 6], steps=2, guidance=2.0)
    pipe = load_pipeline(sd_like["sd15"])
    apply_speed(pipe, Speed(compile=True))
    got = generate(pipe, "brain MRI", [4, 5, 6], steps=2, guidance=2.0)
    assert torch.allclose(got, ref, atol=1e-4)
    graphs = counters["stats"]["unique_graphs"]
    last = generate(pipe, "brain MRI", [6], steps=2, guidance=2.0)  # a prompt's last shard
    assert counters["stats"]["unique_graphs"] == graphs  # padded to 3: the same graphs
    assert last.shape == (1, *ref.shape[1:])
    assert torch.allclose(last, ref[2:], atol=1e-4)


def test_cli_refuses_an_unavailable_device_before_writing_anything(capsys, tiny_models, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    args = [
        "audit", tiny_models["t2medi"], "--classifier", tiny_models["classifier"],
        "--target", "male=0.58,female=0.42", "--prompt", "brain MRI", "--out", tmp_path / "o",
    ]  # fmt: skip
    code, _, err = run(capsys, *args, "--device", "cuda:1")
    assert_one_line_error(code, err, "--device", "not available")
    code, _, err = run(capsys, *args, "--dtype", "half")
    assert_one_line_error(code, err, "--dtype", "expected auto, float32")
    assert not (tmp_path / "o").exists()


def test_prompts_longer_than_the_text_encoder_reads_are_warned_about_and_recorded(
    tiny_models, tmp_path
):
    pipe = load_pipeline(tiny_models["t2medi"])
    limit = pipe.tokenizer.model_max_length
    long = "Axial FLAIR MRI of the brain showing a glioma " + "with edema " * limit
    prompts = [long, "Axial T1-weighted MRI of the brain."]
    result = run_audit(
        AuditConfig(
            checkpoint=tiny_models["t2medi"], classifier=tiny_models["classifier"],
            prompts=prompts, target=parse_target("male=0.58,female=0.42"), out=tmp_path / "a",
            generation=GenerationConfig(n_per_prompt=2, seed=2, steps=2, shard_size=2), n_boot=20,
        )
    )  # fmt: skip
    doc = json.loads((tmp_path / "a" / "audit.json").read_text())
    (cut,) = doc["prompts_truncated"]
    assert cut["prompt"] == 0 and cut["limit"] == limit and cut["tokens"] > limit
    assert long.lower().startswith(cut["kept"].split(" with")[0].rstrip())
    assert [w for w in result.data["warnings"] if w.startswith("prompt 0 has")]
    assert not [w for w in result.data["warnings"] if w.startswith("prompt 1 has")]
