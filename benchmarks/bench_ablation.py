"""λ = 0 ablation of the CLIP-consistency term, and the remediation result bar (remediation issue).

Needs a finished demo (``medfair demo``: ``before/``, ``after/`` and ``models/``). Remediates the
demo's biased T2MedI again with the demo's settings but ``lambda_clip = 0``, audits it with the
demo's audit seeds, and compares both remediated models with the biased one:

* KL(target ‖ generated) (raw and corrected) and its reduction, corrected male share and interval;
* FID/KID per subgroup against the real target-set images;
* drift of paired images (same prompt and seed): mean 1 − cos of the demo CLIP's image
  embeddings, mean absolute pixel change, the share whose predicted group changed, the pairs'
  pixel correlation, and the change of brain area where the label went from male to female.

Run: .venv/bin/python benchmarks/bench_ablation.py [DEMO_DIR]
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from medfair_audit import AuditConfig, run_audit
from medfair_audit.audit.result import format_estimate
from medfair_audit.demo import DEMO_PROMPTS, DemoConfig
from medfair_audit.models.clip import encode_images, load_clip
from medfair_audit.remediation import remediate
from medfair_audit.reporting.compare import audit_images
from medfair_audit.target import Target


def _images(folder: Path) -> tuple[np.ndarray, torch.Tensor, np.ndarray]:
    arrays = audit_images(folder)
    images = torch.from_numpy(arrays["images"]).float() / 127.5 - 1
    return arrays["seeds"], images, arrays["probs"].argmax(1)


def drift(before: Path, after: Path, clip: object) -> dict[str, float]:
    """Paired-image change between two audits made with the same seeds."""
    sa, ia, la = _images(before)
    sb, ib, lb = _images(after)
    assert np.array_equal(sa, sb), "the audits must use the same seeds"
    ea, eb = encode_images(clip, ia), encode_images(clip, ib)
    # Same anatomy and sequence: pixel correlation of each pair. Sex-linked change: the brain's
    # area (pixels above 10% intensity) after / before, for pairs whose label went male → female.
    a, b = ia[:, 0].flatten(1).numpy(), ib[:, 0].flatten(1).numpy()
    corr = np.array([np.corrcoef(x, y)[0, 1] for x, y in zip(a, b, strict=True)])
    ratio = ((b > -0.8).mean(1)) / ((a > -0.8).mean(1))
    male = 1  # groups are sorted: female, male
    flipped, kept = (la == male) & (lb != male), (la == male) & (lb == male)
    return {
        "clip_1_minus_cos": float((1 - (ea * eb).sum(-1)).mean()),
        "mean_abs_pixel_change_255": float((ia - ib).abs().mean() * 127.5),
        "changed_group": float((la != lb).mean()),
        "pixel_correlation_median": float(np.median(corr)),
        "pixel_correlation_p5": float(np.percentile(corr, 5)),
        "brain_area_ratio_male_to_female": float(ratio[flipped].mean()),
        "brain_area_ratio_male_kept": float(ratio[kept].mean()),
    }


def summary(audit: dict) -> dict:
    """The numbers of the result bar from one audit.json (FID/KID at the audit's equal n)."""
    reading, n = audit["default_reading"], str(audit["quality"]["equal_n"])
    at_n = {g: v["at_n"].get(n) for g, v in audit["quality"]["by_group"].items()}
    return {
        "male_raw": audit["proportions"]["raw"]["male"],
        "male_corrected": audit["proportions"][reading]["male"],
        "kl_raw": audit["distances"]["raw"]["kl_target_to_generated"],
        "kl_corrected": audit["distances"][reading]["kl_target_to_generated"],
        "equal_n": int(n),
        "fid": {g: v["fid"]["mean"] for g, v in at_n.items() if v},
        "kid": {g: [v["kid"]["mean"], v["kid"]["sd"]] for g, v in at_n.items() if v},
    }


def _reduction(before: dict, after: dict) -> float | None:
    """Relative KL change, only between two measured (not censored) values."""
    if before["value"] is None or after["value"] is None:
        return None
    return 1 - after["value"] / before["value"]


def main(demo: Path) -> None:
    torch.set_num_threads(2)
    cfg = DemoConfig(out=demo)
    models, out = demo / "models", demo / "ablation"
    target = Target.load(demo / "target.json")
    start = time.perf_counter()
    if not (out / "t2medi-fair-l0" / "model_index.json").is_file():
        remediate(
            models / "t2medi",
            classifier=models / "classifier",
            target=target,
            prompts=DEMO_PROMPTS,
            out=out / "t2medi-fair-l0",
            config=dataclasses.replace(cfg.remediation, lambda_clip=0.0),
            overwrite=True,
        )
    print(f"λ = 0 remediation: {time.perf_counter() - start:.0f} s", flush=True)
    if not (out / "after-l0" / "audit.json").is_file():
        run_audit(
            AuditConfig(
                checkpoint=out / "t2medi-fair-l0",
                classifier=models / "classifier",
                prompts=DEMO_PROMPTS,
                target=target,
                out=out / "after-l0",
                generation=cfg.audit_generation,
                reference=demo / "data" / "target_set",
                reference_split="test",
            )
        )
    clip, _ = load_clip(models / "clip")
    rows = {}
    for label, folder in (
        ("before", demo / "before"),
        ("after (λ=1)", demo / "after"),
        ("after (λ=0)", out / "after-l0"),
    ):
        rows[label] = summary(json.loads((folder / "audit.json").read_text()))
        if label != "before":
            rows[label]["drift"] = drift(demo / "before", folder, clip)
            rows[label]["kl_reduction"] = {
                kind: _reduction(rows["before"][f"kl_{kind}"], rows[label][f"kl_{kind}"])
                for kind in ("raw", "corrected")
            }
    for label, r in rows.items():
        m = r["male_corrected"]
        line = (
            f"{label:12s} male raw {r['male_raw']['value']:.3f}, "
            f"corrected {format_estimate(m, '.3f')}; "
            f"KL raw {format_estimate(r['kl_raw'], '.4f')}, "
            f"corrected {format_estimate(r['kl_corrected'], '.4f')}; "
            f"at n = {r['equal_n']}: "
            + ", ".join(f"FID {g} {v:.2f}" for g, v in r["fid"].items())
            + "; "
            + ", ".join(f"KID {g} {v[0]:.3f}±{v[1]:.3f}" for g, v in r["kid"].items())
        )
        if "drift" in r:
            d = r["drift"]
            line += (
                f"; drift 1-cos {d['clip_1_minus_cos']:.4f}, |Δpixel| "
                f"{d['mean_abs_pixel_change_255']:.2f}, group changed {d['changed_group']:.3f}"
                f"; pixel corr. median {d['pixel_correlation_median']:.3f}; brain area "
                f"male→female {d['brain_area_ratio_male_to_female']:.3f}, male kept "
                f"{d['brain_area_ratio_male_kept']:.3f}"
                + "; KL reduction "
                + ", ".join(
                    f"{kind} " + ("– (censored)" if v is None else f"{v:.1%}")
                    for kind, v in r["kl_reduction"].items()
                )
            )
        print(line)
    (out / "ablation.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path("reports/demo"))
