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
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._io import atomic_write_json, building_dir, check_out, locks_out
from ..config import CLIPJob, CLIPTrainConfig, Placement
from ..data.datasets import ImageFolderDataset
from ..exceptions import ConfigError, ModelError
from ..progress import ProgressCallback, report
from ..training import backward_step, batched, load_images, seed_everything, warmup_cosine
from ._loading import load_errors, load_pretrained
from .tokenizer import train_caption_tokenizer

__all__ = ["CLIP", "CLIPTrainConfig", "CLIPTrainResult", "encode_images", "train_clip"]


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

    def summary(self) -> list[str]:
        """Lines for a terminal."""
        return [
            f"wrote {self.path}: held-out image→text recall@1 {self.recall_at_1:.3f} "
            f"(chance {self.chance:.3f}, n={self.n_heldout}) in {self.seconds:.0f} s"
        ]


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


@dataclass
class CLIP:
    """A CLIP model and its tokenizer, saved and loaded as one folder.

    Unpacks as ``model, tokenizer = CLIP.from_pretrained(folder)``.

    Attributes:
        model: A ``CLIPModel`` (eval mode after loading).
        tokenizer: Its ``CLIPTokenizer``.
    """

    model: Any
    tokenizer: Any

    def __iter__(self) -> Iterator[Any]:
        return iter((self.model, self.tokenizer))

    def save_pretrained(self, folder: str | os.PathLike[str]) -> Path:
        """Write the model (safetensors) and the tokenizer to ``folder``."""
        folder = Path(folder)
        self.model.save_pretrained(str(folder), safe_serialization=True)
        self.tokenizer.save_pretrained(str(folder))
        return folder

    @classmethod
    def from_pretrained(
        cls, folder: str | os.PathLike[str], *, trust_pickle: bool = False, param: str = "clip"
    ) -> CLIP:
        """Load a folder written by :meth:`save_pretrained` (or any local CLIP) in eval mode.

        Raises:
            ModelError: Not a CLIP folder, or pickle weights without ``trust_pickle``.
        """
        from transformers import CLIPModel, CLIPTokenizer

        model = load_pretrained(
            CLIPModel, folder, trust_pickle=trust_pickle, param=param, what="a CLIP model"
        )
        try:
            tokenizer = CLIPTokenizer.from_pretrained(str(folder))
        except load_errors() as exc:
            msg = f"cannot load the tokenizer in '{folder}': {exc}"
            raise ModelError(msg, param=param) from exc
        return cls(model=model.eval(), tokenizer=tokenizer)


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
    return batched(lambda x: image_embeddings(model, x), images, batch_size=batch_size)


@torch.inference_mode()
def _encode_text(model: Any, tokens: dict[str, torch.Tensor], batch_size: int = 256):

    def features(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        out = model.get_text_features(input_ids=input_ids, attention_mask=attention_mask)
        return out if torch.is_tensor(out) else out.pooler_output

    feats = batched(features, tokens["input_ids"], tokens["attention_mask"], batch_size=batch_size)
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
def train_clip(job: CLIPJob, *, progress: ProgressCallback | None = None) -> CLIPTrainResult:
    """Train CLIP on the captioned images of ``job.data`` and save it to ``job.out``.

    Pairs of the ``train`` split train the model; the ``val`` split (or ``test``, or a seeded
    10% when there is no split column) measures retrieval. The model is evaluated and saved on
    the CPU in float32.

    Args:
        job: Data (``metadata.csv`` holding ``file`` and ``caption``), destination, model size
            and schedule, placement (:class:`~medfair_audit.config.CLIPJob`).
        progress: Called once per step with the loss.

    Returns:
        Paths and held-out recall@1.
    """
    data, out, cfg, placement = job.data, job.out, job.config, job.placement
    overwrite, allow_outside_root = job.overwrite, job.allow_outside_root
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
        sched = warmup_cosine(opt, total=total, warmup=max(1, total // 20))
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
                value = out_.loss.item()  # the step's one synchronisation
                running += value
                report(progress, "train clip", step, total, loss=value, epoch=epoch + 1)
            losses.append(running / per_epoch)
        model.to("cpu").eval()  # evaluated and saved on the CPU, in float32
        recall, chance = retrieval_recall_at_1(
            model, tokenizer, images[held_idx], [captions[i] for i in held_idx], cfg.max_length
        )
        CLIP(model=model, tokenizer=tokenizer).save_pretrained(tmp)
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
