"""Audit speed against plain diffusers, FID cost, audit memory, processes, remediation memory.

Sections (``--sections``, default all that apply to the device):

* ``throughput``: images/s of (a) the naive diffusers loop (one pipeline call per image),
  (b) the batched diffusers loop (one call per batch, per-image CPU generators), (c) medfair's
  generation engine as ``medfair audit`` runs it (the same batches plus classification, FID
  features, uint8 conversion and atomic shard writes; with and without overlap) and (d) the
  whole ``run_audit`` (plus statistics and reports), on one checkpoint, steps and guidance,
  measured in one run after one warm-up batch each. On the CPU with the demo's T2MedI; on a GPU
  with the SD-1.5-size scale fixture in each ``--dtypes``.
* ``speedups``: images/s of the generation engine under each speed-up (``--compile``,
  ``--channels-last``, fused attention projections alone) beside the batched diffusers loop,
  each on a freshly loaded pipeline, one warm-up batch each (for ``--compile`` that batch pays
  the compile: its seconds are recorded); on accelerators in the first of ``--dtypes``.
* ``fid``: FID from moments (eigh, medfair) vs ``scipy.linalg.sqrtm`` at d = 2048: time and
  agreement.
* ``memory``: peak resident memory of a whole audit of 1k, 5k and 20k images (a fresh process
  each; the tiny SD-1.5 fixture at 1 step so the run is about the audit's own bookkeeping:
  images stream through shards and only moments, probabilities and a bounded sample stay).
* ``processes``: wall time of the same audit with 1 and 2 processes (torchrun on CPUs).
* ``quality``: the share of a 256-image CPU audit (the demo's T2MedI, classifier features, the
  target set's ``test`` split as reference) spent in the quality block (FID, KID, PRDC, CMMD, the
  Vendi intervals), timed inside the audit; the target is under 15%.
* ``remediation``: seconds per step and peak accelerator memory of remediation at SD-1.5 size
  at the defaults (λ = 1 with a CLIP ViT-L/14-size image encoder) and with the memory-saving
  settings, one row each (:data:`REMEDIATION_ROWS`); on the CPU it runs the tiny fixture to
  keep the code path tested.

Every timed loop is warmed up first. The JSON is rewritten after every section (and every
remediation row), so a run stopped by a time limit keeps what it measured. ``--size tiny`` runs
the GPU plan with the tiny fixture (a dry run, also on the CPU).

Writes ``benchmarks/audit.json`` (``--out``) and, with ``--render``, the table between the
``audit-bench`` markers of ``benchmarks/RESULTS.md`` (GPU rows from ``benchmarks/audit-gpu.json``
when present, else "not measured").

Run (CPU): .venv/bin/python benchmarks/bench_audit.py [--demo reports/demo]
Run (GPU): python benchmarks/bench_audit.py --device cuda --out benchmarks/audit-gpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _markers import paste

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
PROMPTS = ["Axial FLAIR MRI of the brain showing a glioma.", "Axial T1-weighted MRI of the brain."]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device: torch.device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def _batched_loop(pipe, seeds: list[int], count: int, batch: int, steps: int,
                  guidance: float) -> None:  # fmt: skip
    """Plain diffusers, one call per batch of ``batch`` with per-image CPU generators."""
    for a in range(0, count, batch):
        gens = [torch.Generator().manual_seed(s) for s in seeds[a : min(a + batch, count)]]
        pipe(
            prompt=PROMPTS[0], num_images_per_prompt=len(gens), generator=gens,
            num_inference_steps=steps, guidance_scale=guidance, output_type="pt",
        )  # fmt: skip


def _engine_run(pipe, clf, extractor, count: int, batch: int, steps: int, guidance: float,
                folder: str, *, overlap: bool) -> None:  # fmt: skip
    """``count`` images through medfair's engine as ``medfair audit`` draws them: generation,
    classification, features and shard writes."""
    from medfair_audit.generation import GenerationConfig
    from medfair_audit.generation.engine import run_shards
    from medfair_audit.models.pipelines import generate

    cfg = GenerationConfig(n_per_prompt=count, steps=steps, guidance=guidance, shard_size=batch)
    run_shards(
        lambda p, s: generate(pipe, p, s, steps=steps, guidance=guidance),
        PROMPTS[:1], cfg, folder, analyse=lambda x: (clf.predict_proba(x), extractor(x)),
        settings={}, overlap=overlap,
    )  # fmt: skip


def throughput(checkpoint: Path, classifier: Path, placement, n: int, batch: int, steps: int,
               guidance: float, *, statistics: bool = True, save=None) -> dict:  # fmt: skip
    """Images/s of the naive loop, the batched loop, the engine and the whole audit.

    ``save(result)`` is called after every row, so a stopped run keeps the rows it measured.
    """
    from medfair_audit import AuditConfig, run_audit
    from medfair_audit.generation import GenerationConfig, image_seed
    from medfair_audit.models.classifier import SubgroupClassifier
    from medfair_audit.models.features import get_extractor
    from medfair_audit.models.pipelines import load_pipeline, pipeline_info
    from medfair_audit.target import parse_target

    device = placement.device
    pipe = load_pipeline(checkpoint, placement=placement)
    clf = SubgroupClassifier.from_pretrained(classifier).to(device)
    extractor = get_extractor("classifier", clf, device=device)
    seeds = [image_seed(0, 0, i) for i in range(n)]
    kw = {"num_inference_steps": steps, "guidance_scale": guidance, "output_type": "pt"}

    def naive(count: int) -> None:
        for s in seeds[:count]:
            pipe(prompt=PROMPTS[0], generator=torch.Generator().manual_seed(s), **kw)

    def batched(count: int) -> None:
        _batched_loop(pipe, seeds, count, batch, steps, guidance)

    def engine(count: int, folder: str, overlap: bool) -> None:
        _engine_run(pipe, clf, extractor, count, batch, steps, guidance, folder, overlap=overlap)

    info = pipeline_info(pipe)
    result = {
        "pipeline": {k: info[k] for k in ("class", "unet_parameters", "resolution")},
        "placement": placement.describe(),
        "n": n, "batch": batch, "steps": steps, "guidance": guidance,
        "images_per_s": {},
    }  # fmt: skip
    rows = result["images_per_s"]

    def put(label: str, value: float) -> None:
        rows[label] = value
        if save:
            save(result)

    with torch.inference_mode():
        # Warm-up of every loop that is timed: kernels, allocator, autotuning.
        naive(1)
        batched(min(batch, n))
        with tempfile.TemporaryDirectory() as tmp:
            engine(min(batch, n), tmp, overlap=False)
        naive_n = max(1, n // 4)  # the naive loop is timed on a quarter of the images
        put(
            "naive diffusers loop (1 image per call)",
            naive_n / _timed(lambda: naive(naive_n), device),
        )
        put(f"batched diffusers loop ({batch} per call)", n / _timed(lambda: batched(n), device))
        for overlap in (False, True):
            with tempfile.TemporaryDirectory() as tmp:
                label = f"medfair engine: + classifier, features, shard writes{', overlapped' if overlap else ''}"  # noqa: E501
                put(label, n / _timed(lambda o=overlap, d=tmp: engine(n, d, o), device))
    if statistics:
        del pipe  # run_audit loads its own

        def audit_config(out: Path, count: int) -> AuditConfig:
            return AuditConfig(
                checkpoint=checkpoint, classifier=classifier, prompts=PROMPTS[:1],
                target=parse_target("male=0.58,female=0.42"), out=out,
                generation=GenerationConfig(
                    n_per_prompt=count, steps=steps, guidance=guidance, shard_size=batch
                ),
                placement=placement,
            )  # fmt: skip

        with tempfile.TemporaryDirectory() as tmp:
            run_audit(audit_config(Path(tmp) / "warm", min(batch, n)))  # warm-up, file cache
            put(
                "medfair audit end to end (+ loading the pipeline, hashing the checkpoint, "
                "statistics, reports)",
                n / _timed(lambda: run_audit(audit_config(Path(tmp) / "a", n)), device),
            )
    return result


#: The ``speedups`` rows: label -> (plain diffusers loop?, fused projections, Speed settings).
SPEEDUPS: dict[str, tuple[bool, bool, dict]] = {
    "batched diffusers loop": (True, False, {}),
    "medfair engine, eager": (False, False, {}),
    "medfair engine, --channels-last": (False, False, {"channels_last": True}),
    "medfair engine, --channels-last + fused attention projections": (
        False, True, {"channels_last": True},
    ),
    "medfair engine, --compile --channels-last": (
        False, False, {"compile": True, "channels_last": True},
    ),
}  # fmt: skip


def speedups(checkpoint: Path, classifier: Path, placement, n: int, batch: int, steps: int,
             guidance: float, *, save=None) -> dict:  # fmt: skip
    """Images/s of the engine under each speed-up of :data:`SPEEDUPS`, a fresh pipeline each.

    ``--compile`` fuses the attention projections itself (``apply_speed``). ``save(result)`` is
    called after every row.
    """
    from medfair_audit.config import Speed
    from medfair_audit.generation import image_seed
    from medfair_audit.models.classifier import SubgroupClassifier
    from medfair_audit.models.features import get_extractor
    from medfair_audit.models.pipelines import apply_speed, fuse_qkv, load_pipeline

    device = placement.device
    clf = SubgroupClassifier.from_pretrained(classifier).to(device)
    extractor = get_extractor("classifier", clf, device=device)
    seeds = [image_seed(0, 0, i) for i in range(n)]
    result = {
        "placement": placement.describe(), "n": n, "batch": batch, "steps": steps,
        "guidance": guidance, "rows": {},
    }  # fmt: skip
    for label, (plain, fused, speed) in SPEEDUPS.items():
        pipe = load_pipeline(checkpoint, placement=placement)
        if fused:
            fuse_qkv(pipe)
        apply_speed(pipe, Speed(**speed))

        def run(count: int, folder: str, pipe=pipe, plain=plain) -> None:
            if plain:
                _batched_loop(pipe, seeds, count, batch, steps, guidance)
            else:
                _engine_run(pipe, clf, extractor, count, batch, steps, guidance, folder,
                            overlap=device.type != "cpu")  # fmt: skip

        with torch.inference_mode():
            with tempfile.TemporaryDirectory() as tmp:
                warm = _timed(lambda: run(min(batch, n), tmp), device)
            with tempfile.TemporaryDirectory() as tmp:
                seconds = _timed(lambda: run(n, tmp), device)
        result["rows"][label] = {"images_per_s": n / seconds, "warmup_s": warm}
        print(f"  {label}: {n / seconds:.2f} images/s (warm-up {warm:.0f} s)", flush=True)
        if save:
            save(result)
        del pipe
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return result


def fid_timing(d: int = 2048, repeats: int = 3) -> dict:
    """FID from moments (eigh) vs scipy.linalg.sqrtm on two d×d covariances."""
    from scipy import linalg

    from medfair_audit.metrics.functional import fid_from_moments

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(3 * d, d)), rng.normal(size=(3 * d, d)) @ rng.normal(size=(d, d)) / 40
    mu1, mu2 = a.mean(0), b.mean(0)
    s1, s2 = np.cov(a, rowvar=False), np.cov(b, rowvar=False)

    def reference() -> float:
        covmean = linalg.sqrtm(s1 @ s2)
        covmean = covmean.real if np.iscomplexobj(covmean) else covmean
        return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))

    times = {"moments": [], "sqrtm": []}
    for _ in range(repeats):
        t = time.perf_counter()
        ours = fid_from_moments(mu1, s1, mu2, s2)
        times["moments"].append(time.perf_counter() - t)
        t = time.perf_counter()
        ref = reference()
        times["sqrtm"].append(time.perf_counter() - t)
    best = {k: min(v) for k, v in times.items()}
    return {
        "d": d, "seconds": best, "speedup": best["sqrtm"] / best["moments"],
        "fid": {"moments": ours, "sqrtm": ref}, "relative_difference": abs(ours - ref) / abs(ref),
    }  # fmt: skip


MEMORY_CHILD = r"""
import json, resource, sys, torch
from pathlib import Path
from medfair_audit import AuditConfig, run_audit
from medfair_audit.generation import GenerationConfig
from medfair_audit.target import parse_target
torch.set_num_threads(int(sys.argv[5]))
ckpt, clf, out, n = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
cfg = AuditConfig(checkpoint=ckpt, classifier=clf, prompts=["Axial FLAIR MRI of the brain."],
    target=parse_target("male=0.58,female=0.42"), out=out, n_boot=1000,
    generation=GenerationConfig(n_per_prompt=n, steps=1, guidance=1.0, shard_size=250))
run_audit(cfg)
print(json.dumps({"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def memory(classifier: Path, sizes: tuple[int, ...], threads: int) -> dict:
    """Peak RSS of whole audits of ``sizes`` images with the tiny SD-1.5 fixture (1 step)."""
    from medfair_audit.models.sd_like import save_sd_like

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_sd_like(Path(tmp) / "sd15", "sd15", "tiny")
        for n in sizes:
            start = time.perf_counter()
            out = subprocess.run(
                [sys.executable, "-c", MEMORY_CHILD, ckpt, classifier, Path(tmp) / f"a{n}",
                 str(n), str(threads)],
                capture_output=True, text=True, check=True, cwd=ROOT,
            )  # fmt: skip
            rss = json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mib"]
            rows[str(n)] = {"peak_rss_mib": rss, "seconds": time.perf_counter() - start}
            print(f"  memory {n}: {rss:.0f} MiB", flush=True)
    peaks = [r["peak_rss_mib"] for r in rows.values()]
    return {"rows": rows, "max_over_min": max(peaks) / min(peaks)}


def processes(checkpoint: Path, classifier: Path, n: int, steps: int) -> dict:
    """Wall time of one audit with 1 and 2 processes (torchrun, CPU)."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for world in (1, 2):
            cmd = [
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={world}", "-m", "medfair_cli.main", "audit", str(checkpoint),
                "--classifier", str(classifier), "--target", "male=0.58,female=0.42",
                "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--n-per-prompt", str(n // 2),
                "--steps", str(steps), "--batch-size", "16", "--out", f"{tmp}/w{world}",
            ]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(max(1, 2 // world))}
            start = time.perf_counter()
            subprocess.run(cmd, check=True, cwd=ROOT, env=env, capture_output=True)
            rows[str(world)] = time.perf_counter() - start
    return {"n": n, "seconds": rows, "speedup": rows["1"] / rows["2"]}


#: Remediation rows: label → settings on top of the defaults (``RemediationConfig()``: LoRA rank
#: 8, 8 images per prompt, T = 10 DDIM steps, K = 2, λ = 1 with a CLIP ViT-L/14-size image
#: encoder, UNet steps recomputed in backward; the VAE decode checkpointed on accelerators).
REMEDIATION_ROWS = {
    "defaults": {},
    "defaults + --unet-checkpointing (memory-saving)": {"unet_checkpointing": True},
    "defaults, --no-decode-checkpointing": {"decode_checkpointing": False},
    "defaults, K = 4, --unet-checkpointing": {"grad_steps": 4, "unet_checkpointing": True},
}


def remediation(classifier: Path, placement, size: str, steps: int = 2, save=None) -> dict:
    """Seconds per step and peak accelerator memory of remediation at SD-1.5 size, per row of
    :data:`REMEDIATION_ROWS`, each after one warm-up step; peak memory counts from before the
    models are loaded (weights, optimiser state and the step)."""
    from medfair_audit._dist import accelerator
    from medfair_audit.models.sd_like import save_clip_like, save_sd_like
    from medfair_audit.remediation import RemediationConfig
    from medfair_audit.remediation.step import train_step
    from medfair_audit.remediation.wiring import load_models
    from medfair_audit.target import parse_target

    device = placement.device
    doc = {"size": size, "placement": placement.describe(), "rows": {}}

    def one(ckpt: Path, clip: Path, label: str, settings: dict) -> dict:
        cfg = RemediationConfig(**settings)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        acc = accelerator(device)
        m = load_models(ckpt, classifier, parse_target("male=0.58,female=0.42"),
                        PROMPTS, [(clip, 1.0)], cfg, placement, False)  # fmt: skip
        opt = torch.optim.AdamW(list(m.trainable.values()), lr=cfg.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        scaler = placement.grad_scaler()
        train_step(m, cfg, 0, opt, sched, acc, None, scaler)  # warm-up

        def run() -> None:
            for s in range(1, steps + 1):
                train_step(m, cfg, s, opt, sched, acc, None, scaler)

        seconds = _timed(run, device) / steps
        peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
        row = {
            "settings": settings, "batch_per_prompt": cfg.batch_per_prompt,
            "T": cfg.sampling_steps, "K": cfg.k, "lambda_clip": cfg.lambda_clip,
            "unet_checkpointing": cfg.unet_checkpointing,
            "decode_checkpointing": m.decode_checkpointing, "seconds_per_step": seconds,
            "peak_gib": peak,
        }  # fmt: skip
        print(f"  remediation, {label}: {seconds:.2f} s/step, peak {peak} GiB", flush=True)
        return row

    with tempfile.TemporaryDirectory() as tmp:
        ckpt = save_sd_like(Path(tmp) / "sd15", "sd15", size)
        clip = save_clip_like(Path(tmp) / "clip", size)
        for label, settings in REMEDIATION_ROWS.items():
            try:
                doc["rows"][label] = one(ckpt, clip, label, settings)
            except torch.OutOfMemoryError as exc:
                doc["rows"][label] = {"settings": settings, "error": f"out of memory: {exc}"}
            if save:
                save(doc)
    return doc


TABLE_GPU_MISSING = "| GPU | not measured: no GPU was at hand (`scripts/gpu_check.sh`) | | |"


def quality_share(demo: Path, n: int = 256, steps: int = 25) -> dict:
    """Seconds of a whole 256-image audit and of its quality block (timed where it runs)."""
    from medfair_audit import AuditConfig, run_audit
    from medfair_audit.audit import estimate as stage
    from medfair_audit.audit.result import AuditResult
    from medfair_audit.demo import HELD_OUT_PROMPTS
    from medfair_audit.generation import GenerationConfig
    from medfair_audit.target import parse_target

    block: list[float] = []
    inner = stage.quality_by_group

    def timed(*a, **kw):
        start = time.perf_counter()
        out = inner(*a, **kw)
        block.append(time.perf_counter() - start)
        return out

    def config(out: Path, count: int) -> AuditConfig:
        prompts = HELD_OUT_PROMPTS[:8]
        return AuditConfig(
            checkpoint=demo / "models" / "t2medi", classifier=demo / "models" / "classifier",
            prompts=prompts, target=parse_target("male=0.58,female=0.42"), out=out,
            reference=demo / "data" / "target_set", reference_split="test",
            generation=GenerationConfig(n_per_prompt=count // len(prompts), steps=steps),
        )  # fmt: skip

    stage.quality_by_group = timed
    try:
        with tempfile.TemporaryDirectory() as tmp:
            run_audit(config(Path(tmp) / "warm", 16))
            block.clear()
            seconds = _timed(lambda: run_audit(config(Path(tmp) / "a", n)), torch.device("cpu"))
            result = AuditResult.load(Path(tmp) / "a")
    finally:
        stage.quality_by_group = inner
    q = result.quality
    return {
        "n": result.n_images,
        "steps": steps,
        "features": result.settings.feature_name,
        "equal_n": q.equal_n,
        "draws": q.draws,
        "audit_seconds": seconds,
        "quality_seconds": block[0],
        "share": block[0] / seconds,
        "n_reference": q.by_group["overall"].n_reference,
    }


def _loop(images_per_s: dict, start: str) -> float | None:
    """The images/s of the loop whose label starts with ``start`` (``None``: not measured)."""
    return next((v for k, v in images_per_s.items() if k.startswith(start)), None)


def _fmt_rows(doc: dict, where: str) -> list[str]:
    lines = []
    for t in doc.get("throughput", []):
        p = t["placement"]
        head = f"{p.get('name', where)}, {p['dtype']}"
        model = f"{t['pipeline']['class']} {t['pipeline']['unet_parameters'] / 1e6:.0f}M UNet"
        base = t["images_per_s"]
        ref, naive = _loop(base, "batched"), _loop(base, "naive")
        for label, value in base.items():
            ratios = [f"{value / ref:.2f}× batched" if ref else "", f"{value / naive:.1f}× naive"
                      if naive else ""]  # fmt: skip
            ratio = ", ".join(r for r in ratios if r)
            lines.append(
                f"| {head} | {model}, {t['steps']} steps, batch {t['batch']} | {label} | "
                f"{value:.2f}{f' ({ratio})' if ratio else ''} |"
            )
    return lines


#: The GPU targets: images/s in half precision at SD-1.5 size, the engine's ratio to the
#: batched diffusers loop, remediation's peak memory at the defaults.
TARGET_IMAGES_PER_S, TARGET_RATIO, TARGET_REMEDIATION_GIB = 8.0, 1.25, 24.0
#: ... and its ratio to the naive loop (one pipeline call per image) of the throughput rows.
TARGET_NAIVE = 9.0


def _speedup_lines(gpu: dict | None) -> list[str]:
    sp = (gpu or {}).get("speedups")
    if not sp:
        return []
    rows = sp["rows"]
    ref = rows.get("batched diffusers loop", {}).get("images_per_s")
    p = sp["placement"]
    lines = [
        "",
        f"Speed-ups of the engine ({p.get('name', p['device'])}, {p['dtype']}, SD-1.5 size, "
        f"{sp['n']} images, {sp['steps']} steps, batch {sp['batch']}; a freshly loaded "
        "pipeline each, after one warm-up batch, whose seconds include any compiling):",
        "",
        "| loop | images/s | × batched diffusers | warm-up batch s |",
        "|---|---:|---:|---:|",
    ]
    for label, r in rows.items():
        ratio = f"{r['images_per_s'] / ref:.2f}" if ref else "–"
        lines.append(f"| {label} | {r['images_per_s']:.2f} | {ratio} | {r['warmup_s']:.0f} |")
    if sp.get("note"):
        lines += ["", f"{sp['note']}."]
    best_label, best = max(rows.items(), key=lambda kv: kv[1]["images_per_s"])
    verdict = [
        f"{best['images_per_s']:.2f} images/s with {best_label.split(', ', 1)[-1]} "
        f"({'meets' if best['images_per_s'] >= TARGET_IMAGES_PER_S else 'misses'} the "
        f"{TARGET_IMAGES_PER_S:g} images/s target)"
    ]
    if ref:
        ratio = best["images_per_s"] / ref
        verdict.append(
            f"{ratio:.2f}× the batched diffusers loop "
            f"({'meets' if ratio >= TARGET_RATIO else 'misses'} the {TARGET_RATIO:g}× target)"
        )
    naive = next(
        (
            _loop(t["images_per_s"], "naive")
            for t in (gpu or {}).get("throughput", [])
            if t["placement"]["dtype"] == p["dtype"]
        ),
        None,
    )
    if naive:
        ratio = best["images_per_s"] / naive
        verdict.append(
            f"{ratio:.1f}× the naive loop of the {p['dtype']} throughput rows "
            f"({'meets' if ratio >= TARGET_NAIVE else 'misses'} the {TARGET_NAIVE:g}× target)"
        )
    eager = rows.get("medfair engine, eager")
    if eager and ref:
        verdict.append(
            f"eager, the engine runs at {eager['images_per_s'] / ref:.2f}× the loop: the pipeline "
            "call is the work, and only compiling it speeds it up"
        )
        n = _break_even(rows)
        if n:
            verdict.append(f"the compile pays for itself after about {n:,.0f} images")
    rem = (gpu or {}).get("remediation", {}).get("rows", {}).get("defaults", {})
    if rem.get("peak_gib") is not None:
        ok = rem["peak_gib"] <= TARGET_REMEDIATION_GIB
        verdict.append(
            f"remediation at the defaults peaks at {rem['peak_gib']:.1f} GiB "
            f"({'within' if ok else 'over'} {TARGET_REMEDIATION_GIB:g} GiB)"
        )
    return [*lines, "", "Against the GPU targets: " + "; ".join(verdict) + "."]


def _break_even(rows: dict) -> float | None:
    """Images after which ``--compile`` has paid for its compile: its extra first-batch seconds
    over the seconds per image it saves (to the hundred; ``None`` if it saves nothing)."""
    eager, best = rows["medfair engine, eager"], rows["medfair engine, --compile --channels-last"]
    saved = 1 / eager["images_per_s"] - 1 / best["images_per_s"]
    if saved <= 0:
        return None
    return round((best["warmup_s"] - eager["warmup_s"]) / saved, -2)


def gpu_summary(gpu: dict | None) -> str:
    """The README's sentence on GPU speed, from the record (``gpu-speed`` markers)."""
    sp = (gpu or {}).get("speedups")
    if not sp:
        return "GPU speed: not measured yet (`scripts/gpu_check.sh`)."
    rows = sp["rows"]
    ref = rows["batched diffusers loop"]["images_per_s"]
    eager = rows["medfair engine, eager"]["images_per_s"]
    cl = rows["medfair engine, --channels-last"]["images_per_s"]
    best = rows["medfair engine, --compile --channels-last"]
    p = sp["placement"]
    n = _break_even(rows)
    even = f"; it pays for itself after about {n:,.0f} images" if n else ""
    return (
        f"Measured on one {p.get('name', p['device'])} ({gpu['date']}, {p['dtype']}, SD-1.5 "
        f"size, {sp['steps']} steps, batch {sp['batch']}): `--compile --channels-last` draws "
        f"{best['images_per_s']:.1f} images/s, {best['images_per_s'] / ref:.2f}× the batched "
        f"diffusers loop, after a first batch of {best['warmup_s']:.0f} s that compiles; eager, "
        f"the engine matches the loop ({eager / ref:.2f}×) and `--channels-last` alone is "
        f"slower ({cl / ref:.2f}×){even}."
    )


def render(cpu: dict, gpu: dict | None) -> None:
    lines = [
        f"CPU run: {cpu['date']}, {cpu['machine']}.",
        "",
        "| device | model | loop | images/s |",
        "|---|---|---|---|",
        *_fmt_rows(cpu, "CPU"),
        *(_fmt_rows(gpu, "GPU") if gpu else [TABLE_GPU_MISSING]),
    ]
    if gpu:
        lines.insert(1, f"GPU run: {gpu['date']}, {gpu['machine']}.")
    f = cpu.get("fid")
    if f:
        lines += [
            "",
            f"FID at d = {f['d']}: from moments (eigh) {f['seconds']['moments']:.2f} s, "
            f"`scipy.linalg.sqrtm` {f['seconds']['sqrtm']:.2f} s ({f['speedup']:.1f}× faster); "
            f"relative difference {f['relative_difference']:.1e}.",
        ]
    mem = cpu.get("memory")
    if mem:
        cells = ", ".join(f"{n} images {r['peak_rss_mib']:.0f} MiB" for n, r in mem["rows"].items())
        lines += ["", f"Audit peak memory (whole process, tiny SD-1.5 fixture at 1 step, 250 per "
                      f"shard, 1000 bootstrap resamples): {cells}; largest/smallest "
                      f"{mem['max_over_min']:.2f}: images stream through shards, and the peak is "
                      "set by loading the models, not by the number of images."]  # fmt: skip
    pr = cpu.get("processes")
    if pr:
        s = pr["seconds"]
        lines += [
            "",
            f"Processes ({pr['n']} images, demo model, 2 cores): 1 process {s['1']:.0f} s, "
            f"2 processes {s['2']:.0f} s ({pr['speedup']:.2f}×).",
        ]
    q = cpu.get("quality")
    if q:
        lines += [
            "",
            f"Quality block ({q['n']}-image CPU audit, demo model, {q['features']} features, "
            f"{q['n_reference']} reference images, {q['draws']} draws per size; FID, KID, "
            f"PRDC, Vendi intervals): {q['quality_seconds']:.1f} s of {q['audit_seconds']:.0f} s "
            f"({100 * q['share']:.1f}% of the audit; target < 15%)"
            + (f"; {q['date']}, {q['note']}." if q.get("note") else "."),
        ]
    lines += _speedup_lines(gpu)
    rem = (gpu or {}).get("remediation")
    if rem and all("settings" in r for r in rem["rows"].values()):
        lines += ["", f"Remediation at SD-1.5 size ({rem['placement']['dtype']}; peak memory "
                      "from before loading: weights, optimiser state and one step):", "",
                      "| settings | images per prompt, T, K, λ | s/step | peak GiB |",
                      "|---|---|---:|---:|"]  # fmt: skip
        for label, r in rem["rows"].items():
            if "error" in r:
                lines.append(f"| {label} | | {r['error'].split(':')[0]} | |")
                continue
            lines.append(
                f"| {label} | {r['batch_per_prompt']}, {r['T']}, {r['K']}, {r['lambda_clip']:g} | "
                f"{r['seconds_per_step']:.2f} | "
                f"{'–' if r['peak_gib'] is None else format(r['peak_gib'], '.1f')} |"
            )
    else:
        lines += ["", "Remediation at SD-1.5 size on a GPU: not measured."]
    text = "\n".join(lines)
    path = HERE / "RESULTS.md"
    start, end = "<!-- audit-bench:start -->", "<!-- audit-bench:end -->"
    doc = path.read_text()
    if start not in doc:
        sys.exit(f"{path} has no audit-bench markers")
    pattern = re.escape(start) + ".*?" + re.escape(end)
    path.write_text(re.sub(pattern, lambda m: f"{start}\n{text}\n{end}", doc, flags=re.S))
    print(text)
    paste(ROOT / "README.md", "gpu-speed", gpu_summary(gpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--demo", type=Path, default=ROOT / "reports" / "demo")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtypes", default=None, help="comma-separated; default per device")
    parser.add_argument("--sections", default=None)
    parser.add_argument("--n", type=int, default=None)
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--out", type=Path, default=HERE / "audit.json")
    parser.add_argument("--render", action="store_true", help="only rewrite RESULTS.md")
    parser.add_argument(
        "--append", action="store_true",
        help="add to --out if it exists (throughput rows appended, other sections replaced)",
    )  # fmt: skip
    parser.add_argument(
        "--size", choices=("tiny", "full"), default=None,
        help="scale fixture on accelerators (default full: SD-1.5 size; tiny: a dry run)",
    )  # fmt: skip
    args = parser.parse_args()
    if args.render:
        gpu_path = HERE / "audit-gpu.json"
        gpu = json.loads(gpu_path.read_text()) if gpu_path.is_file() else None
        render(json.loads((HERE / "audit.json").read_text()), gpu)
        return
    from medfair_audit.config import Placement

    device = Placement(device=args.device).device
    gpu = device.type == "cuda"
    cpu_sections = "throughput,fid,memory,processes,quality"
    sections = (args.sections or ("throughput,remediation" if gpu else cpu_sections)).split(",")
    torch.set_num_threads(os.cpu_count() if gpu else 2)
    clf = args.demo / "models" / "classifier"
    doc: dict = {
        "date": dt.date.today().isoformat(),
        "machine": (torch.cuda.get_device_name(device) if gpu else f"{os.cpu_count()} CPU cores")
        + f", torch {torch.__version__}",
        "throughput": [],
    }
    if args.append and args.out.is_file():
        doc = {**json.loads(args.out.read_text()), "date": doc["date"]}

    def save(_: object = None) -> None:  # after every section: a killed run keeps what it has
        tmp = args.out.with_name(args.out.name + ".tmp")
        tmp.write_text(json.dumps(doc, indent=2) + "\n")
        tmp.replace(args.out)

    size = args.size or ("full" if gpu else "tiny")

    def fixture(placement: Placement) -> Path:
        """The SD-1.5-size scale fixture (``--size``) in the placement's dtype."""
        from medfair_audit.models.sd_like import save_sd_like

        return save_sd_like(Path(tempfile.mkdtemp()) / "sd15", "sd15", size, dtype=placement.dtype)

    if "throughput" in sections:
        dtypes = (args.dtypes or ("float16,bfloat16" if gpu else "float32")).split(",")
        for dtype in dtypes:
            placement = Placement(device=device, dtype=dtype)
            if gpu or args.size:
                ckpt, n, batch = fixture(placement), args.n or 128, args.batch or 32
            else:
                ckpt, n, batch = args.demo / "models" / "t2medi", args.n or 64, args.batch or 32
            print(f"throughput {dtype} ...", flush=True)
            slot = len(doc["throughput"])

            def partial(result: dict, slot: int = slot) -> None:
                doc["throughput"][slot:] = [result]
                save()

            doc["throughput"][slot:] = [
                throughput(ckpt, clf, placement, n, batch, args.steps, args.guidance, save=partial)
            ]
            print(json.dumps(doc["throughput"][-1]["images_per_s"], indent=1), flush=True)
            save()
    if "speedups" in sections:
        placement = Placement(device=device, dtype=(args.dtypes or "auto").split(",")[0])
        ckpt = fixture(placement) if gpu or args.size else args.demo / "models" / "t2medi"
        print(f"speed-ups {placement.describe()['dtype']} ...", flush=True)

        def partial_speedups(result: dict) -> None:
            doc["speedups"] = result
            save()

        doc["speedups"] = speedups(ckpt, clf, placement, args.n or 64, args.batch or 32,
                                   args.steps, args.guidance, save=partial_speedups)  # fmt: skip
        save()
    if "fid" in sections:
        doc["fid"] = fid_timing()
        print("fid", doc["fid"], flush=True)
        save()
    if "memory" in sections:
        doc["memory"] = memory(clf, (1000, 5000, 20000), threads=2)
        save()
    if "processes" in sections:
        doc["processes"] = processes(args.demo / "models" / "t2medi", clf, 64, args.steps)
        print("processes", doc["processes"], flush=True)
        save()
    if "quality" in sections:
        doc["quality"] = quality_share(args.demo)
        print("quality", doc["quality"], flush=True)
        save()
    if "remediation" in sections:
        placement = Placement(device=device, dtype=(args.dtypes or "auto").split(",")[0])

        def partial(rows: dict) -> None:
            doc["remediation"] = rows
            save()

        doc["remediation"] = remediation(clf, placement, size, save=partial)
    save()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
