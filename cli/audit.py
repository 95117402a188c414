"""``medfair audit``: subgroup proportions, distances to a target and FID per subgroup."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medfair_audit.config import GenerationConfig
from medfair_audit.exceptions import ConfigError

from ._common import (
    AllowOutsideRoot,
    Classifiers,
    Device,
    Dtype,
    PromptsFile,
    PromptText,
    TargetSpec,
    TrustPickle,
    classifiers_and_target,
    defaults,
    out_console,
    placement,
    progress_bar,
    prompt_texts,
    quiet_libraries,
)

GEN = defaults(GenerationConfig)


def _condition_prompts(
    checkpoint: Path, attribute: str, prompts: Path | None, prompt: list[str] | None
) -> list[str]:
    """``--condition ATTRIBUTE``: one request ``ATTRIBUTE=GROUP`` per group the bundle declares."""
    from medfair_audit.models.monai_ldm import bundle_conditioning, is_monai_bundle

    if prompts is not None or prompt:
        raise ConfigError("--condition makes the prompts; leave out --prompt(s)", param="condition")
    if not is_monai_bundle(checkpoint):
        raise ConfigError(
            f"--condition asks a MONAI bundle for each group; '{checkpoint}' has no "
            "configs/inference.json",
            param="condition",
        )
    declared = bundle_conditioning(checkpoint)
    if declared is None or attribute not in declared["groups"]:
        known = sorted(declared["groups"]) if declared else []
        raise ConfigError(
            f"'{checkpoint}' declares no conditioning on '{attribute}' (its configs/medfair.json "
            f"conditions on {known or 'nothing'})",
            param="condition",
        )
    return [f"{attribute}={group}" for group in declared["groups"][attribute]]


#: ``--precision`` without ``--max-n-per-prompt``: at most this many images per prompt.
MAX_N_PER_PROMPT = 2048


def audit(
    checkpoint: Annotated[
        Path,
        typer.Argument(
            metavar="CKPT",
            help="Diffusers text-to-image pipeline folder, or a MONAI latent diffusion bundle "
            "(configs/ + models/) that draws volumes.",
        ),
    ],
    classifier: Classifiers,
    target: TargetSpec,
    out: Annotated[Path, typer.Option("--out", "-o", help="Output folder.")],
    prompts: PromptsFile = None,
    prompt: PromptText = None,
    n_per_prompt: Annotated[
        int, typer.Option(help="Images per prompt (with --precision: --max-n-per-prompt).")
    ] = GEN["n_per_prompt"],
    precision: Annotated[
        float | None,
        typer.Option(
            help="Draw images round by round (one batch per prompt) and stop once every group's "
            "anytime-valid corrected share is within ± this half-width (e.g. 0.05); the interval "
            "stays valid however the stop falls."
        ),
    ] = None,
    max_n_per_prompt: Annotated[
        int | None,
        typer.Option(help="With --precision: the most images per prompt (default 2048)."),
    ] = None,
    min_n_per_prompt: Annotated[
        int, typer.Option(min=0, help="With --precision: images per prompt before the first stop.")
    ] = 0,
    reference: Annotated[
        Path | None, typer.Option(help="Real images with the attribute column, for FID/KID.")
    ] = None,
    reference_split: Annotated[
        str | None, typer.Option(help="Use only this split of --reference.")
    ] = None,
    reader: Annotated[
        list[Path] | None,
        typer.Option(
            help="Another classifier of the same attribute that reads the same images "
            "(repeatable): its corrected share and its disagreement with --classifier, with a "
            "paired interval (one attribute)."
        ),
    ] = None,
    frd: Annotated[
        bool,
        typer.Option(
            "--frd",
            help="Also the Fréchet Radiomics Distance per group against --reference (needs "
            "the frd extra: pip install 'medfair[frd]').",
        ),
    ] = False,
    seed: Annotated[
        int, typer.Option(help="Global seed (each image's seed derives from it).")
    ] = GEN["seed"],
    batch_size: Annotated[
        int,
        typer.Option(
            help="Images per batch and per shard (lower it on an out-of-memory error; results "
            "do not depend on it)."
        ),
    ] = GEN["shard_size"],
    steps: Annotated[int, typer.Option(help="Denoising steps.")] = GEN["steps"],
    guidance: Annotated[float, typer.Option(help="Classifier-free guidance scale.")] = GEN[
        "guidance"
    ],
    features: Annotated[
        str,
        typer.Option(
            help="Quality features (FID, KID, PRDC, Vendi; CMMD for embeddings): classifier, "
            "inception:WEIGHTS, clip:FOLDER or dinov2:FOLDER."
        ),
    ] = "classifier",
    mode: Annotated[
        str, typer.Option(help="marginal (neutral prompts) or conditional (prompts name a group).")
    ] = "marginal",
    condition: Annotated[
        str | None,
        typer.Option(
            metavar="ATTRIBUTE",
            help="A MONAI bundle conditioned on a vector: ask for each group of this attribute "
            "in turn (the prompts become ATTRIBUTE=GROUP, as its configs/medfair.json declares "
            "them) and report the conditioning fidelity; sets --mode conditional.",
        ),
    ] = None,
    condition_distribution: Annotated[
        str | None,
        typer.Option(
            metavar="GROUP=SHARE,...",
            help="Conditional mode: the share of requests per group (e.g. female=0.5,male=0.5), "
            "under which the marginal share of the output is reported (default: the bundle's "
            "declared distribution, else equal).",
        ),
    ] = None,
    n_boot: Annotated[
        int,
        typer.Option(
            help="Bootstrap resamples of the images and the classifier's held-out images "
            "(also the simulations of the on-target test)."
        ),
    ] = 1000,
    half_width: Annotated[
        float,
        typer.Option(
            help="Half-width of the corrected-share interval the sample-size advice aims at."
        ),
    ] = 0.05,
    save_images: Annotated[
        bool, typer.Option("--save-images", help="Also write every image as PNG.")
    ] = False,
    images_from: Annotated[
        Path | None,
        typer.Option(
            metavar="DIR",
            help="Read the images of another audit (its folder) instead of drawing them, e.g. "
            "to read them with another classifier: same checkpoint, prompts, --n-per-prompt, "
            "--seed, --steps, --guidance, --batch-size and --dtype, else refused.",
        ),
    ] = None,
    trust_pickle: TrustPickle = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite",
            help="Replace a finished audit (or other files) in OUT; its shards are reused where "
            "the settings match. Without it an unfinished audit in OUT is resumed.",
        ),
    ] = False,
    allow_outside_root: AllowOutsideRoot = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    compile: Annotated[
        bool,
        typer.Option(
            "--compile",
            help="Fuse the attention projections and torch.compile the UNet and VAE decoder: "
            "the fastest audit on a GPU with --channels-last; the first batch pays about a "
            "minute of compiling, so it pays off on long audits (benchmarks/RESULTS.md).",
        ),
    ] = False,
    channels_last: Annotated[
        bool,
        typer.Option(
            "--channels-last",
            help="Channels-last memory format: with --compile on GPUs (slower without it).",
        ),
    ] = False,
    vae_slicing: Annotated[
        bool, typer.Option("--vae-slicing", help="Decode one image at a time (less memory).")
    ] = False,
    vae_tiling: Annotated[
        bool, typer.Option("--vae-tiling", help="Decode large images in tiles (less memory).")
    ] = False,
    overlap: Annotated[
        bool | None,
        typer.Option(
            "--overlap/--no-overlap",
            help="Classify and write each batch while the next is generated (default: on for "
            "GPUs, off on the CPU, where both would share the cores).",
            show_default=False,
        ),
    ] = None,
    min_cell_n: Annotated[
        int,
        typer.Option(
            min=0,
            help="Several attributes: joint cells with fewer images are flagged with a warning.",
        ),
    ] = 20,
    batch_invariant: Annotated[
        bool,
        typer.Option(
            "--batch-invariant",
            help="Compute each image on its own inside every batch: results bit-identical "
            "whatever --batch-size (equal to --batch-size 1), at batch-size-1 speed.",
        ),
    ] = False,
) -> None:
    """Audit a text-to-image checkpoint's subgroup distribution against a target.

    Generates N images per prompt with per-image seeds, classifies each, and estimates each
    group's true share corrected for the classifier's held-out errors (PACC by default; ACC and
    EM beside it), with intervals that resample those errors too. A share beyond what the errors
    explain is reported as a censored bound. Writes OUT/audit.json, OUT/audit.html,
    OUT/images.csv and a sample grid per group. Finished shards
    in OUT/shards are reused when re-run with the same settings, so a killed audit resumes;
    a finished audit in OUT is replaced only with --overwrite.
    With --reference (one attribute) audit.json's readers section also gives, per group, the
    share of images outside the real reference images' support in the classifier's feature
    space (and each --reader's): a reading bent by how the images look is a number, not a guess.
    Runs on a GPU when there is one (--device, --dtype); the first output lines say which
    pipeline was found (SD 1.x/2.x, SDXL) and where it ran.
    Several processes: torchrun --standalone --nproc_per_node 2 -m medfair_cli.main audit ... on
    CPUs, accelerate launch --num_processes 4 -m medfair_cli.main audit ... on 4 GPUs.

    For example:

        medfair audit models/t2medi --classifier models/sex-classifier --target target.json
        --prompt "Axial FLAIR MRI of the brain showing a glioma." --n-per-prompt 256
        --reference data/target_set --out reports/audit

    Several attributes (marginals, joint cells with Holm-adjusted tests, a heatmap):

        medfair audit models/t2medi --classifier sex=models/sex --classifier age_band=models/age
        --target joint-target.json --prompts prompts.txt --out reports/audit-joint

    A MONAI latent diffusion bundle conditioned on sex, read by a 3-D classifier:

        medfair audit models/brain-ldm --classifier models/sex-3d --target target.json
        --condition sex --n-per-prompt 64 --out reports/audit-ldm
    """
    from medfair_audit import AuditConfig, run_audit
    from medfair_audit.config import Speed
    from medfair_audit.target import parse_shares

    if condition is not None:
        texts, mode = _condition_prompts(checkpoint, condition, prompts, prompt), "conditional"
    else:
        texts = prompt_texts(prompts, prompt)
    shares = (
        None
        if condition_distribution is None
        else parse_shares(condition_distribution, param="condition_distribution")
    )
    classifier_spec, target_value = classifiers_and_target(classifier, target)
    if precision is None and max_n_per_prompt is not None:
        raise ConfigError("--max-n-per-prompt goes with --precision", param="max_n_per_prompt")
    if precision is not None:
        n_per_prompt = max_n_per_prompt if max_n_per_prompt is not None else MAX_N_PER_PROMPT
    config = AuditConfig(
        placement=placement(device, dtype),
        speed=Speed(
            compile=compile,
            channels_last=channels_last,
            vae_slicing=vae_slicing,
            vae_tiling=vae_tiling,
        ),
        overlap=overlap,
        batch_invariant=batch_invariant,
        checkpoint=checkpoint,
        classifier=classifier_spec,
        prompts=texts,
        target=target_value,
        min_cell_n=min_cell_n,
        out=out,
        reference=reference,
        reference_split=reference_split,
        readers=reader or (),
        frd=frd,
        features=features,
        mode=mode,
        condition_distribution=shares,
        n_boot=n_boot,
        half_width=half_width,
        precision=precision,
        min_n_per_prompt=min_n_per_prompt,
        save_images=save_images,
        images_from=images_from,
        trust_pickle=trust_pickle,
        overwrite=overwrite,
        allow_outside_root=allow_outside_root,
        generation=GenerationConfig(
            n_per_prompt=n_per_prompt,
            seed=seed,
            steps=steps,
            guidance=guidance,
            shard_size=batch_size,
        ),
    )
    with quiet_libraries(), progress_bar() as callback:
        result = run_audit(config, progress=callback)
    if result is None:  # a non-main process under accelerate
        return
    from medfair_audit import num_processes
    from medfair_audit.models.pipelines import describe

    world = num_processes(config.placement.device)
    where = result.settings
    out_console.print(f"pipeline: {describe(dict(result.settings.pipeline))}")
    out_console.print(
        f"{result.n_images} images ({world} process{'es' if world > 1 else ''}, "
        f"{where.device}, {where.dtype})"
    )
    for line in result.summary():
        out_console.print(line)
    out_console.print(f"report: {out / 'audit.html'}")
    for w in result.warnings:
        out_console.print(f"warning: {w}")
