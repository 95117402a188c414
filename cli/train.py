"""``medfair train``: the CLIP model, the T2MedI pipeline and the subgroup classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medfair_audit.config import (
    ClassifierConfig,
    ClassifierJob,
    CLIPJob,
    CLIPTrainConfig,
    T2IConfig,
    T2IJob,
)
from medfair_audit.exceptions import ConfigError

from ._common import (
    AllowOutsideRoot,
    Device,
    Dtype,
    KeepCheckpoints,
    Overwrite,
    Resume,
    Seed,
    TrustPickle,
    config_from,
    defaults,
    joined,
    out_console,
    placement,
    progress_bar,
    quiet_libraries,
    split_list,
)

app = typer.Typer(
    help="Train the models medfair needs: CLIP, the T2MedI pipeline, the subgroup classifier.",
    no_args_is_help=True,
)

Data = Annotated[
    Path, typer.Option("--data", help="Image folder with metadata.csv (e.g. from `medfair data`).")
]
CLIP, T2I, CLF = defaults(CLIPTrainConfig), defaults(T2IConfig), defaults(ClassifierConfig)
VOL = vars(ClassifierConfig.volumes())


@app.command("clip")
def clip(
    data: Data,
    out: Annotated[Path, typer.Option("--out", "-o", help="CLIP folder to write.")],
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training pairs.")] = CLIP[
        "epochs"
    ],
    batch_size: Annotated[int, typer.Option(min=2, help="Pairs per contrastive batch.")] = CLIP[
        "batch_size"
    ],
    width: Annotated[int, typer.Option(min=8, help="Hidden size of both towers.")] = CLIP["width"],
    layers: Annotated[int, typer.Option(min=1, help="Transformer layers per tower.")] = CLIP[
        "layers"
    ],
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = CLIP["lr"],
    seed: Seed = CLIP["seed"],
    overwrite: Overwrite = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    allow_outside_root: AllowOutsideRoot = False,
) -> None:
    """Train a small CLIP contrastively on (image, caption) pairs, with its own BPE tokenizer.

    Its text tower becomes the frozen text encoder of the T2MedI model; its vision tower is the
    default image encoder of remediation's CLIP-consistency term. Prints held-out image→text
    recall@1.

    For example:

        medfair train clip --data data/corpus --out models/clip
    """
    from medfair_audit.models.clip import train_clip

    config = config_from(CLIPTrainConfig, locals())
    with quiet_libraries(), progress_bar() as callback:
        result = train_clip(
            CLIPJob(
                data=data,
                out=out,
                config=config,
                overwrite=overwrite,
                placement=placement(device, dtype),
                allow_outside_root=allow_outside_root,
            ),
            progress=callback,
        )
    for line in result.summary():
        out_console.print(line)


@app.command("t2i")
def t2i(
    data: Data,
    out: Annotated[Path, typer.Option("--out", "-o", help="Pipeline folder to write.")],
    clip: Annotated[
        Path | None,
        typer.Option("--clip", help="CLIP folder: its text tower is the frozen text encoder."),
    ] = None,
    init: Annotated[
        Path | None,
        typer.Option(
            "--init", help="Existing pipeline to fine-tune instead of training from scratch."
        ),
    ] = None,
    unet_steps: Annotated[int, typer.Option(min=1, help="UNet training steps.")] = T2I[
        "unet_steps"
    ],
    vae_steps: Annotated[
        int, typer.Option(min=0, help="VAE training steps (0 with --init keeps its VAE).")
    ] = T2I["vae_steps"],
    vae_crop: Annotated[
        int,
        typer.Option(
            min=0,
            help=f"Train the VAE's first steps ({T2I['vae_crop_share']:.0%}) on random crops of "
            "this side, a multiple of 4 below the image size: 32 on 64² images costs about a "
            "quarter per step (0: whole images throughout).",
        ),
    ] = T2I["vae_crop"],
    batch_size: Annotated[int, typer.Option(min=1, help="Latents per UNet step.")] = T2I[
        "batch_size"
    ],
    lr: Annotated[float, typer.Option(help="UNet peak learning rate.")] = T2I["lr"],
    caption_dropout: Annotated[
        float, typer.Option(help="Probability of the empty prompt (for guidance).")
    ] = T2I["caption_dropout"],
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Save EMA weights.")] = T2I["ema"],
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Steps between checkpoints.")] = T2I[
        "checkpoint_every"
    ],
    unet_channels: Annotated[str, typer.Option(help="UNet channels per level.")] = joined(
        T2I["unet_channels"]
    ),
    resume: Resume = False,
    keep_checkpoints: KeepCheckpoints = False,
    trust_pickle: TrustPickle = False,
    seed: Seed = T2I["seed"],
    overwrite: Overwrite = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    allow_outside_root: AllowOutsideRoot = False,
) -> None:
    """Train the T2MedI latent diffusion pipeline (VAE, then UNet) with a frozen CLIP text encoder.

    Writes a standard Stable Diffusion pipeline folder that DiffusionPipeline.from_pretrained
    loads. Checkpoints go to OUT.partial/; --resume continues an interrupted run.

    For example:

        medfair train t2i --data data/corpus --clip models/clip --out models/t2medi

        medfair train t2i --data data/roco --init models/t2medi --vae-steps 0 --out models/ft
    """
    from medfair_audit.models.t2medi import train_t2i

    try:
        channels = [int(c) for c in split_list(unet_channels) or []] or (0,)
    except ValueError:
        raise ConfigError(
            f"expected integers like 48,96,96, got '{unet_channels}'", param="unet_channels"
        ) from None
    config = config_from(T2IConfig, locals(), unet_channels=channels)
    with quiet_libraries(), progress_bar() as callback:
        result = train_t2i(
            T2IJob(
                data=data,
                out=out,
                config=config,
                clip=clip,
                init=init,
                resume=resume,
                overwrite=overwrite,
                trust_pickle=trust_pickle,
                keep_checkpoints=keep_checkpoints,
                placement=placement(device, dtype),
                allow_outside_root=allow_outside_root,
            ),
            progress=callback,
        )
    for line in result.summary():
        out_console.print(line)


@app.command("classifier")
def classifier(
    data: Data,
    out: Annotated[Path, typer.Option("--out", "-o", help="Classifier folder to write.")],
    attribute: Annotated[
        list[str] | None,
        typer.Option(
            help="metadata.csv column to predict (default sex), e.g. age_band. Repeat it for one "
            "joint classifier over the columns' cells (--attribute sex --attribute age_band)."
        ),
    ] = None,
    groups: Annotated[
        str | None, typer.Option(help="Known groups, comma-separated (default: those found).")
    ] = None,
    splits: Annotated[
        str,
        typer.Option(
            help="The split column's values used as train,val,test (e.g. eval_train,eval_val,test "
            "for an evaluation classifier trained on other subjects)."
        ),
    ] = "train,val,test",
    volumes: Annotated[
        bool,
        typer.Option(
            "--volumes",
            help="Train a 3-D classifier (MONAI's ResNet, architecture resnet3d) on NIfTI "
            "volumes, as written by 'medfair data phantom --volumes'. Its defaults: "
            f"--image-size {VOL['image_size']}, --widths {joined(VOL['widths'])}, --batch-size "
            f"{VOL['batch_size']}.",
        ),
    ] = False,
    sequence: Annotated[
        str, typer.Option(help="With --volumes: the sequence to train on (t1, t1ce, t2, flair).")
    ] = "t1",
    image_size: Annotated[
        int | None,
        typer.Option(
            min=8,
            help=f"Input side in pixels (default {CLF['image_size']}), or in voxels with "
            f"--volumes (default {VOL['image_size']}).",
        ),
    ] = None,
    widths: Annotated[
        str | None,
        typer.Option(
            help="Channels of the four ResNet stages, comma-separated (default "
            f"{joined(CLF['widths'])}).",
            show_default=False,
        ),
    ] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping).")] = CLF[
        "epochs"
    ],
    patience: Annotated[
        int, typer.Option(min=1, help="Stop after this many epochs without improvement.")
    ] = CLF["patience"],
    batch_size: Annotated[
        int | None,
        typer.Option(
            min=2, help=f"Images per step (default {CLF['batch_size']}).", show_default=False
        ),
    ] = None,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = CLF["lr"],
    seed: Seed = CLF["seed"],
    architecture: Annotated[
        str,
        typer.Option(
            help="resnet (a small ResNet) or radiomics (logistic regression on size, shape and "
            "intensity features: a reader of another model family, e.g. an independent "
            "evaluator; ignores --widths/--epochs)."
        ),
    ] = CLF["architecture"],
    robust: Annotated[
        str,
        typer.Option(
            help="none, noise (Gaussian noise of sd --robust-eps on every training image) or pgd "
            "(adversarial training in an L2 ball of radius --robust-eps): a classifier whose "
            "gradients follow anatomy, to guide remediation."
        ),
    ] = CLF["robust"],
    robust_eps: Annotated[
        float, typer.Option(help="Noise sd or PGD L2 radius, in [-1, 1] pixel units.")
    ] = CLF["robust_eps"],
    robust_steps: Annotated[int, typer.Option(help="PGD steps per batch.")] = CLF["robust_steps"],
    overwrite: Overwrite = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    allow_outside_root: AllowOutsideRoot = False,
) -> None:
    """Train a subgroup classifier (small ResNet, radiomics, or 3-D), calibrate and evaluate it.

    Writes the model, classifier.json (groups, temperature) and evaluation.json (held-out
    confusion matrix, accuracy, balanced accuracy, ROC AUC, ECE, per-subgroup rates).

    For example:

        medfair train classifier --data data/target_set --attribute sex --out models/sex-clf

    One classifier per attribute for a several-attribute audit:

        medfair train classifier --data data/target_set --attribute age_band --out models/age-clf

    A robust guide for remediation, and an evaluator of another model family:

        medfair train classifier --data data/target_set --robust pgd --out models/sex-robust

        medfair train classifier --data data/target_set --architecture radiomics --out
        models/sex-radiomics

    A 3-D classifier of whole T1 volumes:

        medfair train classifier --data data/volumes --volumes --sequence t1 --out models/sex-3d
    """
    from medfair_audit.models.classifier import train_classifier

    if volumes and architecture not in (CLF["architecture"], "resnet3d"):
        raise ConfigError(
            f"--volumes trains the resnet3d architecture, not '{architecture}'",
            param="architecture",
        )
    base = VOL if volumes else CLF
    try:
        width_list = tuple(int(w) for w in split_list(widths) or ()) or tuple(base["widths"])
    except ValueError:
        raise ConfigError(
            f"expected integers like 16,32,64,128, got '{widths}'", param="widths"
        ) from None
    config = config_from(
        ClassifierConfig,
        locals(),
        widths=width_list,
        depths=(1,) * len(width_list),
        image_size=image_size or base["image_size"],
        batch_size=batch_size or base["batch_size"],
        architecture="resnet3d" if volumes else architecture,
        **({"patience": base["patience"]} if volumes and patience == CLF["patience"] else {}),
    )
    with quiet_libraries(), progress_bar() as callback:
        result = train_classifier(
            ClassifierJob(
                data=data,
                out=out,
                config=config,
                attribute=attribute or ["sex"],
                groups=split_list(groups),
                splits=tuple(split_list(splits) or ()),
                sequence=sequence if volumes else None,
                overwrite=overwrite,
                placement=placement(device, dtype),
                allow_outside_root=allow_outside_root,
            ),
            progress=callback,
        )
    for line in result.summary():
        out_console.print(line)
    ev = result.evaluation
    positive = ev.get("positive_group")
    table = Table(
        title="per-subgroup metrics (test split)",
        caption=f"rates treat '{positive}' as the positive class" if positive else None,
    )
    metrics = ["count", "accuracy", "selection_rate", "false_positive_rate", "false_negative_rate"]
    table.add_column("subgroup")
    for m in metrics:
        table.add_column(m.replace("_", " "), justify="right")
    for column, groups_ in ev.get("by_group", {}).items():
        for group, values in groups_.items():
            table.add_row(
                f"{column}={group}",
                *(
                    f"{values[m]:.0f}"
                    if m == "count"
                    else (f"{values[m]:.3f}" if values.get(m) is not None else "-")
                    for m in metrics
                ),
            )
    out_console.print(table)
