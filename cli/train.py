"""``medfair train``: the CLIP model, the T2MedI pipeline and the subgroup classifier."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from medfair_audit.exceptions import ConfigError

from ._common import (
    AllowOutsideRoot,
    Device,
    Dtype,
    Overwrite,
    Seed,
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
TrustPickle = Annotated[
    bool,
    typer.Option(
        "--trust-pickle",
        help="Allow .bin/.pt/.ckpt weights (loading a pickle runs code from the file).",
    ),
]


@app.command("clip")
def clip(
    data: Data,
    out: Annotated[Path, typer.Option("--out", "-o", help="CLIP folder to write.")],
    epochs: Annotated[int, typer.Option(min=1, help="Passes over the training pairs.")] = 6,
    batch_size: Annotated[int, typer.Option(min=2)] = 128,
    width: Annotated[int, typer.Option(min=8, help="Hidden size of both towers.")] = 128,
    layers: Annotated[int, typer.Option(min=1, help="Transformer layers per tower.")] = 2,
    lr: Annotated[float, typer.Option(help="Peak learning rate.")] = 1e-3,
    seed: Seed = 0,
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
    from medfair_audit.models.clip import CLIPTrainConfig, train_clip

    config = CLIPTrainConfig(
        epochs=epochs, batch_size=batch_size, width=width, layers=layers, lr=lr, seed=seed
    )
    with quiet_libraries(), progress_bar() as callback:
        result = train_clip(
            data,
            out,
            config,
            overwrite=overwrite,
            placement=placement(device, dtype),
            allow_outside_root=allow_outside_root,
            progress=callback,
        )
    out_console.print(
        f"wrote {result.path}: held-out image→text recall@1 {result.recall_at_1:.3f} "
        f"(chance {result.chance:.3f}, n={result.n_heldout}) in {result.seconds:.0f} s"
    )


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
    unet_steps: Annotated[int, typer.Option(min=1, help="UNet training steps.")] = 700,
    vae_steps: Annotated[
        int, typer.Option(min=0, help="VAE training steps (0 with --init keeps its VAE).")
    ] = 250,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    lr: Annotated[float, typer.Option(help="UNet peak learning rate.")] = 5e-4,
    caption_dropout: Annotated[
        float, typer.Option(help="Probability of the empty prompt (for guidance).")
    ] = 0.1,
    ema: Annotated[bool, typer.Option("--ema/--no-ema", help="Save EMA weights.")] = True,
    checkpoint_every: Annotated[int, typer.Option(min=0, help="Steps between checkpoints.")] = 250,
    unet_channels: Annotated[str, typer.Option(help="UNet channels per level.")] = "48,96,96",
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from OUT.partial/ checkpoints.")
    ] = False,
    keep_checkpoints: Annotated[bool, typer.Option("--keep-checkpoints")] = False,
    trust_pickle: TrustPickle = False,
    seed: Seed = 0,
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
    from medfair_audit.models.t2medi import T2IConfig, train_t2i

    config = T2IConfig(
        unet_steps=unet_steps,
        vae_steps=vae_steps,
        batch_size=batch_size,
        lr=lr,
        caption_dropout=caption_dropout,
        ema=ema,
        checkpoint_every=checkpoint_every,
        unet_channels=[int(c) for c in split_list(unet_channels) or []] or (0,),
        seed=seed,
    )
    with quiet_libraries(), progress_bar() as callback:
        result = train_t2i(
            data,
            out,
            config,
            clip=clip,
            init=init,
            resume=resume,
            overwrite=overwrite,
            trust_pickle=trust_pickle,
            keep_checkpoints=keep_checkpoints,
            placement=placement(device, dtype),
            allow_outside_root=allow_outside_root,
            progress=callback,
        )
    vae = f"VAE loss {result.vae_loss:.4f}, " if result.vae_loss is not None else ""
    out_console.print(
        f"wrote {result.path}: {vae}UNet loss {result.unet_loss:.4f} in {result.seconds:.0f} s"
    )


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
    widths: Annotated[
        str, typer.Option(help="Channels of the four ResNet stages, comma-separated.")
    ] = "16,32,64,128",
    epochs: Annotated[int, typer.Option(min=1, help="Most epochs (early stopping).")] = 25,
    patience: Annotated[int, typer.Option(min=1)] = 5,
    batch_size: Annotated[int, typer.Option(min=2)] = 64,
    lr: Annotated[float, typer.Option()] = 2e-3,
    seed: Seed = 0,
    overwrite: Overwrite = False,
    device: Device = "auto",
    dtype: Dtype = "auto",
    allow_outside_root: AllowOutsideRoot = False,
) -> None:
    """Train the subgroup classifier (small ResNet), calibrate it, and evaluate it.

    Writes the model, classifier.json (groups, temperature) and evaluation.json (held-out
    confusion matrix, accuracy, balanced accuracy, ROC AUC, ECE, per-subgroup rates).

    For example:

        medfair train classifier --data data/target_set --attribute sex --out models/sex-clf

    One classifier per attribute for a several-attribute audit:

        medfair train classifier --data data/target_set --attribute age_band --out models/age-clf
    """
    from medfair_audit.models.classifier import ClassifierConfig, train_classifier

    try:
        width_list = tuple(int(w) for w in split_list(widths) or ())
    except ValueError:
        raise ConfigError(
            f"expected integers like 16,32,64,128, got '{widths}'", param="widths"
        ) from None
    config = ClassifierConfig(
        widths=width_list,
        depths=(1,) * len(width_list),
        epochs=epochs,
        patience=patience,
        batch_size=batch_size,
        lr=lr,
        seed=seed,
    )
    with quiet_libraries(), progress_bar() as callback:
        result = train_classifier(
            data,
            out,
            config,
            attribute=attribute or ["sex"],
            groups=split_list(groups),
            splits=tuple(split_list(splits) or ()),
            overwrite=overwrite,
            placement=placement(device, dtype),
            allow_outside_root=allow_outside_root,
            progress=callback,
        )
    ev = result.evaluation
    auc = "–" if ev["roc_auc"] is None else f"{ev['roc_auc']:.3f}"
    out_console.print(
        f"wrote {result.path}: test balanced accuracy {ev['balanced_accuracy']:.3f}, "
        f"ROC AUC {auc}, ECE {ev['ece']:.3f} (n={ev['n']}) "
        f"in {result.seconds:.0f} s"
    )
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
                    else (f"{values[m]:.3f}" if m in values else "-")
                    for m in metrics
                ),
            )
    out_console.print(table)
