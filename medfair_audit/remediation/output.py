"""The remediated pipeline folder: merged weights, the adapters alone, and the run's record.

``out/`` is a normal diffusers pipeline (adapters fused in, so ``medfair audit out`` and
``StableDiffusionPipeline.from_pretrained(out)`` work), ``out/adapters/`` holds the LoRA layers
alone (loadable with ``pipe.load_lora_weights``), ``remediation.json`` the settings, curves and
quick audits, ``log.jsonl`` one line per step. The folder is built beside its name and renamed
into place.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .._io import atomic_write_json
from ..models.pipelines import save_pipeline
from ..training import RunFolder
from .wiring import Models, float32_pipeline_parts, merged_pipeline_parts

__all__ = ["write_output"]


def _adapter_layers(module: Any) -> dict[str, Any] | None:
    if not getattr(module, "peft_config", None):
        return None
    from diffusers.utils import convert_state_dict_to_diffusers
    from peft.utils import get_peft_model_state_dict

    return convert_state_dict_to_diffusers(get_peft_model_state_dict(module))


def write_output(
    run: RunFolder,
    checkpoint_dir: Path,
    m: Models,
    data: dict[str, Any],
    log: list[dict[str, Any]],
    *,
    trust_pickle: bool = False,
) -> None:
    """Write the remediated pipeline folder ``run.out`` (and drop the run's work folder)."""
    from diffusers import StableDiffusionPipeline

    with run.finish() as tmp:
        if m.placement.half:  # weights are saved in float32 whatever the run computed in
            save_pipeline(float32_pipeline_parts(m, checkpoint_dir, trust_pickle), tmp)
        else:
            unet, text = merged_pipeline_parts(m)
            pipe = m.pipe
            tuned = pipe.unet, pipe.text_encoder
            pipe.unet = unet.eval().requires_grad_(False).to("cpu")
            pipe.text_encoder = text.eval().requires_grad_(False).to("cpu")
            try:
                save_pipeline(pipe, tmp)
            finally:
                pipe.unet, pipe.text_encoder = tuned
        unet_layers, text_layers = _adapter_layers(m.unet), _adapter_layers(m.text_encoder)
        if unet_layers or text_layers:
            meta_kw = {}
            if unet_layers:
                meta_kw["unet_lora_adapter_metadata"] = m.unet.peft_config["default"].to_dict()
            if text_layers:
                meta_kw["text_encoder_lora_adapter_metadata"] = m.text_encoder.peft_config[
                    "default"
                ].to_dict()
            StableDiffusionPipeline.save_lora_weights(
                str(tmp / "adapters"),
                unet_lora_layers=unet_layers,
                text_encoder_lora_layers=text_layers,
                safe_serialization=True,
                **meta_kw,
            )
        meta = {}
        if (checkpoint_dir / "medfair.json").is_file():
            meta = json.loads((checkpoint_dir / "medfair.json").read_text())
        meta.update({"kind": "medfair-t2medi-remediated", "remediated_from": str(checkpoint_dir)})
        if m.encoders:
            meta["image_encoder"] = m.encoders[0][0].source
        atomic_write_json(tmp / "medfair.json", meta)
        atomic_write_json(tmp / "remediation.json", data)
        (tmp / "log.jsonl").write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in log))
