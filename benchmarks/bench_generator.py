"""Does a longer-trained generator make the remediation hold? The demo's UNet, trained on.

The classifiers read generated images off their training manifold, and the transfer table's
other draw of the models (seed 1) has the worse biased model by FID. Here each given demo's
T2MedI UNet trains ``--extra`` more steps on the same corpus (``medfair train t2i --init``:
its autoencoder and text encoder kept, a new warm-up and cosine schedule, the same batch size
and learning rate), into ``DEMO/generator/unet-plus-N/`` beside links to the demo's data and
classifiers. The biased model is audited on the held-out prompts as ``bench_transfer.py`` does
(64 images per prompt, the evaluator and every reader, FID/KID at n = 256 against the target
set's real test images), then remediated with the demo's default (``bench_transfer`` variant
``single``, or the ``--variants`` named; the draw's own seed) and audited again. The demo's own
models (``DEMO/transfer/``, from ``bench_transfer.py``) are the rows to compare with. Writes
``benchmarks/generator.json`` and the table between the ``generator-table`` markers of
``benchmarks/RESULTS.md``; ``--add`` puts the runs measured now into the committed record
instead (a row of the same draw, generator and variant replaced; FID/KID at the record's n),
and ``--draw-name`` names the draw as ``bench_transfer.py`` does.

Run: .venv/bin/python benchmarks/bench_generator.py --run reports/demo --run reports/demo-seed1
     [--extra 700] [--threads 2] [--variants single,text] [--add] [--draw-name NAME]
     .venv/bin/python benchmarks/bench_generator.py --render   (the table again)
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from _markers import paste
from bench_transfer import (
    VARIANTS,
    _audit,
    _config,
    _fid_kid_at,
    _point,
    _pp,
    _remediate,
    draw_of,
    fid_kid_at_common_n,
    merge_rows,
    row_of,
    tuning_gaps,
)

from medfair_audit.config import T2IConfig, T2IJob
from medfair_audit.models.t2medi import train_t2i

HERE = Path(__file__).resolve().parent
VARIANT = "single"


def _linked(demo: Path, work: Path) -> None:
    """``work`` as a demo folder: links to ``demo``'s data, target and classifiers."""
    (work / "models").mkdir(parents=True, exist_ok=True)
    for name in ("data", "target.json", "demo.json"):
        if not (work / name).exists():
            (work / name).symlink_to((demo / name).resolve())
    for model in (demo / "models").iterdir():
        if (
            model.name not in ("t2medi", "t2medi-fair")
            and not (work / "models" / model.name).exists()
        ):
            (work / "models" / model.name).symlink_to(model.resolve())


def trained_on(demo: Path, extra: int) -> tuple[Path, float | None]:
    """The demo folder whose UNet trained ``extra`` steps more (trained if missing), seconds."""
    work = demo / "generator" / f"unet-plus-{extra}"
    _linked(demo, work)
    out = work / "models" / "t2medi"
    if (out / "model_index.json").is_file():
        return work, None
    seed = _config(demo).seed
    start = time.perf_counter()
    train_t2i(
        T2IJob(
            data=demo / "data" / "corpus",
            out=out,
            init=demo / "models" / "t2medi",
            config=T2IConfig(seed=seed + 100, vae_steps=0, unet_steps=extra),
            overwrite=True,
        )
    )
    return work, time.perf_counter() - start


def rows_of(
    demo: Path,
    generator: str,
    extra_seconds: float | None,
    variants: tuple[str, ...] = (VARIANT,),
    draw_name: str | None = None,
) -> list[dict]:
    """The biased model of ``demo`` and its remediation by each of ``variants``: their held-out
    audits' rows."""
    cfg = _config(demo)
    work = demo / "transfer"
    biased = row_of("biased", None, {}, _audit(demo, demo / "models" / "t2medi",
                                               work / "audit-biased", cfg), {})  # fmt: skip
    rows = [biased]
    for name in variants:
        variant = VARIANTS[name]
        run = work / f"{name}-s{cfg.seed}"
        timing = _remediate(demo, cfg, variant, cfg.seed, run / "model")
        tuned = row_of(name, cfg.seed, variant, _audit(demo, run / "model", run / "audit", cfg),
                       timing)  # fmt: skip
        tuned["kept_step"] = json.loads((run / "model" / "remediation.json").read_text()).get(
            "kept_step"
        )
        rows.append(tuned)
    for r in rows:
        r |= {"draw": cfg.seed, "generator": generator, "unet_seconds": extra_seconds}
        if draw_name:
            r["draw_name"] = draw_name
    return rows


def add_rows(doc: dict, rows: list[dict]) -> list[str]:
    """Put ``rows`` into the record ``doc`` (FID/KID at its n; a row of the same draw, generator
    and variant replaced); the rows replaced, by variant and draw.

    Raises:
        SystemExit: a new row has fewer images than the record's n.
    """
    n = doc["quality_n"]
    if any(r["quality"]["overall"].at(n) is None for r in rows):
        raise SystemExit(f"--add: a new row has fewer than the record's {n} images for FID/KID")
    _fid_kid_at(rows, n)
    for r in rows:
        del r["quality"]

    doc["rows"], replaced = merge_rows(
        doc["rows"], rows, key=lambda r: (draw_of(r), r["generator"], r["variant"])
    )
    return replaced


def _share(row: dict, who: str, ci: bool = False) -> str:
    est = row["male"].get(who)
    if est is None:
        return "–"
    value = _point(est)
    if not ci or not est.get("ci"):
        return f"{value:.3f}"
    lo, hi = est["ci"]
    return f"{value:.3f} [{lo:.3f}, {hi:.3f}]"


def _fid(row: dict) -> str:
    fid = row.get("fid")
    return f"{fid['mean']:.2f} ± {fid['sd']:.2f}" if fid else "–"


def render(doc: dict) -> str:
    """The RESULTS table of ``generator.json``."""
    lines = [
        "Held-out prompts, 64 images each; target 58% male. Remediation: the `bench_transfer.py` "
        f"variant named in the model column (`{VARIANT}`: the demo's default), tuning seed = the "
        "seed the draw's models were trained with. PACC male share with "
        "95% interval by the evaluator; the training classifier (the guide) and the radiomics "
        "reader on the same images; gap = guide − evaluator; tuning's part = the gap minus the "
        "biased model's of the same draw and generator; FID (mean ± sd over subsamples; "
        f"n = {doc['quality_n']}).",
        "",
        "| models | generator | model | evaluator | guide | reader | gap | tuning's part | FID "
        "| kept step |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    tuning_gaps(doc["rows"], key=lambda r: (draw_of(r), r["generator"]))
    for r in doc["rows"]:
        lines.append(
            f"| {draw_of(r)} | {r['generator']} | {r['variant']} | "
            f"{_share(r, 'evaluator', ci=True)} | {_share(r, 'classifier')} | "
            f"{_share(r, 'reader')} | {_pp(r['gap'])} | {_pp(r.get('tuning_gap'))} | {_fid(r)} | "
            f"{r.get('kept_step', '–') or '–'} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", action="append", default=[], type=Path, metavar="DEMO")
    ap.add_argument("--extra", type=int, default=700, help="more UNet steps (default 700)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--render", action="store_true", help="only the table, from generator.json")
    ap.add_argument("--variants", default=VARIANT, help=f"remediations (default {VARIANT})")
    ap.add_argument("--draw-name", default=None, help="the draw's name in the table")
    ap.add_argument(
        "--add",
        action="store_true",
        help="put these runs into the committed record instead of writing a record of them only",
    )
    args = ap.parse_args()
    record = HERE / "generator.json"
    if not args.render:
        torch.set_num_threads(args.threads)
        variants = tuple(v for v in args.variants.split(",") if v)
        rows: list[dict] = []
        for demo in args.run:
            base = f"the demo's (UNet {T2IConfig().unet_steps} steps)"
            rows += rows_of(demo, base, None, variants, args.draw_name)
            work, seconds = trained_on(demo, args.extra)
            rows += rows_of(work, f"UNet +{args.extra} steps", seconds, variants, args.draw_name)
            print(f"{demo}: done", flush=True)
        if args.add:
            doc = json.loads(record.read_text())
            print(f"replaced: {add_rows(doc, rows) or 'none'}")
        else:
            doc = {"extra_steps": args.extra, "rows": rows}
            doc["quality_n"] = fid_kid_at_common_n(doc["rows"])
            for r in doc["rows"]:
                del r["quality"]  # the audits' entries; FID/KID at quality_n are kept
        record.write_text(json.dumps(doc, indent=1) + "\n")
    paste(HERE / "RESULTS.md", "generator-table", render(json.loads(record.read_text())))


if __name__ == "__main__":
    main()
