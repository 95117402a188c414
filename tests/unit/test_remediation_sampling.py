"""The training sampler: equal to the pipeline, gradients only where they belong."""

from __future__ import annotations

import pytest
import torch

from medfair_audit.models.t2medi import encode_prompts, load_pipeline
from medfair_audit.remediation import adjusted_coefficients, ddim_sample

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


class _TableUNet(torch.nn.Module):
    """A toy 'UNet' whose noise prediction at timestep t is a free parameter e_t."""

    def __init__(self, timesteps, shape):
        super().__init__()
        self.e = torch.nn.ParameterDict(
            {str(int(t)): torch.nn.Parameter(0.1 * torch.ones(shape)) for t in timesteps}
        )

    def forward(self, x, t, encoder_hidden_states=None):
        from types import SimpleNamespace

        return SimpleNamespace(sample=self.e[str(int(t))].expand_as(x) + 0 * x)


def _toy(steps=6):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear")
    sched.set_timesteps(steps)
    unet = _TableUNet(sched.timesteps, (1, 2, 3, 3))
    x = torch.randn(1, 2, 3, 3, generator=torch.Generator().manual_seed(0))
    cond = torch.zeros(2, 1, 4)
    return sched, unet, x, cond


def _toy_grads(gradient, **kw):
    sched, unet, x, cond = _toy(**kw)
    out = ddim_sample(
        unet, sched, x, cond, guidance=1.0, gradient=gradient, grad_steps=len(sched.timesteps)
    )
    out.sum().backward()
    return sched, {k: p.grad.clone() for k, p in unet.e.items()}


def test_adjusted_dft_rescales_each_step_by_shen_et_al_formula():
    """The toy UNet ignores its input, so per-step detach changes nothing and the only difference
    from the plain chain is the gradient scale of step t: √ᾱ_t √(1 − ᾱ_t) / (1 − α_t),
    normalised to geometric mean 1 over the steps."""
    sched, plain = _toy_grads("last-k")
    _, adjusted = _toy_grads("adjusted")
    t = sched.timesteps.long()
    ac, a = sched.alphas_cumprod[t].double(), sched.alphas[t].double()
    coef = ac.sqrt() * (1 - ac).sqrt() / (1 - a)
    coef = coef / coef.log().mean().exp()
    assert coef.log().mean().abs() < 1e-12 and coef.max() / coef.min() > 2  # not a no-op
    for c, step in zip(coef.tolist(), t.tolist(), strict=True):
        ratio = adjusted[str(step)] / plain[str(step)]
        torch.testing.assert_close(ratio, torch.full_like(ratio, c), rtol=1e-4, atol=0)
    torch.testing.assert_close(torch.tensor(adjusted_coefficients(sched)), coef, rtol=1e-10, atol=0)


def test_adjusted_dft_detaches_the_unet_input_and_can_use_a_subset(pipe):
    one = _grad(pipe, grad_steps=1)
    key = next(iter(one))
    # Only the last step: detaching its input changes nothing, the scale is that step's.
    sched, _, _ = _setup(pipe)
    last = float(adjusted_coefficients(sched)[-1])
    sub = _grad(pipe, grad_steps=[3], gradient="adjusted")
    torch.testing.assert_close(sub[key], last * one[key], rtol=1e-4, atol=1e-7)
    # All steps: differs from the full graph through the same steps (no path through inputs).
    assert not torch.allclose(
        _grad(pipe, grad_steps=4, gradient="adjusted")[key], _grad(pipe, grad_steps=4)[key]
    )


def _saved_bytes(pipe, steps, gradient, checkpointing):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps)
    _, cond, noise = _setup(pipe)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    pipe.unet.requires_grad_(True)
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            ddim_sample(
                pipe.unet, sched, noise, cond, guidance=2.0, grad_steps=steps,
                gradient=gradient, checkpointing=checkpointing,
            )  # fmt: skip
    finally:
        pipe.unet.requires_grad_(False)
    return total


def test_adjusted_dft_memory_is_flat_in_the_number_of_steps_with_checkpointing(pipe):
    """Saved activations: with checkpointing each extra gradient step keeps only its inputs
    (a few latent-sized tensors), a small fraction of what one un-checkpointed step keeps."""
    one_step = _saved_bytes(pipe, 2, "adjusted", False) - _saved_bytes(pipe, 1, "adjusted", False)
    four = _saved_bytes(pipe, 4, "adjusted", True)
    eight = _saved_bytes(pipe, 8, "adjusted", True)
    assert one_step > 0
    assert (eight - four) / 4 < 0.2 * one_step


def _decode_and_grad(pipe, latents, checkpointed, dtype=None):
    from medfair_audit.remediation.sampling import decode

    z = latents.clone().requires_grad_(True)
    saved = 0

    def pack(t):
        nonlocal saved
        saved += t.numel() * t.element_size()
        return t

    with (
        torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None),
        torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t),
    ):
        images = decode(pipe.vae, z, checkpointed=checkpointed)
    weights = torch.linspace(-1, 1, images[0].numel()).reshape(images.shape[1:])
    (images.float() * weights).sum().backward()
    return images.detach(), z.grad, saved


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_checkpointed_decode_gives_the_same_images_and_gradients(pipe, dtype):
    size = pipe.unet.config.sample_size
    latents = torch.randn(3, 4, size, size, generator=torch.Generator().manual_seed(2))
    plain, g_plain, kept_plain = _decode_and_grad(pipe, latents, False, dtype)
    sliced, g_sliced, kept_sliced = _decode_and_grad(pipe, latents, True, dtype)
    assert torch.equal(plain, sliced)  # the forward is the batched decode itself
    assert g_plain.abs().max() > 0
    tol = 1e-5 if dtype is None else 2e-2  # per-image kernels round differently
    torch.testing.assert_close(g_sliced, g_plain, atol=tol * g_plain.abs().max(), rtol=0)
    assert kept_sliced == latents.numel() * latents.element_size()  # only its input is kept
    assert kept_plain > 20 * kept_sliced


def test_checkpointed_decode_memory_does_not_grow_with_the_batch(pipe):
    size = pipe.unet.config.sample_size
    kept = {}
    for n in (2, 8):
        latents = torch.randn(n, 4, size, size, generator=torch.Generator().manual_seed(n))
        kept[n] = [_decode_and_grad(pipe, latents, c)[2] for c in (False, True)]
    assert kept[8][0] > 3.5 * kept[2][0]  # the plain decode keeps activations per image
    assert kept[8][1] == 4 * kept[2][1]  # checkpointed: the latents only (4 floats per pixel)
    assert kept[8][1] < 0.05 * kept[8][0]
