"""The training sampler: equal to the pipeline, gradients only where they belong."""

from __future__ import annotations

import pytest
import torch

from medfair_audit.models.t2medi import encode_prompts, load_pipeline
from medfair_audit.remediation import ddim_sample

PROMPT = "Axial FLAIR MRI of the brain showing a glioma."


@pytest.fixture(scope="module")
def pipe(tiny_models):
    from diffusers import DDIMScheduler

    p = load_pipeline(tiny_models["t2medi"])
    p.scheduler = DDIMScheduler.from_config(p.scheduler.config)
    return p


def _setup(pipe, n=2, steps=4):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    states = encode_prompts(pipe.text_encoder, pipe.tokenizer, [PROMPT, ""])
    cond = torch.cat([states[1:].expand(n, -1, -1), states[:1].expand(n, -1, -1)])
    size = pipe.unet.config.sample_size
    noise = torch.randn(
        n, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(5)
    )
    return sched, cond, noise


def test_sampler_equals_the_diffusers_pipeline(pipe):
    sched, cond, noise = _setup(pipe)
    with torch.no_grad():
        ours = ddim_sample(pipe.unet, sched, noise, cond, guidance=2.5)
        ours = pipe.vae.decode(ours / pipe.vae.config.scaling_factor).sample.clamp(-1, 1)
    ref = pipe(
        prompt=PROMPT,
        num_images_per_prompt=2,
        latents=noise.clone(),
        num_inference_steps=4,
        guidance_scale=2.5,
        output_type="pt",
    ).images
    torch.testing.assert_close(ours, ref * 2 - 1, atol=2e-5, rtol=0)


def _grad(pipe, **kw):
    sched, cond, noise = _setup(pipe)
    pipe.unet.zero_grad(set_to_none=True)
    pipe.unet.requires_grad_(True)
    try:
        out = ddim_sample(pipe.unet, sched, noise, cond, guidance=2.0, **kw)
        out.square().mean().backward()
        return {n: p.grad.clone() for n, p in pipe.unet.named_parameters() if p.grad is not None}
    finally:
        pipe.unet.zero_grad(set_to_none=True)
        pipe.unet.requires_grad_(False)


def test_gradient_checkpointing_gives_the_same_gradients(pipe):
    a = _grad(pipe, grad_steps=2, checkpointing=True)
    b = _grad(pipe, grad_steps=2, checkpointing=False)
    assert a.keys() == b.keys() and a
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=1e-6, rtol=1e-4)


def test_gradients_flow_through_the_last_k_steps_only(pipe):
    sched, cond, noise = _setup(pipe)
    out = ddim_sample(pipe.unet, sched, noise, cond, guidance=2.0, grad_steps=0)
    assert not out.requires_grad  # K = 0: nothing to differentiate
    one, two = _grad(pipe, grad_steps=1), _grad(pipe, grad_steps=2)
    key = next(iter(one))
    assert not torch.allclose(one[key], two[key])  # the second-to-last step contributes
    # With K = 1 the per-step detached variant is the same computation ...
    torch.testing.assert_close(_grad(pipe, grad_steps=1, detach_per_step=True)[key], one[key])
    # ... with K = 2 it drops the path through the later step's input.
    assert not torch.allclose(_grad(pipe, grad_steps=2, detach_per_step=True)[key], two[key])
