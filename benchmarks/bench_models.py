"""Quality bars of the models trained by the demo (models issue).

Given the demo folder (default reports/demo), measures:
* the classifier's held-out balanced accuracy and per-group table (from evaluation.json);
* T2MedI samples for sex-neutral prompts: the share classified male (vs the corpus's 85%),
  the classifier's mean confidence on generated vs. real images, and KID in the classifier's
  feature space between generated and real images, next to a blurred and a noise baseline;
* a grid of samples, saved as PNG for a look.

Run: .venv/bin/python benchmarks/bench_models.py [DEMO_DIR] [N_PER_PROMPT]
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
from PIL import Image

from medfair_audit.data import ImageFolderDataset
from medfair_audit.metrics import kernel_inception_distance
from medfair_audit.models.classifier import SubgroupClassifier
from medfair_audit.models.t2medi import load_pipeline, sample_images
from medfair_audit.reporting import image_grid_png
from medfair_audit.training import load_images

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
    print(
        f"share classified male: generated {share:.3f}, real corpus test split "
        f"{real_share:.3f} (true {np.mean(real_ds.labels('sex') == np.array('male')):.3f})"
    )
    print(
        f"mean classifier confidence: generated {p_gen.max(1).values.mean():.3f}, "
        f"real {p_real.max(1).values.mean():.3f}"
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
    print(f"KID real vs real (floor): {kid:.4f} ± {sd:.4f}")
    out = demo / "models" / "samples.png"
    picked = gen[torch.arange(0, len(gen), max(1, len(gen) // 32))][:32]
    png = image_grid_png(((picked.clamp(-1, 1) + 1) * 127.5).round().byte(), 8)
    Image.open(io.BytesIO(png)).resize((8 * 128, 4 * 128), Image.NEAREST).save(out)
    print(f"sample grid: {out}")
    (demo / "models" / "quality.json").write_text(
        json.dumps(
            {
                "male_share_generated": share,
                "male_share_real_classified": real_share,
                "kid": results,
                "images_per_second": len(gen) / seconds,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    args = sys.argv[1:]
    main(Path(args[0]) if args else Path("reports/demo"), int(args[1]) if len(args) > 1 else 64)
