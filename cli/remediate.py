"""``medfair remediate``: subgroup distribution aligned fine-tuning of a T2MedI checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medfair_audit.exceptions import ConfigError

from ._common import (
    Classifiers,
    Device,
    Dtype,
    classifiers_and_target,
    out_console,
    placement,
    progress_bar,
    prompt_texts,
    quiet_libraries,
)


def _weights(text: str | None) -> list[float] | None:
    if text is None:
        return None
    try:
        return [float(w) for w in text.split(",") if w.strip()]
    except ValueError:
        raise ConfigError(
            f"expected comma-separated numbers such as 1,0.5, got '{text}'", param="align_weights"
        ) from None


def remediate(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CKPT", help="Diffusers text-to-image pipeline folder.")
    ],
    classifier: Classifiers,
    target: Annotated[
        str, typer.Option(help="target.json or inline proportions, e.g. male=0.58,female=0.42.")
    ],
    out: Annotated[
        Path, typer.Option("--out", "-o", help="New pipeline folder (adapters merged).")
    ],
    prompts: Annotated[
        Path | None, typer.Option(help="Text file, one training prompt per line ('#' comments).")
    ] = None,
    prompt: Annotated[
        list[str] | None, typer.Option(help="A training prompt (repeatable); instead of --prompts.")
    ] = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = 200,
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (cosine decay).")] = 1e-3,
    batch_per_prompt: Annotated[
        int, typer.Option(help="Images per prompt per step (the batch whose mean is aligned).")
    ] = 8,
    prompts_per_step: Annotated[int, typer.Option(help="Prompts per step (they cycle).")] = 1,
    lambda_clip: Annotated[
        float, typer.Option(help="Weight λ of the semantics-preservation term (0: off).")
    ] = 1.0,
    gradient: Annotated[
        str,
        typer.Option(
            help="last-k (truncated backprop through the last K steps, as DRaFT-K) or adjusted "
            "(Shen et al.'s adjusted DFT: per-step detach and gradient rescaling)."
        ),
    ] = "last-k",
    grad_steps: Annotated[
        int | None,
        typer.Option(
            help="K: last-k keeps the last K steps (default 2); adjusted a random K (default all)."
        ),
    ] = None,
    sampling_steps: Annotated[int, typer.Option(help="T: DDIM steps while training.")] = 10,
    sampling_steps_max: Annotated[
        int | None,
        typer.Option(help="Draw T per batch from --sampling-steps … this (Shen et al.: 19–23)."),
    ] = None,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 3.0,
    lora_rank: Annotated[int, typer.Option(help="Rank of the LoRA adapters.")] = 8,
    lora_on: Annotated[
        str, typer.Option(help="LoRA adapters on the unet, the text encoder (text), or both.")
    ] = "unet",
    full: Annotated[
        bool, typer.Option("--full", help="Tune the whole UNet instead of LoRA adapters.")
    ] = False,
    loss: Annotated[
        str, typer.Option(help="kl (paper: KL(target‖batch mean)) or ot (Shen et al.).")
    ] = "kl",
    align: Annotated[
        str,
        typer.Option(
            help="Several attributes: joint (one loss over the joint cells) or marginals (one "
            "loss per attribute, summed with --align-weights)."
        ),
    ] = "joint",
    align_weights: Annotated[
        str | None,
        typer.Option(help="With --align marginals: weights per attribute, e.g. 1,0.5."),
    ] = None,
    align_to: Annotated[
        str,
        typer.Option(
            help="probabilities (paper) or corrected (the mean probability meets target·S, S the "
            "classifier's soft confusion matrix: the PACC share the audit reports meets it)."
        ),
    ] = "probabilities",
    ot_max_uncertainty: Annotated[
        float,
        typer.Option(
            help="With --loss ot: drop images whose OT assignment is less sure than 1 − this."
        ),
    ] = 0.2,
    changed_weight: Annotated[
        float,
        typer.Option(
            help="With --loss ot: consistency weight of an image assigned another group than the "
            "original's label (Shen et al.: 0.2)."
        ),
    ] = 0.2,
    image_encoder: Annotated[
        list[str] | None,
        typer.Option(
            help="PATH[:WEIGHT] of a CLIP or DINOv2 folder for the semantics-preservation term "
            "(repeatable; default: the CKPT's CLIP, weight 1)."
        ),
    ] = None,
    ema_decay: Annotated[
        float, typer.Option(help="Largest decay of an EMA of the tuned weights (0: off).")
    ] = 0.0,
    seed: Annotated[int, typer.Option(help="Seed of the training noise.")] = 0,
    checkpoint_every: Annotated[
        int, typer.Option(help="Save a resumable checkpoint every N steps.")
    ] = 50,
    audit_every: Annotated[
        int, typer.Option(help="Quick audit on held-out seeds every N steps (0: only at the end).")
    ] = 50,
    audit_images: Annotated[int, typer.Option(help="Images per prompt in a quick audit.")] = 32,
    until_kl: Annotated[
        float | None, typer.Option(help="Stop once a quick audit's KL(target‖share) ≤ this.")
    ] = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the checkpoints in OUT.partial/.")
    ] = False,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace an existing OUT folder.")
    ] = False,
    trust_pickle: Annotated[
        bool, typer.Option("--trust-pickle", help="Allow pickle weights (runs code).")
    ] = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    unet_checkpointing: Annotated[
        bool,
        typer.Option(
            "--unet-checkpointing",
            help="Also checkpoint inside the UNet (less memory for SD-sized models, slower).",
        ),
    ] = False,
) -> None:
    """Fine-tune a checkpoint so its subgroup distribution matches the target.

    Generates a batch per prompt, sends gradients through the last K sampling steps (or, with
    --gradient adjusted, through every step with Shen et al.'s rescaling), and minimises
    KL(target ‖ mean classifier probability) (--loss ot: cross-entropy to expected-OT
    assignments) plus λ·(1 − cos) between image-encoder embeddings of the tuned and the frozen
    original's images from the same noise (Han et al. 2024). LoRA adapters (--lora-on unet, text
    or both) are tuned unless --full. Judge the result with `medfair audit` on held-out prompts
    and a classifier this run never saw: the quick audits printed here use the training
    classifier on the training prompts. Writes OUT (a normal
    pipeline folder, adapters merged: medfair audit OUT works), OUT/adapters,
    OUT/remediation.json and OUT/log.jsonl; checkpoints go to OUT.partial/ and --resume continues
    there. Several processes (gradients averaged): torchrun --standalone --nproc_per_node 2 -m
    medfair_cli.main remediate ... on CPUs, accelerate launch -m medfair_cli.main remediate ...
    on GPUs.

    For example:

        medfair remediate models/t2medi --classifier models/sex-classifier
        --target data/target.json --prompts prompts.txt --out models/t2medi-fair

    Several attributes (a joint target; --align joint or marginals):

        medfair remediate models/t2medi --classifier sex=models/sex --classifier
        age_band=models/age --target joint-target.json --align joint --prompts prompts.txt
        --out models/t2medi-fair
    """
    from medfair_audit.remediation import RemediationConfig, parse_encoder_spec
    from medfair_audit.remediation import remediate as run

    texts = prompt_texts(prompts, prompt)
    where = placement(device, dtype)
    config = RemediationConfig(
        unet_checkpointing=unet_checkpointing,
        steps=steps,
        lr=lr,
        batch_per_prompt=batch_per_prompt,
        prompts_per_step=prompts_per_step,
        lambda_clip=lambda_clip,
        gradient=gradient,
        grad_steps=grad_steps,
        sampling_steps=sampling_steps,
        sampling_steps_max=sampling_steps_max,
        guidance=guidance,
        lora_rank=lora_rank,
        lora_on=lora_on,
        full=full,
        loss=loss,
        align=align,
        align_weights=_weights(align_weights),
        align_to=align_to,
        ot_max_uncertainty=ot_max_uncertainty,
        changed_weight=changed_weight,
        ema_decay=ema_decay,
        seed=seed,
        checkpoint_every=checkpoint_every,
        audit_every=audit_every,
        audit_images=audit_images,
        until_kl=until_kl,
    )
    classifier_spec, tgt = classifiers_and_target(classifier, target)
    encoders = [parse_encoder_spec(spec) for spec in image_encoder or ()]
    for path, _ in encoders:
        if not path.is_dir():
            raise ConfigError(f"'{path}' is not a folder", param="image_encoder")
    with quiet_libraries(), progress_bar() as callback:
        result = run(
            checkpoint,
            classifier=classifier_spec,
            target=tgt,
            prompts=texts,
            out=out,
            config=config,
            image_encoders=encoders,
            resume=resume,
            overwrite=overwrite,
            trust_pickle=trust_pickle,
            placement=where,
            progress=callback,
        )
    from medfair_audit._dist import partial_state

    if not partial_state(where.device).is_main_process:
        return
    first, last = result.data["audits"][0], result.final_audit
    for label, a in (("before", first), ("after", last)):
        shares = ", ".join(f"{g} {v:.1%}" for g, v in a["share"].items())
        if "share_corrected" in a:
            shares += " raw; " + ", ".join(f"{g} {v:.1%}" for g, v in a["share_corrected"].items())
            shares += " corrected"
        out_console.print(f"quick audit {label} (step {a['step']}): {shares}; KL {a['kl']:.4f}")
    run_on = result.data["placement"]
    skipped = result.data["skipped_steps"]
    note = f", {skipped} skipped (non-finite gradients)" if skipped else ""
    out_console.print(
        f"{result.data['steps_done']} steps{note} in {result.seconds:.0f} s on "
        f"{run_on['device']} ({run_on['dtype']}); wrote {out}"
    )
