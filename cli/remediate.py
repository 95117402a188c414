"""``medfair remediate``: subgroup distribution aligned fine-tuning of a T2MedI checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medfair_audit.exceptions import ConfigError
from medfair_audit.target import parse_target

from ._common import out_console, progress_bar, prompt_texts, quiet_libraries


def remediate(
    checkpoint: Annotated[
        Path, typer.Argument(metavar="CKPT", help="Diffusers text-to-image pipeline folder.")
    ],
    classifier: Annotated[Path, typer.Option(help="Subgroup classifier folder (frozen).")],
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
        float, typer.Option(help="Weight of the CLIP-consistency term (0: off).")
    ] = 1.0,
    grad_steps: Annotated[
        int, typer.Option(help="K: gradients flow through the last K sampling steps.")
    ] = 2,
    sampling_steps: Annotated[int, typer.Option(help="T: DDIM steps while training.")] = 10,
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = 3.0,
    lora_rank: Annotated[int, typer.Option(help="Rank of the LoRA adapters.")] = 8,
    full: Annotated[
        bool, typer.Option("--full", help="Tune the whole UNet instead of LoRA adapters.")
    ] = False,
    loss: Annotated[
        str, typer.Option(help="kl (paper: KL(target‖batch mean)) or ot (Shen et al.).")
    ] = "kl",
    align_to: Annotated[
        str,
        typer.Option(
            help="probabilities (paper) or corrected (the confusion-corrected shares meet it)."
        ),
    ] = "probabilities",
    ot_max_uncertainty: Annotated[
        float, typer.Option(help="With --loss ot: drop images whose 1 − max p exceeds this.")
    ] = 0.2,
    detach_per_step: Annotated[
        bool,
        typer.Option("--detach-per-step", help="Detach the UNet input at each gradient step."),
    ] = False,
    image_encoder: Annotated[
        Path | None,
        typer.Option(help="CLIP folder for the consistency term (default: the CKPT's CLIP)."),
    ] = None,
    ema_decay: Annotated[float, typer.Option(help="EMA of the tuned weights (0: off).")] = 0.0,
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
) -> None:
    """Fine-tune a checkpoint so its subgroup distribution matches the target.

    Generates a batch per prompt, sends gradients through the last K sampling steps, and
    minimises KL(target ‖ mean classifier probability) plus λ·(1 − cos) between CLIP embeddings
    of the tuned and the frozen original's images from the same noise (Han et al. 2024). LoRA
    adapters on the UNet attention projections are tuned unless --full. Writes OUT (a normal
    pipeline folder, adapters merged: medfair audit OUT works), OUT/adapters,
    OUT/remediation.json and OUT/log.jsonl; checkpoints go to OUT.partial/ and --resume continues
    there. Several processes (gradients averaged): torchrun --standalone --nproc_per_node 2 -m
    medfair_cli.main remediate ... on CPUs, accelerate launch -m medfair_cli.main remediate ...
    on GPUs.

    For example:

        medfair remediate models/t2medi --classifier models/sex-classifier
        --target data/target.json --prompts prompts.txt --out models/t2medi-fair
    """
    from medfair_audit.remediation import RemediationConfig
    from medfair_audit.remediation import remediate as run

    texts = prompt_texts(prompts, prompt)
    config = RemediationConfig(
        steps=steps,
        lr=lr,
        batch_per_prompt=batch_per_prompt,
        prompts_per_step=prompts_per_step,
        lambda_clip=lambda_clip,
        grad_steps=grad_steps,
        sampling_steps=sampling_steps,
        guidance=guidance,
        lora_rank=lora_rank,
        full=full,
        loss=loss,
        align_to=align_to,
        ot_max_uncertainty=ot_max_uncertainty,
        detach_per_step=detach_per_step,
        ema_decay=ema_decay,
        seed=seed,
        checkpoint_every=checkpoint_every,
        audit_every=audit_every,
        audit_images=audit_images,
        until_kl=until_kl,
    )
    tgt = parse_target(target)
    if image_encoder is not None and not image_encoder.is_dir():
        raise ConfigError(f"'{image_encoder}' is not a folder", param="image_encoder")
    with quiet_libraries(), progress_bar() as callback:
        result = run(
            checkpoint,
            classifier=classifier,
            target=tgt,
            prompts=texts,
            out=out,
            config=config,
            image_encoder=image_encoder,
            resume=resume,
            overwrite=overwrite,
            trust_pickle=trust_pickle,
            progress=callback,
        )
    from medfair_audit._dist import partial_state

    if not partial_state().is_main_process:
        return
    first, last = result.data["audits"][0], result.final_audit
    for label, a in (("before", first), ("after", last)):
        shares = ", ".join(f"{g} {v:.1%}" for g, v in a["share"].items())
        if "share_corrected" in a:
            shares += " raw; " + ", ".join(f"{g} {v:.1%}" for g, v in a["share_corrected"].items())
            shares += " corrected"
        out_console.print(f"quick audit {label} (step {a['step']}): {shares}; KL {a['kl']:.4f}")
    out_console.print(f"{result.data['steps_done']} steps in {result.seconds:.0f} s; wrote {out}")
