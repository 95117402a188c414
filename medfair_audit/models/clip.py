"""A small CLIP trained contrastively on (image, caption) pairs.

Its text tower is the frozen text encoder of the T2MedI pipeline, and its vision tower is the
default image encoder of the CLIP-consistency term in remediation. Both are ordinary
``transformers`` models saved with ``save_pretrained`` (safetensors), next to a tokenizer
trained on the same captions (:mod:`.tokenizer`).

Images enter as ``(N, 1, H, W)`` tensors in [-1, 1], the format of every medfair data set; no
separate image processor is needed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_json, building_dir, check_out, locks_out
from .._validate import require_count, require_rate
from ..data.datasets import ImageFolderDataset
from ..device import Placement
from ..exceptions import ConfigError, ModelError
from ..progress import ProgressCallback, report
from ._common import backward_step, check_no_pickle, load_errors, load_images, seed_everything
from .tokenizer import train_caption_tokenizer

__all__ = ["CLIPTrainConfig", "CLIPTrainResult", "encode_images", "load_clip", "train_clip"]


@dataclass(frozen=True, kw_only=True)
class CLIPTrainConfig:
    """Size and schedule of the CLIP model.

    Args:
        image_size: Input side; images are resized to it.
        patch_size: Vision transformer patch side.
        width: Hidden size of both towers.
        layers: Transformer layers per tower.
        heads: Attention heads.
        projection_dim: Size of the joint embedding.
        max_length: Token positions (captions are truncated to it).
        vocab_size: Upper bound of the BPE vocabulary.
        epochs: Passes over the training pairs.
        batch_size: Pairs per contrastive batch.
        lr: Peak learning rate (AdamW, cosine decay after 5% warm-up).
        weight_decay: AdamW weight decay.
        seed: Seed of initialisation and shuffling.
    """

    image_size: int = 64
    patch_size: int = 8
    width: int = 128
    layers: int = 3
    heads: int = 4
    projection_dim: int = 128
    max_length: int = 48
    vocab_size: int = 2000
    epochs: int = 10
    batch_size: int = 128
    lr: float = 5e-4
    weight_decay: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        require_count(
            self,
            1,
            "image_size",
            "patch_size",
            "width",
            "layers",
            "heads",
            "projection_dim",
            "max_length",
            "epochs",
            "batch_size",
        )
        if self.image_size % self.patch_size:
            raise ConfigError("image_size must be a multiple of patch_size", param="patch_size")
        if self.width % self.heads:
            raise ConfigError("width must be a multiple of heads", param="heads")
        require_rate(self, "lr")


@dataclass(frozen=True)
class CLIPTrainResult:
    """Where the model went and how well it retrieves.

    Attributes:
        path: The CLIP folder.
        recall_at_1: Held-out image→text recall@1 over the distinct held-out captions.
        chance: Recall@1 of a random ranking (1 / number of distinct captions).
        n_train: Training pairs.
        n_heldout: Held-out pairs.
        seconds: Training time.
    """

    path: Path
    recall_at_1: float
    chance: float
    n_train: int
    n_heldout: int
    seconds: float


def _model(cfg: CLIPTrainConfig, tokenizer: Any) -> Any:
    from transformers import CLIPConfig, CLIPModel

    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": cfg.width,
        "intermediate_size": 4 * cfg.width,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "max_position_embeddings": cfg.max_length,
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
        "projection_dim": cfg.projection_dim,
    }
    vision = {
        "hidden_size": cfg.width,
        "intermediate_size": 4 * cfg.width,
        "num_hidden_layers": cfg.layers,
        "num_attention_heads": cfg.heads,
        "image_size": cfg.image_size,
        "patch_size": cfg.patch_size,
        "num_channels": 1,
        "projection_dim": cfg.projection_dim,
    }
    config = CLIPConfig(text_config=text, vision_config=vision, projection_dim=cfg.projection_dim)
    return CLIPModel(config)


def load_clip(
    path: str | os.PathLike[str], *, trust_pickle: bool = False, param: str = "clip"
) -> tuple[Any, Any]:
    """Load a CLIP folder written by :func:`train_clip` (or any local CLIP) in eval mode.

    Returns:
        ``(CLIPModel, CLIPTokenizer)``.

    Raises:
        ModelError: Not a CLIP folder, or pickle weights without ``trust_pickle``.
    """
    from transformers import CLIPModel, CLIPTokenizer

    folder = check_no_pickle(path, trust_pickle=trust_pickle, param=param)
    if not (folder / "config.json").is_file():
        raise ModelError(f"'{folder}' has no config.json: not a CLIP model folder", param=param)
    try:
        model = CLIPModel.from_pretrained(
            str(folder), use_safetensors=None if trust_pickle else True
        )
        tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    except load_errors() as exc:
        raise ModelError(f"cannot load CLIP from '{folder}': {exc}", param=param) from exc
    return model.eval(), tokenizer


def _tokens(tokenizer: Any, captions: list[str], max_length: int) -> dict[str, torch.Tensor]:
    return tokenizer(
        captions, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt"
    )


def image_embeddings(model: Any, pixel_values: torch.Tensor) -> torch.Tensor:
    """L2-normalised CLIP image embeddings, differentiable with respect to the pixels.

    transformers 5 returns a model output from ``get_image_features``, version 4 a tensor.
    """
    out = model.get_image_features(pixel_values=pixel_values)
    feats = out if torch.is_tensor(out) else out.pooler_output
    return torch.nn.functional.normalize(feats, dim=-1)


@torch.inference_mode()
def encode_images(model: Any, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """L2-normalised CLIP image embeddings of ``(N, C, H, W)`` images in [-1, 1]."""
    return torch.cat(
        [
            image_embeddings(model, images[i : i + batch_size])
            for i in range(0, len(images), batch_size)
        ]
    )


@torch.inference_mode()
def _encode_text(model: Any, tokens: dict[str, torch.Tensor], batch_size: int = 256):
    n = tokens["input_ids"].shape[0]
    out = [
        model.get_text_features(
            input_ids=tokens["input_ids"][i : i + batch_size],
            attention_mask=tokens["attention_mask"][i : i + batch_size],
        )
        for i in range(0, n, batch_size)
    ]
    feats = torch.cat([o if torch.is_tensor(o) else o.pooler_output for o in out])
    return torch.nn.functional.normalize(feats, dim=-1)


def retrieval_recall_at_1(
    model: Any, tokenizer: Any, images: torch.Tensor, captions: list[str], max_length: int
) -> tuple[float, float]:
    """Image→text recall@1 over the distinct captions, and its chance level.

    Phantom captions repeat (several images share one text), so each image is ranked against
    the set of distinct captions and counts as a hit when its own caption ranks first.
    """
    distinct = sorted(set(captions))
    index = {c: i for i, c in enumerate(distinct)}
    img = encode_images(model, images)
    txt = _encode_text(model, _tokens(tokenizer, distinct, max_length))
    best = (img @ txt.T).argmax(dim=1)
    truth = torch.tensor([index[c] for c in captions])
    return float((best == truth).float().mean()), 1.0 / len(distinct)


@locks_out
def train_clip(
    data: str | os.PathLike[str],
    out: str | os.PathLike[str],
    config: CLIPTrainConfig | None = None,
    *,
    overwrite: bool = False,
    placement: Placement | None = None,
    allow_outside_root: bool = False,
    progress: ProgressCallback | None = None,
) -> CLIPTrainResult:
    """Train CLIP on the captioned images of ``data`` and save it to ``out``.

    Pairs of the ``train`` split train the model; the ``val`` split (or ``test``, or a seeded
    10% when there is no split column) measures retrieval.

    Args:
        data: Image folder with ``metadata.csv`` holding ``file`` and ``caption``.
        out: Destination folder (absent or empty unless ``overwrite``).
        config: Model size and schedule.
        overwrite: Replace an existing ``out``.
        placement: Device and training precision (default: the CPU in float32); the model is
            evaluated and saved on the CPU in float32.
        allow_outside_root: Read images that ``metadata.csv`` places outside ``data``.
        progress: Called once per step with the loss.

    Returns:
        Paths and held-out recall@1.
    """
    cfg = config or CLIPTrainConfig()
    check_out(out, overwrite=overwrite)  # before the training, not after it
    start = time.perf_counter()
    generator = seed_everything(cfg.seed)
    full = ImageFolderDataset(
        data, require=("caption",), size=cfg.image_size, allow_outside_root=allow_outside_root
    )
    meta = full.metadata
    if "split" in meta.columns and (meta.split == "train").any():
        held_name = "val" if (meta.split == "val").any() else "test"
        train_idx = np.flatnonzero(meta.split == "train")
        held_idx = np.flatnonzero(meta.split == held_name)
    else:
        order = np.random.default_rng(cfg.seed).permutation(len(meta))
        cut = max(1, len(meta) // 10)
        held_idx, train_idx = np.sort(order[:cut]), np.sort(order[cut:])
    if len(train_idx) < 2 or len(held_idx) < 1:
        raise ConfigError("need at least 2 training and 1 held-out captioned images", param="data")
    images = load_images(full, progress=progress, stage="load images")
    captions = full.captions
    with building_dir(out, overwrite=overwrite) as tmp:
        tokenizer = train_caption_tokenizer(
            [captions[i] for i in train_idx],
            tmp,
            vocab_size=cfg.vocab_size,
            max_length=cfg.max_length,
        )
        placement = placement or Placement(device="cpu", dtype="float32")
        device, scaler = placement.device, placement.grad_scaler()
        model = _model(cfg, tokenizer).to(device)
        tokens = _tokens(tokenizer, captions, cfg.max_length)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        per_epoch = math.ceil(len(train_idx) / cfg.batch_size)
        total = cfg.epochs * per_epoch
        warm = max(1, total // 20)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * s / total))
        )
        losses = []
        step = 0
        model.train()
        train_t = torch.from_numpy(train_idx)
        for epoch in range(cfg.epochs):
            order = train_t[torch.randperm(len(train_t), generator=generator)]
            running = 0.0
            for b in range(per_epoch):
                idx = order[b * cfg.batch_size : (b + 1) * cfg.batch_size]
                if len(idx) < 2:
                    continue
                with placement.autocast():
                    out_ = model(
                        input_ids=tokens["input_ids"][idx].to(device),
                        attention_mask=tokens["attention_mask"][idx].to(device),
                        pixel_values=images[idx].to(device),
                        return_loss=True,
                    )
                backward_step(out_.loss, model, opt, scaler)
                sched.step()
                step += 1
                running += out_.loss.item()
                report(progress, "train clip", step, total, loss=out_.loss.item(), epoch=epoch + 1)
            losses.append(running / per_epoch)
        model.to("cpu").eval()  # evaluated and saved on the CPU, in float32
        recall, chance = retrieval_recall_at_1(
            model, tokenizer, images[held_idx], [captions[i] for i in held_idx], cfg.max_length
        )
        model.save_pretrained(str(tmp), safe_serialization=True)
        seconds = time.perf_counter() - start
        atomic_write_json(
            tmp / "training.json",
            {
                "kind": "medfair-clip",
                "data": str(data),
                "config": asdict(cfg),
                "epoch_loss": losses,
                "heldout": {"recall_at_1": recall, "chance": chance, "n": len(held_idx)},
                "n_train": len(train_idx),
                "seconds": seconds,
            },
        )
    return CLIPTrainResult(
        path=Path(out),
        recall_at_1=recall,
        chance=chance,
        n_train=len(train_idx),
        n_heldout=len(held_idx),
        seconds=seconds,
    )
