"""Quality bars of the models trained by the demo (models issue).

Given the demo folder (default reports/demo), measures:
* the classifier's held-out balanced accuracy and per-group table (from evaluation.json);
* T2MedI samples for sex-neutral prompts: the share classified male (vs the corpus's 85%),
  the classifier's mean confidence on generated vs. real images, and KID in the classifier's
  feature space between generated and real images, next to a blurred and a noise baseline;
* a grid of samples, saved as PNG for a look (``DEMO/models/samples.png``);
* the training times and CLIP's held-out recall from the demo's ``demo.json``.

Writes ``benchmarks/models.json`` and the table between the ``models-table`` markers of the
README and of ``benchmarks/RESULTS.md``.

Run: .venv/bin/python benchmarks/bench_models.py [DEMO_DIR] [N_PER_PROMPT]
     .venv/bin/python benchmarks/bench_models.py --render   (the table again from models.json)
"""

from __future__ import annotations

import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from _markers import paste
from PIL import Image

from medfair_audit.data import ImageFolderDataset
from medfair_audit.demo import DemoConfig
from medfair_audit.metrics import kernel_inception_distance
from medfair_audit.models.classifier import SubgroupClassifier
from medfair_audit.models.t2medi import load_pipeline, sample_images
from medfair_audit.reporting import image_grid_png
from medfair_audit.training import load_images

HERE = Path(__file__).resolve().parent
PROMPTS = [
    "Axial FLAIR MRI of the brain showing a glioma in the left frontal lobe.",
    "Axial T1-weighted MRI of the brain with no focal lesion.",
    "Axial T2-weighted MRI of the brain showing a glioma in the right parietal lobe.",
    "Axial contrast-enhanced T1-weighted brain MRI: glioma of the left temporal lobe with rim "
    "enhancement.",
]


def main(demo: Path, n: int) -> None:
    torch.set_num_threads(2)
    clf = SubgroupClassifier.from_pretrained(demo / "models" / "classifier")
    ev = clf.evaluation
    print(
        f"classifier: test balanced accuracy {ev['balanced_accuracy']:.3f}, "
        f"AUC {ev['roc_auc']:.3f}, ECE {ev['ece']:.3f} (uncalibrated "
        f"{ev['ece_uncalibrated']:.3f}), T={ev['temperature']:.2f}"
    )
    for column, table in ev["by_group"].items():
        for g, m in table.items():
            print(f"  {column}={g}: " + ", ".join(f"{k} {v:.3f}" for k, v in m.items()))
    pipe = load_pipeline(demo / "models" / "t2medi")
    start = time.perf_counter()
    gen = torch.cat(
        [sample_images(pipe, p, n=n, seed=1000, prompt_index=i) for i, p in enumerate(PROMPTS)]
    )
    seconds = time.perf_counter() - start
    print(f"generated {len(gen)} images in {seconds:.1f} s ({len(gen) / seconds:.1f} images/s)")
    real_ds = ImageFolderDataset(demo / "data" / "corpus", split="test")
    real = load_images(real_ds)
    p_gen = clf.predict_proba(gen)
    p_real = clf.predict_proba(real)
    male = clf.groups.index("male")
    share = float((p_gen.argmax(1) == male).float().mean())
    real_share = float((p_real.argmax(1) == male).float().mean())
    real_true = float(np.mean(real_ds.labels("sex") == np.array("male")))
    print(
        f"share classified male: generated {share:.3f}, real corpus test split "
        f"{real_share:.3f} (true {real_true:.3f})"
    )
    confidence = {"generated": float(p_gen.max(1).values.mean()),
                  "real": float(p_real.max(1).values.mean())}  # fmt: skip
    print(
        f"mean classifier confidence: generated {confidence['generated']:.3f}, "
        f"real {confidence['real']:.3f}"
    )
    f_real = clf.features(real).numpy()
    half = len(f_real) // 2
    blurred = F.avg_pool2d(real, 5, stride=1, padding=2)
    noise = torch.randn_like(real).clamp(-1, 1)
    results = {}
    for name, imgs in (("generated", gen), ("blurred real", blurred), ("noise", noise)):
        f = clf.features(imgs).numpy()
        kid, sd = kernel_inception_distance(f, f_real[half:], subset_size=100)
        results[name] = kid
        print(f"KID(classifier features) {name} vs real: {kid:.4f} ± {sd:.4f}")
    kid, sd = kernel_inception_distance(f_real[:half], f_real[half:], subset_size=100)
    results["real vs real"] = kid
    print(f"KID real vs real (floor): {kid:.4f} ± {sd:.4f}")
    out = demo / "models" / "samples.png"
    picked = gen[torch.arange(0, len(gen), max(1, len(gen) // 32))][:32]
    png = image_grid_png(((picked.clamp(-1, 1) + 1) * 127.5).round().byte(), 8)
    Image.open(io.BytesIO(png)).resize((8 * 128, 4 * 128), Image.NEAREST).save(out)
    print(f"sample grid: {out}")
    doc = json.loads((demo / "demo.json").read_text())
    seed, stages = doc["config"]["seed"], doc["stages"]
    cfg = DemoConfig(out=demo, seed=seed)
    t2i = cfg.t2i
    by_sex = ev["by_group"]["sex"]
    record = {
        "demo_seed": seed,
        "seconds": {k: stages[k]["seconds"] for k in ("clip", "t2medi", "classifier")},
        "t2i": {"vae_steps": t2i.vae_steps, "unet_steps": t2i.unet_steps,
                "batch_size": t2i.batch_size},
        "clip": {"recall_at_1": stages["clip"]["recall_at_1"], "chance": stages["clip"]["chance"]},
        "classifier": {
            "n": ev["n"], "balanced_accuracy": ev["balanced_accuracy"], "roc_auc": ev["roc_auc"],
            "ece": ev["ece"], "temperature": ev["temperature"],
            "accuracy": {g: by_sex[g]["accuracy"] for g in ("female", "male")},
        },
        "prompts": len(PROMPTS),
        "n_per_prompt": n,
        "corpus_male_fraction": cfg.corpus_male_fraction,
        "male_share_generated": share,
        "male_share_real_classified": real_share,
        "male_share_real_true": real_true,
        "confidence": confidence,
        "kid": results,
        "images_per_second": len(gen) / seconds,
    }  # fmt: skip
    (HERE / "models.json").write_text(json.dumps(record, indent=2) + "\n")


def render(doc: dict) -> str:
    """The README's table of the demo's models (and the sentence that reads its male share)."""
    sec, t2i, clf, kid = doc["seconds"], doc["t2i"], doc["classifier"], doc["kid"]
    total = sum(sec.values()) / 60
    acc = clf["accuracy"]
    return "\n".join([
        "| | |",
        "|---|---|",
        f"| training time | CLIP {sec['clip']:.0f} s + T2MedI {sec['t2medi']:.0f} s (VAE "
        f"{t2i['vae_steps']} steps, UNet {t2i['unet_steps']} steps × {t2i['batch_size']}) + "
        f"classifier {sec['classifier']:.0f} s = **{total:.1f} min**; the whole demo's stage "
        "times are in *What the demo shows* |",
        f"| CLIP | held-out image→text recall@1 {doc['clip']['recall_at_1']:.3f} over "
        f"{round(1 / doc['clip']['chance'])} distinct captions (chance "
        f"{doc['clip']['chance']:.3f}) |",
        f"| sex classifier (test split of the target set, n={clf['n']}) | balanced accuracy "
        f"**{clf['balanced_accuracy']:.3f}**, ROC AUC {clf['roc_auc']:.3f}, ECE {clf['ece']:.3f} "
        f"(T = {clf['temperature']:.2f}); accuracy {acc['female']:.3f} on women, "
        f"{acc['male']:.3f} on men |",
        f"| T2MedI, sex-neutral prompts ({doc['prompts']} prompts × {doc['n_per_prompt']} "
        f"images) | **{doc['male_share_generated']:.1%}** classified male, for a corpus that is "
        f"{doc['corpus_male_fraction']:.0%} male |",
        f"| classifier confidence | {doc['confidence']['generated']:.3f} on generated images, "
        f"{doc['confidence']['real']:.3f} on real ones |",
        f"| KID in the classifier's feature space (vs real corpus images) | generated "
        f"**{kid['generated']:.2f}**, blurred real {kid['blurred real']:.2f}, Gaussian noise "
        f"{kid['noise']:.2f} (real vs real {kid['real vs real']:.2f}) |",
        f"| sampling | {doc['images_per_second']:.1f} images/s (25 DDIM steps, guidance 3, "
        "batches of 64) |",
        "",
        f"Read the {doc['male_share_generated']:.1%} with the classifier's errors in mind: on the "
        f"real corpus images the same classifier says {doc['male_share_real_classified']:.1%} "
        f"male (truth {doc['male_share_real_true']:.1%}).",
    ])  # fmt: skip


if __name__ == "__main__":
    args = sys.argv[1:]
    if args != ["--render"]:
        main(Path(args[0]) if args else Path("reports/demo"), int(args[1]) if len(args) > 1 else 64)
    table = render(json.loads((HERE / "models.json").read_text()))
    paste(HERE.parent / "README.md", "models-table", table)
    paste(HERE / "RESULTS.md", "models-table", table)
