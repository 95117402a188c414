"""``medfair demo``: the whole method on the embedded phantom data."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer

from ._common import Device, err_console, out_console, progress_bar, quiet_libraries


def demo(
    out: Annotated[
        Path, typer.Option("--out", "-o", help="Output folder.", file_okay=False)
    ] = Path("reports/demo"),
    fast: Annotated[
        bool,
        typer.Option("--fast", help="Test-fixture sizes: seconds, and models that show nothing."),
    ] = False,
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="The whole protocol at smaller sizes, about 10 minutes on 2 CPU cores: a real "
            "but noisier before/after effect, read by the independent evaluator; the report's "
            "columns say 'quick demo'.",
        ),
    ] = False,
    seed: Annotated[int, typer.Option(min=0, help="Seed of every stage.")] = 0,
    device: Device = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            help="Precision of the diffusion model in every stage: float32 (default; a GPU run "
            "then agrees with the committed CPU example within kernel tolerance), bfloat16, "
            "float16 or auto."
        ),
    ] = "float32",
    attributes: Annotated[
        str,
        typer.Option(
            help="sex (the default demo) or sex,age_band: the two-attribute pipeline (joint "
            "target, one classifier per attribute, joint audit and remediation) in OUT/attributes."
        ),
    ] = "sex",
    robust_guide: Annotated[
        bool,
        typer.Option(
            "--robust-guide",
            help="Also train the PGD-trained guide classifier-robust (about 5 more minutes on 2 "
            "CPU cores) and read the evaluator's audits with it; the transfer benchmark's "
            "robust variants guide with it.",
        ),
    ] = False,
    volumes: Annotated[
        bool,
        typer.Option(
            "--volumes",
            help="The 3-D path instead, in OUT/volumes: phantom volumes, a 3-D sex classifier, "
            "a small MONAI latent diffusion model conditioned on sex (a MONAI bundle), and its "
            "audit with --condition sex (conditioning fidelity, marginal share, 3-D FID/KID).",
        ),
    ] = False,
) -> None:
    """Run the embedded default end to end: phantom data, models, audit, remediation, report.

    Stages: the biased training corpus (85% male) and the BraTS18-like target set (58% male)
    with its target.json; CLIP, the T2MedI pipeline and the sex classifiers (the training
    classifier, an independent evaluator on other subjects, a second guide of another seed and
    width, and a radiomics reader of another model family on a phantom set of its own); the
    audit of the biased model (OUT/before, read by all of them, with the out-of-support share
    per group); remediation (OUT/models/t2medi-fair); the audit of the remediated model with the
    same seeds (OUT/after); the before-and-after report (OUT/report.html, report.md,
    report.tex). Finished stages are reused when re-run with the same settings. Most of an hour
    from scratch on 2 CPU cores (each stage's time is printed at the end and kept in
    OUT/demo.json); --quick runs the same protocol at smaller sizes in about 10 minutes.

    With --attributes sex,age_band it runs the two-attribute pipeline instead, in
    OUT/attributes: a corpus skewed in sex and age band, the default demo's T2MedI fine-tuned on
    it, sex and age-band classifiers, audits of the joint cells before and after joint
    remediation, and OUT/attributes/report.html (it trains the default demo's CLIP and T2MedI
    first if they are not there).

    For example:

        medfair demo --out reports/demo

        medfair demo --quick --out reports/demo-quick

        medfair demo --out reports/demo --attributes sex,age_band

        medfair demo --volumes --out reports/demo
    """
    from medfair_audit.demo import DemoConfig, run_demo

    start = time.perf_counter()

    def log(line: str) -> None:
        err_console.print(f"{time.perf_counter() - start:7.1f}s  {line}")

    if volumes:
        _volumes(out, fast=fast, seed=seed, device=device, dtype=dtype, log=log, start=start)
        return

    with quiet_libraries(), progress_bar() as callback:
        result = run_demo(
            DemoConfig(
                out=out,
                fast=fast,
                quick=quick,
                seed=seed,
                device=device,
                dtype=dtype,
                attributes=tuple(a for a in attributes.split(",") if a.strip()),
                robust_guide=robust_guide,
            ),
            progress=callback,
            log=log,
        )
    from medfair_audit.demo import stage_names

    for name in stage_names(result.stages):  # each stage's wall time (also in demo.json)
        st = result.stages[name]
        note = " (reused)" if st.get("reused") else ""
        out_console.print(f"{st.get('seconds') or 0:8.0f} s  {name}{note}")
    out_console.print(
        f"demo finished in {time.perf_counter() - start:.1f} s; outputs in {result.out}"
    )
    report = result.stages.get("report") or result.stages.get("sa_report")
    if report:
        out_console.print(f"before-and-after report: {report['paths'][0]}")


def _volumes(
    out: Path, *, fast: bool, seed: int, device: str, dtype: str, log: object, start: float
) -> None:
    """``--volumes``: the 3-D demo in OUT/volumes."""
    import dataclasses

    from medfair_audit.config import Placement
    from medfair_audit.demo_volumes import VolumeDemoConfig, run_volume_demo

    base = VolumeDemoConfig.tiny() if fast else VolumeDemoConfig()
    config = dataclasses.replace(
        base,
        out=out,
        placement=Placement(device=device, dtype=dtype),
        phantom=dataclasses.replace(base.phantom, seed=seed),
        classifier=dataclasses.replace(base.classifier, seed=seed),
        ldm=dataclasses.replace(base.ldm, seed=seed),
        generation=dataclasses.replace(base.generation, seed=seed),
    )
    with quiet_libraries(), progress_bar() as callback:
        result = run_volume_demo(config, progress=callback, log=log)
    for name, st in result.stages.items():
        note = " (reused)" if st.get("reused") else ""
        out_console.print(f"{st.get('seconds') or 0:8.0f} s  {name}{note}")
    audit = result.stages["audit3d"]
    out_console.print(
        f"3-D demo finished in {time.perf_counter() - start:.1f} s; audit report: "
        f"{Path(audit['path']) / 'audit.html'}"
    )
