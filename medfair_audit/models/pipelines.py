"""Any local diffusers text-to-image pipeline: loading, placement, what it is, and drawing images.

A folder in the MONAI bundle layout (``configs/inference.json``) is loaded as a 3-D latent
diffusion model instead (:class:`~medfair_audit.models.monai_ldm.MonaiLatentDiffusion`), with the
same functions: the audit draws volumes from it as it draws images from a pipeline.

medfair's own T2MedI folder is a Stable Diffusion pipeline, so the same code audits a user's
SD 1.x, SD 2.x (ε- or v-prediction) or SDXL fine-tune. :func:`load_pipeline` puts the whole
pipeline on one device in the generation dtype; :func:`pipeline_info` says what was found;
:func:`generate` draws images whose starting noise comes from per-image CPU generators (see
:func:`medfair_audit.device.initial_latents`), so a seed means the same image on any device,
batch size or process count.
"""

from __future__ import annotations

import json
import os
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import Placement, Speed
from ..device import initial_latents
from ..exceptions import ConfigError, ModelError
from ._loading import check_no_pickle, load_pretrained
from .monai_ldm import MonaiLatentDiffusion, is_monai_bundle

__all__ = [
    "apply_speed",
    "fuse_qkv",
    "generate",
    "latent_shape",
    "load_pipeline",
    "pipeline_info",
    "save_pipeline",
    "truncated_prompts",
]

FAMILIES = {
    "StableDiffusionPipeline": "stable-diffusion",
    "StableDiffusionXLPipeline": "stable-diffusion-xl",
}


#: Compiled pipelines and the largest batch each has drawn: a smaller batch (a prompt's last,
#: partial shard) is padded to that size, so the compiled graphs see one shape and never
#: recompile (a recompile of an SD-sized UNet costs about as long as the first compile).
_COMPILED_BATCH: weakref.WeakKeyDictionary[Any, int] = weakref.WeakKeyDictionary()


def apply_speed(pipe: Any, speed: Speed) -> None:
    """Apply the chosen speed-ups (:class:`~medfair_audit.config.Speed`) to ``pipe`` in place.

    ``compile`` follows diffusers' recipe for ``torch.compile``: the attention's query, key and
    value projections are fused into one matrix product first (where the pipeline supports it),
    then the UNet and the VAE decoder are compiled.
    """
    vae = getattr(pipe, "vae", None)
    if speed.channels_last:
        for part in (getattr(pipe, "unet", None), vae):
            if part is not None:
                part.to(memory_format=torch.channels_last)
    if vae is not None and speed.vae_slicing:
        vae.enable_slicing()
    if vae is not None and speed.vae_tiling:
        vae.enable_tiling()
    if speed.compile:
        fuse_qkv(pipe)
        if getattr(pipe, "unet", None) is not None:
            pipe.unet = torch.compile(pipe.unet)
        if vae is not None:
            vae.decoder = torch.compile(vae.decoder)
        _COMPILED_BATCH[pipe] = 0


def fuse_qkv(pipe: Any) -> bool:
    """Fuse the attention projections of the UNet (and of an ``AutoencoderKL``).

    One matrix product instead of three, the same arithmetic. Returns whether the pipeline
    supported it; one that does not (no such method, or a UNet with added key/value
    projections, which diffusers refuses before changing anything) is left as it was.
    """
    if not hasattr(pipe, "fuse_qkv_projections") or getattr(pipe, "unet", None) is None:
        return False
    from diffusers import AutoencoderKL

    try:
        pipe.fuse_qkv_projections(
            unet=True, vae=isinstance(getattr(pipe, "vae", None), AutoencoderKL)
        )
    except ValueError:
        return False
    return True


def load_pipeline(
    path: str | os.PathLike[str],
    *,
    trust_pickle: bool = False,
    param: str = "checkpoint",
    placement: Placement | None = None,
) -> Any:
    """Load a local diffusers text-to-image pipeline folder onto one device.

    Args:
        path: Folder with ``model_index.json`` (medfair's T2MedI, an SD 1.x/2.x or SDXL
            fine-tune, or any UNet text-to-image pipeline).
        trust_pickle: Allow ``.bin``/``.ckpt`` weights (loading them runs code); safetensors
            are still preferred where a component has them.
        param: Argument name used in error messages.
        placement: Device and dtype (default: the CPU in ``float32``). Every component is
            loaded in this dtype, whatever dtype its weights were saved in.

    Raises:
        ModelError: Not a pipeline folder, no UNet, pickle weights without ``trust_pickle``.
    """
    from diffusers import DiffusionPipeline

    placement = placement or Placement(device="cpu", dtype="float32")
    if is_monai_bundle(path):  # its .pt weights load with weights_only=True, which refuses code
        return MonaiLatentDiffusion.from_bundle(path, placement=placement, param=param)
    folder = check_no_pickle(path, trust_pickle=trust_pickle, param=param)
    index = folder / "model_index.json"
    if not index.is_file():
        raise ModelError(
            f"'{folder}' is not a diffusers pipeline folder (no model_index.json) nor a MONAI "
            "bundle (no configs/inference.json)",
            param=param,
        )
    try:
        components = json.loads(index.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"'{index}' is not valid JSON: {exc}", param=param) from exc
    if "unet" not in components or not (folder / "unet").is_dir():
        raise ModelError(
            f"'{folder}' has no unet/ folder: not a text-to-image UNet pipeline", param=param
        )
    extra: dict[str, Any] = {}
    if "safety_checker" in components:
        extra = {"safety_checker": None, "requires_safety_checker": False}
    # Always name the dtype: a folder saved in float16 or bfloat16 (most shared SD checkpoints)
    # would otherwise come back mixed, diffusers' parts in float32 and transformers' text
    # encoders in their stored dtype.
    extra["dtype"] = placement.dtype
    pipe = load_pretrained(
        DiffusionPipeline,
        folder,
        trust_pickle=trust_pickle,
        param=param,
        what="a diffusers pipeline",
        marker=None,  # checked above
        **extra,
    )
    pipe.set_progress_bar_config(disable=True)
    pipe.to(placement.device)
    for part in pipe.components.values():  # whatever a component's own loader kept
        if isinstance(part, torch.nn.Module) and any(
            p.is_floating_point() and p.dtype != placement.dtype for p in part.parameters()
        ):
            part.to(dtype=placement.dtype)
    return pipe


def latent_shape(pipe: Any) -> tuple[int, int, int]:
    """``(C, h, w)`` of the pipeline's default-size latents."""
    cfg = pipe.unet.config
    size = cfg.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return int(cfg.in_channels), int(h), int(w)


def pipeline_info(pipe: Any) -> dict[str, Any]:
    """What kind of pipeline this is: class, family, prediction type, text encoders, size."""
    if isinstance(pipe, MonaiLatentDiffusion):
        return pipe.info()
    name = type(pipe).__name__
    c, h, w = latent_shape(pipe)
    scale = getattr(pipe, "vae_scale_factor", 1)
    encoders = [n for n in ("text_encoder", "text_encoder_2") if getattr(pipe, n, None) is not None]
    return {
        "class": name,
        "family": FAMILIES.get(name, "other"),
        "prediction_type": pipe.scheduler.config.get("prediction_type", "epsilon"),
        "text_encoders": len(encoders),
        "unet_parameters": int(sum(p.numel() for p in pipe.unet.parameters())),
        "resolution": [h * scale, w * scale],
        "latent_shape": [c, h, w],
    }


def describe(info: dict[str, Any]) -> str:
    """One line for the CLI: ``StableDiffusionXLPipeline (SDXL, v-prediction, 2 text ...)``."""
    family = {
        "stable-diffusion": "SD 1.x/2.x",
        "stable-diffusion-xl": "SDXL",
        "monai-ldm": "MONAI latent diffusion",
    }.get(info["family"], "other UNet pipeline")
    if info["family"] == "monai-ldm":
        cond = info.get("conditioning")
        return (
            f"{info['class']} ({family}, {info['prediction_type']}, "
            f"{'conditioned on ' + ', '.join(cond['vector']) if cond else 'unconditional'}, "
            f"{info['unet_parameters'] / 1e6:.1f}M UNet parameters, "
            f"{'x'.join(map(str, info['resolution']))} volumes)"
        )
    h, w = info["resolution"]
    return (
        f"{info['class']} ({family}, {info['prediction_type']}, {info['text_encoders']} text "
        f"encoder{'s' if info['text_encoders'] != 1 else ''}, {info['unet_parameters'] / 1e6:.1f}M "
        f"UNet parameters, {h}x{w})"
    )


def generate(
    pipe: Any,
    prompt: str,
    seeds: Sequence[int],
    *,
    steps: int,
    guidance: float,
) -> torch.Tensor:
    """Images ``(N, C, H, W)`` in [-1, 1] (float32, on the pipeline's device), one per seed.

    A MONAI bundle's model draws volumes ``(N, 1, D, H, W)`` for the conditioning ``prompt``
    asks for (``guidance`` does not apply).

    The starting latents come from :func:`~medfair_audit.device.initial_latents` and are handed
    to the pipeline, which scales them by its scheduler's ``init_noise_sigma``.
    """
    if isinstance(pipe, MonaiLatentDiffusion):
        return pipe.generate(prompt, seeds, steps=steps)
    if not seeds:
        raise ConfigError("expected at least one seed", param="seeds")
    unet = pipe.unet
    n = len(seeds)
    drawn = list(seeds)
    if pipe in _COMPILED_BATCH:  # pad to the largest batch drawn: one shape, no recompile
        largest = _COMPILED_BATCH[pipe] = max(_COMPILED_BATCH[pipe], n)
        drawn += [drawn[-1]] * (largest - n)
    latents = initial_latents(drawn, latent_shape(pipe), device=pipe.device, dtype=unet.dtype)
    out = pipe(
        prompt=prompt,
        num_images_per_prompt=len(drawn),
        latents=latents,
        num_inference_steps=steps,
        guidance_scale=guidance,
        output_type="pt",
    )
    return out.images[:n].float() * 2 - 1


def save_pipeline(pipe: Any, folder: str | os.PathLike[str]) -> Path:
    """Write ``pipe`` to ``folder`` in safetensors: the inverse of :func:`load_pipeline`."""
    folder = Path(folder)
    pipe.save_pretrained(str(folder), safe_serialization=True)
    return folder


def truncated_prompts(pipe: Any, prompts: Sequence[str]) -> list[dict[str, Any]]:
    """The prompts longer than the text encoder reads, which the pipeline cuts silently.

    One entry per such prompt: its index, its length and the limit in tokens (start and end
    tokens included), and the part the encoder sees.
    """
    tokenizer = getattr(pipe, "tokenizer", None)
    if tokenizer is None:
        return []
    limit = int(tokenizer.model_max_length)
    out = []
    for i, prompt in enumerate(prompts):
        ids = tokenizer(prompt, truncation=False, verbose=False).input_ids
        if len(ids) > limit:
            kept = tokenizer.decode(ids[1 : limit - 1], skip_special_tokens=True)
            out.append({"prompt": i, "tokens": len(ids), "limit": limit, "kept": kept})
    return out
