"""``medfair remediate``: subgroup distribution aligned fine-tuning of a T2MedI checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medfair_audit.config import RemediationConfig
from medfair_audit.exceptions import ConfigError

from ._common import (
    Classifiers,
    Device,
    Dtype,
    KeepCheckpoints,
    Overwrite,
    PromptsFile,
    PromptText,
    Resume,
    TargetSpec,
    TrustPickle,
    classifiers_and_target,
    config_from,
    defaults,
    out_console,
    placement,
    progress_bar,
    prompt_texts,
    quiet_libraries,
)

R = defaults(RemediationConfig)


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
    target: TargetSpec,
    out: Annotated[
        Path, typer.Option("--out", "-o", help="New pipeline folder (adapters merged).")
    ],
    prompts: PromptsFile = None,
    prompt: PromptText = None,
    steps: Annotated[int, typer.Option(help="Optimiser steps.")] = R["steps"],
    lr: Annotated[float, typer.Option(help="AdamW peak learning rate (cosine decay).")] = R["lr"],
    batch_per_prompt: Annotated[
        int, typer.Option(help="Images per prompt per step (the batch whose mean is aligned).")
    ] = R["batch_per_prompt"],
    prompts_per_step: Annotated[int, typer.Option(help="Prompts per step (they cycle).")] = R[
        "prompts_per_step"
    ],
    lambda_clip: Annotated[
        float, typer.Option(help="Weight λ of the semantics-preservation term (0: off).")
    ] = R["lambda_clip"],
    gradient: Annotated[
        str,
        typer.Option(
            help="last-k (truncated backprop through the last K steps, as DRaFT-K) or adjusted "
            "(Shen et al.'s adjusted DFT: per-step detach and gradient rescaling)."
        ),
    ] = R["gradient"],
    grad_steps: Annotated[
        int | None,
        typer.Option(
            help="K: last-k keeps the last K steps (default 2); adjusted a random K (default all)."
        ),
    ] = R["grad_steps"],
    sampling_steps: Annotated[
        int, typer.Option(help="T: DDIM steps while training; tune with the steps you audit with.")
    ] = R["sampling_steps"],
    sampling_steps_max: Annotated[
        int | None,
        typer.Option(help="Draw T per batch from --sampling-steps … this (Shen et al.: 19–23)."),
    ] = R["sampling_steps_max"],
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = R[
        "guidance"
    ],
    lora_rank: Annotated[int, typer.Option(help="Rank of the LoRA adapters.")] = R["lora_rank"],
    lora_on: Annotated[
        str, typer.Option(help="LoRA adapters on the unet, the text encoder (text), or both.")
    ] = R["lora_on"],
    full: Annotated[
        bool, typer.Option("--full", help="Tune the whole UNet instead of LoRA adapters.")
    ] = R["full"],
    loss: Annotated[
        str, typer.Option(help="kl (paper: KL(target‖batch mean)) or ot (Shen et al.).")
    ] = R["loss"],
    align: Annotated[
        str,
        typer.Option(
            help="Several attributes: joint (one loss over the joint cells) or marginals (one "
            "loss per attribute, summed with --align-weights)."
        ),
    ] = R["align"],
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
    ] = R["align_to"],
    augment: Annotated[
        int,
        typer.Option(
            help="Expectation over transformations: read each image as the mean over this many "
            "random small shifts, rotations, flips and gains (0: off)."
        ),
    ] = R["augment"],
    ensemble: Annotated[
        list[Path] | None,
        typer.Option(
            help="Another classifier of the same attribute to align against (repeatable): the "
            "loss is the mean of each classifier's own (one attribute only)."
        ),
    ] = None,
    ot_max_uncertainty: Annotated[
        float,
        typer.Option(
            help="With --loss ot: drop images whose OT assignment is less sure than 1 − this."
        ),
    ] = R["ot_max_uncertainty"],
    changed_weight: Annotated[
        float,
        typer.Option(
            help="With --loss ot: consistency weight of an image assigned another group than the "
            "original's label (Shen et al.: 0.2)."
        ),
    ] = R["changed_weight"],
    image_encoder: Annotated[
        list[str] | None,
        typer.Option(
            help="PATH[:WEIGHT] of a CLIP or DINOv2 folder for the semantics-preservation term "
            "(repeatable; default: the CKPT's CLIP, weight 1)."
        ),
    ] = None,
    ema_decay: Annotated[
        float, typer.Option(help="Largest decay of an EMA of the tuned weights (0: off).")
    ] = R["ema_decay"],
    seed: Annotated[int, typer.Option(help="Seed of the training noise.")] = R["seed"],
    checkpoint_every: Annotated[
        int, typer.Option(help="Save a resumable checkpoint every N steps.")
    ] = R["checkpoint_every"],
    audit_every: Annotated[
        int, typer.Option(help="Quick audit on held-out seeds every N steps (0: only at the end).")
    ] = R["audit_every"],
    audit_images: Annotated[int, typer.Option(help="Images per prompt in a quick audit.")] = R[
        "audit_images"
    ],
    until_kl: Annotated[
        float | None, typer.Option(help="Stop once a quick audit's KL(target‖share) ≤ this.")
    ] = R["until_kl"],
    keep: Annotated[
        str,
        typer.Option(
            help="Weights to save: 'last' (the final step's), 'best' (the quick audit with the "
            "lowest KL, the untuned start included) or 'first-within' (stop at the first quick "
            "audit, the untuned start included, whose 95% interval holds the target: the least "
            "tuning it cannot tell from the target; else as 'best'). 'best' and 'first-within' "
            "need --audit-every > 0.",
        ),
    ] = R["keep"],
    audit_prompts: Annotated[
        Path | None,
        typer.Option(
            "--audit-prompts",
            help="Prompts the quick audits read instead of the training prompts (a text file, "
            "one per line). With --keep best they choose the saved weights: word them apart "
            "from both the training prompts and the prompts you will audit with.",
        ),
    ] = None,
    resume: Resume = False,
    keep_checkpoints: KeepCheckpoints = False,
    overwrite: Overwrite = False,
    trust_pickle: TrustPickle = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    unet_checkpointing: Annotated[
        bool,
        typer.Option(
            "--unet-checkpointing",
            help="Also checkpoint inside the UNet (less memory for SD-sized models, slower).",
        ),
    ] = R["unet_checkpointing"],
    decode_checkpointing: Annotated[
        bool | None,
        typer.Option(
            "--decode-checkpointing/--no-decode-checkpointing",
            help="Recompute the VAE decode image by image in backward, so its memory does not "
            "grow with --batch-per-prompt. Default: on with a GPU or MPS, off on the CPU.",
            show_default=False,
        ),
    ] = None,
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

    Guidance that transfers to classifiers the tuning never saw (an ensemble of three
    classifiers, each image read over four random views):

        medfair remediate models/t2medi --classifier models/sex-clf --ensemble models/sex-clf-2
        --ensemble models/sex-robust --augment 4 --target data/target.json --prompts
        prompts.txt --out models/t2medi-fair
    """
    from medfair_audit.config import RemediationJob
    from medfair_audit.remediation import parse_encoder_spec
    from medfair_audit.remediation import remediate as run

    texts = prompt_texts(prompts, prompt)
    from medfair_audit import read_prompts

    selection = () if audit_prompts is None else read_prompts(audit_prompts, param="audit_prompts")
    where = placement(device, dtype)
    config = config_from(RemediationConfig, locals(), align_weights=_weights(align_weights))
    classifier_spec, tgt = classifiers_and_target(classifier, target)
    encoders = [parse_encoder_spec(spec) for spec in image_encoder or ()]
    for path, _ in encoders:
        if not path.is_dir():
            raise ConfigError(f"'{path}' is not a folder", param="image_encoder")
    with quiet_libraries(), progress_bar() as callback:
        result = run(
            RemediationJob(
                checkpoint=checkpoint,
                classifier=classifier_spec,
                target=tgt,
                prompts=texts,
                audit_prompts=selection,
                out=out,
                config=config,
                image_encoders=encoders,
                ensemble=ensemble or (),
                resume=resume,
                overwrite=overwrite,
                trust_pickle=trust_pickle,
                keep_checkpoints=keep_checkpoints,
                placement=where,
            ),
            progress=callback,
        )
    from medfair_audit import is_main_process

    if is_main_process(where.device):
        for line in result.summary():
            out_console.print(line)
