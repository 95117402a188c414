"""Stable-Diffusion-architecture pipelines with random weights, made locally: the scale fixture.

Users audit SD 1.x/2.x and SDXL fine-tunes; nothing can be downloaded here, so tests and
benchmarks build the same architectures from diffusers' and transformers' classes with random
weights and a CLIP tokenizer trained on a few captions (:mod:`.tokenizer`). ``tiny`` pipelines
build and run in seconds on a CPU; ``full`` ones have the real layer sizes (SD 1.5: 860M UNet
parameters at 512×512; SD 2.x: v-prediction at 768×768; SDXL: two text encoders, 1024×1024).

The folders are standard ``save_pretrained`` output in safetensors, loaded by
:func:`medfair_audit.models.pipelines.load_pipeline` like any user checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..exceptions import ConfigError

__all__ = ["KINDS", "SIZES", "build_sd_like", "save_clip_like", "save_sd_like"]

KINDS = ("sd15", "sd2-v", "sdxl")
SIZES = ("tiny", "full")

_CAPTIONS = [
    "Axial FLAIR MRI of the brain showing a glioma.",
    "An axial brain MRI of a male patient with a high-grade glioma.",
    "An axial brain MRI of a female patient with a low-grade glioma.",
    "Chest X-ray, posteroanterior view, no acute findings.",
    "T1-weighted contrast-enhanced MRI with a ring-enhancing lesion.",
]


def _tokenizer(folder: Path) -> Any:
    from .tokenizer import train_caption_tokenizer

    return train_caption_tokenizer(_CAPTIONS * 20, folder, vocab_size=400)


def _text(kind: str, size: str, tokenizer: Any, which: int) -> Any:
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    if size == "tiny":
        dims = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4}
        dims |= {"num_hidden_layers": 2, "projection_dim": 32, "hidden_act": "gelu"}
    elif kind == "sd15" or (kind == "sdxl" and which == 1):  # CLIP ViT-L/14
        dims = {"hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12}
        dims |= {"num_hidden_layers": 12, "projection_dim": 768, "hidden_act": "quick_gelu"}
    elif kind == "sd2-v":  # OpenCLIP ViT-H/14, penultimate layer kept
        dims = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16}
        dims |= {"num_hidden_layers": 23, "projection_dim": 1024, "hidden_act": "gelu"}
    else:  # SDXL's second encoder: OpenCLIP ViT-bigG/14
        dims = {"hidden_size": 1280, "intermediate_size": 5120, "num_attention_heads": 20}
        dims |= {"num_hidden_layers": 32, "projection_dim": 1280, "hidden_act": "gelu"}
    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    config = CLIPTextConfig(vocab_size=len(tokenizer), max_position_embeddings=77, **dims, **ids)
    return (CLIPTextModelWithProjection if which == 2 else CLIPTextModel)(config)


def _unet(kind: str, size: str, cross: int, pooled: int) -> Any:
    from diffusers import UNet2DConditionModel

    if size == "tiny":
        kw: dict[str, Any] = {
            "block_out_channels": (8, 16),
            "layers_per_block": 1,
            "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
            "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
            "attention_head_dim": 2,
            "norm_num_groups": 8,
            "sample_size": 16,
        }
        if kind == "sdxl":
            kw |= {"addition_time_embed_dim": 8, "projection_class_embeddings_input_dim": 6 * 8}
    elif kind == "sd15":
        kw = {"sample_size": 64, "attention_head_dim": 8}
    elif kind == "sd2-v":
        kw = {"sample_size": 96, "attention_head_dim": (5, 10, 20, 20)}
    else:
        kw = {
            "sample_size": 128,
            "block_out_channels": (320, 640, 1280),
            "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
            "transformer_layers_per_block": (1, 2, 10),
            "attention_head_dim": (5, 10, 20),
            "addition_time_embed_dim": 256,
            "projection_class_embeddings_input_dim": 6 * 256,
        }
    if kind != "sd15":
        kw["use_linear_projection"] = True
    if kind == "sdxl":
        kw["addition_embed_type"] = "text_time"
        kw["projection_class_embeddings_input_dim"] += pooled
    return UNet2DConditionModel(in_channels=4, out_channels=4, cross_attention_dim=cross, **kw)


def _vae(size: str) -> Any:
    from diffusers import AutoencoderKL

    if size == "tiny":
        return AutoencoderKL(
            block_out_channels=(8, 16),
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            latent_channels=4,
            norm_num_groups=8,
            layers_per_block=1,
            sample_size=32,
        )
    return AutoencoderKL(
        block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        layers_per_block=2,
        sample_size=512,
        scaling_factor=0.18215,
    )


def build_sd_like(kind: str = "sd15", size: str = "tiny", *, seed: int = 0) -> Any:
    """A Stable-Diffusion-architecture pipeline with random weights (nothing is downloaded).

    Args:
        kind: ``sd15`` (ε-prediction, one CLIP text encoder), ``sd2-v`` (v-prediction,
            linear-projection attention) or ``sdxl`` (two text encoders, pooled text and
            size conditioning).
        size: ``tiny`` (seconds on a CPU) or ``full`` (the real architecture's sizes).
        seed: Seed of the random weights.

    Raises:
        ConfigError: Unknown kind or size.
    """
    from diffusers import (
        DDIMScheduler,
        StableDiffusionPipeline,
        StableDiffusionXLPipeline,
    )

    if kind not in KINDS:
        raise ConfigError(f"expected one of {', '.join(KINDS)}, got '{kind}'", param="kind")
    if size not in SIZES:
        raise ConfigError(f"expected one of {', '.join(SIZES)}, got '{size}'", param="size")
    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = _tokenizer(Path(tmp) / "tokenizer")
    scheduler = DDIMScheduler(
        num_train_timesteps=1000,
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type="v_prediction" if kind == "sd2-v" else "epsilon",
    )
    text = _text(kind, size, tokenizer, 1)
    vae = _vae(size)
    if kind != "sdxl":
        unet = _unet(kind, size, text.config.hidden_size, 0)
        return StableDiffusionPipeline(
            vae=vae,
            text_encoder=text,
            tokenizer=tokenizer,
            unet=unet,
            scheduler=scheduler,
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    text_2 = _text(kind, size, tokenizer, 2)
    cross = text.config.hidden_size + text_2.config.hidden_size
    unet = _unet(kind, size, cross, text_2.config.projection_dim)
    return StableDiffusionXLPipeline(
        vae=vae,
        text_encoder=text,
        text_encoder_2=text_2,
        tokenizer=tokenizer,
        tokenizer_2=tokenizer,
        unet=unet,
        scheduler=scheduler,
        force_zeros_for_empty_prompt=True,
    )


def save_sd_like(
    out: str | os.PathLike[str],
    kind: str = "sd15",
    size: str = "tiny",
    *,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Build with :func:`build_sd_like` and save as a safetensors pipeline folder at ``out``."""
    pipe = build_sd_like(kind, size, seed=seed)
    if dtype != torch.float32:
        pipe = pipe.to(dtype=dtype)
    out = Path(out)
    pipe.save_pretrained(out, safe_serialization=True)
    return out


#: CLIP's image normalisation (what a ``preprocessor_config.json`` of OpenAI's CLIP holds).
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def save_clip_like(out: str | os.PathLike[str], size: str = "tiny", *, seed: int = 0) -> Path:
    """A CLIP model folder with random weights, for the semantics-preservation term.

    ``full`` has the vision tower of CLIP ViT-L/14 at 224 px (what SD 1.5's users would pass
    as ``--image-encoder``); the text tower, unused by remediation, is kept small. ``tiny``
    builds in a second. Loads with :meth:`medfair_audit.remediation.ImageEncoder.from_pretrained`.
    """
    from transformers import CLIPConfig, CLIPModel

    if size not in SIZES:
        raise ConfigError(f"expected one of {', '.join(SIZES)}, got '{size}'", param="size")
    if size == "tiny":
        vision = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
                  "num_hidden_layers": 2, "image_size": 32, "patch_size": 8}  # fmt: skip
        projection = 32
    else:
        vision = {"hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
                  "num_hidden_layers": 24, "image_size": 224, "patch_size": 14}  # fmt: skip
        projection = 768
    text = {"hidden_size": 32, "intermediate_size": 37, "num_attention_heads": 4,
            "num_hidden_layers": 1, "vocab_size": 400, "bos_token_id": 0, "eos_token_id": 1,
            "pad_token_id": 1}  # fmt: skip
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=projection))
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    (out / "preprocessor_config.json").write_text(
        json.dumps({"image_mean": CLIP_MEAN, "image_std": CLIP_STD})
    )
    return out
