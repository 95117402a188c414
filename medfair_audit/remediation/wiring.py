"""The models remediation works with: loading, adapters, the frozen original, merging.

Everything frozen (VAE, classifier, image encoders, the original model) and the tuned parts (LoRA
adapters on the UNet and/or the text encoder, or the whole UNet) live on one device in
:class:`Models`. With adapters the frozen original is the same modules with the adapters
disabled; full tuning keeps a frozen copy of the UNet.

In mixed precision the frozen diffusion parts are held in the generation dtype, while what is
trained (adapters or the whole UNet) stays a float32 master copy and forward passes run under
autocast; the classifier and image encoders stay float32. Supported: UNet pipelines with one
text encoder and ε- or v-prediction (SD 1.x/2.x and medfair's T2MedI).
"""

from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..config import Placement, RemediationConfig
from ..exceptions import ConfigError, ModelError
from ..target import Target

__all__ = ["Models", "load_models", "merged_pipeline_parts"]

# Attention projections of diffusers' UNet blocks and of CLIP's text transformer.
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0")
TEXT_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


@dataclass
class Models:
    """Everything remediation needs, on one device."""

    pipe: Any
    unet: Any
    text_encoder: Any
    original_unet: Any | None  # full tuning keeps a frozen copy; adapters are disabled instead
    classifier: Any  # a ClassifierSet: one classifier, one per attribute, or a joint one
    encoders: list[tuple[Any, float]]  # (ImageEncoder, weight)
    tokens: torch.Tensor  # (P + 1, L) token ids, the empty prompt last
    target: torch.Tensor  # over classifier.groups (joint cells for several attributes)
    soft_confusion: torch.Tensor | None
    latent_shape: tuple[int, int, int]
    device: torch.device
    cfg: RemediationConfig
    placement: Placement = field(default_factory=lambda: Placement(device="cpu", dtype="float32"))
    trainable: dict[str, torch.nn.Parameter] = field(default_factory=dict)
    classifier_sha256: str = ""
    # align="marginals": per attribute (target over its levels, soft confusion or None, weight)
    marginals: list[tuple[torch.Tensor, torch.Tensor | None, float]] = field(default_factory=list)
    # --ensemble: more classifiers of the one attribute, each with its soft confusion (or None)
    ensemble: list[tuple[Any, torch.Tensor | None]] = field(default_factory=list)
    ensemble_paths: list[Path] = field(default_factory=list)
    ensemble_sha256: list[str] = field(default_factory=list)
    # quick audits' own prompts (--audit-prompts), the empty prompt last; None: the training prompts
    audit_tokens: torch.Tensor | None = None
    _frozen_states: torch.Tensor | None = None
    _schedulers: dict[int, Any] = field(default_factory=dict)

    def scheduler(self, steps: int) -> Any:
        """A DDIM scheduler of the pipeline's noise schedule set to ``steps`` steps (cached)."""
        if steps not in self._schedulers:
            from diffusers import DDIMScheduler

            sched = DDIMScheduler.from_config(self.pipe.scheduler.config)
            sched.set_timesteps(steps)
            self._schedulers[steps] = sched
        return self._schedulers[steps]

    @property
    def decode_checkpointing(self) -> bool:
        """Whether the tuned images' decode is recomputed per image in backward."""
        if self.cfg.decode_checkpointing is not None:
            return self.cfg.decode_checkpointing
        return self.device.type != "cpu"

    @property
    def n_prompts(self) -> int:
        """Number of training prompts."""
        return len(self.tokens) - 1

    def _states(self, rows: torch.Tensor) -> torch.Tensor:
        return self.text_encoder(rows.to(self.device))[0]

    def states(self, prompt: int, n: int) -> torch.Tensor:
        """``(2n, L, D)`` text states, unconditional first (through text adapters, if any)."""
        if self.cfg.lora_on == "unet":  # frozen text encoder: encode every prompt once
            if self._frozen_states is None:
                with torch.no_grad():
                    self._frozen_states = self._states(self.tokens)
            cond = self._frozen_states[prompt : prompt + 1]
            uncond = self._frozen_states[-1:]
        else:  # text adapters: through them, with gradients
            cond, uncond = self._states(self.tokens[[prompt, self.n_prompts]]).split(1)
        return torch.cat([uncond.expand(n, -1, -1), cond.expand(n, -1, -1)])

    @contextlib.contextmanager
    def audit_prompts(self) -> Iterator[None]:
        """Within the block prompt ``i`` is the quick audits' ``i``-th prompt (if they have own)."""
        if self.audit_tokens is None:
            yield
            return
        kept = self.tokens, self._frozen_states
        self.tokens, self._frozen_states = self.audit_tokens, None
        try:
            yield
        finally:
            self.tokens, self._frozen_states = kept

    @contextlib.contextmanager
    def original(self) -> Iterator[Any]:
        """The frozen original model: yields its UNet; text states come from :meth:`states`."""
        if self.original_unet is not None:
            yield self.original_unet
            return
        parts = [m for m in (self.unet, self.text_encoder) if getattr(m, "peft_config", None)]
        for m in parts:
            _set_adapters(m, False)
        try:
            yield self.unet
        finally:
            for m in parts:
                _set_adapters(m, True)

    def probs(self, images: torch.Tensor) -> torch.Tensor:
        """Calibrated probabilities of the groups, differentiable in the images.

        For several attributes the groups are the joint cells.
        """
        parts = self.classifier.member_probs(images)
        return parts[0] if len(parts) == 1 else self.classifier.joint(torch.cat(parts, dim=1))

    def member_probs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Each classifier's calibrated probabilities (differentiable in the images)."""
        return self.classifier.member_probs(images)

    def embed(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Embeddings of ``images`` by each image encoder."""
        return [enc(images) for enc, _ in self.encoders]


def _set_adapters(module: Any, enabled: bool) -> None:
    """Switch every LoRA layer of ``module`` on or off (peft keeps the weights)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for layer in module.modules():
        if isinstance(layer, BaseTunerLayer):
            layer.enable_adapters(enabled)


def _lora(cfg: RemediationConfig, targets: Sequence[str]) -> Any:
    from peft import LoraConfig

    return LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha or cfg.lora_rank,
        init_lora_weights="gaussian",
        target_modules=list(targets),
        lora_dropout=0.0,
    )


def _soft_confusion(classifier: Any, folder: Path, device: torch.device) -> torch.Tensor:
    """``S[i, j] = E[p_j | truly i]`` from the classifier's held-out images, in its group order.

    For several classifiers (one per attribute) the joint ``S`` is the Kronecker product of
    theirs (the independence assumption of :mod:`medfair_audit.models.attributes`).
    """
    if hasattr(classifier, "members"):
        mats = [
            _soft_confusion(m, p, device)
            for m, p in zip(classifier.members, classifier.paths, strict=True)
        ]
        out = mats[0]
        for m in mats[1:]:
            out = torch.kron(out, m)
        return out
    ev = classifier.evaluation or {}
    if "soft_confusion" not in ev:
        raise ModelError(
            f"'{folder}' has no evaluation.json with a soft confusion matrix, which "
            "--align-to corrected needs (retrain the classifier with this medfair)",
            param="classifier",
        )
    order = [list(ev["groups"]).index(g) for g in classifier.groups]
    s = np.asarray(ev["soft_confusion"], dtype=np.float64)[np.ix_(order, order)]
    if np.linalg.cond(s) > 100:
        raise ModelError(
            f"the classifier's soft confusion matrix has condition number "
            f"{np.linalg.cond(s):.0f} > 100: it cannot tell the groups apart",
            param="classifier",
        )
    return torch.tensor(s, dtype=torch.float32, device=device)


def _default_encoder(checkpoint_dir: Path) -> Path:
    """The CLIP the T2MedI was trained with, as recorded in its ``medfair.json``."""
    meta = checkpoint_dir / "medfair.json"
    clip = None
    if meta.is_file():
        doc = json.loads(meta.read_text())
        clip = doc.get("image_encoder") or doc.get("clip")
    if not clip or not Path(clip).is_dir():
        raise ModelError(
            "no image encoder for the semantics-preservation term: pass --image-encoder DIR "
            "(or --lambda-clip 0)",
            param="image_encoder",
        )
    return Path(clip)


def check_supported(pipe: Any, folder: Path) -> None:
    """Refuse pipelines remediation cannot tune, naming what it supports.

    Raises:
        ModelError: Two text encoders (SDXL) or a prediction type other than ε or v.
    """
    from ..models.pipelines import describe, pipeline_info

    info = pipeline_info(pipe)
    supported = "supported: UNet pipelines with one text encoder and epsilon or v_prediction "
    supported += "(SD 1.x/2.x, medfair's T2MedI)"
    if info["text_encoders"] != 1 or pipe.unet.config.get("addition_embed_type"):
        raise ModelError(
            f"'{folder}' is {describe(info)}: remediation does not tune SDXL-style pipelines "
            f"(pooled text and size conditioning) yet; {supported}; audit it with medfair audit",
            param="checkpoint",
        )
    if info["prediction_type"] not in ("epsilon", "v_prediction"):
        raise ModelError(
            f"'{folder}' predicts '{info['prediction_type']}'; {supported}", param="checkpoint"
        )


def _load_ensemble(
    classifier: Any,
    paths: Sequence[Path],
    cfg: RemediationConfig,
    device: torch.device,
    trust_pickle: bool,
) -> list[tuple[Any, torch.Tensor | None]]:
    """The ensemble's other classifiers: same attribute and groups as ``classifier``."""
    from ..models.attributes import ClassifierSet

    if paths and classifier.multi:
        raise ConfigError(
            "--ensemble guides one attribute; with several attributes give one classifier each",
            param="ensemble",
        )
    if paths and cfg.loss != "kl":
        raise ConfigError("--ensemble works with --loss kl", param="ensemble")
    out = []
    for path in paths:
        member = ClassifierSet.load(path, trust_pickle=trust_pickle, param="ensemble").to(device)
        if member.attributes != classifier.attributes or member.groups != classifier.groups:
            raise ConfigError(
                f"'{path}' predicts {member.attribute} {member.groups}, the classifier "
                f"{classifier.attribute} {classifier.groups}: an ensemble reads one attribute",
                param="ensemble",
            )
        member.primary.model.requires_grad_(False).eval()
        soft = _soft_confusion(member, path, device) if cfg.align_to == "corrected" else None
        out.append((member, soft))
    return out


def load_models(
    checkpoint_dir: Path,
    classifier_dir: Path | Mapping[str, Path],
    target: Target,
    prompts: Sequence[str],
    encoders: Sequence[tuple[Path, float]],
    cfg: RemediationConfig,
    placement: Placement,
    trust_pickle: bool,
    ensemble: Sequence[Path] = (),
    audit_prompts: Sequence[str] = (),
) -> Models:
    """Load the pipeline, classifier(s) and encoders, and add what gets tuned."""
    from .._io import folder_sha256
    from ..models.attributes import ClassifierSet, classifier_sha256
    from ..models.pipelines import latent_shape, load_pipeline
    from .encoders import ImageEncoder

    device = placement.device
    classifier = ClassifierSet.load(classifier_dir, trust_pickle=trust_pickle).to(device)
    members = _load_ensemble(classifier, ensemble, cfg, device, trust_pickle)
    if classifier.multi:
        classifier.check_target(target)
    elif set(classifier.groups) != set(target.groups):
        raise ConfigError(
            f"target groups {sorted(target.groups)} differ from the classifier's "
            f"{sorted(classifier.groups)}",
            param="target",
        )
    corrected = cfg.align_to == "corrected"
    marginals = []
    if classifier.multi and cfg.align == "marginals":
        if classifier.joint_classifier:
            raise ConfigError(
                "--align marginals needs one classifier per attribute "
                "(--classifier sex=PATH --classifier age_band=PATH)",
                param="align",
            )
        weights = cfg.align_weights or (1.0,) * len(classifier.members)
        if len(weights) != len(classifier.members):
            raise ConfigError(
                f"expected {len(classifier.members)} weights, one per attribute, got "
                f"{len(weights)}",
                param="align_weights",
            )
        for member, path, w in zip(classifier.members, classifier.paths, weights, strict=True):
            t = target.marginal(member.attribute).vector(list(member.groups))
            s = _soft_confusion(member, path, device) if corrected else None
            marginals.append((torch.tensor(t, device=device), s, float(w)))
    soft = _soft_confusion(classifier, classifier.paths[0], device) if corrected else None
    loaded = []
    if cfg.lambda_clip > 0:
        specs = list(encoders) or [(_default_encoder(checkpoint_dir), 1.0)]
        for path, weight in specs:
            enc = ImageEncoder.from_pretrained(path, trust_pickle=trust_pickle).to(device)
            loaded.append((enc, weight))
    # Full tuning in half precision: the UNet's float32 master copy starts from the stored
    # weights, not from their rounding to the generation dtype.
    full_half = cfg.full and placement.half
    load_at = Placement(device=device, dtype=torch.float32) if full_half else placement
    pipe = load_pipeline(checkpoint_dir, trust_pickle=trust_pickle, placement=load_at)
    check_supported(pipe, checkpoint_dir)
    if full_half:
        for name, part in pipe.components.items():
            if isinstance(part, torch.nn.Module) and name != "unet":
                part.to(dtype=placement.dtype)
    for part in (pipe.vae, pipe.text_encoder, pipe.unet, *(c.model for c in classifier.members)):
        part.requires_grad_(False).eval()
    unet, text = pipe.unet, pipe.text_encoder
    if cfg.unet_checkpointing:
        unet.enable_gradient_checkpointing()
    original = None
    if cfg.full:
        original = copy.deepcopy(unet).to(dtype=placement.dtype).eval()
        unet.requires_grad_(True)
    if cfg.lora_on in ("unet", "both") and not cfg.full:
        unet.add_adapter(_lora(cfg, UNET_LORA_TARGETS))
    if cfg.lora_on in ("text", "both"):
        # peft directly: transformers' add_adapter wants a newer peft than the pinned one.
        from peft import inject_adapter_in_model

        lora = _lora(cfg, TEXT_LORA_TARGETS)
        inject_adapter_in_model(lora, text)
        text.peft_config = {"default": lora}
    unet.train()

    def tokenize(texts: Sequence[str]) -> torch.Tensor:
        return pipe.tokenizer(
            [*texts, ""],
            padding="max_length",
            max_length=pipe.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids

    tokens = tokenize(prompts)
    trainable = {f"unet.{n}": p for n, p in unet.named_parameters() if p.requires_grad}
    trainable |= {f"text.{n}": p for n, p in text.named_parameters() if p.requires_grad}
    for p in trainable.values():  # the float32 master copy of what is trained
        p.data = p.data.float()
    return Models(
        pipe=pipe,
        unet=unet,
        text_encoder=text,
        original_unet=original,
        classifier=classifier,
        encoders=loaded,
        tokens=tokens,
        audit_tokens=tokenize(audit_prompts) if audit_prompts else None,
        target=torch.tensor(target.vector(classifier.groups), device=device),
        soft_confusion=soft,
        marginals=marginals,
        ensemble=members,
        ensemble_paths=list(ensemble),
        ensemble_sha256=[folder_sha256(p) for p in ensemble],
        latent_shape=latent_shape(pipe),
        device=device,
        cfg=cfg,
        placement=placement,
        trainable=trainable,
        classifier_sha256=classifier_sha256(classifier_dir)[0],
    )


def _fuse_text(module: Any) -> Any:
    """A copy of a transformers model with its LoRA layers merged and replaced by plain ones."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    out = copy.deepcopy(module)
    for name, layer in list(out.named_modules()):
        if isinstance(layer, BaseTunerLayer):
            layer.merge()
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, layer.get_base_layer())
    if hasattr(out, "peft_config"):
        del out.peft_config
    return out


def _add_deltas(tuned: Any, base: Any) -> Any:
    """``base`` (float32, adapter-free) with the LoRA deltas of ``tuned`` added to its weights.

    The deltas are computed from the float32 adapters, so the result is the stored weights plus
    the update, with no rounding to the generation dtype in between.
    """
    from peft.tuners.tuners_utils import BaseTunerLayer

    with torch.no_grad():
        for name, layer in tuned.named_modules():
            if isinstance(layer, BaseTunerLayer):
                weight = base.get_submodule(name).weight
                for adapter in layer.active_adapters:
                    delta = layer.get_delta_weight(adapter).to(weight.device, torch.float32)
                    weight.add_(delta)
    return base


def float32_pipeline_parts(m: Models, checkpoint_dir: Path, trust_pickle: bool) -> Any:
    """The tuned pipeline in float32 on the CPU, built on the stored weights (half runs).

    The frozen parts of a half-precision run were rounded to the generation dtype; the output
    takes them from ``checkpoint_dir`` again, adds the float32 adapters' deltas (or the whole
    float32 UNet of full tuning), and so keeps float32 weights whatever the run computed in.
    """
    from ..models.pipelines import load_pipeline

    cpu32 = Placement(device="cpu", dtype=torch.float32)
    pipe = load_pipeline(checkpoint_dir, trust_pickle=trust_pickle, placement=cpu32)
    if m.cfg.full:
        pipe.unet = copy.deepcopy(m.unet).to("cpu", torch.float32)
    elif getattr(m.unet, "peft_config", None):
        _add_deltas(m.unet, pipe.unet)
    if getattr(m.text_encoder, "peft_config", None):
        _add_deltas(m.text_encoder, pipe.text_encoder)
    for part in pipe.components.values():
        if isinstance(part, torch.nn.Module):
            part.eval().requires_grad_(False)
    return pipe


def merged_pipeline_parts(m: Models) -> tuple[Any, Any]:
    """The tuned UNet and text encoder as plain weights (adapters fused in, then removed)."""
    unet, text = m.unet, m.text_encoder
    if getattr(unet, "peft_config", None):
        unet = copy.deepcopy(unet)
        unet.fuse_lora()
        unet.unload_lora()
    if getattr(text, "peft_config", None):
        text = _fuse_text(text)
    return unet, text
