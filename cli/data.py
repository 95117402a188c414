"""``medfair data``: build the phantom, import BraTS18 or ROCO, compute target proportions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated

import typer

from medfair_audit.data import (
    SEQUENCES,
    AnatomyModel,
    BratsDataset,
    PhantomConfig,
    RocoDataset,
    build_phantom,
    build_phantom_volumes,
    check_out,
    export_image_folder,
    import_brats_volumes,
)
from medfair_audit.exceptions import ConfigError
from medfair_audit.target import parse_target, target_from_labels

from ._common import (
    AllowOutsideRoot,
    OutDir,
    Overwrite,
    OverwriteFile,
    Seed,
    out_console,
    progress_bar,
    split_list,
)

app = typer.Typer(
    help="Make and import data: the brain-MR phantom, BraTS18 volumes, ROCO captions, targets.",
    no_args_is_help=True,
)


@app.command("phantom")
def phantom(
    out: OutDir,
    n: Annotated[int, typer.Option("--n", min=1, help="Number of images.")] = 2000,
    seed: Seed = 0,
    size: Annotated[int, typer.Option(help="Image side in pixels (multiple of 8, 32-256).")] = 64,
    male_fraction: Annotated[
        float, typer.Option(help="Share of male subjects, e.g. 0.85 for a skewed corpus.")
    ] = 0.5,
    joint: Annotated[
        str | None,
        typer.Option(
            help="Sex × age band cell shares instead of --male-fraction, e.g. "
            "'female/<40=0.05,female/40-59=0.1,female/60+=0.05,male/<40=0.2,...' (left out: 0)."
        ),
    ] = None,
    age_bands: Annotated[
        str, typer.Option(help="Edges of the age_band column in years (<40, 40-59, 60+).")
    ] = "40,60",
    age_effect_scale: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Multiplier of the age effects on anatomy (1 = literature values; larger makes "
            "the age band easier to read from an image).",
        ),
    ] = 1.0,
    age_signs: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Scale of the signs of ageing a reader sees: white-matter hyperintensities "
            "and sulcal widening (0 = none, the default; 1 = published sizes; the "
            "two-attribute demo uses 5).",
        ),
    ] = 0.0,
    tumour_rate: Annotated[float, typer.Option(help="Share of images with a glioma.")] = 0.7,
    splits: Annotated[
        str, typer.Option(help="Split fractions, NAME=FRACTION pairs summing to 1.")
    ] = "train=0.8,val=0.1,test=0.1",
    sequences: Annotated[
        str, typer.Option(help=f"Sequences to draw from: any of {','.join(SEQUENCES)}.")
    ] = ",".join(SEQUENCES),
    bit_depth: Annotated[int, typer.Option(help="PNG bit depth: 8 or 16.")] = 8,
    caption_sex_rate: Annotated[
        float, typer.Option(help="Share of captions naming the patient's sex (0 = neutral).")
    ] = 0.0,
    effect_scale: Annotated[
        float,
        typer.Option(
            min=0.0,
            help="Multiplier of the male-female anatomy differences "
            "(1 = literature values; default 2 makes a good but imperfect classifier).",
        ),
    ] = 2.0,
    volumes: Annotated[
        bool,
        typer.Option(
            "--volumes",
            help="Write 3-D NIfTI volumes in the BraTS layout instead of slices: --n subjects, "
            "each with t1, t1ce, t2, flair and seg; --size is the volume side in voxels (32-128).",
        ),
    ] = False,
    overwrite: Overwrite = False,
) -> None:
    """Build synthetic axial brain-MR slices from the MNI152 template that nilearn ships.

    Writes OUT/images/*.png, OUT/metadata.csv (file, subject, sex, age, age_band, tumour,
    sequence, caption, split, ...) and OUT/dataset.json. Same seed and options give identical
    files.

    With --volumes: whole deformed heads in the BraTS layout, OUT/HGG/<subject>/
    <subject>_<sequence>.nii.gz (t1, t1ce, t2, flair, seg; subjects without a glioma under
    OUT/healthy/), OUT/subjects.csv (Subject, Sex, Age: what `import-brats --sex-csv` reads),
    OUT/metadata.csv (one row per volume) and OUT/dataset.json.

    For example:

        medfair data phantom --out data/corpus --n 2000 --male-fraction 0.85 --seed 0

        medfair data phantom --volumes --out data/brats_like --n 200 --size 48 --tumour-rate 1
    """
    if volumes and caption_sex_rate:
        raise ConfigError("volumes carry no captions", param="caption_sex_rate")
    config = PhantomConfig(
        n=n,
        seed=seed,
        size=size,
        male_fraction=male_fraction,
        joint=joint,
        age_bands=age_bands,
        tumour_rate=tumour_rate,
        splits=splits,
        sequences=split_list(sequences) or [],
        bit_depth=bit_depth,
        caption_sex_rate=caption_sex_rate,
        anatomy=AnatomyModel(
            effect_scale=effect_scale, age_effect_scale=age_effect_scale, age_signs=age_signs
        ),
    )
    build = build_phantom_volumes if volumes else build_phantom
    with progress_bar() as callback:
        result = build(out, config, overwrite=overwrite, progress=callback)
    summary = ", ".join(
        f"{split}: {c['male']} male / {c['female']} female" for split, c in result.counts.items()
    )
    what = "subjects' volumes" if volumes else "images"
    out_console.print(f"wrote {config.n} {what} to {result.root} ({summary})")


@app.command("target")
def target(
    out: Annotated[Path, typer.Option("--out", "-o", help="target.json to write.", dir_okay=False)],
    labels: Annotated[
        Path | None, typer.Option(help="CSV with one row per labelled image or subject.")
    ] = None,
    column: Annotated[
        list[str] | None,
        typer.Option(
            help="Column of --labels holding the groups (default sex). Repeat it for a joint "
            "target over several attributes: --column sex --column age_band."
        ),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help="Count only rows whose 'split' column equals this.")
    ] = None,
    groups: Annotated[
        str | None,
        typer.Option(help="Known groups, comma-separated; others are an error, absent ones get 0."),
    ] = None,
    target_spec: Annotated[
        str | None,
        typer.Option(
            "--target", help="Inline proportions instead of --labels, e.g. 'male=0.58,female=0.42'."
        ),
    ] = None,
    name: Annotated[
        str | None,
        typer.Option(
            help="What the target stands for, shown in reports (default: BraTS18 for labels of a "
            "`medfair data import-brats` folder)."
        ),
    ] = None,
    overwrite: OverwriteFile = False,
) -> None:
    """Write target subgroup proportions (target.json) from labels or inline values.

    For example:

        medfair data target --labels data/brats_like/metadata.csv --column sex --out target.json

        medfair data target --target male=0.58,female=0.42 --out target.json

    Several columns give a joint target over their cells (female/<40, ..., with the marginals):
        medfair data target --labels data/brats/metadata.csv --column sex --column age_band
        --out target.json
    Inline joint cells name the attributes with --column (cells left out get 0):
        medfair data target --column sex --column age_band
        --target 'female/<40=0.1,female/40-59=0.2,...' --out target.json
    """
    columns = column or ["sex"]
    if (labels is None) == (target_spec is None):
        raise ConfigError(
            "give exactly one of --labels CSV or --target GROUP=P,...", param="labels"
        )
    if labels is not None:
        if groups and len(columns) > 1:
            raise ConfigError("--groups applies to a single --column", param="groups")
        result = target_from_labels(
            labels,
            column=columns if len(columns) > 1 else columns[0],
            groups=split_list(groups),
            where={"split": split} if split else None,
            name=name,
        )
    else:
        result = parse_target(target_spec, attribute=columns if len(columns) > 1 else columns[0])
        if name:
            result = dataclasses.replace(result, name=name)
    result.save(out, overwrite=overwrite)
    shares = ", ".join(f"{g}={p:.4f}" for g, p in result.proportions.items())
    if result.zero_cells:
        shares += f" ({len(result.zero_cells)} cells with no mass: {', '.join(result.zero_cells)})"
    out_console.print(
        f"wrote {out}: {result.attribute} {shares}"
        + (f" (n={result.n})" if result.n else "")
        + (f", {result.name}" if result.name else "")
    )


@app.command("import-brats")
def import_brats(
    root: Annotated[Path, typer.Option(help="Folder with HGG/ and LGG/ subject folders.")],
    sex_csv: Annotated[
        Path,
        typer.Option(
            help="CSV mapping subject → sex (M/F or Male/Female, any case); its other columns "
            "(e.g. Age, kept with an age_band) are kept."
        ),
    ],
    out: OutDir,
    sequence: Annotated[str, typer.Option(help="flair, t1, t1ce or t2.")] = "flair",
    slices: Annotated[
        str, typer.Option(help="'brain' (spread over brain slices) or 'tumour' (band around it).")
    ] = "brain",
    slices_per_subject: Annotated[int, typer.Option(min=1)] = 10,
    band: Annotated[int, typer.Option(min=0, help="Tumour band half-width in slices.")] = 5,
    subject_column: Annotated[
        str, typer.Option(help="Subject ID column of --sex-csv (any case).")
    ] = "subject",
    sex_column: Annotated[str, typer.Option(help="Sex column of --sex-csv (any case).")] = "sex",
    age_bands: Annotated[
        str, typer.Option(help="Edges of the age_band column made from an Age column, in years.")
    ] = "40,60",
    size: Annotated[
        int, typer.Option(min=8, help="Output side in pixels (in voxels with --volumes).")
    ] = 64,
    volumes: Annotated[
        bool,
        typer.Option(
            "--volumes",
            help="Write whole volumes instead of slices: every labelled subject's four "
            "sequences and segmentation, RAS+, isotropic, resampled to --size voxels a side, "
            "with a metadata.csv row per volume (what 'train classifier --volumes' reads); "
            "--sequence and the slice options are then not used.",
        ),
    ] = False,
    overwrite: Overwrite = False,
    allow_outside_root: AllowOutsideRoot = False,
) -> None:
    """Turn BraTS18 NIfTI volumes plus a sex table into an image folder medfair reads.

    The grade (HGG/LGG) comes from the folder; an Age column also gives an age_band column
    (<40, 40-59, 60+ by default), so `medfair data target --column sex --column age_band` works
    on the result as it is.

    For example:

        medfair data import-brats --root MICCAI_BraTS_2018 --sex-csv sex.csv --out data/brats

    Whole volumes at 64 voxels a side, for a 3-D classifier:

        medfair data import-brats --root MICCAI_BraTS_2018 --sex-csv sex.csv --volumes --out
        data/brats-volumes
    """
    check_out(out, overwrite=overwrite)  # before reading the volumes
    if volumes:
        with progress_bar() as callback:
            result = import_brats_volumes(
                root,
                sex_csv,
                out,
                size=size,
                subject_column=subject_column,
                sex_column=sex_column,
                age_bands=age_bands,
                overwrite=overwrite,
                allow_outside_root=allow_outside_root,
                progress=callback,
            )
        note = f"; {len(result.skipped)} subjects had no sex label" if result.skipped else ""
        out_console.print(
            f"wrote {result.n_volumes} volumes of {result.n_subjects} subjects to {out}{note}"
        )
        return
    dataset = BratsDataset(
        root,
        sex_csv,
        sequence=sequence,
        slices=slices,
        slices_per_subject=slices_per_subject,
        band=band,
        subject_column=subject_column,
        sex_column=sex_column,
        size=size,
        allow_outside_root=allow_outside_root,
        age_bands=age_bands,
    )
    with progress_bar() as callback:
        export_image_folder(dataset, out, overwrite=overwrite, progress=callback)
    note = f"; {len(dataset.skipped)} subjects had no sex label" if dataset.skipped else ""
    out_console.print(f"wrote {len(dataset)} slices to {out}{note}")


@app.command("import-roco")
def import_roco(
    images: Annotated[Path, typer.Option(help="Folder with the images.")],
    captions: Annotated[Path, typer.Option(help="File of '<id>\\t<caption>' lines.")],
    out: OutDir,
    size: Annotated[int, typer.Option(min=8, help="Output side in pixels.")] = 64,
    overwrite: Overwrite = False,
    allow_outside_root: AllowOutsideRoot = False,
) -> None:
    """Turn ROCO-style images and captions into an image folder medfair reads.

    For example:

        medfair data import-roco --images roco/images --captions roco/captions.txt --out data/roco
    """
    check_out(out, overwrite=overwrite)  # before reading the images
    dataset = RocoDataset(images, captions, size=size, allow_outside_root=allow_outside_root)
    with progress_bar() as callback:
        export_image_folder(dataset, out, overwrite=overwrite, progress=callback)
    note = f"; {len(dataset.missing)} captions had no image" if dataset.missing else ""
    out_console.print(f"wrote {len(dataset)} images to {out}{note}")
