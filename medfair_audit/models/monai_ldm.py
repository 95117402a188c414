"""MONAI latent diffusion models from a bundle folder: 3-D generators the audit can draw from.

A MONAI bundle keeps its networks' definitions in ``configs/inference.json`` and their weights
in ``models/``. medfair reads three definitions from it and builds nothing else:

- ``autoencoder_def``: ``monai.networks.nets.AutoencoderKL``;
- ``network_def`` (or ``diffusion_def``): ``monai.networks.nets.DiffusionModelUNet``;
- ``scheduler`` (or ``noise_scheduler``): a MONAI DDPM, DDIM or PNDM scheduler.

The older ``generative.networks...`` targets of the MONAI Generative Models bundles (Pinaya et
al.'s brain LDM) are read as their MONAI core equivalents (``num_channels`` is ``channels``,
``beta_schedule: scaled_linear`` is ``schedule: scaled_linear_beta``). A bundle config can name
any Python callable and evaluate expressions (``"$..."``), so only these targets are built, only
literal values and ``@`` references to literal top-level values are read, and an expression is
refused. Weights are ``.safetensors`` or ``.pt``/``.pth`` state dicts loaded with
``torch.load(weights_only=True)``, which refuses a pickle that would build objects or run code.

What the bundle does not say in a form medfair can read without running it, ``configs/
medfair.json`` declares::

    {
      "latent_shape": [3, 20, 28, 20],       # C, D, H, W of the latent (required)
      "scale_factor": 1.0,                    # latents are divided by it before decoding
      "output_range": [0, 1],                 # the decoder's intensity range
      "weights": {"autoencoder": "models/autoencoder.pth", "diffusion": "models/model.pth"},
      "conditioning": {                       # absent: an unconditional model
        "mode": "crossattn",                  # crossattn, concat, or both
        "vector": ["sex", "age"],             # the conditioning vector's entries, in order
        "default": [0.5, 0.5],                # their values when a request leaves them out
        "groups": {"sex": {"female": {"sex": 0.0}, "male": {"sex": 1.0}}},
        "distribution": {"sex": {"female": 0.5, "male": 0.5}}
      }
    }

A request is a *prompt* of the audit: ``"sex=female"`` asks for the conditioning vector of that
group (the others at their defaults); an unconditional model ignores the prompt. Volumes come
out as ``(N, 1, D, H, W)`` in [-1, 1], RAS+ as the volume phantom writes them.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..config import Placement
from ..device import initial_latents
from ..exceptions import MSG_NOT_A_DIR, ConfigError, ModelError

__all__ = [
    "BUNDLE_TARGETS",
    "MonaiLatentDiffusion",
    "build_component",
    "bundle_conditioning",
    "is_monai_bundle",
    "save_bundle",
]

#: The classes a bundle may name (short name → MONAI module), nothing else is built.
BUNDLE_TARGETS = {
    "AutoencoderKL": "monai.networks.nets",
    "DiffusionModelUNet": "monai.networks.nets",
    "DDPMScheduler": "monai.networks.schedulers",
    "DDIMScheduler": "monai.networks.schedulers",
    "PNDMScheduler": "monai.networks.schedulers",
}
#: Modules a target may be spelled in (MONAI core, and MONAI Generative Models before it).
TARGET_MODULES = (
    "monai.networks.nets",
    "monai.networks.schedulers",
    "generative.networks.nets",
    "generative.networks.schedulers",
)
#: Generative Models' argument names → MONAI core's.
RENAMED = {"num_channels": "channels", "beta_schedule": "schedule"}
SCHEDULES = {"linear": "linear_beta", "scaled_linear": "scaled_linear_beta"}
#: Component → the inference.json keys it may be under, and its default weight files.
COMPONENTS = {
    "autoencoder": (("autoencoder_def",), ("autoencoder", "model_autoencoder")),
    "diffusion": (("network_def", "diffusion_def"), ("diffusion_model", "model", "diffusion")),
    "scheduler": (("scheduler", "noise_scheduler"), ()),
}
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth")
CONDITIONING_MODES = ("crossattn", "concat", "both")


def is_monai_bundle(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a folder in the MONAI bundle layout (``configs/inference.json``)."""
    return (Path(path) / "configs" / "inference.json").is_file()


def _read_json(path: Path, param: str) -> dict[str, Any]:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read '{path}': {exc}", param=param) from exc
    if not isinstance(doc, dict):
        raise ModelError(f"'{path}' is not a JSON object", param=param)
    return doc


def _literal(value: Any, refs: dict[str, Any], where: str, param: str, depth: int = 0) -> Any:
    """A config value with ``@name`` references resolved; expressions and macros refused."""
    if depth > 8:
        raise ModelError(f"{where}: references nest too deeply", param=param)
    if isinstance(value, str):
        if value.startswith(("$", "%")):
            raise ModelError(
                f"{where} is an expression ('{value[:40]}'); medfair does not evaluate bundle "
                "code: write the value itself, or declare it in configs/medfair.json",
                param=param,
            )
        if value.startswith("@"):
            name = value[1:]
            if name not in refs:
                raise ModelError(f"{where} refers to '@{name}', which is not set", param=param)
            return _literal(refs[name], refs, f"'@{name}'", param, depth + 1)
        return value
    if isinstance(value, list):
        return [_literal(v, refs, where, param, depth) for v in value]
    if isinstance(value, dict):
        return {k: _literal(v, refs, where, param, depth) for k, v in value.items()}
    return value


def build_component(config: dict[str, Any], name: str, param: str) -> Any:
    """Build one of :data:`COMPONENTS` from its definition in ``inference.json``."""
    import importlib

    keys = COMPONENTS[name][0]
    spec = next((config[k] for k in keys if k in config), None)
    if not isinstance(spec, dict) or "_target_" not in spec:
        raise ModelError(
            f"configs/inference.json has no {' or '.join(keys)} with a '_target_'", param=param
        )
    target = str(spec["_target_"])
    module, _, short = target.rpartition(".")
    if short not in BUNDLE_TARGETS or module not in (*TARGET_MODULES, ""):
        raise ModelError(
            f"the bundle's {keys[0]} builds '{target}'; medfair builds only "
            f"{', '.join(BUNDLE_TARGETS)} from a bundle (a bundle config can name any callable)",
            param=param,
        )
    kwargs = {}
    for key, value in spec.items():
        if key.startswith("_"):
            continue
        value = _literal(value, config, f"{keys[0]}.{key}", param)
        key = RENAMED.get(key, key)
        if key == "schedule":
            value = SCHEDULES.get(value, value)
        kwargs[key] = value
    cls = getattr(importlib.import_module(BUNDLE_TARGETS[short]), short)
    try:
        return cls(**kwargs)
    except (TypeError, ValueError, AssertionError) as exc:
        raise ModelError(f"cannot build the bundle's {target}: {exc}", param=param) from exc


def _load_state(path: Path, param: str) -> dict[str, torch.Tensor]:
    """A state dict from safetensors, or from a ``.pt`` file with ``weights_only=True``."""
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except (OSError, SafetensorError) as exc:
            raise ModelError(f"cannot read '{path}': {exc}", param=param) from exc
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise ModelError(
            f"'{path}' holds more than weights (loading it would build objects or run code); "
            "medfair loads bundle weights with weights_only=True and refuses it: save the "
            "state dict alone (torch.save(model.state_dict(), ...)) or as safetensors",
            param=param,
        ) from exc
    except (OSError, RuntimeError, EOFError) as exc:
        raise ModelError(f"cannot read '{path}': {exc}", param=param) from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"'{path}' is not a state dict of tensors", param=param)
    return state


def _weights(folder: Path, name: str, declared: dict[str, str], param: str) -> Path:
    if name in declared:
        path = folder / declared[name]
        if not path.is_file():
            raise ModelError(f"configs/medfair.json names '{path}', which is missing", param=param)
        return path
    for stem in COMPONENTS[name][1]:
        for suffix in WEIGHT_SUFFIXES:
            path = folder / "models" / f"{stem}{suffix}"
            if path.is_file():
                return path
    tried = ", ".join(f"models/{s}.safetensors|.pt|.pth" for s in COMPONENTS[name][1])
    raise ModelError(
        f"no {name} weights in '{folder}' (looked for {tried}); name the file under 'weights' in "
        "configs/medfair.json",
        param=param,
    )


def _check_conditioning(spec: dict[str, Any] | None, param: str) -> dict[str, Any] | None:
    """The ``conditioning`` declaration, checked: mode, vector, defaults, groups, distribution."""
    if spec is None:
        return None
    try:
        mode = spec.get("mode", "crossattn")
        vector = [str(v) for v in spec["vector"]]
        default = [float(v) for v in spec.get("default", [0.0] * len(vector))]
        groups = {
            str(attr): {str(g): {str(k): float(v) for k, v in values.items()}
                        for g, values in levels.items()}
            for attr, levels in spec["groups"].items()
        }  # fmt: skip
        distribution = {
            str(attr): {str(g): float(p) for g, p in shares.items()}
            for attr, shares in spec.get("distribution", {}).items()
        }
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ModelError(
            f"configs/medfair.json: a conditioning needs 'vector' (names), 'default' (numbers) "
            f"and 'groups' (attribute → group → entries): {exc.__class__.__name__}: {exc}",
            param=param,
        ) from exc
    if mode not in CONDITIONING_MODES:
        raise ModelError(
            f"configs/medfair.json: conditioning mode '{mode}' is not one of "
            f"{', '.join(CONDITIONING_MODES)}",
            param=param,
        )
    if len(default) != len(vector):
        raise ModelError(
            f"configs/medfair.json: {len(vector)} conditioning entries, {len(default)} defaults",
            param=param,
        )
    for attr, levels in groups.items():
        for group, values in levels.items():
            unknown = sorted(set(values) - set(vector))
            if unknown or not values:
                raise ModelError(
                    f"configs/medfair.json: group {attr}={group} sets {unknown or 'nothing'}; "
                    f"the vector's entries are {vector}",
                    param=param,
                )
    for attr, shares in distribution.items():
        if attr not in groups or set(shares) != set(groups[attr]):
            raise ModelError(
                f"configs/medfair.json: the distribution of '{attr}' must give every group of "
                f"its 'groups' entry a share",
                param=param,
            )
        if any(p < 0 for p in shares.values()) or abs(sum(shares.values()) - 1) > 1e-6:
            raise ModelError(
                f"configs/medfair.json: the distribution of '{attr}' must be shares summing to 1",
                param=param,
            )
    return {"mode": mode, "vector": vector, "default": default, "groups": groups,
            "distribution": distribution}  # fmt: skip


def bundle_conditioning(path: str | os.PathLike[str], param: str = "checkpoint") -> dict | None:
    """The bundle's checked conditioning declaration (``None``: unconditional), without torch."""
    folder = Path(path)
    declared = folder / "configs" / "medfair.json"
    doc = _read_json(declared, param) if declared.is_file() else {}
    return _check_conditioning(doc.get("conditioning"), param)


class MonaiLatentDiffusion:
    """A MONAI latent diffusion model: autoencoder, diffusion UNet, scheduler and conditioning.

    Args:
        autoencoder: ``monai.networks.nets.AutoencoderKL``.
        diffusion: ``monai.networks.nets.DiffusionModelUNet``.
        scheduler: A MONAI scheduler.
        latent_shape: ``(C, D, H, W)`` of the latent.
        scale_factor: Latents are divided by it before decoding.
        output_range: The decoder's intensity range, mapped to [-1, 1].
        conditioning: The checked declaration (see the module), or ``None``.
    """

    def __init__(
        self,
        autoencoder: Any,
        diffusion: Any,
        scheduler: Any,
        *,
        latent_shape: Sequence[int],
        scale_factor: float = 1.0,
        output_range: Sequence[float] = (0.0, 1.0),
        conditioning: dict[str, Any] | None = None,
    ) -> None:
        self.autoencoder = autoencoder.eval()
        self.diffusion = diffusion.eval()
        self.scheduler = scheduler
        self.latent_shape = tuple(int(v) for v in latent_shape)
        self.scale_factor = float(scale_factor)
        self.output_range = (float(output_range[0]), float(output_range[1]))
        self.conditioning = conditioning
        self.tokenizer = None  # no text: the audit's prompts are conditioning requests

    @classmethod
    def from_bundle(
        cls,
        path: str | os.PathLike[str],
        *,
        placement: Placement | None = None,
        param: str = "checkpoint",
    ) -> MonaiLatentDiffusion:
        """Build and load the model of a bundle folder (see the module for what is read).

        Raises:
            ModelError: A missing or unreadable file, a target or expression medfair does not
                build, weights that are not a state dict of tensors, or that do not fit.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise ModelError(MSG_NOT_A_DIR.format(path=folder), param=param)
        config = _read_json(folder / "configs" / "inference.json", param)
        declared_path = folder / "configs" / "medfair.json"
        declared = _read_json(declared_path, param) if declared_path.is_file() else {}
        parts = {name: build_component(config, name, param) for name in COMPONENTS}
        weights = declared.get("weights", {})
        for name in ("autoencoder", "diffusion"):
            file = _weights(folder, name, weights, param)
            try:
                parts[name].load_state_dict(_load_state(file, param))
            except RuntimeError as exc:
                first = str(exc).splitlines()[0]
                raise ModelError(
                    f"'{file}' does not fit the bundle's {name} definition: {first}", param=param
                ) from exc
        shape = declared.get("latent_shape", config.get("latent_shape"))
        if not (isinstance(shape, list) and len(shape) == 4 and all(int(v) > 0 for v in shape)):
            raise ModelError(
                "the bundle does not give its latent shape: set 'latent_shape' [C, D, H, W] in "
                "configs/medfair.json",
                param=param,
            )
        conditioning = _check_conditioning(declared.get("conditioning"), param)
        extra = (
            len(conditioning["vector"])
            if conditioning and conditioning["mode"] in ("concat", "both")
            else 0
        )
        takes = int(getattr(parts["diffusion"], "in_channels", int(shape[0]) + extra))
        if takes != int(shape[0]) + extra:
            raise ModelError(
                f"the diffusion UNet takes {takes} input channels; the latent has {shape[0]}"
                + (f" and the conditioning adds {extra}" if extra else "")
                + ": check latent_shape and the conditioning mode in configs/medfair.json",
                param=param,
            )
        scale = declared.get("scale_factor", config.get("scale_factor", 1.0))
        model = cls(
            parts["autoencoder"],
            parts["diffusion"],
            parts["scheduler"],
            latent_shape=shape,
            scale_factor=float(_literal(scale, config, "scale_factor", param)),
            output_range=declared.get("output_range", (0.0, 1.0)),
            conditioning=conditioning,
        )
        placement = placement or Placement(device="cpu", dtype="float32")
        return model.to(placement.device, placement.dtype)

    def to(self, device: torch.device | str, dtype: torch.dtype = torch.float32) -> Any:
        """Move both networks (the diffusion UNet in ``dtype``, the autoencoder in float32)."""
        self.diffusion.to(device=device, dtype=dtype)
        self.autoencoder.to(device=device, dtype=torch.float32)
        return self

    @property
    def device(self) -> torch.device:
        """Where the diffusion UNet is."""
        return next(self.diffusion.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        """The diffusion UNet's dtype."""
        return next(self.diffusion.parameters()).dtype

    def condition(self, prompt: str) -> torch.Tensor | None:
        """The conditioning vector a request asks for (``None`` for an unconditional model).

        Raises:
            ConfigError: The request names no declared group (names ``prompts``).
        """
        spec = self.conditioning
        if spec is None:
            return None
        values = dict(zip(spec["vector"], spec["default"], strict=True))
        for part in filter(None, (p.strip() for p in prompt.split(","))):
            attr, _, group = part.partition("=")
            levels = spec["groups"].get(attr.strip(), {})
            if group.strip() not in levels:
                known = [f"{a}={g}" for a, gs in spec["groups"].items() for g in gs]
                raise ConfigError(
                    f"'{prompt}' asks for '{part}'; this model's groups are {', '.join(known)}",
                    param="prompts",
                )
            values.update(levels[group.strip()])
        return torch.tensor([values[k] for k in spec["vector"]], dtype=torch.float32)

    @torch.no_grad()
    def generate(self, prompt: str, seeds: Sequence[int], *, steps: int) -> torch.Tensor:
        """Volumes ``(N, 1, D, H, W)`` in [-1, 1] (float32), volume ``i`` from ``seeds[i]``.

        The sampling loop of MONAI's ``LatentDiffusionInferer.sample``: the scheduler's
        ``steps`` timesteps, the conditioning as cross-attention context, as extra input
        channels, or both; then the autoencoder decodes ``latent / scale_factor``.
        """
        if not seeds:
            raise ConfigError("expected at least one seed", param="seeds")
        n, device, dtype = len(seeds), self.device, self.dtype
        z = initial_latents(seeds, self.latent_shape, device=device, dtype=dtype)
        cond = self.condition(prompt)
        context = channels = None
        if cond is not None:
            cond = cond.to(device=device, dtype=dtype).expand(n, -1)
            mode = self.conditioning["mode"]
            if mode in ("crossattn", "both"):
                context = cond[:, None, :]
            if mode in ("concat", "both"):
                channels = cond[:, :, None, None, None].expand(-1, -1, *self.latent_shape[1:])
        self.scheduler.set_timesteps(num_inference_steps=steps, device=device)
        for t in self.scheduler.timesteps:
            x = z if channels is None else torch.cat([z, channels], 1)
            timesteps = torch.full((n,), int(t), device=device, dtype=torch.long)
            eps = self.diffusion(x, timesteps=timesteps, context=context)
            z, _ = self.scheduler.step(eps, t, z)
        with torch.autocast(device.type, enabled=False):
            vol = self.autoencoder.decode_stage_2_outputs(z.float() / self.scale_factor)
        lo, hi = self.output_range
        return ((vol[:, :1] - lo) / (hi - lo) * 2 - 1).clamp(-1, 1).float()

    def info(self) -> dict[str, Any]:
        """What :func:`~medfair_audit.models.pipelines.pipeline_info` reports of a pipeline."""
        c, d, h, w = self.latent_shape
        factor = 2 ** (len(self.autoencoder.encoder.channels) - 1)
        return {
            "class": type(self).__name__,
            "family": "monai-ldm",
            "prediction_type": getattr(self.scheduler, "prediction_type", "epsilon"),
            "text_encoders": 0,
            "unet_parameters": int(sum(p.numel() for p in self.diffusion.parameters())),
            "resolution": [d * factor, h * factor, w * factor],
            "latent_shape": [c, d, h, w],
            "conditioning": None
            if self.conditioning is None
            else {k: self.conditioning[k] for k in ("mode", "vector", "default")},
        }


def save_bundle(
    folder: str | os.PathLike[str],
    *,
    autoencoder_def: dict[str, Any],
    network_def: dict[str, Any],
    scheduler_def: dict[str, Any],
    autoencoder: Any,
    diffusion: Any,
    medfair: dict[str, Any],
    weights_format: str = "safetensors",
) -> Path:
    """Write a bundle folder :meth:`MonaiLatentDiffusion.from_bundle` reads.

    ``*_def`` are ``inference.json`` definitions (``_target_`` and arguments); ``medfair`` is
    ``configs/medfair.json``; weights go to ``models/autoencoder`` and ``models/diffusion_model``
    as ``safetensors`` or ``pt`` (a plain state dict, as MONAI bundles ship them).
    """
    from .._io import atomic_write_json

    if weights_format not in ("safetensors", "pt"):
        raise ConfigError("expected safetensors or pt", param="weights_format")
    folder = Path(folder)
    (folder / "configs").mkdir(parents=True, exist_ok=True)
    (folder / "models").mkdir(parents=True, exist_ok=True)
    atomic_write_json(
        folder / "configs" / "inference.json",
        {"autoencoder_def": autoencoder_def, "network_def": network_def,
         "scheduler": scheduler_def},
    )  # fmt: skip
    atomic_write_json(folder / "configs" / "metadata.json", {"version": "0.1.0", "task": "LDM"})
    atomic_write_json(folder / "configs" / "medfair.json", medfair)
    for stem, net in (("autoencoder", autoencoder), ("diffusion_model", diffusion)):
        state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
        if weights_format == "safetensors":
            from safetensors.torch import save_file

            save_file(state, str(folder / "models" / f"{stem}.safetensors"))
        else:
            torch.save(state, str(folder / "models" / f"{stem}.pt"))
    return folder
